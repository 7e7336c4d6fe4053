//! [`DType`]: the element types a model's tensors may have, with their names
//! in libtorch, NumPy, the Open Inference Protocol and uminfer's messages;
//! [`Bool`], the host form of a bool element.

use std::fmt;
use tch::Kind;

/// An element type uminfer carries between the caller and a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    F16,
    Bf16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Every dtype, in the order messages list them.
    pub const ALL: [DType; 10] = [DType::F32, DType::F64, DType::F16, DType::Bf16, DType::I64, DType::I32, DType::I16, DType::I8, DType::U8, DType::Bool];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::Bf16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The libtorch dtype.
    pub const fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::F64 => Kind::Double,
            DType::F16 => Kind::Half,
            DType::Bf16 => Kind::BFloat16,
            DType::I64 => Kind::Int64,
            DType::I32 => Kind::Int,
            DType::I16 => Kind::Int16,
            DType::I8 => Kind::Int8,
            DType::U8 => Kind::Uint8,
            DType::Bool => Kind::Bool,
        }
    }

    /// The dtype of a libtorch kind, if uminfer carries it.
    pub fn from_kind(kind: Kind) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.kind() == kind)
    }

    /// Short name used in messages and on the command line (`f32`, `bf16`, `bool`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }

    /// PyTorch's and NumPy's name (`float32`, `bfloat16`, `int64`, `bool`).
    pub const fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::Bf16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// The Open Inference Protocol's (and Triton's) datatype name (`FP32`, `BF16`, `INT64`, `BOOL`).
    pub const fn oip_name(self) -> &'static str {
        match self {
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::F16 => "FP16",
            DType::Bf16 => "BF16",
            DType::I64 => "INT64",
            DType::I32 => "INT32",
            DType::I16 => "INT16",
            DType::I8 => "INT8",
            DType::U8 => "UINT8",
            DType::Bool => "BOOL",
        }
    }

    /// Floating-point (compared with a tolerance; integers and bools exactly).
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::Bf16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    /// Any of the three spellings: `f32`, `float32`, `FP32` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, String> {
        let l = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|d| l == d.name() || l == d.torch_name() || l == d.oip_name().to_ascii_lowercase())
            .ok_or_else(|| format!("unknown dtype {s:?}; known: {}", Self::ALL.map(|d| d.name()).join(", ")))
    }
}

/// One element of a bool tensor as the host sees it: a byte that libtorch
/// reads as `false` (0) or `true` (1).
///
/// Not Rust's `bool`: a region's bytes are plain memory (zero-filled,
/// written by a model, shared with another process), and a `bool` with any
/// other byte would be undefined behaviour. A `Bool` is made only from a
/// `bool`, so what the host writes is always 0 or 1, which is what
/// libtorch's kernels assume.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Bool(u8);

impl Bool {
    pub const FALSE: Bool = Bool(0);
    pub const TRUE: Bool = Bool(1);

    /// The value (any nonzero byte reads as `true`).
    pub const fn get(self) -> bool {
        self.0 != 0
    }
}

impl From<bool> for Bool {
    fn from(b: bool) -> Self {
        Bool(b as u8)
    }
}

impl From<Bool> for bool {
    fn from(b: Bool) -> Self {
        b.get()
    }
}

impl fmt::Debug for Bool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_parses_from_each_of_its_names_and_maps_to_a_kind_of_its_size() {
        for d in DType::ALL {
            for n in [d.name().to_string(), d.torch_name().to_string(), d.oip_name().to_string()] {
                assert_eq!(n.parse::<DType>().unwrap(), d, "{n}");
            }
            assert_eq!(DType::from_kind(d.kind()), Some(d));
            assert_eq!(d.kind().elt_size_in_bytes(), d.size(), "{d}");
        }
        assert!("complex64".parse::<DType>().unwrap_err().contains("known: f32, f64"));
        assert_eq!(DType::from_kind(Kind::ComplexFloat), None);
    }

    #[test]
    fn a_bool_element_is_made_only_from_bool() {
        assert_eq!(std::mem::size_of::<Bool>(), 1);
        assert!(Bool::from(true).get() && !Bool::from(false).get());
        assert_eq!(format!("{:?}", Bool::TRUE), "true");
    }
}
