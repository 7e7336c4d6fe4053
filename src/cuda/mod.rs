//! CUDA through cudarc, loaded at run time (nothing CUDA is needed to build).
//!
//! | module | holds |
//! |---|---|
//! | [`driver`] | loading `libcuda` without panicking, driver version, device attributes |
//! | [`gpu`] | [`Gpu`]: an opened device (primary context, unified-memory attributes) |
//! | [`nvrtc`] | compiling `kernels/*.cu` to PTX at run time (works without a GPU) |
//! | [`smoke`] | the managed-memory round trip the doctor runs on each GPU |

pub mod driver;
pub mod gpu;
pub mod nvrtc;
pub mod smoke;

pub use gpu::Gpu;
