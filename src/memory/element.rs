//! [`Element`]: the element types a region can hold.

use crate::dtype::{Bool, DType};
use tch::Kind;

/// A plain element type that libtorch knows and for which every bit pattern
/// is a valid value (so zeroed or device-written memory is always readable).
///
/// # Safety
/// Implementors must be `Copy`, have no padding and no invalid bit patterns,
/// and `DTYPE` must be the dtype with the same size and layout.
///
/// We keep our own dtype mapping rather than tch's `kind::Element`: tch 0.24
/// maps `half::bf16` to `Kind::Half`, which would make libtorch read bf16
/// bits as IEEE f16 (a test pins this down).
pub unsafe trait Element: Copy + Send + Sync + 'static {
    /// The dtype of this element type.
    const DTYPE: DType;
    /// The libtorch dtype of this element type.
    const KIND: Kind = Self::DTYPE.kind();
    /// Short dtype name used in messages (`f32`, `bf16`, ...).
    const NAME: &'static str = Self::DTYPE.name();
}

macro_rules! element {
    ($($t:ty => $dtype:ident);* $(;)?) => {$(
        // SAFETY: a primitive numeric type (or `Bool`, a transparent u8)
        // without padding or invalid bit patterns, paired with the dtype of
        // the same layout.
        unsafe impl Element for $t {
            const DTYPE: DType = DType::$dtype;
        }
    )*};
}

element! {
    f32 => F32;
    f64 => F64;
    half::f16 => F16;
    half::bf16 => Bf16;
    u8 => U8;
    i8 => I8;
    i16 => I16;
    i32 => I32;
    i64 => I64;
    Bool => Bool;
}
