//! [`Element`]: the element types a region can hold.

use tch::Kind;

/// A plain element type that libtorch knows and for which every bit pattern
/// is a valid value (so zeroed or device-written memory is always readable).
///
/// # Safety
/// Implementors must be `Copy`, have no padding and no invalid bit patterns,
/// and `KIND` must be the libtorch dtype with the same size and layout.
///
/// We keep our own dtype mapping rather than tch's `kind::Element`: tch 0.24
/// maps `half::bf16` to `Kind::Half`, which would make libtorch read bf16
/// bits as IEEE f16 (a test pins this down).
pub unsafe trait Element: Copy + Send + Sync + 'static {
    /// The libtorch dtype of this element type.
    const KIND: Kind;
    /// Short dtype name used in messages (`f32`, `bf16`, ...).
    const NAME: &'static str;
}

macro_rules! element {
    ($($t:ty => $kind:ident, $name:literal);* $(;)?) => {$(
        // SAFETY: a primitive numeric type without padding or invalid bit
        // patterns, paired with the libtorch dtype of the same layout.
        unsafe impl Element for $t {
            const KIND: Kind = Kind::$kind;
            const NAME: &'static str = $name;
        }
    )*};
}

element! {
    f32 => Float, "f32";
    f64 => Double, "f64";
    half::f16 => Half, "f16";
    half::bf16 => BFloat16, "bf16";
    u8 => Uint8, "u8";
    i8 => Int8, "i8";
    i16 => Int16, "i16";
    i32 => Int, "i32";
    i64 => Int64, "i64";
}
