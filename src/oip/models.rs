//! The models a gRPC server serves: each a [`SessionPool`](crate::SessionPool) over the model's
//! signature (named tensors of any dtype), plus the metadata the protocol
//! reports about it.
//!
//! Metadata is the sessions' signature: the inputs as the model names them
//! (`forward`'s arguments, or what the exporter recorded), with the dtypes
//! and shapes recorded or declared (`--input-shape`), and the outputs found
//! when the sessions were built (`output__0`, ..., dict keys). Requests may
//! also address tensors positionally, as Triton's PyTorch backend names
//! them: `INPUT__0`, `OUTPUT__1` ([`tensors`](super::tensors)).

use super::metrics::ModelLabels;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::model::TensorInfo;
use crate::batch::{BatchSpec, Execution};
use crate::session::{ModeChoice, SessionSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The one version each model has.
pub const VERSION: &str = "1";

/// The platform reported in model metadata: Triton's names for TorchScript
/// models and for AOTInductor packages (its PyTorch backend's `torch_aoti`).
pub fn platform(format: crate::shim::Format) -> &'static str {
    match format {
        crate::shim::Format::TorchScript => "pytorch_libtorch",
        crate::shim::Format::Aoti => "torch_aoti",
    }
}

/// An `--input-shape`: `DIMS` (comma-separated, the shape of every
/// one-input model's input) or `NAME=DIMS` (model NAME's).
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

/// The declared input shapes: a default and per-model shapes; a model
/// with none takes the shape it records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InputShapes {
    default: Option<Vec<i64>>,
    by_model: BTreeMap<String, Vec<i64>>,
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
                    out.default = Some(s.dims.clone());
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

    /// The declared input shape of model `name`, if any.
    pub fn of(&self, name: &str) -> Option<&[i64]> {
        self.by_model.get(name).or(self.default.as_ref()).map(Vec::as_slice)
    }
}

/// A model to serve: the name clients use and its file (TorchScript or an AOTInductor package).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// The model name in the protocol.
    pub name: String,
    /// The model file.
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
    /// Its format (TorchScript or a package), for the platform it reports.
    pub format: crate::shim::Format,
    /// The sessions' inputs: requests must match their dtypes and shapes exactly.
    pub inputs: Vec<TensorInfo>,
    /// The sessions' outputs, found when they were built.
    pub outputs: Vec<TensorInfo>,
    /// The execution mode of its sessions.
    pub mode: crate::Mode,
    /// What runs its requests (batched: [`inputs`](Self::inputs) and
    /// [`outputs`](Self::outputs) are one sample's, and a request carries 1
    /// to `max_batch` samples).
    pub exec: Execution,
    /// How long one of its requests takes in a session after warm-up
    /// ([`crate::intra_op::fastest_pass`], over the session's own regions).
    pub request_time: Duration,
    /// Its requests' statistics (`ModelStatistics`).
    pub stats: super::stats::ModelStats,
    /// Requests are answered without running the model ([`GrpcOptions::echo`](super::GrpcOptions::echo)).
    pub echo: bool,
}

impl ServedModel {
    /// Loads `source` and builds `sessions` sessions of it in `mode`, or
    /// with `batching` a batcher (a session per bucket); a declared
    /// `input_shape` is the shape of its only input (of the dtype the model
    /// records, else float32).
    pub fn load(rt: &Runtime, source: &ModelSource, input_shape: Option<&[i64]>, mode: ModeChoice, sessions: usize, echo: bool, batching: Option<&BatchSpec>) -> Result<Self> {
        let model = rt.model(&source.path)?;
        let inputs = model.resolve_input_shape(input_shape)?;
        let mut spec = SessionSpec::new().mode_choice(mode).dedicated_thread(true);
        for i in &inputs {
            spec = spec.input(&i.name, i.dtype, &i.shape);
        }
        let list = |ts: &[TensorInfo]| ts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let (exec, inputs, outputs, mode, note, request_time) = match batching {
            None => {
                let pool = rt.session_pool(&model, spec, sessions.max(1))?;
                let mut s = pool.checkout();
                let fastest = crate::intra_op::fastest_pass(|| Ok(s.run()?.host))?;
                s.reset_timing();
                let (mode, note) = (s.mode(), s.note().to_string());
                drop(s);
                let (inputs, outputs) = (pool.inputs().to_vec(), pool.outputs().to_vec());
                (Execution::Sessions(pool), inputs, outputs, mode, note, fastest)
            }
            Some(b) => {
                let batcher = rt.batcher(&model, spec, b.clone()).map_err(|e| Error::Argument(format!("model {} ({}) with --max-batch: {e}", source.name, source.path.display())))?;
                let fastest = batcher.buckets().first().map(|k| k.pass).unwrap_or_default();
                let note = batcher.note();
                let (inputs, outputs, mode) = (batcher.inputs().to_vec(), batcher.outputs().to_vec(), batcher.mode());
                (Execution::Batched(batcher), inputs, outputs, mode, note, fastest)
            }
        };
        tracing::info!(
            "model {} ({}): inputs {}, outputs {}, mode {mode}: {note}; a request takes {:.1} µs",
            source.name,
            source.path.display(),
            list(&inputs),
            list(&outputs),
            request_time.as_secs_f64() * 1e6
        );
        if echo {
            tracing::info!("model {}: answered without running it (--echo): zeros of its outputs' shapes", source.name);
        }
        Ok(Self { name: source.name.clone(), format: model.format(), inputs, outputs, mode, exec, request_time, stats: Default::default(), echo })
    }

    /// A batched model's tensors for a request of `samples` samples: each
    /// with `samples` as its first dimension.
    pub fn batched_signature(&self, samples: usize) -> (Vec<TensorInfo>, Vec<TensorInfo>) {
        let with = |ts: &[TensorInfo]| ts.iter().map(|t| crate::batch::with_batch(t, samples)).collect();
        (with(&self.inputs), with(&self.outputs))
    }

    /// Its metric labels: name and mode.
    pub fn labels(&self) -> ModelLabels {
        ModelLabels { model: self.name.clone(), mode: self.mode.to_string() }
    }
}

/// The served models by name.
#[derive(Clone, Default)]
pub struct Models(BTreeMap<String, Arc<ServedModel>>);

impl Models {
    /// Loads every source; two sources of the same name are refused.
    pub fn load(rt: &Runtime, sources: &[ModelSource], shapes: &InputShapes, mode: ModeChoice, sessions: usize, echo: bool, batching: Option<&BatchSpec>) -> Result<Self> {
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
            map.insert(s.name.clone(), Arc::new(ServedModel::load(rt, s, shapes.of(&s.name), mode, sessions, echo, batching)?));
        }
        if map.is_empty() {
            return Err(Error::Argument("no model to serve: give at least one --model NAME=PATH".into()));
        }
        Ok(Self(map))
    }

    /// Sessions of all models together: how many requests run at once at most.
    pub fn sessions(&self) -> usize {
        self.0.values().map(|m| m.exec.sessions()).sum()
    }

    /// Whether any model's requests are batched.
    pub fn batching(&self) -> bool {
        self.0.values().any(|m| m.exec.batcher().is_some())
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
            super::status::RequestError::NotFound(format!("no model named {} is served (served: {})", super::status::echo(name), known.join(", ")))
        })?;
        if !version.is_empty() && version != VERSION {
            return Err(super::status::RequestError::NotFound(format!("model {} has no version {}; its only version is {VERSION:?}", super::status::echo(name), super::status::echo(version))));
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
        assert_eq!((none.of("tiny"), none.of("big")), (None, None), "the models' own shapes");
        let some = InputShapes::new(&parse(&["1,3,64,64", "big=1,3,224,224"]), &models).unwrap();
        assert_eq!((some.of("tiny"), some.of("big")), (Some(&[1, 3, 64, 64][..]), Some(&[1, 3, 224, 224][..])));
        let err = |v: &[&str]| InputShapes::new(&parse(v), &models).unwrap_err().to_string();
        assert!(err(&["nope=1,2"]).contains("no model named \"nope\" is served (served: tiny, big)"));
        assert!(err(&["1,2", "1,3"]).contains("given twice"));
        assert!(err(&["big=1,2", "big=1,3"]).contains("given twice"));
        for bad in ["", "1,,3", "1,-3", "tiny=x", "0"] {
            assert!(bad.parse::<InputShape>().is_err(), "{bad:?}");
        }
    }
}
