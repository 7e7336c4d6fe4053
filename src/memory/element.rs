//! [`Element`]: the element types a region can hold.

use tch::Kind;

/// A plain element type that libtorch knows and for which every bit pattern
/// is a valid value (so zeroed or device-written memory is always readable).
///
/// # Safety
/// Implementors must be `Copy`, have no padding and no invalid bit patterns,
/// and `KIND` must be the libtorch dtype with the same size and layout.
pub unsafe trait Element: tch::kind::Element + Copy + Send + Sync + 'static {
    /// Short dtype name used in messages (`f32`, `bf16`, ...).
    const NAME: &'static str;
}

macro_rules! element {
    ($($t:ty => $name:literal),* $(,)?) => {$(
        // SAFETY: a primitive numeric type without padding or invalid bit
        // patterns; tch's own Element impl gives the matching Kind.
        unsafe impl Element for $t {
            const NAME: &'static str = $name;
        }
    )*};
}

element!(f32 => "f32", f64 => "f64", half::f16 => "f16", half::bf16 => "bf16", u8 => "u8", i8 => "i8", i16 => "i16", i32 => "i32", i64 => "i64");

/// Size in bytes of one element of `kind`, for the kinds regions support.
pub fn kind_size(kind: Kind) -> Option<usize> {
    Some(match kind {
        Kind::Uint8 | Kind::Int8 => 1,
        Kind::Int16 | Kind::Half | Kind::BFloat16 => 2,
        Kind::Int | Kind::Float => 4,
        Kind::Int64 | Kind::Double => 8,
        _ => return None,
    })
}
