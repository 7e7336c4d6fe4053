//! [`Worker`]: a dedicated OS thread that owns a session's engine (and with
//! it the CUDA stream, libtorch's current-stream setting and the CUDA graph,
//! all per-thread state), optionally pinned to a core. A request is handed
//! over without allocation: a bounded spin, then a condition variable.

use super::engine::Engine;
use super::timing::RunTiming;
use crate::error::{Error, Result, SessionErrorKind};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default busy-wait of each side before sleeping, CPU sessions: short, since
/// libtorch's intra-op threads need the cores.
pub(crate) const CPU_SPIN: Duration = Duration::from_micros(50);
/// Default busy-wait of each side before sleeping, GPU sessions: covers a
/// small model's whole request, so that neither the caller nor the session
/// thread pays a futex wake-up (measured in docs/notes/performance.md).
pub(crate) const GPU_SPIN: Duration = Duration::from_millis(1);

/// A closure lent to the session thread by [`Worker::call`], which waits
/// until the thread has run it.
#[derive(Clone, Copy)]
struct Job(*mut (dyn FnMut() + Send + 'static));

// SAFETY: the pointer is dereferenced only on the session thread, and only
// while the `call` that lent it waits for the result; the closure behind it
// is `Send`, so running it on that thread is allowed.
unsafe impl Send for Job {}

/// A closure lent to the session thread with the engine, by
/// [`Worker::with_engine`], which waits until the thread has run it.
#[derive(Clone, Copy)]
struct EngineJob(*mut (dyn FnMut(&mut dyn Engine) + Send + 'static));

// SAFETY: as for `Job`: dereferenced only on the session thread while the
// `with_engine` that lent it waits, and the closure behind it is `Send`.
unsafe impl Send for EngineJob {}

#[derive(Clone, Copy)]
enum Cmd {
    Idle,
    Run,
    Call(Job),
    WithEngine(EngineJob),
    Stop,
}

struct Slot {
    cmd: Cmd,
    result: Option<Result<RunTiming>>,
}

struct Shared {
    slot: Mutex<Slot>,
    to_worker: Condvar,
    to_caller: Condvar,
    /// Set with `cmd = Run`, for the worker's spin phase.
    pending: AtomicBool,
    /// Set with `result`, for the caller's spin phase.
    done: AtomicBool,
    /// Busy-wait of each side before it sleeps.
    spin: Duration,
}

/// Handle to a session thread.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Busy-waits up to `spin` for `flag`; whether it was seen set.
pub(crate) fn spin_until(flag: &AtomicBool, spin: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < spin {
        if flag.load(Ordering::Acquire) {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

/// Pins the calling thread to CPU `core` (`sched_setaffinity`).
pub fn pin_to_core(core: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if core >= libc::CPU_SETSIZE as usize {
        return Err(Error::session(SessionErrorKind::Unsupported, format!("core {core} is beyond CPU_SETSIZE")));
    }
    // SAFETY: CPU_SET writes within `set`: `core` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 = this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(Error::Os { call: "sched_setaffinity", source: std::io::Error::last_os_error() });
    }
    Ok(())
}

impl Worker {
    /// Starts a thread, pins it if asked, builds the engine there with
    /// `init` (which also returns what the caller gets back: a note, a
    /// launcher), and waits for that.
    pub(crate) fn spawn<E, N, F>(name: String, core: Option<usize>, spin: Duration, init: F) -> Result<(Self, N)>
    where
        E: Engine + 'static,
        N: Send + 'static,
        F: FnOnce() -> Result<(E, N)> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot { cmd: Cmd::Idle, result: None }),
            to_worker: Condvar::new(),
            to_caller: Condvar::new(),
            pending: AtomicBool::new(false),
            done: AtomicBool::new(false),
            spin,
        });
        let (tx, rx) = std::sync::mpsc::channel::<Result<N>>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let built = core.map_or(Ok(()), pin_to_core).and_then(|_| init());
                let mut engine = match built {
                    Ok((engine, note)) => {
                        let _ = tx.send(Ok(note));
                        engine
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                serve(&sh, &mut engine);
            })
            .map_err(|e| Error::Os { call: "spawning the session thread", source: e })?;
        let mut worker = Self { shared, thread: Some(thread) };
        match rx.recv() {
            Ok(Ok(back)) => Ok((worker, back)),
            Ok(Err(e)) => {
                worker.join();
                Err(e)
            }
            Err(_) => {
                worker.join();
                Err(Error::session(SessionErrorKind::Failed, "the session thread died while building its engine"))
            }
        }
    }

    /// Runs one request on the session thread and waits for it.
    pub(crate) fn run(&self) -> Result<RunTiming> {
        self.submit(Cmd::Run)
    }

    /// Runs `f` on the session thread (where the session's libtorch state,
    /// its OpenMP team among it, lives) and waits for it. The timing is
    /// `f`'s duration there.
    pub(crate) fn call(&self, f: &mut (dyn FnMut() + Send)) -> Result<RunTiming> {
        let short: *mut (dyn FnMut() + Send + '_) = f;
        // SAFETY: only the lifetime bound of the trait object changes. The
        // pointer reaches the session thread through `submit`, which returns
        // only once that thread has finished with it (a result was posted,
        // or the thread has ended), so it is never used after `f`'s borrow ends.
        let job = Job(unsafe { std::mem::transmute::<*mut (dyn FnMut() + Send + '_), *mut (dyn FnMut() + Send + 'static)>(short) });
        self.submit(Cmd::Call(job))
    }

    /// Runs `f` on the session thread with the session's engine (e.g. its
    /// requests under a libtorch trace of that thread) and waits for it.
    pub(crate) fn with_engine(&self, f: &mut (dyn FnMut(&mut dyn Engine) + Send)) -> Result<()> {
        let short: *mut (dyn FnMut(&mut dyn Engine) + Send + '_) = f;
        // SAFETY: as in `call`: only the lifetime bound changes, and `submit`
        // returns only once the session thread has finished with the pointer.
        let job = EngineJob(unsafe { std::mem::transmute::<*mut (dyn FnMut(&mut dyn Engine) + Send + '_), *mut (dyn FnMut(&mut dyn Engine) + Send + 'static)>(short) });
        self.submit(Cmd::WithEngine(job)).map(drop)
    }

    /// Posts `cmd` and waits for its result (or the thread's end).
    fn submit(&self, cmd: Cmd) -> Result<RunTiming> {
        let sh = &*self.shared;
        {
            let mut slot = sh.slot.lock();
            slot.cmd = cmd;
            slot.result = None;
            sh.done.store(false, Ordering::Release);
            sh.pending.store(true, Ordering::Release);
        }
        sh.to_worker.notify_one();
        spin_until(&sh.done, sh.spin);
        let mut slot = sh.slot.lock();
        loop {
            if let Some(r) = slot.result.take() {
                return r;
            }
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return Err(Error::session(SessionErrorKind::Failed, "the session thread has stopped"));
            }
            sh.to_caller.wait_for(&mut slot, Duration::from_millis(100));
        }
    }

    fn join(&mut self) {
        {
            let mut slot = self.shared.slot.lock();
            slot.cmd = Cmd::Stop;
            self.shared.pending.store(true, Ordering::Release);
        }
        self.shared.to_worker.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("a session thread panicked");
            }
        }
    }
}

fn serve<E: Engine>(sh: &Shared, engine: &mut E) {
    loop {
        spin_until(&sh.pending, sh.spin);
        let cmd = {
            let mut slot = sh.slot.lock();
            while matches!(slot.cmd, Cmd::Idle) {
                sh.to_worker.wait(&mut slot);
            }
            let cmd = slot.cmd;
            slot.cmd = Cmd::Idle;
            sh.pending.store(false, Ordering::Release);
            cmd
        };
        let r = match cmd {
            Cmd::Stop => return,
            Cmd::Run => engine.run(),
            Cmd::Call(job) => {
                let t = Instant::now();
                // SAFETY: `call` lent this pointer and waits until the result
                // below is posted, so the closure is alive and not used elsewhere.
                unsafe { (*job.0)() };
                Ok(RunTiming { host: t.elapsed(), device: None })
            }
            Cmd::WithEngine(job) => {
                let t = Instant::now();
                // SAFETY: as for `Call`: `with_engine` waits for the result.
                unsafe { (*job.0)(engine) };
                Ok(RunTiming { host: t.elapsed(), device: None })
            }
            Cmd::Idle => continue,
        };
        {
            let mut slot = sh.slot.lock();
            slot.result = Some(r);
            sh.done.store(true, Ordering::Release);
        }
        sh.to_caller.notify_one();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.join();
    }
}
