//! glibc malloc settings for steady per-request latency.
//!
//! libtorch allocates a forward pass's intermediate tensors with `malloc` and
//! frees them at the end of the request. With glibc's default, adaptive
//! thresholds, blocks of a few hundred KiB are sometimes taken with `mmap` and
//! given back with `munmap`, or the heap's top is trimmed back to the kernel,
//! so that the next request page-faults the same memory in again, and a
//! process's requests are slow for its whole life in some runs and not in
//! others. Fixed thresholds keep freed memory in the process.
//!
//! [`Runtime`](crate::Runtime) applies [`keep_freed_memory`] once per process;
//! `UMINFER_KEEP_FREED_MEMORY=0`, or
//! [`RuntimeOptions::keep_freed_memory`](crate::runtime::RuntimeOptions::keep_freed_memory)
//! `false`, leaves glibc's defaults alone (for processes that tune malloc
//! themselves or use another allocator). The measurements:
//! `docs/notes/thread-choices.md`.

use crate::error::{Error, Result, SessionErrorKind};
use std::sync::OnceLock;

/// Blocks up to this size come from the heap, never from a fresh `mmap`:
/// glibc's largest allowed value on 64-bit targets.
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the heap's top is returned to the kernel only beyond this.
pub const TRIM_THRESHOLD: i32 = 1 << 30;

/// Sets [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`] (`mallopt`), which also
/// turns off glibc's adaptive thresholds. Process-wide and idempotent.
pub fn keep_freed_memory() -> Result<()> {
    for (param, value, name) in [(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD, "M_MMAP_THRESHOLD"), (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD, "M_TRIM_THRESHOLD")] {
        // SAFETY: mallopt only changes allocator parameters; both values are in
        // the ranges glibc accepts, and it reports failure by returning 0.
        if unsafe { libc::mallopt(param, value) } != 1 {
            return Err(Error::session(SessionErrorKind::Failed, format!("mallopt({name}, {value}) was refused by the C library")));
        }
    }
    Ok(())
}

/// Applies [`keep_freed_memory`] once per process unless
/// `UMINFER_KEEP_FREED_MEMORY=0`; a failure is logged, not fatal (latency
/// suffers, results do not).
pub(crate) fn apply_once() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var("UMINFER_KEEP_FREED_MEMORY").is_ok_and(|v| v == "0") {
            tracing::debug!("UMINFER_KEEP_FREED_MEMORY=0: glibc malloc keeps its default thresholds");
        } else if let Err(e) = keep_freed_memory() {
            tracing::warn!("{e}: freed memory may go back to the kernel between requests (slower, never wrong)");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minor_faults_of_this_thread() -> i64 {
        // SAFETY: rusage is plain data; getrusage fills it for this thread.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid, writable rusage.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) }, 0);
        u.ru_minflt
    }

    /// Touches every page of a fresh 4 MiB block, frees it, and returns the
    /// minor page faults of doing that again.
    fn faults_of_second_allocation() -> i64 {
        const LEN: usize = 4 << 20;
        std::hint::black_box(vec![1u8; LEN]);
        let before = minor_faults_of_this_thread();
        std::hint::black_box(vec![1u8; LEN]);
        minor_faults_of_this_thread() - before
    }

    #[test]
    fn freed_memory_is_reused_without_page_faults() {
        keep_freed_memory().expect("mallopt");
        // 4 MiB is 1024 pages: a block given back to the kernel faults them all in again.
        let faults = faults_of_second_allocation();
        assert!(faults < 64, "a freed 4 MiB block came back with {faults} page faults");
    }
}
