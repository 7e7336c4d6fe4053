//! The CUDA driver (`libcuda.so`), loaded at run time by cudarc.
//!
//! cudarc panics on the first driver call when `libcuda.so` is absent, so
//! every entry point here first calls [`ensure_driver`], which checks that the
//! library loads and initialises it, and turns absence into [`Error::NoDriver`].

use crate::error::{Error, Result};
use cudarc::driver::{result, sys};
use std::sync::OnceLock;

/// Loads `libcuda.so` and runs `cuInit(0)` once per process; the outcome is cached.
pub fn ensure_driver() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let outcome = INIT.get_or_init(|| {
        // SAFETY: `is_culib_present` only tries to dlopen the candidate library
        // names; it has no preconditions.
        if !unsafe { sys::is_culib_present() } {
            return Err("libcuda.so (or libcuda.so.1) not found by the dynamic loader".into());
        }
        result::init().map_err(|e| format!("cuInit failed: {e}"))
    });
    outcome.clone().map_err(|detail| Error::NoDriver { detail })
}

/// Driver API version (`cuDriverGetVersion`): the newest CUDA version the
/// installed driver supports, as `major * 1000 + minor * 10`.
pub fn driver_version() -> Result<i32> {
    ensure_driver()?;
    let mut v = 0;
    // SAFETY: the driver is loaded (ensure_driver); `v` is a valid out pointer.
    unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(Error::driver("cuDriverGetVersion"))?;
    Ok(v)
}

/// Number of CUDA devices the driver exposes (after `CUDA_VISIBLE_DEVICES`).
pub fn device_count() -> Result<i32> {
    ensure_driver()?;
    result::device::get_count().map_err(Error::driver("cuDeviceGetCount"))
}

/// A device handle for `ordinal`.
pub fn device(ordinal: i32) -> Result<sys::CUdevice> {
    ensure_driver()?;
    result::device::get(ordinal).map_err(Error::driver("cuDeviceGet"))
}

/// One integer attribute of a device (`cuDeviceGetAttribute`).
pub fn attribute(dev: sys::CUdevice, attr: sys::CUdevice_attribute) -> Result<i32> {
    // SAFETY: `dev` came from `device()` (driver loaded and initialised); the
    // attribute enum value is one of the driver's own.
    unsafe { result::device::get_attribute(dev, attr) }.map_err(Error::driver("cuDeviceGetAttribute"))
}

/// Device name (`cuDeviceGetName`).
pub fn name(dev: sys::CUdevice) -> Result<String> {
    result::device::get_name(dev).map_err(Error::driver("cuDeviceGetName"))
}

/// Device UUID formatted as `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as nvidia-smi prints it.
pub fn uuid(dev: sys::CUdevice) -> Result<String> {
    let u = result::device::get_uuid(dev).map_err(Error::driver("cuDeviceGetUuid"))?;
    let b: Vec<u8> = u.bytes.iter().map(|&c| c as u8).collect();
    let hex = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    Ok(format!("GPU-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16)))
}

/// Total memory of a device in bytes (`cuDeviceTotalMem`).
pub fn total_memory(dev: sys::CUdevice) -> Result<usize> {
    // SAFETY: `dev` is a valid device handle from `device()`.
    unsafe { result::device::total_mem(dev) }.map_err(Error::driver("cuDeviceTotalMem"))
}

/// Free and total memory of device `ordinal` in bytes, read in its primary context.
pub fn memory_info(ordinal: usize) -> Result<(usize, usize)> {
    ensure_driver()?;
    let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(Error::driver("cuDevicePrimaryCtxRetain"))?;
    ctx.bind_to_thread().map_err(Error::driver("cuCtxSetCurrent"))?;
    result::mem_get_info().map_err(Error::driver("cuMemGetInfo"))
}

/// Formats a driver/runtime version number such as `13000` as `13.0`.
pub fn format_version(v: i64) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}
