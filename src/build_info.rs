//! Facts fixed when this crate was built: versions, commit, ABI, CUDA target.

use serde::Serialize;

/// What this binary was built from and against.
#[derive(Debug, Clone, Serialize)]
pub struct BuildInfo {
    /// `CARGO_PKG_VERSION` of uminfer.
    pub crate_version: &'static str,
    /// Short git commit of the build, `unknown` outside a git checkout.
    pub git_commit: &'static str,
    /// `torch.__version__` of the libtorch linked at build time (e.g. `2.11.0+cu130`).
    pub libtorch_version: &'static str,
    /// `_GLIBCXX_USE_CXX11_ABI` the shim was compiled with.
    pub cxx11_abi: u8,
    /// libtorch `lib` directory linked at build time (also in the RUNPATH).
    pub libtorch_lib: &'static str,
    /// CUDA version that the driver bindings and kernels target (cudarc feature `cuda-13000`).
    pub cuda_target: &'static str,
    /// Lowest compute capability the kernels are compiled for.
    pub min_compute_capability: (i32, i32),
}

/// CUDA version targeted by the driver bindings and the kernels, as `major * 1000 + minor * 10`.
pub const CUDA_TARGET_VERSION: i32 = 13000;

/// Lowest compute capability supported by CUDA 13 and the torch 2.11 cu130 wheel (Turing).
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (7, 5);

/// The facts of this build.
pub fn build_info() -> BuildInfo {
    BuildInfo {
        crate_version: env!("CARGO_PKG_VERSION"),
        git_commit: env!("UMINFER_GIT_COMMIT"),
        libtorch_version: env!("UMINFER_LIBTORCH_VERSION"),
        cxx11_abi: if env!("UMINFER_TORCH_CXX11_ABI") == "1" { 1 } else { 0 },
        libtorch_lib: env!("UMINFER_LIBTORCH_LIB"),
        cuda_target: "13.0",
        min_compute_capability: MIN_COMPUTE_CAPABILITY,
    }
}
