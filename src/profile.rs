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
