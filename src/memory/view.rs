//! Borrowed views of a region: host slices and libtorch tensors.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// `&[T]` over a region, borrowed from it.
pub struct HostView<'a, T>(&'a [T]);

impl<'a, T> HostView<'a, T> {
    pub(crate) fn new(s: &'a [T]) -> Self {
        Self(s)
    }
}

impl<T> Deref for HostView<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.0
    }
}

/// `&mut [T]` over a region, borrowed mutably from it.
pub struct HostViewMut<'a, T>(&'a mut [T]);

impl<'a, T> HostViewMut<'a, T> {
    pub(crate) fn new(s: &'a mut [T]) -> Self {
        Self(s)
    }
}

impl<T> Deref for HostViewMut<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.0
    }
}

impl<T> DerefMut for HostViewMut<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.0
    }
}

/// A `tch::Tensor` over a region's memory (no copy), which cannot outlive
/// the region: it holds the region's mutable borrow.
///
/// These compile-fail tests run with `cargo test` (doctests): a view that
/// outlives its region, and a host slice taken while a view exists, are
/// rejected by the borrow checker.
///
/// ```compile_fail,E0597
/// use uminfer::memory::Region;
/// let view;
/// {
///     let mut region = Region::<f32>::host(4).unwrap();
///     view = region.tensor(&[4]).unwrap(); // `region` does not live long enough
/// }
/// drop(view);
/// ```
///
/// ```compile_fail,E0502
/// use uminfer::memory::Region;
/// let mut region = Region::<f32>::host(4).unwrap();
/// let view = region.tensor(&[4]).unwrap();
/// let host = region.host_view().unwrap(); // cannot borrow while the tensor view lives
/// drop((view, host));
/// ```
///
/// ```compile_fail,E0505
/// use uminfer::memory::Region;
/// let mut region = Region::<f32>::host(4).unwrap();
/// let view = region.tensor(&[4]).unwrap();
/// drop(region); // cannot free the memory while the tensor views it
/// drop(view);
/// ```
///
/// Tensors *derived* from it by libtorch ops that alias storage (`view`,
/// `shallow_clone`, ...) are plain `tch::Tensor`s without that lifetime: do not
/// keep them past this view. Ops that compute new values (a model's forward)
/// allocate their own storage.
pub struct TensorView<'a> {
    tensor: tch::Tensor,
    _region: PhantomData<&'a mut ()>,
}

impl TensorView<'_> {
    pub(crate) fn new(tensor: tch::Tensor) -> Self {
        Self { tensor, _region: PhantomData }
    }
}

impl Deref for TensorView<'_> {
    type Target = tch::Tensor;
    fn deref(&self) -> &tch::Tensor {
        &self.tensor
    }
}

impl DerefMut for TensorView<'_> {
    fn deref_mut(&mut self) -> &mut tch::Tensor {
        &mut self.tensor
    }
}
