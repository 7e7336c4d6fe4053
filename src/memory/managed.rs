//! Managed-memory controls on a [`Region`]: attach mode, prefetch, advice.
//! Each wraps one driver call (links to NVIDIA's documentation inline).

use super::element::Element;
use super::raw::RawRegion;
use super::region::Region;
use super::RegionKind;
use crate::error::{Error, Result};
use cudarc::driver::{result, sys, CudaStream};

/// Stream association of managed memory (`cuStreamAttachMemAsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Any stream on any device may access it.
    Global,
    /// Only the host; kernels must not touch it until re-attached.
    Host,
    /// Only the given stream (and the host when that stream is idle).
    SingleStream,
}

/// Where to prefetch managed memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// The region's GPU.
    Device,
    /// Host memory.
    Host,
}

/// Usage advice for managed memory (`cuMemAdvise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// Keep the pages on this location.
    PreferredLocation(Location),
    /// Mostly read: the driver may keep read-only copies on several processors.
    ReadMostly,
    /// The region's GPU accesses it: map it there to avoid faults.
    AccessedByDevice,
}

fn location(region_device: usize, to: Location) -> sys::CUmemLocation {
    match to {
        Location::Device => sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: region_device as i32 },
        Location::Host => sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST, id: 0 },
    }
}

/// `cuStreamAttachMemAsync` over a whole managed allocation.
///
/// # Safety
/// `dptr` must be the start of a live managed allocation and `stream` a live
/// stream of the bound context.
pub(crate) unsafe fn attach_raw(dptr: u64, stream: sys::CUstream, mode: Attach) -> Result<()> {
    let flags = match mode {
        Attach::Global => sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL,
        Attach::Host => sys::CUmemAttach_flags::CU_MEM_ATTACH_HOST,
        Attach::SingleStream => sys::CUmemAttach_flags::CU_MEM_ATTACH_SINGLE,
    };
    // SAFETY: the caller guarantees the allocation and stream (length 0 = whole allocation).
    unsafe { result::stream::attach_mem_async(stream, dptr, 0, flags) }
        .map_err(Error::driver("cuStreamAttachMemAsync"))
}

/// `cuMemPrefetchAsync` of `bytes` at `dptr` to `to` (device `ordinal` or the host).
///
/// # Safety
/// `[dptr, dptr + bytes)` must lie in a live managed allocation and `stream`
/// must be a live stream of the bound context.
pub(crate) unsafe fn prefetch_raw(dptr: u64, bytes: usize, ordinal: usize, to: Location, stream: sys::CUstream) -> Result<()> {
    // SAFETY: the caller guarantees range and stream.
    unsafe { result::mem_prefetch_async(dptr, bytes, location(ordinal, to), stream) }
        .map_err(Error::driver("cuMemPrefetchAsync"))
}

impl<T: Element> Region<T> {
    fn managed_gpu(&self, what: &'static str) -> Result<&crate::cuda::Gpu> {
        match (self.kind(), self.gpu()) {
            (RegionKind::Managed, Some(g)) => Ok(g),
            _ => Err(Error::Shape(format!("{what} applies to managed regions only; this region is {}", self.kind()))),
        }
    }

    /// Associates the region with `stream` per `mode`
    /// ([cuStreamAttachMemAsync](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__STREAM.html)).
    /// Not capturable in a CUDA graph: do it before capture.
    pub fn attach(&mut self, stream: &CudaStream, mode: Attach) -> Result<()> {
        let gpu = self.managed_gpu("attach")?;
        gpu.bind()?;
        // SAFETY: the pointer is this live managed allocation's start, the
        // stream belongs to the bound context, and `&mut self` excludes
        // concurrent host views.
        unsafe { attach_raw(self.device_ptr().unwrap_or(0), stream.cu_stream(), mode) }?;
        self.raw().mark_device_dirty();
        Ok(())
    }

    /// Starts migrating the pages to `to` on `stream`
    /// ([cuMemPrefetchAsync](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__UNIFIED.html)).
    pub fn prefetch(&mut self, to: Location, stream: &CudaStream) -> Result<()> {
        let gpu = self.managed_gpu("prefetch")?;
        gpu.bind()?;
        // SAFETY: the range is exactly this managed allocation's elements; the
        // stream belongs to the bound context; `&mut self` excludes host views.
        unsafe { prefetch_raw(self.device_ptr().unwrap_or(0), self.byte_len(), gpu.ordinal(), to, stream.cu_stream()) }?;
        self.raw().mark_device_dirty();
        Ok(())
    }

    /// Gives the driver usage advice for the whole region
    /// ([cuMemAdvise](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__UNIFIED.html)).
    pub fn advise(&mut self, advice: Advice) -> Result<()> {
        self.managed_gpu("advise")?;
        advise_raw(self.raw(), self.byte_len(), advice)
    }
}

/// [`Region::advise`] over the first `bytes` of a raw managed allocation.
pub(crate) fn advise_raw(raw: &RawRegion, bytes: usize, advice: Advice) -> Result<()> {
    let gpu = match (raw.kind(), raw.gpu()) {
        (RegionKind::Managed, Some(g)) => g,
        _ => return Err(Error::Shape(format!("advise applies to managed regions only; this region is {}", raw.kind()))),
    };
    if bytes > raw.bytes() {
        return Err(Error::RegionSize(format!("advice over {bytes} bytes of a {}-byte region", raw.bytes())));
    }
    gpu.bind()?;
    let dev = gpu.ordinal();
    let (a, loc) = match advice {
        Advice::PreferredLocation(to) => (sys::CUmem_advise::CU_MEM_ADVISE_SET_PREFERRED_LOCATION, location(dev, to)),
        Advice::ReadMostly => (sys::CUmem_advise::CU_MEM_ADVISE_SET_READ_MOSTLY, location(dev, Location::Device)),
        Advice::AccessedByDevice => (sys::CUmem_advise::CU_MEM_ADVISE_SET_ACCESSED_BY, location(dev, Location::Device)),
    };
    // SAFETY: the range lies in this live managed allocation (checked above).
    unsafe { result::mem_advise(raw.device_ptr().unwrap_or(0), bytes, a, loc) }.map_err(Error::driver("cuMemAdvise"))
}
