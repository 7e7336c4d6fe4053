//! The ops' kernels loaded on a GPU: [`Preprocess`] (`kernels/preprocess.cu`),
//! [`Postprocess`] (`kernels/postprocess.cu`) and [`Stage`] (`kernels/stage.cu`).
//!
//! A launch takes raw device addresses (`u64`: a session's input and output
//! regions, a libtorch tensor's `data_ptr`, ...) and queues one kernel on
//! the given stream. It records no event, allocates nothing and passes every
//! parameter (`mean`, `1/std`, sizes) by value, so it can be captured in a
//! CUDA graph; the graph then replays with the same addresses and parameters.
//! The arguments are checked (shapes by [`PreprocessParams`] and
//! [`SoftmaxTopkParams`], null and misaligned addresses, the stream's
//! context); what cannot be checked — that the addresses point to enough
//! live memory — is each `launch`'s `# Safety` contract.

use super::{PreprocessParams, SoftmaxTopkParams};
use crate::cuda::nvrtc;
use crate::cuda::Gpu;
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DriverError, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Threads per block of both kernels (a multiple of 32, as `postprocess.cu` requires).
const THREADS: u32 = 256;

/// One kernel function loaded in a GPU's context, and that context.
#[derive(Debug, Clone)]
struct Loaded {
    ctx: Arc<CudaContext>,
    func: CudaFunction,
}

impl Loaded {
    /// Loads `entry` from `kernels/<file>.cu` (PTX from nvcc or NVRTC, cached
    /// per process) into `gpu`'s context.
    fn new(gpu: &Gpu, file: &str, entry: &str) -> Result<Self> {
        let ctx = gpu.context().clone();
        let func = nvrtc::load_function(&ctx, file, entry)?;
        Ok(Self { ctx, func })
    }

    /// An error unless `stream` belongs to the context the module was loaded
    /// in (the device's primary context; every `Gpu` of that device shares it).
    fn check_stream(&self, stream: &CudaStream) -> Result<()> {
        if stream.context().cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::Driver {
                call: "cuLaunchKernel (the stream belongs to another CUDA context than the kernel's module; \
                       use a stream of the Gpu the op was created on)",
                source: DriverError(cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_CONTEXT),
            });
        }
        Ok(())
    }
}

/// An error if a device address is null or not aligned for its element type.
fn check_ptr(what: &str, ptr: u64, align: u64) -> Result<()> {
    if ptr == 0 {
        return Err(Error::Argument(format!("{what} device address is null; expected the address of a device-visible buffer")));
    }
    if !ptr.is_multiple_of(align) {
        return Err(Error::Argument(format!("{what} device address {ptr:#x} is not {align}-byte aligned")));
    }
    Ok(())
}

/// The preprocess kernel (`uminfer_preprocess_u8_hwc_f32_nchw`) loaded on one
/// GPU: a u8 HWC image to normalised f32 NCHW, as
/// [`reference::preprocess_u8_hwc`](super::reference::preprocess_u8_hwc).
#[derive(Debug, Clone)]
pub struct Preprocess {
    kernel: Loaded,
}

impl Preprocess {
    /// Name of the kernel's entry point in `kernels/preprocess.cu`.
    pub const ENTRY: &'static str = "uminfer_preprocess_u8_hwc_f32_nchw";

    /// Loads the kernel into `gpu`'s context (compiling it with NVRTC on first
    /// use in the process when the build had no nvcc).
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self { kernel: Loaded::new(gpu, "preprocess", Self::ENTRY)? })
    }

    /// Queues the kernel on `stream`: reads `params.len()` bytes at `src`
    /// (H×W×C), writes `params.len()` floats at `dst` (1×C×H×W). Returns once
    /// queued; the result is there when `stream` has reached this point.
    ///
    /// Errors: a null or misaligned (`dst` not 4-byte aligned) address, a
    /// stream of another context, or the driver refusing the launch.
    ///
    /// # Safety
    ///
    /// The kernel reads and writes through the raw addresses given, on the
    /// device, after this call returns:
    ///
    /// 1. `src` must be a device-accessible address (device, managed or
    ///    mapped pinned memory of this GPU's context) of at least
    ///    `params.len()` readable bytes, and `dst` of at least `params.len()`
    ///    writable `f32`s, and both must stay allocated until the kernel has
    ///    finished on `stream` (synchronise it or wait for an event).
    /// 2. The two ranges must not overlap, and until the kernel has finished
    ///    nothing else (host code or other streams) may write `src` or read
    ///    or write `dst`. A [`Region`](crate::memory::Region) does not know
    ///    about this launch: synchronise `stream` before taking a host view of
    ///    the memory.
    /// 3. On a GPU without `concurrentManagedAccess`, the host must not touch
    ///    any managed memory while the kernel may run (the access faults).
    pub unsafe fn launch(&self, stream: &CudaStream, params: &PreprocessParams, src: u64, dst: u64) -> Result<()> {
        self.kernel.check_stream(stream)?;
        check_ptr("preprocess source (u8)", src, 1)?;
        check_ptr("preprocess destination (f32)", dst, 4)?;
        // Lossless casts: PreprocessParams::new bounds h·w·c by i32::MAX.
        let (pixels, channels) = (params.pixels() as i32, params.channels() as i32);
        let blocks = (params.pixels() as u32).div_ceil(THREADS);
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut args = stream.launch_builder(&self.kernel.func);
        args.arg(&src).arg(&dst).arg(&pixels).arg(&channels);
        // All four of each (unused channels hold 0.0 and are never read).
        for v in params.mean.iter().chain(&params.inv_std) {
            args.arg(v);
        }
        // SAFETY: the arguments match the kernel's signature (const u8*, f32*,
        // int pixels, int channels, 4 × float mean, 4 × float inv_std), all
        // pushed by reference to locals that outlive this call (cuLaunchKernel
        // copies them). The kernel touches src[0 .. pixels·channels) and
        // dst[0 .. pixels·channels) only; that these are valid, unaliased and
        // alive until the kernel ends is the caller's contract (# Safety 1–3).
        unsafe { args.launch(cfg) }.map_err(Error::driver("cuLaunchKernel (uminfer_preprocess_u8_hwc_f32_nchw)"))?;
        Ok(())
    }
}

/// The staging kernel (`uminfer_stage_copy`) loaded on one GPU: copies a
/// request's input from host memory the GPU can read (host-resident managed,
/// mapped pinned) into a device buffer, reading each byte over the bus once.
#[derive(Debug, Clone)]
pub struct Stage {
    kernel: Loaded,
}

impl Stage {
    /// Name of the kernel's entry point in `kernels/stage.cu`.
    pub const ENTRY: &'static str = "uminfer_stage_copy";

    /// Loads the kernel into `gpu`'s context (compiling it with NVRTC on first
    /// use in the process when the build had no nvcc).
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self { kernel: Loaded::new(gpu, "stage", Self::ENTRY)? })
    }

    /// Queues the copy of `bytes` bytes from `src` to `dst` on `stream`.
    ///
    /// Errors: a null or not 16-byte aligned address, a stream of another
    /// context, or the driver refusing the launch.
    ///
    /// # Safety
    ///
    /// As [`Preprocess::launch`]: `src` must be a device-accessible address of
    /// at least `bytes` readable bytes and `dst` of at least `bytes` writable
    /// bytes, not overlapping, both allocated until the kernel has finished on
    /// `stream`, and nothing else may write `src` or touch `dst` until then.
    pub unsafe fn launch(&self, stream: &CudaStream, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.kernel.check_stream(stream)?;
        check_ptr("staging source", src, 16)?;
        check_ptr("staging destination", dst, 16)?;
        let chunks = (bytes / 16) as i64;
        let tail = (bytes % 16) as i32;
        let blocks = u32::try_from((bytes / 16).div_ceil(THREADS as usize).max(1))
            .map_err(|_| Error::Argument(format!("staging copy of {bytes} bytes: too large for one launch")))?;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut args = stream.launch_builder(&self.kernel.func);
        args.arg(&src).arg(&dst).arg(&chunks).arg(&tail);
        // SAFETY: the arguments match the kernel's signature (const Chunk*,
        // Chunk*, long long chunks, int tail), pushed by reference to locals
        // that outlive this call. The kernel touches src[0 .. bytes) and
        // dst[0 .. bytes) only (chunks·16 + tail = bytes); that these are
        // valid, unaliased and alive until it ends is the caller's contract.
        unsafe { args.launch(cfg) }.map_err(Error::driver("cuLaunchKernel (uminfer_stage_copy)"))?;
        Ok(())
    }
}

/// The softmax + top-k kernel (`uminfer_softmax_topk`) loaded on one GPU, as
/// [`reference::softmax_topk`](super::reference::softmax_topk).
#[derive(Debug, Clone)]
pub struct Postprocess {
    kernel: Loaded,
}

impl Postprocess {
    /// Name of the kernel's entry point in `kernels/postprocess.cu`.
    pub const ENTRY: &'static str = "uminfer_softmax_topk";

    /// Loads the kernel into `gpu`'s context (compiling it with NVRTC on first
    /// use in the process when the build had no nvcc).
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self { kernel: Loaded::new(gpu, "postprocess", Self::ENTRY)? })
    }

    /// Queues the kernel on `stream`, one block per row: reads
    /// `params.len()` floats at `logits`, writes `params.len()` probabilities
    /// at `probs`, `params.top_len()` floats at `top_values` and
    /// `params.top_len()` `i32` class indices at `top_indices`. With `k = 0`
    /// the last two are not touched and may be 0. Returns once queued.
    ///
    /// Errors: a null or misaligned (not 4-byte aligned) address, a stream of
    /// another context, or the driver refusing the launch.
    ///
    /// # Safety
    ///
    /// The kernel reads and writes through the raw addresses given, on the
    /// device, after this call returns:
    ///
    /// 1. Each address must be device-accessible (device, managed or mapped
    ///    pinned memory of this GPU's context) and hold at least the elements
    ///    named above (`logits` readable, the others writable), and stay
    ///    allocated until the kernel has finished on `stream`.
    /// 2. The four ranges must not overlap, and until the kernel has finished
    ///    nothing else (host code or other streams) may write `logits` or
    ///    read or write the outputs. A [`Region`](crate::memory::Region) does
    ///    not know about this launch: synchronise `stream` before taking a
    ///    host view of the memory.
    /// 3. On a GPU without `concurrentManagedAccess`, the host must not touch
    ///    any managed memory while the kernel may run (the access faults).
    pub unsafe fn launch(
        &self,
        stream: &CudaStream,
        params: &SoftmaxTopkParams,
        logits: u64,
        probs: u64,
        top_values: u64,
        top_indices: u64,
    ) -> Result<()> {
        self.kernel.check_stream(stream)?;
        check_ptr("softmax logits (f32)", logits, 4)?;
        check_ptr("softmax probabilities (f32)", probs, 4)?;
        if params.k() > 0 {
            check_ptr("top-k values (f32)", top_values, 4)?;
            check_ptr("top-k indices (i32)", top_indices, 4)?;
        }
        // Lossless casts: SoftmaxTopkParams::new bounds rows and classes by
        // i32::MAX, and k by MAX_TOP_K.
        let (classes, k) = (params.classes() as i32, params.k() as i32);
        let cfg = LaunchConfig { grid_dim: (params.rows() as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut args = stream.launch_builder(&self.kernel.func);
        args.arg(&logits).arg(&probs).arg(&top_values).arg(&top_indices).arg(&classes).arg(&k);
        // SAFETY: the arguments match the kernel's signature (const float*,
        // float*, float*, int*, int classes, int k), pushed by reference to
        // locals that outlive this call. Block r touches row r only: logits
        // and probs [r·classes, (r+1)·classes), top values and indices
        // [r·k, (r+1)·k), r < rows; that these are valid, unaliased and alive
        // until the kernel ends is the caller's contract (# Safety 1–3).
        unsafe { args.launch(cfg) }.map_err(Error::driver("cuLaunchKernel (uminfer_softmax_topk)"))?;
        Ok(())
    }
}
