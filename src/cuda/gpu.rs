//! [`Gpu`]: one CUDA device's primary context, opened without panicking.

use crate::cuda::driver;
use crate::error::{Error, Result};
use cudarc::driver::sys::CUdevice_attribute as A;
use cudarc::driver::{CudaContext, CudaStream};
use std::sync::Arc;

/// A CUDA device opened for use: its primary context (shared with libtorch)
/// and the unified-memory attributes that change how host access must behave.
#[derive(Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    concurrent_managed_access: bool,
    managed_memory: bool,
    can_map_host_memory: bool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal())
            .field("concurrent_managed_access", &self.concurrent_managed_access)
            .finish()
    }
}

impl Gpu {
    /// Opens device `ordinal`: loads the driver first (an error, never a panic, without one).
    pub fn open(ordinal: usize) -> Result<Self> {
        driver::ensure_driver()?;
        let count = driver::device_count()?;
        if ordinal as i64 >= count as i64 {
            return Err(Error::NoSuchDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(Error::driver("cuDevicePrimaryCtxRetain"))?;
        let attr = |a| ctx.attribute(a).map_err(Error::driver("cuDeviceGetAttribute"));
        Ok(Self {
            concurrent_managed_access: attr(A::CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS)? != 0,
            managed_memory: attr(A::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY)? != 0,
            can_map_host_memory: attr(A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY)? != 0,
            ctx,
        })
    }

    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// The cudarc context (the device's primary context, the one libtorch uses).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// A new non-blocking stream on this device.
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.ctx.new_stream().map_err(Error::driver("cuStreamCreate"))
    }

    /// `concurrentManagedAccess`: whether the host may touch managed memory while kernels run.
    pub fn concurrent_managed_access(&self) -> bool {
        self.concurrent_managed_access
    }

    /// Whether the device supports managed memory at all.
    pub fn managed_memory(&self) -> bool {
        self.managed_memory
    }

    /// Whether the device can map pinned host memory.
    pub fn can_map_host_memory(&self) -> bool {
        self.can_map_host_memory
    }

    /// Makes this context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(Error::driver("cuCtxSetCurrent"))
    }

    /// Waits for all work on the device's context (`cuCtxSynchronize`).
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.synchronize().map_err(Error::driver("cuCtxSynchronize"))
    }

    /// Free and total device memory in bytes (`cuMemGetInfo`).
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        cudarc::driver::result::mem_get_info().map_err(Error::driver("cuMemGetInfo"))
    }
}
