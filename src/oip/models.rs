//! The models a gRPC server serves: each a [`SessionPool`] with fixed input
//! and output shapes, plus the metadata the protocol reports about it.
//!
//! Metadata is derived from the model itself: the output shape and dtype come
//! from one eager CPU run on zeros of the declared input shape (the model must
//! return a single float32 tensor). TorchScript does not keep tensor names
//! that a runtime can rely on, so the tensors are named as Triton's PyTorch
//! backend names them: `INPUT__0` and `OUTPUT__0`.

use super::metrics::ModelLabels;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::session::pool::one_f32_tensor;
use crate::session::{ModeChoice, SessionPool, SessionSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The name of the single input tensor (Triton's PyTorch-backend convention).
pub const INPUT_NAME: &str = "INPUT__0";
/// The name of the single output tensor.
pub const OUTPUT_NAME: &str = "OUTPUT__0";
/// The only datatype served (protocol name).
pub const FP32: &str = "FP32";
/// The one version each model has.
pub const VERSION: &str = "1";
/// The platform reported in model metadata (Triton's name for TorchScript).
pub const PLATFORM: &str = "pytorch_libtorch";

/// An `--input-shape`: `DIMS` (comma-separated, every model's) or
/// `NAME=DIMS` (model NAME's, over the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputShape {
    /// The model it is for; `None`: every model without a shape of its own.
    pub model: Option<String>,
    /// The dimensions, batch included.
    pub dims: Vec<i64>,
}

impl std::str::FromStr for InputShape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (model, dims) = match s.split_once('=') {
            Some((name, dims)) => (Some(name.to_string()), dims),
            None => (None, s),
        };
        let dims = dims
            .split(',')
            .map(|d| d.trim().parse::<i64>().ok().filter(|&d| d > 0))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| format!("{s:?}: expected positive comma-separated dimensions such as 1,3,128,128, or NAME=1,3,224,224 for one model"))?;
        Ok(Self { model, dims })
    }
}

/// The input shape of every model: a default and per-model shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputShapes {
    default: Vec<i64>,
    by_model: BTreeMap<String, Vec<i64>>,
}

impl Default for InputShapes {
    /// `1×3×128×128` for every model.
    fn default() -> Self {
        Self { default: vec![1, 3, 128, 128], by_model: BTreeMap::new() }
    }
}

impl InputShapes {
    /// `shapes` over the default: at most one without a model name (every
    /// model's), at most one per model, each naming one of `models`.
    pub fn new(shapes: &[InputShape], models: &[ModelSource]) -> Result<Self> {
        let mut out = Self::default();
        let mut bare = false;
        for s in shapes {
            match &s.model {
                None if bare => return Err(Error::Argument("--input-shape DIMS is given twice; give it once (and NAME=DIMS for a model of another shape)".into())),
                None => {
                    bare = true;
                    out.default = s.dims.clone();
                }
                Some(name) if !models.iter().any(|m| &m.name == name) => {
                    let served: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                    return Err(Error::Argument(format!("--input-shape {name}=...: no model named {name:?} is served (served: {})", served.join(", "))));
                }
                Some(name) => {
                    if out.by_model.insert(name.clone(), s.dims.clone()).is_some() {
                        return Err(Error::Argument(format!("--input-shape {name}=... is given twice")));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The input shape of model `name`.
    pub fn of(&self, name: &str) -> &[i64] {
        self.by_model.get(name).unwrap_or(&self.default)
    }
}

/// A model to serve: the name clients use and its TorchScript file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// The model name in the protocol.
    pub name: String,
    /// TorchScript file.
    pub path: PathBuf,
}

impl std::str::FromStr for ModelSource {
    type Err = String;

    /// `NAME=PATH`, or `PATH` (the name is then the file stem: `models/tiny.pt`
    /// is `tiny`). Names are checked when the models are loaded.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, path) = match s.split_once('=') {
            Some((name, path)) => (name.to_string(), PathBuf::from(path)),
            None => {
                let path = PathBuf::from(s);
                let stem = path.file_stem().and_then(|x| x.to_str()).unwrap_or_default().to_string();
                (stem, path)
            }
        };
        if path.as_os_str().is_empty() {
            return Err(format!("{s:?}: expected NAME=PATH with a non-empty PATH"));
        }
        Ok(Self { name, path })
    }
}

/// One served model.
pub struct ServedModel {
    /// The model name in the protocol.
    pub name: String,
    /// Declared input shape (requests must match it exactly).
    pub input_shape: Vec<i64>,
    /// Output shape, found when the sessions were built.
    pub output_shape: Vec<i64>,
    /// The execution mode of its sessions.
    pub mode: crate::Mode,
    /// The sessions that run it.
    pub pool: SessionPool,
    /// How long one of its requests takes in a session after warm-up
    /// ([`crate::intra_op::fastest_pass`], over the session's own regions).
    pub request_time: Duration,
    /// Its requests' statistics (`ModelStatistics`).
    pub stats: super::stats::ModelStats,
}

impl ServedModel {
    /// Loads `source` and builds `sessions` sessions of it in `mode` for one float32 input of `input_shape`.
    pub fn load(rt: &Runtime, source: &ModelSource, input_shape: &[i64], mode: ModeChoice, sessions: usize) -> Result<Self> {
        let model = rt.model(&source.path)?;
        let elements = input_shape.iter().try_fold(1i64, |n, &d| if d > 0 { n.checked_mul(d) } else { None });
        if input_shape.is_empty() || elements.is_none_or(|n| n.checked_mul(4).is_none()) {
            return Err(Error::Argument(format!("input shape {input_shape:?}: expected positive dimensions whose product fits in memory, e.g. 1,3,128,128")));
        }
        let spec = SessionSpec::new().mode_choice(mode).dedicated_thread(true);
        let (pool, output_shape) = one_f32_tensor(rt, &model, spec, input_shape, sessions.max(1), "the Open Inference Protocol endpoint")?;
        let (mode, request_time) = {
            let mut s = pool.checkout();
            let fastest = crate::intra_op::fastest_pass(|| Ok(s.run()?.host))?;
            s.reset_timing();
            tracing::info!(
                "model {} ({}): input {input_shape:?}, output {output_shape:?}, mode {}: {}; a request takes {:.1} µs",
                source.name,
                source.path.display(),
                s.mode(),
                s.note(),
                fastest.as_secs_f64() * 1e6
            );
            (s.mode(), fastest)
        };
        Ok(Self { name: source.name.clone(), input_shape: input_shape.to_vec(), output_shape, mode, pool, request_time, stats: Default::default() })
    }

    /// Input elements per request.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product::<i64>() as usize
    }

    /// Its metric labels: name and mode.
    pub fn labels(&self) -> ModelLabels {
        ModelLabels { model: self.name.clone(), mode: self.mode.to_string() }
    }

    /// Output elements per request.
    pub fn output_len(&self) -> usize {
        self.output_shape.iter().product::<i64>() as usize
    }
}

/// The served models by name.
#[derive(Clone, Default)]
pub struct Models(BTreeMap<String, Arc<ServedModel>>);

impl Models {
    /// Loads every source; two sources of the same name are refused.
    pub fn load(rt: &Runtime, sources: &[ModelSource], shapes: &InputShapes, mode: ModeChoice, sessions: usize) -> Result<Self> {
        let mut map = BTreeMap::new();
        for s in sources {
            let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
            if s.name.is_empty() || !s.name.chars().all(valid) {
                return Err(Error::Argument(format!(
                    "model name {:?} (for {}): expected --model NAME=PATH with a NAME of ASCII letters, digits, '_', '-' or '.'",
                    s.name,
                    s.path.display()
                )));
            }
            if map.contains_key(&s.name) {
                return Err(Error::Argument(format!("model name {} is given twice; name each --model NAME=PATH differently", s.name)));
            }
            map.insert(s.name.clone(), Arc::new(ServedModel::load(rt, s, shapes.of(&s.name), mode, sessions)?));
        }
        if map.is_empty() {
            return Err(Error::Argument("no model to serve: give at least one --model NAME=PATH".into()));
        }
        Ok(Self(map))
    }

    /// Sessions of all models together: how many requests run at once at most.
    pub fn sessions(&self) -> usize {
        self.0.values().map(|m| m.pool.size()).sum()
    }

    /// The longest [`ServedModel::request_time`] of all models.
    pub fn slowest_request(&self) -> Duration {
        self.0.values().map(|m| m.request_time).max().unwrap_or_default()
    }

    /// Every model, by name.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.0.values()
    }

    /// The model `name` at `version` ("" means the latest, the only one: "1").
    pub fn get(&self, name: &str, version: &str) -> Result<&Arc<ServedModel>, super::status::RequestError> {
        let m = self.0.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            super::status::RequestError::NotFound(format!("no model named {name:?} is served (served: {})", known.join(", ")))
        })?;
        if !version.is_empty() && version != VERSION {
            return Err(super::status::RequestError::NotFound(format!("model {name:?} has no version {version:?}; its only version is {VERSION:?}")));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::ModelSource;

    #[test]
    fn model_sources_parse_with_and_without_a_name() {
        let named: ModelSource = "tiny=models/x.pt".parse().unwrap();
        assert_eq!((named.name.as_str(), named.path.to_str()), ("tiny", Some("models/x.pt")));
        let bare: ModelSource = "models/resnet18.pt".parse().unwrap();
        assert_eq!((bare.name.as_str(), bare.path.to_str()), ("resnet18", Some("models/resnet18.pt")));
        assert!("tiny=".parse::<ModelSource>().is_err());
    }

    #[test]
    fn input_shapes_default_to_every_model_and_override_by_name() {
        use super::{InputShape, InputShapes};
        let models: Vec<ModelSource> = ["tiny=a.pt", "big=b.pt"].iter().map(|s| s.parse().unwrap()).collect();
        let parse = |v: &[&str]| v.iter().map(|s| s.parse::<InputShape>().unwrap()).collect::<Vec<_>>();
        let none = InputShapes::new(&[], &models).unwrap();
        assert_eq!((none.of("tiny"), none.of("big")), (&[1, 3, 128, 128][..], &[1, 3, 128, 128][..]));
        let some = InputShapes::new(&parse(&["1,3,64,64", "big=1,3,224,224"]), &models).unwrap();
        assert_eq!((some.of("tiny"), some.of("big")), (&[1, 3, 64, 64][..], &[1, 3, 224, 224][..]));
        let err = |v: &[&str]| InputShapes::new(&parse(v), &models).unwrap_err().to_string();
        assert!(err(&["nope=1,2"]).contains("no model named \"nope\" is served (served: tiny, big)"));
        assert!(err(&["1,2", "1,3"]).contains("given twice"));
        assert!(err(&["big=1,2", "big=1,3"]).contains("given twice"));
        for bad in ["", "1,,3", "1,-3", "tiny=x", "0"] {
            assert!(bad.parse::<InputShape>().is_err(), "{bad:?}");
        }
    }
}
