//! How the gRPC server answers back-to-back requests without paying a
//! thread wake-up for each: it has one transport thread (HTTP/2 framing,
//! protobuf), which polls the network for [`GrpcOptions::spin`] after each
//! answer before it sleeps in `epoll`, and which runs the inference itself
//! when the server has a single session with short requests (no hand-off to
//! a blocking thread; with more sessions, or long requests, they run on
//! tokio's blocking threads, [`runs_inline`](super::service::runs_inline)).
//!
//! A wake-up of a sleeping thread costs tens of microseconds, as much as a
//! small model's whole request: both the hand-off and the sleep are avoided
//! while requests come back to back (`docs/notes/thread-choices.md`).
//!
//! [`GrpcOptions::spin`]: super::GrpcOptions::spin

use crate::tuning::YIELD_EVERY;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// When the server last answered, and the task that polls after it.
#[derive(Debug)]
pub struct Polling {
    spin: Duration,
    start: Instant,
    /// Nanoseconds from `start` to the end of the latest answer, at least 1;
    /// 0: none yet.
    last_answer: AtomicU64,
    answered: Notify,
}

impl Polling {
    /// Polls for `spin` after each answer (zero: never).
    pub fn new(spin: Duration) -> Self {
        Self { spin, start: Instant::now(), last_answer: AtomicU64::new(0), answered: Notify::new() }
    }

    /// Records an answer: the poller runs (again) for `spin` from now.
    pub fn answered(&self) {
        if self.spin.is_zero() {
            return;
        }
        self.last_answer.store(self.elapsed_ns().max(1), Ordering::Relaxed);
        self.answered.notify_one();
    }

    fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn polling(&self) -> bool {
        match self.last_answer.load(Ordering::Relaxed) {
            0 => false,
            last => Duration::from_nanos(self.elapsed_ns().saturating_sub(last)) < self.spin,
        }
    }

    /// The poller: a task on the transport thread that, while `polling`
    /// (less than `spin` since the last answer), yields to tokio again and
    /// again, so that the runtime checks the network without blocking instead
    /// of sleeping; it gives the CPU to other threads every
    /// [`YIELD_EVERY`] (a client polling for its answer may share this core).
    /// Otherwise it waits for the next answer, using no CPU. Returns when
    /// `stopping` turns true.
    pub async fn run(&self, mut stopping: watch::Receiver<bool>) {
        if self.spin.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = self.answered.notified() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            let mut next_yield = Instant::now() + YIELD_EVERY;
            while self.polling() && !*stopping.borrow() {
                if Instant::now() >= next_yield {
                    std::thread::yield_now();
                    next_yield = Instant::now() + YIELD_EVERY;
                }
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_for_the_spin_after_each_answer_and_stops_with_the_server() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let p = std::sync::Arc::new(Polling::new(Duration::from_millis(20)));
            assert!(!p.polling(), "nothing answered yet");
            p.answered();
            assert!(p.polling());
            let (stop, stopping) = watch::channel(false);
            let poller = tokio::spawn({
                let p = p.clone();
                async move { p.run(stopping).await }
            });
            tokio::time::sleep(Duration::from_millis(40)).await;
            assert!(!p.polling(), "20 ms after the answer");
            stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), poller).await.expect("the poller ends when the server stops").unwrap();
        });
    }

    #[test]
    fn zero_spin_never_polls() {
        let p = Polling::new(Duration::ZERO);
        p.answered();
        assert!(!p.polling());
        let (_stop, stopping) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), p.run(stopping)).await.expect("returns at once") });
    }
}
