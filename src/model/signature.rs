//! A model's signature: what the file says of its inputs ([`ModelInput`]),
//! what a session declares of them ([`InputDecl`]), how the two resolve
//! into the session's tensors ([`TensorInfo`]), and the signature hint an
//! exporter may embed (`uminfer.json` in a TorchScript file, metadata
//! `uminfer.signature` in an AOTInductor package).

use crate::dtype::DType;
pub use crate::error::SignatureError;
use serde::{Deserialize, Serialize};

/// One tensor of a session: its name, dtype and (concrete) shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().map(|&d| d.max(0) as usize).product()
    }

    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

impl std::fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {:?}", self.name, self.dtype, self.shape)
    }
}

/// What the model file says of one input. TorchScript files name their
/// inputs but rarely say dtype or shape; packages are compiled for one
/// dtype and shape, which the session must match (`fixed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInput {
    pub name: String,
    pub dtype: Option<DType>,
    /// `-1` for a dimension the model accepts at any size.
    pub shape: Option<Vec<i64>>,
    /// Valid values, `[low, high)` (token ids, masks), when the model says.
    pub range: Option<(i64, i64)>,
    /// The dtype and shape are what the model was compiled for: a session
    /// that declares others is refused (a package would read out of bounds).
    pub fixed: bool,
}

/// What a session declares of one input: `name` `None` means the model's
/// only input; `None` fields are taken from the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDecl {
    pub name: Option<String>,
    pub dtype: Option<DType>,
    pub shape: Option<Vec<i64>>,
}

impl std::str::FromStr for InputDecl {
    type Err = String;
    /// `NAME=DTYPE:DIMS` (`input_ids=int64:1,128`), `NAME=DTYPE` (the shape
    /// from the model) or `NAME=:DIMS` (the dtype from the model).
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("{s:?}: expected NAME=DTYPE:DIMS, e.g. input_ids=int64:1,128 (or NAME=DTYPE, NAME=:DIMS)");
        let (name, rest) = s.split_once('=').filter(|(n, _)| !n.is_empty()).ok_or_else(usage)?;
        let (dtype, dims) = rest.split_once(':').unwrap_or((rest, ""));
        let dtype = (!dtype.is_empty()).then(|| dtype.parse::<DType>()).transpose()?;
        let shape = (!dims.is_empty())
            .then(|| dims.split(',').map(|d| d.trim().parse::<i64>().map_err(|_| format!("{s:?}: dimension {d:?} is not an integer"))).collect::<Result<Vec<_>, _>>())
            .transpose()?;
        if dtype.is_none() && shape.is_none() {
            return Err(usage());
        }
        Ok(Self { name: Some(name.to_string()), dtype, shape })
    }
}

/// The signature hint an exporter embeds (`models/export.py` writes it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Hint {
    pub inputs: Vec<HintInput>,
    /// `torch.__version__` of the exporter, without its local part.
    #[serde(default)]
    pub torch_version: Option<String>,
}

/// One input of a [`Hint`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct HintInput {
    pub name: String,
    /// A PyTorch dtype name (`float32`, `int64`, ...).
    pub dtype: String,
    pub shape: Vec<i64>,
    #[serde(default)]
    pub range: Option<(i64, i64)>,
}

impl Hint {
    /// Parses the hint's JSON.
    pub fn parse(text: &str) -> Result<Self, String> {
        let h: Hint = serde_json::from_str(text).map_err(|e| format!("unreadable signature hint: {e}"))?;
        for i in &h.inputs {
            i.dtype.parse::<DType>().map_err(|e| format!("signature hint, input {}: {e}", i.name))?;
        }
        Ok(h)
    }

    /// The hint of input `name`.
    fn input(&self, name: &str) -> Option<&HintInput> {
        self.inputs.iter().find(|i| i.name == name)
    }
}

/// The model's inputs from its names and a hint: a named input the hint
/// describes takes its dtype, shape and range (`fixed` for packages).
pub fn inputs_from(names: &[String], hint: Option<&Hint>, fixed: bool) -> Vec<ModelInput> {
    names
        .iter()
        .map(|name| {
            let h = hint.and_then(|h| h.input(name));
            ModelInput {
                name: name.clone(),
                dtype: h.and_then(|h| h.dtype.parse().ok()),
                shape: h.map(|h| h.shape.clone()),
                range: h.and_then(|h| h.range),
                fixed: fixed && h.is_some(),
            }
        })
        .collect()
}

fn names(inputs: &[ModelInput]) -> String {
    if inputs.is_empty() {
        return "none".into();
    }
    inputs.iter().map(|i| format!("`{}`", i.name)).collect::<Vec<_>>().join(", ")
}

/// Resolves the session's inputs: every model input, in the model's order,
/// with the declared dtype and shape where given, else the model's, else
/// `default_dtype` (a typed session's element type).
pub fn resolve(model: &[ModelInput], decls: &[InputDecl], default_dtype: Option<DType>) -> Result<Vec<TensorInfo>, SignatureError> {
    let mut chosen: Vec<Option<&InputDecl>> = vec![None; model.len()];
    for d in decls {
        let idx = match &d.name {
            Some(n) => model.iter().position(|m| &m.name == n).ok_or_else(|| SignatureError::UnknownInput { given: n.clone(), known: names(model) })?,
            None if model.len() == 1 => 0,
            None => return Err(SignatureError::Unnamed(names(model))),
        };
        if chosen[idx].replace(d).is_some() {
            return Err(SignatureError::Duplicate(model[idx].name.clone()));
        }
    }
    model
        .iter()
        .zip(chosen)
        .map(|(m, d)| {
            let name = m.name.clone();
            let dtype = d.and_then(|d| d.dtype).or(m.dtype).or(default_dtype).ok_or_else(|| SignatureError::Missing { name: name.clone(), what: "dtype" })?;
            let shape = match (d.and_then(|d| d.shape.clone()), &m.shape) {
                (Some(s), _) => s,
                (None, Some(s)) if s.iter().all(|&x| x > 0) => s.clone(),
                _ => return Err(SignatureError::Missing { name, what: "shape" }),
            };
            if shape.iter().any(|&x| x <= 0) {
                return Err(SignatureError::BadShape { name, shape });
            }
            if m.fixed {
                let fits = m.dtype == Some(dtype) && m.shape.as_ref().is_some_and(|s| s.len() == shape.len() && s.iter().zip(&shape).all(|(&c, &x)| c == -1 || c == x));
                if !fits {
                    let compiled = format!("{} {:?}", m.dtype.map_or("?", |d| d.name()), m.shape.as_deref().unwrap_or(&[]));
                    return Err(SignatureError::Fixed { name, declared: format!("{dtype} {shape:?}"), compiled });
                }
            }
            Ok(TensorInfo { name, dtype, shape })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, dtype: Option<DType>, shape: Option<&[i64]>, fixed: bool) -> ModelInput {
        ModelInput { name: name.into(), dtype, shape: shape.map(<[i64]>::to_vec), range: None, fixed }
    }

    fn decl(name: Option<&str>, dtype: Option<DType>, shape: Option<&[i64]>) -> InputDecl {
        InputDecl { name: name.map(Into::into), dtype, shape: shape.map(<[i64]>::to_vec) }
    }

    #[test]
    fn declarations_fill_what_the_model_does_not_say() {
        let model = [input("input_ids", None, None, false), input("attention_mask", Some(DType::I64), Some(&[1, 32]), false)];
        let got = resolve(&model, &[decl(Some("input_ids"), Some(DType::I64), Some(&[1, 32]))], None).unwrap();
        assert_eq!(got[0], TensorInfo { name: "input_ids".into(), dtype: DType::I64, shape: vec![1, 32] });
        assert_eq!(got[1].dtype, DType::I64);
        // A declared shape overrides a TorchScript hint (it is a default there).
        let got = resolve(&model, &[decl(Some("input_ids"), Some(DType::I64), Some(&[2, 8])), decl(Some("attention_mask"), None, Some(&[2, 8]))], None).unwrap();
        assert_eq!(got[1].shape, [2, 8]);
    }

    #[test]
    fn a_model_that_says_nothing_needs_each_fact_declared() {
        let model = [input("x", None, None, false)];
        let e = resolve(&model, &[], None).unwrap_err();
        assert_eq!(e, SignatureError::Missing { name: "x".into(), what: "dtype" });
        assert!(e.to_string().contains("--input-spec x=DTYPE:DIMS"), "{e}");
        assert_eq!(resolve(&model, &[], Some(DType::F32)).unwrap_err(), SignatureError::Missing { name: "x".into(), what: "shape" });
        let ok = resolve(&model, &[decl(None, None, Some(&[1, 3]))], Some(DType::F32)).unwrap();
        assert_eq!(ok[0].shape, [1, 3]);
    }

    #[test]
    fn names_must_exist_once_and_an_unnamed_declaration_needs_one_input() {
        let model = [input("a", Some(DType::F32), Some(&[1]), false), input("b", Some(DType::F32), Some(&[1]), false)];
        let e = resolve(&model, &[decl(Some("c"), None, None)], None).unwrap_err();
        assert_eq!(e.to_string(), "the model has no input `c`; its inputs: `a`, `b`");
        assert_eq!(resolve(&model, &[decl(Some("a"), None, None), decl(Some("a"), None, None)], None).unwrap_err(), SignatureError::Duplicate("a".into()));
        assert!(matches!(resolve(&model, &[decl(None, None, Some(&[1]))], None), Err(SignatureError::Unnamed(_))));
        assert!(matches!(resolve(&model, &[decl(Some("a"), None, Some(&[0, 2]))], None), Err(SignatureError::BadShape { .. })));
    }

    #[test]
    fn a_package_takes_only_what_it_was_compiled_for_but_any_size_of_a_dynamic_dimension() {
        let model = [input("x", Some(DType::F32), Some(&[-1, 3]), true)];
        assert_eq!(resolve(&model, &[decl(None, None, Some(&[4, 3]))], None).unwrap()[0].shape, [4, 3]);
        let e = resolve(&model, &[decl(None, Some(DType::F16), Some(&[4, 3]))], None).unwrap_err();
        assert!(e.to_string().contains("declared f16 [4, 3], but the package was compiled for f32 [-1, 3]"), "{e}");
        assert!(matches!(resolve(&model, &[decl(None, None, Some(&[4, 4]))], None), Err(SignatureError::Fixed { .. })));
        // A dynamic dimension has no default size.
        assert!(matches!(resolve(&model, &[], None), Err(SignatureError::Missing { what: "shape", .. })));
    }

    #[test]
    fn command_line_declarations_parse_and_say_what_is_wrong() {
        assert_eq!("input_ids=int64:1,128".parse::<InputDecl>().unwrap(), decl(Some("input_ids"), Some(DType::I64), Some(&[1, 128])));
        assert_eq!("x=bf16".parse::<InputDecl>().unwrap(), decl(Some("x"), Some(DType::Bf16), None));
        assert_eq!("x=:2, 3".parse::<InputDecl>().unwrap(), decl(Some("x"), None, Some(&[2, 3])));
        assert!("x=".parse::<InputDecl>().unwrap_err().contains("NAME=DTYPE:DIMS"));
        assert!("=f32:1".parse::<InputDecl>().is_err());
        assert!("x=f32:1,a".parse::<InputDecl>().unwrap_err().contains("\"a\" is not an integer"));
        assert!("x=complex:1".parse::<InputDecl>().unwrap_err().contains("unknown dtype"));
    }

    #[test]
    fn hints_name_dtypes_shapes_and_ranges() {
        let h = Hint::parse(r#"{"inputs": [{"name": "ids", "dtype": "int64", "shape": [1, 8], "range": [0, 1000]}], "torch_version": "2.11.0"}"#).unwrap();
        let got = inputs_from(&["ids".into(), "other".into()], Some(&h), true);
        assert_eq!(got[0], ModelInput { name: "ids".into(), dtype: Some(DType::I64), shape: Some(vec![1, 8]), range: Some((0, 1000)), fixed: true });
        assert_eq!(got[1], input("other", None, None, false));
        assert!(Hint::parse(r#"{"inputs": [{"name": "x", "dtype": "complex64", "shape": [1]}]}"#).unwrap_err().contains("complex64"));
        assert!(Hint::parse("{").is_err());
    }
}
