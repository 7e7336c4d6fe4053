//! [`RawRegion`]: one untyped allocation of any kind, and how it is freed.
//!
//! Freeing device-visible memory first waits for the device (`cuCtxSynchronize`)
//! so that no queued kernel can still be using it. `Drop` never panics: errors
//! are logged and kept for [`take_deferred_errors`](super::take_deferred_errors).

use super::{record_deferred_error, RegionKind};
use crate::cuda::Gpu;
use crate::error::{Error, Result};
use cudarc::driver::{result, sys};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

/// Every region starts on at least this boundary (CUDA and AVX-512 friendly).
pub const REGION_ALIGN: usize = 256;

pub(crate) enum Backing {
    /// `mmap`ed anonymous pages, `mlock`ed when the limit allowed.
    Host { map_bytes: usize, locked: bool },
    /// `cuMemAllocManaged`.
    Managed { gpu: Gpu },
    /// `cuMemHostAlloc(DEVICEMAP | PORTABLE)` and its device address.
    PinnedMapped { gpu: Gpu, device_ptr: u64 },
}

/// One allocation: address, size, kind. Typed access goes through `Region<T>`.
pub struct RawRegion {
    ptr: NonNull<u8>,
    bytes: usize,
    backing: Backing,
    /// GPU work may have been queued that touches this memory.
    device_dirty: AtomicBool,
}

// SAFETY (Send): a RawRegion exclusively owns its allocation. Host pages and
// CUDA managed / pinned allocations are process-wide (not tied to the thread
// that made them); freeing binds the owning context first, on any thread.
unsafe impl Send for RawRegion {}
// SAFETY (Sync): through `&RawRegion` only metadata is read and the atomic
// dirty flag is updated; element access is mediated by `Region<T>` borrows.
unsafe impl Sync for RawRegion {}

/// Rejects an empty allocation (every region holds at least one element).
pub(crate) fn check_nonzero(bytes: usize) -> Result<()> {
    if bytes == 0 {
        return Err(Error::RegionSize("a region must hold at least one element".into()));
    }
    Ok(())
}

fn check_align(ptr: NonNull<u8>) -> Result<()> {
    if !(ptr.as_ptr() as usize).is_multiple_of(REGION_ALIGN) {
        return Err(Error::RegionSize(format!("allocation at {:p} is not {REGION_ALIGN}-byte aligned", ptr.as_ptr())));
    }
    Ok(())
}

impl RawRegion {
    /// Page-aligned host memory, locked in RAM when `RLIMIT_MEMLOCK` allows
    /// (otherwise a warning, and the memory stays pageable).
    pub fn host(bytes: usize) -> Result<Self> {
        check_nonzero(bytes)?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let map_bytes = bytes.checked_next_multiple_of(page).ok_or_else(|| Error::RegionSize(format!("{bytes} bytes overflows")))?;
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked for MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), map_bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Os { call: "mmap", source: std::io::Error::last_os_error() });
        }
        // SAFETY: mmap succeeded, so `p` is non-null.
        let ptr = unsafe { NonNull::new_unchecked(p.cast::<u8>()) };
        // SAFETY: [p, p + map_bytes) is the mapping just created.
        let locked = unsafe { libc::mlock(p, map_bytes) } == 0;
        if !locked {
            tracing::warn!(
                "mlock of {map_bytes} bytes refused ({}): host region stays pageable; raise `ulimit -l` to lock it",
                std::io::Error::last_os_error()
            );
        }
        let region = Self { ptr, bytes, backing: Backing::Host { map_bytes, locked }, device_dirty: AtomicBool::new(false) };
        check_align(ptr)?;
        Ok(region)
    }

    /// Managed memory on `gpu`, attached globally (`attach_host`: to the host),
    /// zero-filled. Refused when `bytes` exceeds the free memory minus `headroom`.
    pub fn managed(gpu: &Gpu, bytes: usize, attach_host: bool, headroom: usize) -> Result<Self> {
        check_nonzero(bytes)?;
        if !gpu.managed_memory() {
            return Err(Error::Unsupported { device: gpu.ordinal(), what: "managed memory" });
        }
        let (free, _) = gpu.memory_info()?;
        if bytes > free.saturating_sub(headroom) {
            return Err(Error::Oversubscription { device: gpu.ordinal(), requested: bytes, free, headroom });
        }
        gpu.bind()?;
        let flag = if attach_host { sys::CUmemAttach_flags::CU_MEM_ATTACH_HOST } else { sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL };
        // SAFETY: the context is bound and `bytes` > 0; the memory is zeroed
        // below before any typed access.
        let dptr = unsafe { result::malloc_managed(bytes, flag) }.map_err(Error::driver("cuMemAllocManaged"))?;
        let region = Self {
            // SAFETY: cuMemAllocManaged succeeded, so the address is non-null.
            ptr: unsafe { NonNull::new_unchecked(dptr as usize as *mut u8) },
            bytes,
            backing: Backing::Managed { gpu: gpu.clone() },
            device_dirty: AtomicBool::new(true),
        };
        // SAFETY: `dptr` is a managed allocation of exactly `bytes` bytes.
        unsafe { result::memset_d8_sync(dptr, 0, bytes) }.map_err(Error::driver("cuMemsetD8"))?;
        check_align(region.ptr)?;
        Ok(region)
    }

    /// Pinned host memory mapped into `gpu`'s address space, zero-filled.
    pub fn pinned_mapped(gpu: &Gpu, bytes: usize) -> Result<Self> {
        check_nonzero(bytes)?;
        if !gpu.can_map_host_memory() {
            return Err(Error::Unsupported { device: gpu.ordinal(), what: "mapping pinned host memory" });
        }
        gpu.bind()?;
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: the context is bound and `bytes` > 0; zeroed below.
        let host = unsafe { result::malloc_host(bytes, flags) }.map_err(Error::driver("cuMemHostAlloc"))?;
        let mut device_ptr = 0u64;
        // SAFETY: `host` was returned by cuMemHostAlloc with DEVICEMAP; flags must be 0.
        let got = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device_ptr, host, 0) }.result();
        let region = Self {
            // SAFETY: cuMemHostAlloc succeeded, so `host` is non-null.
            ptr: unsafe { NonNull::new_unchecked(host.cast::<u8>()) },
            bytes,
            backing: Backing::PinnedMapped { gpu: gpu.clone(), device_ptr },
            device_dirty: AtomicBool::new(false),
        };
        got.map_err(Error::driver("cuMemHostGetDevicePointer"))?;
        // SAFETY: `host` points to `bytes` writable bytes owned by `region`.
        unsafe { std::ptr::write_bytes(region.ptr.as_ptr(), 0, bytes) };
        check_align(region.ptr)?;
        Ok(region)
    }

    /// Host address of the first byte (for managed memory, also the device address).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The kind of memory.
    pub fn kind(&self) -> RegionKind {
        match self.backing {
            Backing::Host { .. } => RegionKind::Host,
            Backing::Managed { .. } => RegionKind::Managed,
            Backing::PinnedMapped { .. } => RegionKind::PinnedMapped,
        }
    }

    /// The GPU this region belongs to (`None` for host regions).
    pub fn gpu(&self) -> Option<&Gpu> {
        match &self.backing {
            Backing::Host { .. } => None,
            Backing::Managed { gpu } | Backing::PinnedMapped { gpu, .. } => Some(gpu),
        }
    }

    /// Address the GPU uses for this memory (`None` for host regions).
    pub fn device_ptr(&self) -> Option<u64> {
        match &self.backing {
            Backing::Host { .. } => None,
            Backing::Managed { .. } => Some(self.ptr.as_ptr() as u64),
            Backing::PinnedMapped { device_ptr, .. } => Some(*device_ptr),
        }
    }

    /// Whether host pages are locked in RAM (`None` for device-visible kinds, which the driver pins).
    pub fn host_locked(&self) -> Option<bool> {
        match self.backing {
            Backing::Host { locked, .. } => Some(locked),
            _ => None,
        }
    }

    /// Records that GPU work may now touch this memory.
    pub(crate) fn mark_device_dirty(&self) {
        if self.gpu().is_some() {
            self.device_dirty.store(true, Ordering::Release);
        }
    }

    /// Makes host access safe: waits for the device when GPU work may touch
    /// this memory, and always on devices without `concurrentManagedAccess`
    /// for managed memory (there, any running kernel makes host access fault).
    pub(crate) fn prepare_host_access(&self) -> Result<()> {
        let Some(gpu) = self.gpu() else { return Ok(()) };
        let must = self.device_dirty.load(Ordering::Acquire)
            || (self.kind() == RegionKind::Managed && !gpu.concurrent_managed_access());
        if must {
            gpu.bind()?;
            gpu.synchronize()?;
            self.device_dirty.store(false, Ordering::Release);
        }
        Ok(())
    }
}

impl Drop for RawRegion {
    fn drop(&mut self) {
        let p = self.ptr.as_ptr();
        let outcome: Result<()> = match &self.backing {
            Backing::Host { map_bytes, .. } => {
                // SAFETY: [p, p + map_bytes) is our own mapping, unmapped once.
                if unsafe { libc::munmap(p.cast(), *map_bytes) } == 0 {
                    Ok(())
                } else {
                    Err(Error::Os { call: "munmap", source: std::io::Error::last_os_error() })
                }
            }
            Backing::Managed { gpu } => gpu.bind().and_then(|_| gpu.synchronize()).and_then(|_| {
                // SAFETY: `p` came from cuMemAllocManaged and the device is idle
                // (synchronised above), so no pending work uses it; freed once.
                unsafe { result::memory_free(p as u64) }.map_err(Error::driver("cuMemFree"))
            }),
            Backing::PinnedMapped { gpu, .. } => gpu.bind().and_then(|_| gpu.synchronize()).and_then(|_| {
                // SAFETY: `p` came from cuMemHostAlloc and the device is idle; freed once.
                unsafe { result::free_host(p.cast()) }.map_err(Error::driver("cuMemFreeHost"))
            }),
        };
        if let Err(e) = outcome {
            record_deferred_error(format!("freeing a {} region of {} bytes: {e}", self.kind(), self.bytes));
        }
    }
}
