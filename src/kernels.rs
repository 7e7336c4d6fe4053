//! The CUDA kernels of `kernels/*.cu`, embedded in the binary by `build.rs`
//! (each file becomes one entry; adding a file is enough).

use crate::error::{Error, Result};

/// One kernel source file.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File stem (`smoke` for `kernels/smoke.cu`).
    pub name: &'static str,
    /// CUDA C++ source text.
    pub source: &'static str,
    /// PTX compiled by `nvcc` at build time, when nvcc was available.
    pub prebuilt_ptx: Option<&'static str>,
}

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// The kernel whose file stem is `name`.
pub fn by_name(name: &str) -> Result<&'static KernelSource> {
    KERNELS.iter().find(|k| k.name == name).ok_or_else(|| {
        Error::UnknownKernel(name.to_string(), KERNELS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "))
    })
}
