//! [`Region<T>`]: a typed, zero-copy buffer seen by the host as a slice and by
//! libtorch as a tensor, but never both at once (the borrow checker enforces it).

use super::element::Element;
use super::raw::{check_nonzero, RawRegion};
use super::view::{HostView, HostViewMut, TensorView};
use super::RegionKind;
use crate::cuda::Gpu;
use crate::error::{Error, Result};
use std::marker::PhantomData;

/// Which address a tensor over a region uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TensorSide {
    /// The region's natural device: CPU for host regions, its GPU otherwise.
    Native,
    /// The host address, as a CPU tensor.
    Host,
}

/// Options of a managed allocation.
#[derive(Debug, Clone, Copy)]
pub struct ManagedOptions {
    /// Bytes that must stay free on the device after the allocation
    /// (oversubscription guard). Default 256 MiB.
    pub headroom_bytes: usize,
    /// Attach to the host at allocation (`CU_MEM_ATTACH_HOST`) instead of globally.
    pub attach_host: bool,
}

impl Default for ManagedOptions {
    fn default() -> Self {
        Self { headroom_bytes: 256 << 20, attach_host: false }
    }
}

/// `len` elements of `T` in memory of one [`RegionKind`].
///
/// - [`host_view`](Self::host_view) / [`host_view_mut`](Self::host_view_mut)
///   give `&[T]` / `&mut [T]`, after making host access safe (waiting for the
///   GPU when it may be using the memory).
/// - [`tensor`](Self::tensor) gives a `tch::Tensor` over the same bytes
///   (`from_blob`, no copy) that borrows the region mutably: no host view can
///   exist while it does, and it cannot outlive the region.
pub struct Region<T: Element> {
    raw: RawRegion,
    len: usize,
    _t: PhantomData<T>,
}

fn byte_size<T>(len: usize) -> Result<usize> {
    let bytes = len
        .checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| Error::RegionSize(format!("{len} elements of {} bytes overflow usize", std::mem::size_of::<T>())))?;
    check_nonzero(bytes)?;
    Ok(bytes)
}

impl<T: Element> Region<T> {
    /// Host memory (page-aligned, locked when allowed): the CPU-mode region.
    pub fn host(len: usize) -> Result<Self> {
        Ok(Self::from_raw_unchecked(RawRegion::host(byte_size::<T>(len)?)?, len))
    }

    /// CUDA managed memory on `gpu`.
    pub fn managed(gpu: &Gpu, len: usize, opts: ManagedOptions) -> Result<Self> {
        Ok(Self::from_raw_unchecked(RawRegion::managed(gpu, byte_size::<T>(len)?, opts.attach_host, opts.headroom_bytes)?, len))
    }

    /// Pinned host memory mapped into `gpu`'s address space.
    pub fn pinned_mapped(gpu: &Gpu, len: usize) -> Result<Self> {
        Ok(Self::from_raw_unchecked(RawRegion::pinned_mapped(gpu, byte_size::<T>(len)?)?, len))
    }

    /// Wraps a raw allocation of at least `len * size_of::<T>()` bytes.
    pub(crate) fn from_raw(raw: RawRegion, len: usize) -> Result<Self> {
        let need = byte_size::<T>(len)?;
        if raw.bytes() < need {
            return Err(Error::RegionSize(format!("{need} bytes needed, allocation holds {}", raw.bytes())));
        }
        Ok(Self::from_raw_unchecked(raw, len))
    }

    fn from_raw_unchecked(raw: RawRegion, len: usize) -> Self {
        Self { raw, len, _t: PhantomData }
    }

    pub(crate) fn into_raw(self) -> RawRegion {
        self.raw
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions hold at least one element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes of the elements.
    pub fn byte_len(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// Kind of memory.
    pub fn kind(&self) -> RegionKind {
        self.raw.kind()
    }

    /// Host address of element 0 (the same bytes the tensor view sees).
    pub fn as_ptr(&self) -> *const T {
        self.raw.as_ptr().cast()
    }

    /// Address the GPU uses (`None` for host regions).
    pub fn device_ptr(&self) -> Option<u64> {
        self.raw.device_ptr()
    }

    /// The GPU this region belongs to (`None` for host regions).
    pub fn gpu(&self) -> Option<&Gpu> {
        self.raw.gpu()
    }

    /// Whether a host region's pages are locked in RAM.
    pub fn host_locked(&self) -> Option<bool> {
        self.raw.host_locked()
    }

    pub(crate) fn raw(&self) -> &RawRegion {
        &self.raw
    }

    /// The elements as a shared slice, once no GPU work can touch them.
    pub fn host_view(&self) -> Result<HostView<'_, T>> {
        self.raw.prepare_host_access()?;
        // SAFETY: GPU access is finished (prepare_host_access), and `&self`
        // forbids a live tensor view or mutable host view meanwhile.
        Ok(HostView::new(unsafe { self.host_slice_unchecked() }))
    }

    /// The elements as a mutable slice, once no GPU work can touch them.
    pub fn host_view_mut(&mut self) -> Result<HostViewMut<'_, T>> {
        self.raw.prepare_host_access()?;
        // SAFETY: GPU access is finished (prepare_host_access), and `&mut self`
        // makes this the only view.
        Ok(HostViewMut::new(unsafe { self.host_slice_mut_unchecked() }))
    }

    /// A contiguous tensor of `shape` over the region, with `T`'s dtype, on
    /// the CPU for host regions and on `Cuda(ordinal)` otherwise. No copy.
    pub fn tensor(&mut self, shape: &[i64]) -> Result<TensorView<'_>> {
        self.tensor_as(shape, T::KIND)
    }

    /// Like [`tensor`](Self::tensor), checking that `kind` is the region's dtype.
    pub fn tensor_as(&mut self, shape: &[i64], kind: tch::Kind) -> Result<TensorView<'_>> {
        if kind != T::KIND {
            return Err(Error::Shape(format!(
                "dtype {kind:?} requested but the region holds {} ({:?}); use a region of the model's dtype or convert the data",
                T::NAME,
                T::KIND
            )));
        }
        // SAFETY: the returned view mutably borrows `self`, so the memory
        // outlives the tensor and no host slice aliases it meanwhile.
        let t = unsafe { self.tensor_unbounded(shape, TensorSide::Native) }?;
        Ok(TensorView::new(t))
    }

    /// A tensor over the region that carries no borrow: the caller upholds
    /// what `tensor`'s borrow would. `TensorSide::Host` views the host
    /// address as a CPU tensor (pinned staging for explicit copies).
    ///
    /// # Safety
    /// 1. The tensor (and any tensor aliasing it) must be dropped before the region.
    /// 2. No host view may be used while GPU work through the tensor may be
    ///    pending (the caller synchronises before handing out host slices).
    pub(crate) unsafe fn tensor_unbounded(&self, shape: &[i64], side: TensorSide) -> Result<tch::Tensor> {
        // SAFETY: the caller upholds points 1 and 2; the region holds `len` elements of T.
        unsafe { raw_tensor(&self.raw, self.len, T::DTYPE, shape, side) }
    }

    /// The elements as a slice without waiting for the GPU.
    ///
    /// # Safety
    /// No GPU work that writes this memory may be pending, and none may be
    /// queued while the slice lives (sessions guarantee this between runs).
    pub(crate) unsafe fn host_slice_unchecked(&self) -> &[T] {
        // SAFETY: the allocation holds `len` initialised (zero-filled or
        // written) elements of T, any bit pattern is a valid T (Element), the
        // pointer is aligned (REGION_ALIGN ≥ align_of::<T>()); GPU idleness
        // is the caller's guarantee.
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr().cast::<T>(), self.len) }
    }

    /// Mutable form of [`host_slice_unchecked`](Self::host_slice_unchecked).
    ///
    /// # Safety
    /// As for `host_slice_unchecked`, and no GPU work may read it meanwhile.
    pub(crate) unsafe fn host_slice_mut_unchecked(&mut self) -> &mut [T] {
        // SAFETY: as in `host_slice_unchecked`; `&mut self` makes it the only view.
        unsafe { std::slice::from_raw_parts_mut(self.raw.as_ptr().cast::<T>(), self.len) }

    }
}

/// A tensor of `dtype` and `shape` over the first `len` elements of `raw`,
/// carrying no borrow (see [`Region::tensor_unbounded`]).
///
/// # Safety
/// `raw` must hold at least `len` elements of `dtype`, and the caller
/// upholds points 1 and 2 of [`Region::tensor_unbounded`] for `raw`.
pub(crate) unsafe fn raw_tensor(raw: &RawRegion, len: usize, dtype: crate::dtype::DType, shape: &[i64], side: TensorSide) -> Result<tch::Tensor> {
    let numel = checked_numel(shape)?;
    if numel != len {
        return Err(Error::Shape(format!("shape {shape:?} has {numel} elements but the region holds {len} (expected a shape with {len} elements)")));
    }
    let strides = contiguous_strides(shape);
    let (ptr, device) = match (side, raw.device_ptr(), raw.gpu()) {
        (TensorSide::Native, Some(dptr), Some(gpu)) => (dptr as usize as *const u8, tch::Device::Cuda(gpu.ordinal())),
        _ => (raw.as_ptr() as *const u8, tch::Device::Cpu),
    };
    // SAFETY: `ptr` addresses `len` elements of `dtype` valid on `device`
    // (host memory for Cpu; managed or mapped-pinned device address for
    // Cuda) and shape/strides describe exactly `len` contiguous elements;
    // lifetime and host-access rules are the caller's.
    let t = unsafe { tch::Tensor::f_from_blob(ptr, shape, &strides, dtype.kind(), device) }?;
    raw.mark_device_dirty();
    Ok(t)
}

/// Product of `shape`, rejecting negative dimensions and overflow.
pub(crate) fn checked_numel(shape: &[i64]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        if d < 0 {
            return Err(Error::Shape(format!("shape {shape:?} has a negative dimension")));
        }
        acc.checked_mul(d as usize).ok_or_else(|| Error::Shape(format!("shape {shape:?} overflows")))
    })
}

/// Row-major strides of `shape`, in elements.
pub(crate) fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1].max(1);
    }
    strides
}

impl<T: Element> std::fmt::Debug for Region<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("kind", &self.kind())
            .field("dtype", &T::NAME)
            .field("len", &self.len)
            .field("ptr", &self.as_ptr())
            .finish()
    }
}
