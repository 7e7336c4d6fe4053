//! [`TensorRef`] and [`TensorMut`]: caller memory that one request reads its
//! inputs from and writes its outputs into ([`Session::run_on`](super::Session::run_on)),
//! one per tensor, in the session's order.

use crate::dtype::DType;
use crate::error::{Error, Result, SessionErrorKind};
use crate::memory::Element;
use crate::model::TensorInfo;
use std::mem::MaybeUninit;

/// An input's elements in caller memory.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    dtype: DType,
    bytes: &'a [u8],
}

impl<'a> TensorRef<'a> {
    /// The elements of `values`.
    pub fn new<T: Element>(values: &'a [T]) -> Self {
        // SAFETY: `values` is a slice of plain elements without padding
        // (Element); its bytes are initialised and live for 'a.
        let bytes = unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) };
        Self { dtype: T::DTYPE, bytes }
    }

    /// Elements of `dtype` as bytes (e.g. a request's payload): they must be
    /// aligned to the element size, and a bool tensor's bytes 0 or 1.
    pub fn from_bytes(dtype: DType, bytes: &'a [u8]) -> Result<Self> {
        if !(bytes.as_ptr() as usize).is_multiple_of(dtype.size()) {
            return Err(Error::Argument(format!("{dtype} elements must start on a {}-byte boundary", dtype.size())));
        }
        if dtype == DType::Bool {
            if let Some(b) = bytes.iter().find(|&&b| b > 1) {
                return Err(Error::Argument(format!("bool elements are 0 or 1, found the byte {b}")));
            }
        }
        Ok(Self { dtype, bytes })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Where an output's elements go in caller memory (it may be uninitialised:
/// a request that succeeds writes every byte).
#[derive(Debug)]
pub struct TensorMut<'a> {
    dtype: DType,
    bytes: &'a mut [MaybeUninit<u8>],
}

impl<'a> TensorMut<'a> {
    /// Into `values`.
    pub fn new<T: Element>(values: &'a mut [T]) -> Self {
        let len = std::mem::size_of_val(values);
        // SAFETY: the slice's bytes are initialised elements (Element: any
        // bit pattern is valid, so writing any bytes keeps them valid); the
        // borrow is exclusive for 'a.
        let bytes = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<MaybeUninit<u8>>(), len) };
        Self { dtype: T::DTYPE, bytes }
    }

    /// Into uninitialised elements (e.g. a loaned response payload).
    pub fn uninit<T: Element>(values: &'a mut [MaybeUninit<T>]) -> Self {
        let len = std::mem::size_of_val(values);
        // SAFETY: MaybeUninit<T> has T's layout; viewing it as bytes that may
        // be uninitialised claims nothing; the borrow is exclusive for 'a.
        let bytes = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<MaybeUninit<u8>>(), len) };
        Self { dtype: T::DTYPE, bytes }
    }

    /// Into bytes of `dtype`, aligned to the element size.
    pub fn from_bytes(dtype: DType, bytes: &'a mut [MaybeUninit<u8>]) -> Result<Self> {
        if !(bytes.as_ptr() as usize).is_multiple_of(dtype.size()) {
            return Err(Error::Argument(format!("{dtype} elements must start on a {}-byte boundary", dtype.size())));
        }
        Ok(Self { dtype, bytes })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Writes zeros over every byte (a valid value of every dtype).
    pub fn fill_zero(&mut self) {
        self.bytes.fill(MaybeUninit::new(0));
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.bytes.as_mut_ptr().cast()
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// Checks that `given` (dtype, byte length) match the session's `infos`, in order.
pub(crate) fn check_bindings(side: &str, infos: &[TensorInfo], given: impl ExactSizeIterator<Item = (DType, usize)>) -> Result<()> {
    if given.len() != infos.len() {
        return Err(Error::session(SessionErrorKind::InvalidRequest, format!("run_on: {} {side} tensors given, the session has {} ({})", given.len(), infos.len(), list(infos))));
    }
    for (info, (dtype, len)) in infos.iter().zip(given) {
        if dtype != info.dtype {
            return Err(Error::DType { tensor: info.name.clone(), expected: info.dtype, given: dtype });
        }
        if len != info.byte_len() {
            return Err(Error::session(SessionErrorKind::InvalidRequest, format!("run_on: {side} `{}` takes {} bytes ({} {:?}), {len} given", info.name, info.byte_len(), info.dtype, info.shape)));
        }
    }
    Ok(())
}

/// `a: f32 [1, 3], b: i64 [2]`.
pub(crate) fn list(infos: &[TensorInfo]) -> String {
    infos.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
