//! Run-time compilation of `kernels/*.cu` with NVRTC (no GPU needed).
//!
//! NVRTC (`libnvrtc.so.13`) is found through the binary's RUNPATH (torch's
//! `nvidia/cu13/lib`), but it `dlopen`s `libnvrtc-builtins.so.13.x` itself,
//! and that nested lookup does not see the executable's RUNPATH. So before the
//! first compile we load the builtins by absolute path from the directory
//! NVRTC itself was loaded from (read from `/proc/self/maps`).

use crate::error::{Error, Result};
use crate::loaded_libs;
use crate::kernels::{KernelSource, KERNELS};
use cudarc::nvrtc::{sys, CompileOptions, Ptx};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Virtual architecture the kernels are compiled for: PTX for compute_75 is
/// JIT-compiled by the driver for any newer GPU.
pub const KERNEL_ARCH: &str = "compute_75";

/// Where NVRTC and its builtins were loaded from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NvrtcInfo {
    /// NVRTC version `(major, minor)`.
    pub version: (i32, i32),
    /// Real path of the loaded `libnvrtc`.
    pub library: Option<PathBuf>,
    /// Real path of the builtins library loaded for it.
    pub builtins: Option<PathBuf>,
}

/// Loads NVRTC and its builtins once per process.
pub fn load() -> Result<NvrtcInfo> {
    static LOADED: OnceLock<std::result::Result<NvrtcInfo, String>> = OnceLock::new();
    LOADED.get_or_init(load_uncached).clone().map_err(|detail| Error::Nvrtc { kernel: "(loading NVRTC)".into(), detail })
}

fn load_uncached() -> std::result::Result<NvrtcInfo, String> {
    // SAFETY: only tries to dlopen candidate names; no preconditions.
    if !unsafe { sys::is_culib_present() } {
        return Err("libnvrtc.so.13 not found: it ships in the pip package nvidia-cuda-nvrtc (a torch dependency); \
                    run `bash ci/setup`, or put site-packages/nvidia/cu13/lib on LD_LIBRARY_PATH"
            .into());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is present (checked above); both out pointers are valid.
    let status = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {status:?}"));
    }
    let library = loaded_libs::find("libnvrtc.so");
    let mut builtins = None;
    if let Some(dir) = library.as_ref().and_then(|p| p.parent()) {
        let candidate = dir.join(format!("libnvrtc-builtins.so.{major}.{minor}"));
        if candidate.exists() {
            let c_path = std::ffi::CString::new(candidate.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("path {} contains a NUL byte", candidate.display()))?;
            // SAFETY: `c_path` is a valid NUL-terminated path. Loading runs the
            // library's initialisers; it is NVIDIA's builtins library, the one
            // NVRTC would load itself. The handle is never closed (it must stay
            // loaded for the life of the process), so it is not kept.
            let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                return Err(format!("dlopen {} failed: {}", candidate.display(), loaded_libs::dlerror()));
            }
            builtins = Some(candidate);
        }
    }
    Ok(NvrtcInfo { version: (major, minor), library, builtins })
}

/// Compiles one kernel source to PTX for [`KERNEL_ARCH`].
pub fn compile(kernel: &KernelSource) -> Result<Ptx> {
    load()?;
    let opts = CompileOptions { arch: Some(KERNEL_ARCH), name: Some(format!("{}.cu", kernel.name)), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(kernel.source, opts)
        .map_err(|e| Error::Nvrtc { kernel: kernel.name.to_string(), detail: compile_error_text(&e) })
}

/// How a kernel's PTX was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PtxOrigin {
    /// Compiled by nvcc when the crate was built.
    Nvcc,
    /// Compiled by NVRTC at run time (then cached for the process).
    Nvrtc,
}

/// The PTX of `kernel`: nvcc's from build time if present, else NVRTC's,
/// compiled once per process and cached.
pub fn ptx(kernel: &'static KernelSource) -> Result<(std::sync::Arc<Ptx>, PtxOrigin)> {
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use std::sync::Arc;
    static CACHE: Mutex<Option<HashMap<&'static str, Arc<Ptx>>>> = Mutex::new(None);
    if let Some(src) = kernel.prebuilt_ptx {
        return Ok((Arc::new(Ptx::from_src(src)), PtxOrigin::Nvcc));
    }
    if let Some(p) = CACHE.lock().get_or_insert_with(HashMap::new).get(kernel.name) {
        return Ok((p.clone(), PtxOrigin::Nvrtc));
    }
    let compiled = Arc::new(compile(kernel)?);
    CACHE.lock().get_or_insert_with(HashMap::new).insert(kernel.name, compiled.clone());
    Ok((compiled, PtxOrigin::Nvrtc))
}

/// Loads function `entry` of `kernels/<file>.cu` into `ctx` (PTX from nvcc
/// or NVRTC, cached per process; `cuModuleLoadData`, `cuModuleGetFunction`).
pub fn load_function(ctx: &std::sync::Arc<cudarc::driver::CudaContext>, file: &str, entry: &str) -> Result<cudarc::driver::CudaFunction> {
    let (ptx, _) = ptx(crate::kernels::by_name(file)?)?;
    let module = ctx.load_module((*ptx).clone()).map_err(Error::driver("cuModuleLoadData"))?;
    module.load_function(entry).map_err(Error::driver("cuModuleGetFunction"))
}

/// Compiles every kernel in `kernels/`, returning each name with its outcome.
pub fn compile_all() -> Vec<(&'static str, Result<Ptx>)> {
    KERNELS.iter().map(|k| (k.name, compile(k))).collect()
}

fn compile_error_text(e: &cudarc::nvrtc::CompileError) -> String {
    match e {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => {
            format!("{nvrtc:?}: {}", log.to_string_lossy().trim())
        }
        other => format!("{other:?}"),
    }
}
