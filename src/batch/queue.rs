//! The batcher's queue: requests waiting to run ([`Request`]: a caller's
//! tensors, borrowed while it waits), admission (`max_queue`), the gathering
//! of one batch (`max_batch`, `max_queue_delay`) and the hand-back of each
//! request's result.
//!
//! Lock order: the queue's lock, then a request's. A request is `Queued`
//! while it sits in the queue, `Taken` once a batch holds it (its caller then
//! waits whatever its timeout), `Done` with its result.
//!
//! Hand-offs: as a session's thread does, each side busy-waits a bounded
//! time before it sleeps on its condition variable, so that a request that
//! arrives, or an answer that comes, within the spin costs no futex wake-up.
//! The scheduler spins once per batch for the next request while the queue
//! is empty; a caller spins for its answer only when it found fewer than
//! half the machine's cores' worth of requests waiting (more spinners would
//! take the cores the batch runs on).

use super::BatchedRun;
use crate::error::{Error, Result};
use crate::session::spin_until;
use parking_lot::{Condvar, Mutex, MutexGuard};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where one request's tensors lie in its caller's memory.
pub(super) struct Bindings {
    /// Each input's bytes (`samples` × the input's bytes per sample).
    pub inputs: SmallVec<[(*const u8, usize); 8]>,
    /// Each output's bytes (`samples` × the output's bytes per sample).
    pub outputs: SmallVec<[(*mut u8, usize); 8]>,
}

enum State {
    Queued,
    Taken,
    Done(Result<BatchedRun>),
    /// Its result was handed to its caller.
    Answered,
}

/// One request: its samples, its caller's memory, its state.
pub(super) struct Request {
    pub samples: usize,
    pub bindings: Bindings,
    pub enqueued: Instant,
    state: Mutex<State>,
    done: Condvar,
    /// Set once `state` is `Done`, for the caller's spin.
    finished: AtomicBool,
}

// SAFETY: the raw pointers in `bindings` point into memory that the caller
// of `Queue::run` borrows (shared for inputs, exclusive for outputs) for the
// whole call, and that call does not return while a batch may use them: it
// returns once the request is `Done`, or after taking it out of the queue
// while it was still `Queued` (under the queue's lock, which the scheduler
// holds while it takes requests). Only the scheduler thread dereferences
// them, between taking the request and marking it `Done`. The caller's
// memory may be sent (inputs: `&[u8]` is `Send`; outputs: `&mut [u8]` is
// `Send`), so reading and writing it from the scheduler thread is allowed.
unsafe impl Send for Request {}
// SAFETY: shared access goes through `state` (a mutex) and `finished` (an
// atomic); `samples`,
// `bindings` and `enqueued` are never written after construction, and the
// memory behind `bindings` is touched by the scheduler alone (see `Send`).
unsafe impl Sync for Request {}

impl Request {
    /// Hands `result` to the request's caller.
    pub fn complete(&self, result: Result<BatchedRun>) {
        *self.state.lock() = State::Done(result);
        self.finished.store(true, Ordering::Release);
        self.done.notify_one();
    }
}

struct Waiting {
    requests: VecDeque<Arc<Request>>,
    /// Samples over all waiting requests.
    samples: usize,
    /// No request is admitted any more; the scheduler ends once it is empty.
    closed: bool,
}

/// The limits the queue enforces.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_batch: usize,
    pub max_queue: usize,
    pub max_queue_delay: Duration,
}

/// Requests waiting for the scheduler.
pub(super) struct Queue {
    waiting: Mutex<Waiting>,
    arrived: Condvar,
    limits: Limits,
    /// Set with each request queued (and on close), for the scheduler's spin.
    arrival: AtomicBool,
    /// Each side's busy-wait before it sleeps, in ns ([`set_spin`](Self::set_spin)).
    spin_ns: AtomicU64,
    /// Callers spin for their answer only when fewer requests than this wait.
    spinners: usize,
}

impl Queue {
    /// A queue whose sides do not spin until [`set_spin`](Self::set_spin).
    pub fn new(limits: Limits) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            waiting: Mutex::new(Waiting { requests: VecDeque::new(), samples: 0, closed: false }),
            arrived: Condvar::new(),
            limits,
            arrival: AtomicBool::new(false),
            spin_ns: AtomicU64::new(0),
            spinners: (cores / 2).max(1),
        }
    }

    /// How long each side busy-waits before it sleeps (see the module's doc).
    pub fn set_spin(&self, spin: Duration) {
        self.spin_ns.store(spin.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn spin(&self) -> Duration {
        Duration::from_nanos(self.spin_ns.load(Ordering::Relaxed))
    }

    /// Queues a request of `samples` samples over `bindings` and waits for
    /// its result: refused at once when the queue is full or closed, and
    /// after `timeout` when no batch took it by then.
    ///
    /// # Safety
    /// Each pointer of `bindings` must be valid for its length for the whole
    /// call: inputs for reads, outputs for writes, and nothing else may
    /// access the outputs meanwhile.
    pub unsafe fn run(&self, samples: usize, bindings: Bindings, timeout: Option<Duration>) -> Result<BatchedRun> {
        let request = Arc::new(Request { samples, bindings, enqueued: Instant::now(), state: Mutex::new(State::Queued), done: Condvar::new(), finished: AtomicBool::new(false) });
        let spin = {
            let mut w = self.waiting.lock();
            if w.closed {
                return Err(Error::BatcherClosed);
            }
            if w.requests.len() >= self.limits.max_queue {
                return Err(Error::QueueFull { queued: w.requests.len(), max_queue: self.limits.max_queue });
            }
            let spin = if w.requests.len() < self.spinners { self.spin() } else { Duration::ZERO };
            w.samples += samples;
            w.requests.push_back(request.clone());
            self.arrival.store(true, Ordering::Release);
            spin
        };
        self.arrived.notify_one();
        // Bounded, and below the timeout's wait: an answer within it needs no wake-up.
        spin_until(&request.finished, spin.min(timeout.unwrap_or(Duration::MAX)));
        let deadline = timeout.map(|t| request.enqueued + t);
        let mut state = request.state.lock();
        loop {
            if let State::Done(_) = *state {
                if let State::Done(result) = std::mem::replace(&mut *state, State::Answered) {
                    return result;
                }
            }
            match deadline {
                Some(d) if matches!(*state, State::Queued) => {
                    if request.done.wait_until(&mut state, d).timed_out() && matches!(*state, State::Queued) {
                        // Lock order: the queue, then the request.
                        drop(state);
                        if self.withdraw(&request) {
                            return Err(Error::QueueTimeout(timeout.unwrap_or_default()));
                        }
                        state = request.state.lock();
                    }
                }
                _ => request.done.wait(&mut state),
            }
        }
    }

    /// Takes `request` out of the queue if it is still waiting there.
    fn withdraw(&self, request: &Arc<Request>) -> bool {
        let mut w = self.waiting.lock();
        let mut state = request.state.lock();
        if !matches!(*state, State::Queued) {
            return false;
        }
        if let Some(at) = w.requests.iter().position(|r| Arc::ptr_eq(r, request)) {
            w.requests.remove(at);
            w.samples -= request.samples;
        }
        *state = State::Answered;
        true
    }

    /// Waits for the next batch: the oldest requests, in order, up to
    /// `max_batch` samples; with a queue delay, waits up to it (counted from
    /// the oldest request's arrival) while fewer samples than a full batch
    /// wait. `None` once the queue is closed and empty.
    pub fn next_batch(&self) -> Option<SmallVec<[Arc<Request>; 16]>> {
        let limits = self.limits;
        let mut w = self.waiting.lock();
        let mut spun = false;
        loop {
            while w.requests.is_empty() {
                if w.closed {
                    return None;
                }
                let spin = self.spin();
                if !spun && !spin.is_zero() {
                    // Once per batch, bounded: then the condition variable.
                    spun = true;
                    self.arrival.store(false, Ordering::Relaxed);
                    MutexGuard::unlocked(&mut w, || spin_until(&self.arrival, spin));
                    continue;
                }
                self.arrived.wait(&mut w);
            }
            if !limits.max_queue_delay.is_zero() {
                let deadline = w.requests[0].enqueued + limits.max_queue_delay;
                while !w.closed && w.samples < limits.max_batch && !w.requests.is_empty() && !self.arrived.wait_until(&mut w, deadline).timed_out() {}
                if w.requests.is_empty() {
                    continue; // every request waiting timed out meanwhile
                }
            }
            let mut batch = SmallVec::new();
            let mut samples = 0;
            while w.requests.front().is_some_and(|f| samples + f.samples <= limits.max_batch) {
                let Some(r) = w.requests.pop_front() else { break };
                samples += r.samples;
                *r.state.lock() = State::Taken;
                batch.push(r);
            }
            w.samples -= samples;
            return Some(batch);
        }
    }

    /// Admits no more requests; those waiting still run.
    pub fn close(&self) {
        self.waiting.lock().closed = true;
        self.arrival.store(true, Ordering::Release);
        self.arrived.notify_all();
    }

    /// Closes the queue and answers every waiting request with `err()` (the
    /// scheduler is gone).
    pub fn fail_all(&self, err: impl Fn() -> Error) {
        let mut w = self.waiting.lock();
        w.closed = true;
        w.samples = 0;
        for r in w.requests.drain(..) {
            *r.state.lock() = State::Taken;
            r.complete(Err(err()));
        }
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiting.lock().requests.len()
    }
}
