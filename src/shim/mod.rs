//! Safe wrappers over the C++ shim (`uminfer_shim.cpp`): what tch lacks.
//!
//! | item | wraps |
//! |---|---|
//! | [`torch_info`] | libtorch's build and CUDA facts (`at::detail::getCUDAHooks()`) |
//! | [`CurrentStream`] | `c10::cuda::setCurrentCUDAStream` with an external stream, restored on drop |
//! | [`CudaGraph`], [`launch_exec`] | `at::cuda::CUDAGraph` capture / replay / direct launch, pool sharing |
//! | [`model`] | [`LoadedModel`]: a TorchScript module or an AOTInductor package on one device: describe, run, run into preallocated outputs |
//! | [`copy_tensor`] | `Tensor::copy_` with `non_blocking` (tch always blocks) |
//! | [`trace`] | [`TorchTrace`]: libtorch's Kineto profiler over one thread's requests, saved as a Chrome trace |
//!
//! The shim catches every C++ exception and returns it as a string, which
//! becomes [`Error::Shim`]; nothing unwinds across the FFI boundary.

mod ffi;
pub mod model;
pub mod trace;

pub use model::{archive_records, package_metadata, Format, LoadedModel};
pub use trace::{TorchTrace, TraceScope};

use crate::error::{Error, Result};
use serde::Serialize;
use std::ffi::{c_char, c_void, CStr};
use std::marker::PhantomData;

/// Turns a shim error string into a `Result`, freeing the string.
pub(crate) fn check(call: &'static str, err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return of a shim function is a NUL-terminated string
    // allocated with malloc by `dup_error`, owned by us until freed below.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    // SAFETY: `err` came from the shim's malloc and is freed exactly once.
    unsafe { ffi::uminfer_free_error(err) };
    Err(Error::Shim { call, message })
}

/// libtorch's own view of its build and of CUDA, read through the shim.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TorchInfo {
    /// `TORCH_VERSION` of the headers the shim was compiled against.
    pub compiled_version: String,
    /// The CUDA part of libtorch (`libtorch_cuda.so`) is loaded and registered.
    pub cuda_build_loaded: bool,
    /// libtorch sees at least one usable GPU (`torch::cuda::is_available`).
    pub cuda_available: bool,
    /// GPUs libtorch sees.
    pub device_count: i32,
    /// CUDA runtime version libtorch was built with (`13000` = 13.0).
    pub cudart_version: Option<i64>,
    /// cuDNN version libtorch was compiled against.
    pub cudnn_version: Option<i64>,
    /// cuDNN version loaded at run time (only read when a GPU is usable).
    pub cudnn_runtime_version: Option<i64>,
    /// `_GLIBCXX_USE_CXX11_ABI` of the shim.
    pub cxx11_abi: i32,
    /// Why a fact could not be read, if one could not.
    pub error: Option<String>,
}

/// Reads [`TorchInfo`]. Never fails: facts that cannot be read are `None` and
/// the reason is in `error`.
pub fn torch_info() -> TorchInfo {
    let mut raw = ffi::UminferTorchInfo::default();
    // SAFETY: `raw` is a valid, writable UminferTorchInfo with the C layout.
    let err = check("torch_info", unsafe { ffi::uminfer_torch_info(&mut raw) }).err();
    // SAFETY: the shim memset the struct and strncpy'd at most 31 bytes, so the
    // array is NUL-terminated (also true of the zeroed default on early error).
    let compiled = unsafe { CStr::from_ptr(raw.torch_version.as_ptr()) };
    let known = |v: i64| (v >= 0 && raw.has_cudart == 1).then_some(v);
    TorchInfo {
        compiled_version: compiled.to_string_lossy().into_owned(),
        cuda_build_loaded: raw.has_cudart == 1,
        cuda_available: raw.has_cuda == 1,
        device_count: raw.device_count,
        cudart_version: known(raw.cudart_version),
        cudnn_version: known(raw.cudnn_version),
        cudnn_runtime_version: known(raw.cudnn_runtime_version),
        cxx11_abi: raw.cxx11_abi,
        error: err.map(|e| e.to_string()),
    }
}

/// While alive, an external CUDA stream is libtorch's current stream on this
/// thread; dropping it restores the previous current stream.
///
/// Not `Send`: libtorch's current stream is per thread, so the guard must be
/// dropped on the thread that created it.
pub struct CurrentStream {
    swap: *mut ffi::UminferStreamSwap,
    restore_error: Option<Error>,
    _not_send: PhantomData<*mut ()>,
}

impl CurrentStream {
    /// Makes `stream` (a `CUstream` on device `device`) libtorch's current stream.
    ///
    /// # Safety
    /// 1. `stream` must be a valid CUDA stream of device `device` in the
    ///    primary context libtorch uses.
    /// 2. It must stay alive until this guard is dropped, and longer if
    ///    libtorch work was queued on it (synchronise before destroying it).
    pub unsafe fn set(stream: *mut c_void, device: i32) -> Result<Self> {
        let mut swap = std::ptr::null_mut();
        // SAFETY: caller guarantees the stream (points 1 and 2); `swap` is a valid out pointer.
        check("stream_set_current", unsafe { ffi::uminfer_stream_set_current(stream, device, &mut swap) })?;
        Ok(Self { swap, restore_error: None, _not_send: PhantomData })
    }

    /// Restores the previous stream now, reporting any error.
    pub fn restore(mut self) -> Result<()> {
        self.restore_inner();
        self.restore_error.take().map_or(Ok(()), Err)
    }

    fn restore_inner(&mut self) {
        let swap = std::mem::replace(&mut self.swap, std::ptr::null_mut());
        if !swap.is_null() {
            // SAFETY: `swap` came from uminfer_stream_set_current and is restored once (nulled above).
            if let Err(e) = check("stream_restore", unsafe { ffi::uminfer_stream_restore(swap) }) {
                self.restore_error = Some(e);
            }
        }
    }
}

impl Drop for CurrentStream {
    fn drop(&mut self) {
        self.restore_inner();
        if let Some(e) = self.restore_error.take() {
            tracing::error!("restoring libtorch's current stream failed: {e}");
        }
    }
}

/// Identifier of a CUDA-graph memory pool (`at::cuda::MempoolId_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GraphPool(pub u64, pub u64);

impl GraphPool {
    /// A fresh pool that several graphs of one session can share (`graph_pool_handle()`).
    pub fn new_shared() -> Result<Self> {
        let (mut a, mut b) = (0, 0);
        // SAFETY: both out pointers are valid for writes.
        check("graph_pool_handle", unsafe { ffi::uminfer_graph_pool_handle(&mut a, &mut b) })?;
        Ok(Self(a, b))
    }
}

/// An `at::cuda::CUDAGraph`: capture libtorch work once, replay it per request.
///
/// # Thread safety
/// Not `Send`/`Sync`: capture state and libtorch's current stream are per
/// thread, and NVIDIA documents graph objects as not thread safe. A session
/// keeps its graph on one dedicated thread.
pub struct CudaGraph {
    raw: *mut ffi::UminferGraph,
    _not_send: PhantomData<*mut ()>,
}

impl CudaGraph {
    /// Creates an empty graph. Fails (with an error, not a crash) when libtorch sees no GPU.
    pub fn new() -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out pointer.
        check("graph_new", unsafe { ffi::uminfer_graph_new(&mut raw) })?;
        Ok(Self { raw, _not_send: PhantomData })
    }

    /// Starts capturing libtorch's current stream (which must not be the
    /// default stream) into this graph, allocating from `pool` (`None`: a private pool).
    pub fn capture_begin(&mut self, pool: Option<GraphPool>) -> Result<()> {
        let GraphPool(a, b) = pool.unwrap_or_default();
        // SAFETY: `self.raw` is a live graph owned by `self`.
        check("graph_capture_begin", unsafe { ffi::uminfer_graph_capture_begin(self.raw, a, b) })
    }

    /// Ends the capture (call it after a failed capture too).
    pub fn capture_end(&mut self) -> Result<()> {
        // SAFETY: `self.raw` is a live graph owned by `self`.
        check("graph_capture_end", unsafe { ffi::uminfer_graph_capture_end(self.raw) })
    }

    /// Replays the captured work on libtorch's current stream.
    pub fn replay(&mut self) -> Result<()> {
        // SAFETY: `self.raw` is a live graph owned by `self`.
        check("graph_replay", unsafe { ffi::uminfer_graph_replay(self.raw) })
    }

    /// Launches the instantiated graph on `stream` with `cuGraphLaunch`,
    /// without [`replay`](Self::replay)'s RNG bookkeeping: libtorch's replay
    /// first refills the captured generator seed and offset (two small fill
    /// kernels and their host-side dispatch), so that random ops draw new
    /// numbers on every replay. Launched this way a graph that draws random
    /// numbers draws the same ones every time; its results are still computed
    /// from the current input. Fails if no capture has ended.
    pub fn launch(&self, stream: &cudarc::driver::CudaStream) -> Result<()> {
        let exec = self.raw_exec()?;
        // SAFETY: `exec` is the graph's instantiated executable, owned by
        // `self` and alive while `self` is borrowed; `stream` is a live
        // stream (a stream of another context makes the driver return an
        // error, not misbehave).
        unsafe { launch_exec(exec, stream) }
    }

    /// The instantiated executable graph (`cudaGraphExec_t`, the same handle
    /// as the driver's `CUgraphExec`), owned by `self`: valid until `self` is
    /// dropped. Fails if no capture has ended.
    pub fn raw_exec(&self) -> Result<cudarc::driver::sys::CUgraphExec> {
        let mut exec = std::ptr::null_mut();
        // SAFETY: `self.raw` is live; `exec` is a valid out pointer.
        check("graph_exec", unsafe { ffi::uminfer_graph_exec(self.raw, &mut exec) })?;
        Ok(exec.cast())
    }

    /// The memory pool this graph allocated from (share it with the next capture).
    pub fn pool(&self) -> Result<GraphPool> {
        let (mut a, mut b) = (0, 0);
        // SAFETY: `self.raw` is live; out pointers are valid.
        check("graph_pool", unsafe { ffi::uminfer_graph_pool(self.raw, &mut a, &mut b) })?;
        Ok(GraphPool(a, b))
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        // SAFETY: `raw` was created by uminfer_graph_new and is deleted once.
        if let Err(e) = check("graph_delete", unsafe { ffi::uminfer_graph_delete(raw) }) {
            tracing::error!("destroying a CUDA graph failed: {e}");
        }
    }
}

/// `cuGraphLaunch(exec, stream)`.
///
/// # Safety
/// `exec` must be a live executable graph (see [`CudaGraph::raw_exec`]) that
/// no other thread launches or changes during the call.
pub unsafe fn launch_exec(exec: cudarc::driver::sys::CUgraphExec, stream: &cudarc::driver::CudaStream) -> Result<()> {
    // SAFETY: the caller guarantees `exec`; `stream` is a live stream.
    unsafe { cudarc::driver::sys::cuGraphLaunch(exec, stream.cu_stream()) }.result().map_err(Error::driver("cuGraphLaunch"))
}

/// `dst.copy_(src, non_blocking)` on libtorch's current stream.
pub fn copy_tensor(dst: &mut tch::Tensor, src: &tch::Tensor, non_blocking: bool) -> Result<()> {
    // SAFETY: both are valid torch::Tensor* for the call; `dst` is exclusively borrowed.
    check("tensor_copy", unsafe { ffi::uminfer_tensor_copy(dst.as_mut_ptr().cast(), src.as_ptr() as *mut c_void, non_blocking as i32) })
}
