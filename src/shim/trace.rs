//! A libtorch trace (its Kineto profiler) of the operators one thread runs:
//! [`TorchTrace::start`], a [`TraceScope`] around each request, then
//! [`TorchTrace::save`] writes the Chrome trace JSON that Perfetto and
//! `chrome://tracing` open. On a GPU ([`TorchTrace::start`] with `cuda`)
//! the trace also holds the kernels and copies on their streams (CUPTI).
//!
//! libtorch records the operators of the thread that started the trace
//! (its RecordFunction callbacks are that thread's), so the trace, its
//! scopes and the requests run on one thread: [`TorchTrace`] is neither
//! `Send` nor `Sync`. One trace runs at a time in a process (Kineto's
//! collector is process-wide). Nothing changes on the request path while
//! no trace runs.

use super::{check, ffi};
use crate::error::{Error, Result};
use std::ffi::CString;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The name of the scope [`Session::trace`](crate::Session::trace) puts
/// around each request, followed by its index: `uminfer::request 0`, ….
pub const REQUEST_SCOPE: &str = "uminfer::request";

/// A trace runs in this process.
static TRACING: AtomicBool = AtomicBool::new(false);

/// A running trace of this thread's operators; stopped (and discarded) on
/// drop unless [`saved`](Self::save).
pub struct TorchTrace {
    /// libtorch's profiler state is the starting thread's.
    _thread_bound: PhantomData<*const ()>,
}

impl TorchTrace {
    /// Starts tracing the operators this thread runs; with `cuda`, also the
    /// GPU's kernels and copies. Fails when another trace runs in this process.
    pub fn start(cuda: bool) -> Result<Self> {
        if TRACING.swap(true, Ordering::AcqRel) {
            return Err(Error::Profile("a libtorch trace is already running in this process: one at a time".into()));
        }
        // SAFETY: no arguments to keep alive; the shim catches every exception.
        let started = check("uminfer_trace_start", unsafe { ffi::uminfer_trace_start(i32::from(cuda)) });
        if let Err(e) = started {
            TRACING.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(Self { _thread_bound: PhantomData })
    }

    /// Marks `name` (a request) on the trace until the scope is dropped:
    /// the operators run meanwhile lie inside it.
    pub fn scope(&self, name: &str) -> Result<TraceScope<'_>> {
        let name = CString::new(name).map_err(|_| Error::Argument(format!("trace scope name {name:?} holds a NUL byte")))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `name` is a NUL-terminated string alive for the call (the
        // shim copies it); `raw` is a valid out pointer, written on success only.
        check("uminfer_trace_scope_begin", unsafe { ffi::uminfer_trace_scope_begin(name.as_ptr(), &mut raw) })?;
        Ok(TraceScope { raw, _trace: PhantomData })
    }

    /// Stops the trace and writes it to `path` (its directory created) as
    /// Chrome trace JSON.
    pub fn save(self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
        }
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::Argument(format!("trace path {} holds a NUL byte", path.display())))?;
        // Stopped here, not again on drop.
        std::mem::forget(self);
        // SAFETY: `c` is NUL-terminated and alive for the call; the trace was
        // started on this thread (`TorchTrace` is not `Send`) and is stopped
        // once (forgotten above, so its drop does not stop it again).
        let stopped = check("uminfer_trace_stop", unsafe { ffi::uminfer_trace_stop(c.as_ptr()) });
        TRACING.store(false, Ordering::Release);
        stopped
    }
}

impl Drop for TorchTrace {
    fn drop(&mut self) {
        // SAFETY: started on this thread and not saved (`save` skips this
        // drop); a NULL path discards the trace. A failure here has nobody to
        // report to, and Drop never panics.
        let _ = check("uminfer_trace_stop", unsafe { ffi::uminfer_trace_stop(std::ptr::null()) });
        TRACING.store(false, Ordering::Release);
    }
}

/// A region of a [`TorchTrace`] (a user scope, like PyTorch's
/// `record_function`); ends when dropped, before its trace can be saved.
pub struct TraceScope<'t> {
    raw: *mut ffi::UminferTraceScope,
    _trace: PhantomData<&'t TorchTrace>,
}

impl Drop for TraceScope<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from uminfer_trace_scope_begin and is ended (and
        // freed by the shim, also on failure) exactly once, here, on the
        // trace's thread (the scope borrows the `!Send` trace).
        let _ = check("uminfer_trace_scope_end", unsafe { ffi::uminfer_trace_scope_end(self.raw) });
    }
}
