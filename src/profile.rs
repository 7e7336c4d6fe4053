//! CPU flame graphs of this process: pprof's sampling profiler (a SIGPROF
//! timer on the process's CPU time, [`FREQUENCY`] samples a second, each
//! sample the stack of whichever thread was running) between
//! [`CpuProfile::start`] and [`CpuProfile::write_svg`], written as an SVG
//! flame graph (inferno). A thread that sleeps or blocks takes no samples,
//! so a flame graph shows where CPU time went, in every thread: the
//! caller's, libtorch's intra-op threads, a session's own thread.
//!
//! Off unless asked for (`--profile DIR`): nothing on the request path
//! changes when no profile runs. While one runs each sample interrupts a
//! thread for a stack walk (some µs, [`FREQUENCY`] times a CPU-second), so
//! figures measured under a profile are not the unprofiled ones; `uminfer
//! bench` therefore profiles in extra requests after its timed run.
//! [`ServerProfile`] is a server process's profile, from its start or from
//! a SIGUSR1, written at shutdown.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Samples per second of CPU time (an odd number, off the beat of periodic work).
pub const FREQUENCY: i32 = 997;

/// A running profile of the whole process (one at a time: pprof's timer is process-wide).
pub struct CpuProfile {
    guard: pprof::ProfilerGuard<'static>,
    title: String,
}

impl CpuProfile {
    /// Starts sampling; `title` heads the flame graph. Fails when another
    /// profile of this process is running.
    pub fn start(title: &str) -> Result<Self> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY)
            // Stack walks that begin inside these would unwind through code
            // without reliable frame information.
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| Error::Profile(format!("starting the profiler: {e}")))?;
        Ok(Self { guard, title: title.to_string() })
    }

    /// Stops sampling and writes the flame graph to `path` (its directory
    /// created); returns the samples it holds. Without samples nothing is
    /// written and the error says so.
    pub fn write_svg(self, path: &Path) -> Result<u64> {
        let report = self.guard.report().build().map_err(|e| Error::Profile(format!("building the report: {e}")))?;
        drop(self.guard);
        let samples: u64 = report.data.values().map(|&n| n.max(0) as u64).sum();
        if samples == 0 {
            return Err(Error::Profile(format!("no samples for {}: the profiled work used no CPU time the profiler saw; nothing written", path.display())));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
        }
        let file = std::fs::File::create(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        let mut options = pprof::flamegraph::Options::default();
        options.title = format!("{} ({samples} samples at {FREQUENCY} Hz of CPU time)", self.title);
        report.flamegraph_with_options(std::io::BufWriter::new(file), &mut options).map_err(|e| Error::Profile(format!("writing {}: {e}", path.display())))?;
        Ok(samples)
    }
}

/// `DIR/NAME.svg`, with the characters of `name` that do not belong in a
/// file name replaced by `_`.
pub fn svg_path(dir: &Path, name: &str) -> PathBuf {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    dir.join(format!("{clean}.svg"))
}

/// When a server's profile ([`ServerProfile`]) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileStart {
    /// At once.
    Now,
    /// At the first SIGUSR1 the process receives (e.g. once the load of
    /// interest runs: `kill -USR1 PID`; `uminfer bench` does so before a
    /// server scheme's profiled requests).
    OnSigusr1,
}

/// The profile a [`ServerProfile`] holds, shared with its signal thread.
type Slot = std::sync::Arc<parking_lot::Mutex<Option<CpuProfile>>>;

/// A server process's CPU profile (`uminfer serve --profile DIR`): sampled
/// from [`arm`](Self::arm) (or the first SIGUSR1) until
/// [`finish`](Self::finish), which writes the flame graph, at shutdown.
pub struct ServerProfile {
    title: String,
    path: PathBuf,
    slot: Slot,
    /// With [`ProfileStart::OnSigusr1`]: the thread that waits for the signal.
    waiter: Option<std::thread::JoinHandle<()>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ServerProfile {
    /// Arms a profile titled `title`, to be written to `path`. With
    /// [`ProfileStart::OnSigusr1`], call this before the process starts any
    /// other thread: SIGUSR1 is blocked in this thread (and so in every
    /// thread started after it) and taken by a waiting thread of its own.
    pub fn arm(title: &str, path: PathBuf, start: ProfileStart) -> Result<Self> {
        let slot: Slot = Default::default();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = match start {
            ProfileStart::Now => {
                *slot.lock() = Some(CpuProfile::start(title)?);
                None
            }
            ProfileStart::OnSigusr1 => {
                // pprof's first start in a process takes about a second (it
                // sets itself up); paid here, the signal's start is at once.
                drop(CpuProfile::start(title)?);
                let set = sigusr1_set();
                // A thread started before this call, with SIGUSR1 not blocked,
                // would take the signal: a handler that does nothing keeps the
                // default action (ending the process) from happening there.
                extern "C" fn ignore(_: libc::c_int) {}
                // SAFETY: a zeroed sigaction is valid plain data; the handler
                // is an async-signal-safe function that does nothing.
                let rc = unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
                    libc::sigemptyset(&mut action.sa_mask);
                    libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut())
                };
                if rc != 0 {
                    return Err(Error::Os { call: "sigaction(SIGUSR1)", source: std::io::Error::last_os_error() });
                }
                // SAFETY: `set` is an initialised signal set; blocking SIGUSR1 in
                // this thread changes nothing but its signal mask (inherited by
                // the threads it starts from now on).
                let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
                if rc != 0 {
                    return Err(Error::Os { call: "pthread_sigmask", source: std::io::Error::from_raw_os_error(rc) });
                }
                let (slot, done, title) = (slot.clone(), done.clone(), title.to_string());
                let waiter = std::thread::Builder::new()
                    .name("uminfer-profile-signal".into())
                    .spawn(move || loop {
                        let mut sig = 0;
                        // SAFETY: `set` holds SIGUSR1, blocked in every thread
                        // of the process, so sigwait takes it; `sig` is a valid out pointer.
                        let rc = unsafe { libc::sigwait(&set, &mut sig) };
                        if done.load(std::sync::atomic::Ordering::Acquire) {
                            return;
                        }
                        let mut s = slot.lock();
                        if rc == 0 && s.is_none() {
                            match CpuProfile::start(&title) {
                                Ok(p) => {
                                    tracing::info!("SIGUSR1: CPU profile started");
                                    *s = Some(p);
                                }
                                Err(e) => tracing::warn!("SIGUSR1: {e}"),
                            }
                        }
                    })
                    .map_err(|e| Error::Os { call: "spawning the profile signal thread", source: e })?;
                Some(waiter)
            }
        };
        Ok(Self { title: title.to_string(), path, slot, waiter, done })
    }

    /// Where the flame graph goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops sampling and writes the flame graph; the samples written, or
    /// `None` when the profile never started (no SIGUSR1 came).
    pub fn finish(mut self) -> Result<Option<u64>> {
        if let Some(waiter) = self.waiter.take() {
            self.done.store(true, std::sync::atomic::Ordering::Release);
            use std::os::unix::thread::JoinHandleExt;
            // SAFETY: the waiter thread is alive until joined below (it ends
            // only after a signal sees `done`); SIGUSR1 is blocked there, so
            // its sigwait takes this one, sees `done` and returns.
            let rc = unsafe { libc::pthread_kill(waiter.as_pthread_t(), libc::SIGUSR1) };
            if rc == 0 {
                let _ = waiter.join();
            }
        }
        let taken = self.slot.lock().take();
        match taken {
            Some(p) => p.write_svg(&self.path).map(Some),
            None => {
                tracing::info!("{}: no SIGUSR1 came, no profile written to {}", self.title, self.path.display());
                Ok(None)
            }
        }
    }
}

/// The signal set of SIGUSR1 alone.
fn sigusr1_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
    // both calls only write the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        set
    }
}
