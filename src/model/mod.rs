//! [`Model`]: a model file (TorchScript or AOTInductor package), its
//! signature, and its copies loaded per device.
//!
//! | module | holds |
//! |---|---|
//! | [`signature`] | [`TensorInfo`], [`ModelInput`], [`InputDecl`], the signature hint, resolving a session's inputs |
//! | [`pytree`] | tensor names from pytree specs (outputs of both formats, a package's inputs) |
//! | [`file`](mod@self::file) | the file's format, what a package was compiled for, whether a target can run it |
//!
//! Inputs are named by the model (TorchScript: `forward`'s arguments; a
//! package: its call spec, or the hint its exporter recorded); outputs are
//! found by running it (see [`pytree`] for their names).

pub mod file;
pub mod pytree;
pub mod signature;

pub use file::{PackageFacts, Target};
pub use signature::{InputDecl, ModelInput, TensorInfo};

use crate::error::{Error, Result};
use crate::host_tensor::HostTensor;
use crate::shim::{Format, LoadedModel};
use parking_lot::Mutex;
use signature::Hint;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Where a loaded copy lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DeviceKey {
    Cpu,
    Cuda(usize),
}

/// What the runtime knows of this machine that decides where a package runs.
#[derive(Debug, Clone)]
pub(crate) struct MachineView {
    /// libtorch's version (`2.11.0+cu130`).
    pub(crate) torch_version: String,
    /// Compute capability of each GPU, by ordinal.
    pub(crate) capabilities: Vec<(i32, i32)>,
}

struct Inner {
    path: PathBuf,
    format: Format,
    package: Option<PackageFacts>,
    machine: MachineView,
    inputs: OnceLock<Vec<ModelInput>>,
    loaded: Mutex<HashMap<DeviceKey, Arc<LoadedModel>>>,
}

/// A model file, loaded at most once per device and shared by sessions
/// (clones share it).
///
/// ```
/// let rt = uminfer::Runtime::new();
/// let model = rt.model("models/encoder.pt")?; // a TorchScript file; `.pt2`: an AOTInductor package
/// let names: Vec<&str> = model.inputs()?.iter().map(|i| i.name.as_str()).collect();
/// assert_eq!(names, ["input_ids", "attention_mask"]);
/// # Ok::<(), uminfer::Error>(())
/// ```
#[derive(Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

/// The environment variable that makes an AOTInductor package check every
/// run's input dtypes, shapes and strides itself.
pub const AOTI_CHECK_INPUTS: &str = "AOTI_RUNTIME_CHECK_INPUTS";

impl Model {
    /// Opens `path`: tells its format, reads a package's metadata, and loads
    /// what runs on the CPU there (a TorchScript file, a CPU package) so that
    /// a bad file fails here.
    pub(crate) fn open(path: &Path, machine: MachineView) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::ModelNotFound { path: path.to_path_buf() });
        }
        let bad = |message: String| Error::Model { path: path.to_path_buf(), message };
        let records = crate::shim::archive_records(path).map_err(|e| bad(format!("neither a TorchScript file nor an AOTInductor package: not a PyTorch zip archive ({e})")))?;
        let format = file::classify(&records).map_err(bad)?;
        let package = match format {
            Format::Aoti => Some(PackageFacts::from_metadata(&crate::shim::package_metadata(path)?).map_err(bad)?),
            Format::TorchScript => None,
        };
        let model = Self {
            inner: Arc::new(Inner { path: path.to_path_buf(), format, package, machine, inputs: OnceLock::new(), loaded: Mutex::new(HashMap::new()) }),
        };
        if model.inner.package.as_ref().is_none_or(PackageFacts::is_cpu) {
            model.inputs()?;
        }
        Ok(model)
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// TorchScript or AOTInductor package.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    /// What a package was compiled for (`None` for TorchScript).
    pub fn package(&self) -> Option<&PackageFacts> {
        self.inner.package.as_ref()
    }

    /// Whether the model can be loaded onto the CPU (TorchScript, a CPU package).
    pub fn runs_on_cpu(&self) -> bool {
        self.package().is_none_or(PackageFacts::is_cpu)
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Model { path: self.inner.path.clone(), message: message.into() }
    }

    /// The model on `device`, loading it there on first use. A package is
    /// first checked against the device (and this CPU's instruction sets):
    /// one compiled for something else is refused, not run.
    pub fn loaded(&self, device: tch::Device) -> Result<Arc<LoadedModel>> {
        let key = match device {
            tch::Device::Cuda(i) => DeviceKey::Cuda(i),
            _ => DeviceKey::Cpu,
        };
        let mut loaded = self.inner.loaded.lock();
        if let Some(m) = loaded.get(&key) {
            return Ok(m.clone());
        }
        if let Some(p) = &self.inner.package {
            let target = match key {
                DeviceKey::Cpu => Target::Cpu { flags: file::cpu_flags() },
                DeviceKey::Cuda(i) => {
                    let capability = *self.inner.machine.capabilities.get(i).ok_or_else(|| self.error(format!("no CUDA device {i} to load the package onto")))?;
                    Target::Cuda { ordinal: i, capability }
                }
            };
            file::check_target(p, target, &self.inner.machine.torch_version).map_err(|e| self.error(e))?;
        }
        let m = Arc::new(LoadedModel::load(&self.inner.path, self.inner.format, device)?);
        loaded.insert(key, m.clone());
        Ok(m)
    }

    /// The device the model's signature is read on: the CPU unless it is a
    /// GPU package (then GPU 0).
    fn describing_device(&self) -> tch::Device {
        if self.runs_on_cpu() { tch::Device::Cpu } else { tch::Device::Cuda(0) }
    }

    /// The model's inputs, in the order it takes them: names from the model,
    /// dtypes, shapes and ranges where the model records them.
    pub fn inputs(&self) -> Result<&[ModelInput]> {
        if let Some(i) = self.inner.inputs.get() {
            return Ok(i);
        }
        let inputs = self.read_inputs()?;
        Ok(self.inner.inputs.get_or_init(|| inputs))
    }

    fn read_inputs(&self) -> Result<Vec<ModelInput>> {
        // A GPU package whose exporter recorded its signature is described
        // without a GPU (it then takes its inputs positionally, as exported).
        if let Some(h) = self.package().filter(|p| !p.is_cpu()).and_then(|p| p.hint.as_ref()) {
            let names: Vec<String> = h.inputs.iter().map(|i| i.name.clone()).collect();
            return Ok(signature::inputs_from(&names, Some(h), true));
        }
        let described = self.loaded(self.describing_device())?.describe()?;
        let v: serde_json::Value = serde_json::from_str(&described).map_err(|e| self.error(format!("the shim's description: {e}")))?;
        match self.inner.format {
            Format::TorchScript => {
                let hint = match v["hint"].as_str() {
                    Some(h) => Some(Hint::parse(h).map_err(|e| self.error(format!("extra file uminfer.json: {e}")))?),
                    None => None,
                };
                let names = torchscript_inputs(v["arguments"].as_array().map(Vec::as_slice).unwrap_or_default()).map_err(|e| self.error(e))?;
                Ok(signature::inputs_from(&names, hint.as_ref(), false))
            }
            Format::Aoti => {
                let spec = v["in_spec"].as_str().unwrap_or_default();
                let mut names = pytree::input_names(spec).map_err(|e| self.error(format!("the package's input spec: {e}")))?;
                let hint = self.package().and_then(|p| p.hint.as_ref());
                // Positional inputs take the names the exporter recorded.
                if let Some(h) = hint.filter(|h| h.inputs.len() == names.len()) {
                    for (n, hi) in names.iter_mut().zip(&h.inputs) {
                        if n.starts_with("input__") {
                            n.clone_from(&hi.name);
                        }
                    }
                }
                Ok(signature::inputs_from(&names, hint, true))
            }
        }
    }

    /// Refuses declarations a package cannot check: a package reads its
    /// inputs as compiled, so dtypes and shapes it does not record are
    /// accepted only when it checks each run itself ([`AOTI_CHECK_INPUTS`]).
    fn check_unrecorded_inputs(&self) -> Result<()> {
        if self.inner.format != Format::Aoti || self.inputs()?.iter().all(|i| i.fixed) {
            return Ok(());
        }
        if std::env::var(AOTI_CHECK_INPUTS).as_deref() == Ok("1") {
            return Ok(());
        }
        Err(self.error(format!(
            "the package does not record its inputs' dtypes and shapes (no uminfer.signature metadata), and a wrong declaration would make it read out of bounds: \
             export it with that metadata (see models/export.py), or set {AOTI_CHECK_INPUTS}=1 so that the package checks every run (the uminfer command does)"
        )))
    }

    /// The inputs of a session that declares `decls`: every input of the
    /// model, in its order, with the declared dtype and shape where given,
    /// else the model's, else `default_dtype` ([`signature::resolve`]).
    pub fn resolve(&self, decls: &[InputDecl], default_dtype: Option<crate::dtype::DType>) -> Result<Vec<TensorInfo>> {
        self.check_unrecorded_inputs()?;
        signature::resolve(self.inputs()?, decls, default_dtype).map_err(|source| Error::Signature { path: self.inner.path.clone(), source })
    }

    /// The inputs a server gives the model: as recorded, or with
    /// `input_shape`, a one-input model's declared shape (of the dtype the
    /// model records, else float32).
    pub fn resolve_input_shape(&self, input_shape: Option<&[i64]>) -> Result<Vec<TensorInfo>> {
        let decls: Vec<InputDecl> = input_shape.map(|s| InputDecl { name: None, dtype: None, shape: Some(s.to_vec()) }).into_iter().collect();
        self.resolve(&decls, input_shape.map(|_| crate::dtype::DType::F32))
    }

    /// Runs the model once on `loaded` over `inputs` (eager, new tensors):
    /// its outputs, named and described, and the tensors.
    pub(crate) fn discover_outputs(&self, loaded: &LoadedModel, inputs: &[tch::Tensor]) -> Result<(Vec<TensorInfo>, Vec<tch::Tensor>)> {
        let (tensors, spec) = loaded.run(inputs)?;
        let names = pytree::output_names(&spec).map_err(|e| self.error(format!("output {e}")))?;
        if names.len() != tensors.len() {
            return Err(self.error(format!("the output spec names {} tensors, the model returned {}", names.len(), tensors.len())));
        }
        let infos = names
            .into_iter()
            .zip(&tensors)
            .map(|(name, t)| {
                let dtype = crate::dtype::DType::from_kind(t.kind()).ok_or_else(|| self.error(format!("output `{name}` has dtype {:?}, which uminfer does not carry", t.kind())))?;
                Ok(TensorInfo { name, dtype, shape: t.size() })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((infos, tensors))
    }

    /// Runs the model once on the CPU over named `inputs` (copies, eager):
    /// the reference answer, with its outputs named. Inputs are matched to
    /// the model's by name, in any order.
    pub fn run_cpu(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        self.run_eager(tch::Device::Cpu, inputs)
    }

    /// [`run_cpu`](Self::run_cpu) on `device` (a GPU package's reference
    /// answer): the inputs copied there, the outputs back.
    pub fn run_eager(&self, device: tch::Device, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        if device == tch::Device::Cpu && !self.runs_on_cpu() {
            return Err(self.error("the package was compiled for CUDA; it does not run on the CPU"));
        }
        let model_inputs = self.inputs()?;
        let tensors = order_by_name(model_inputs, inputs)
            .map_err(|e| self.error(e))?
            .into_iter()
            .map(|t| Ok(t.to_tensor()?.f_to_device(device)?))
            .collect::<Result<Vec<_>>>()?;
        let (infos, outs) = self.discover_outputs(&*self.loaded(device)?, &tensors)?;
        infos.iter().zip(&outs).map(|(i, t)| HostTensor::from_tensor(&i.name, t)).collect()
    }

    /// The device an eager reference run uses: the CPU, or GPU 0 for a GPU package.
    pub fn reference_device(&self) -> tch::Device {
        self.describing_device()
    }

    /// What the model says of itself ([`Description`]): its inputs as
    /// recorded, and its outputs from one eager run on zeros of the inputs
    /// `decls` resolve to (when they resolve).
    pub fn describe(&self, decls: &[InputDecl]) -> Description {
        let inputs = self.inputs().map(<[ModelInput]>::to_vec).map_err(|e| e.to_string());
        let outputs = self.resolve(decls, None).map_err(|e| e.to_string()).and_then(|infos| {
            let zeros = infos.iter().map(|i| HostTensor::zeros(&i.name, i.dtype, &i.shape)).collect::<Result<Vec<_>>>().map_err(|e| e.to_string())?;
            let outs = self.run_eager(self.reference_device(), &zeros).map_err(|e| e.to_string())?;
            Ok(outs.iter().map(|t| TensorInfo { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() }).collect())
        });
        Description { path: self.inner.path.clone(), format: self.inner.format, package: self.inner.package.clone(), inputs, outputs }
    }
}

/// A model's signature as [`Model::describe`] finds it (JSON, and text
/// through `Display`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Description {
    pub path: PathBuf,
    pub format: Format,
    /// What a package was compiled for.
    pub package: Option<PackageFacts>,
    /// The inputs as the model records them, or why they could not be read.
    pub inputs: std::result::Result<Vec<ModelInput>, String>,
    /// The outputs of one run, or why there was none (an input not recorded).
    pub outputs: std::result::Result<Vec<TensorInfo>, String>,
}

impl std::fmt::Display for Description {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "model {} ({})", self.path.display(), self.format)?;
        if let Some(p) = &self.package {
            let target = match (&p.compute_capability, p.cpu_isa.is_empty()) {
                (Some(cc), _) => format!("compute capability {cc}"),
                (None, false) => p.cpu_isa.join(" "),
                (None, true) => "no recorded target".into(),
            };
            writeln!(f, "compiled for {} ({target}){}", p.device, p.cpu_model.as_ref().map(|m| format!(" on {m}")).unwrap_or_default())?;
        }
        let dims = |s: &[i64]| format!("[{}]", s.iter().map(|d| if *d < 0 { "*".to_string() } else { d.to_string() }).collect::<Vec<_>>().join(", "));
        match &self.inputs {
            Ok(inputs) => {
                writeln!(f, "inputs:")?;
                for i in inputs {
                    let dtype = i.dtype.map_or("dtype not recorded", |d| d.torch_name());
                    let shape = i.shape.as_deref().map_or_else(|| "shape not recorded".to_string(), dims);
                    let range = i.range.map(|(lo, hi)| format!("  values in [{lo}, {hi})")).unwrap_or_default();
                    writeln!(f, "  {:<20} {dtype} {shape}{range}", i.name)?;
                }
            }
            Err(e) => writeln!(f, "inputs: unreadable: {e}")?,
        }
        match &self.outputs {
            Ok(outputs) => {
                writeln!(f, "outputs (found by one run):")?;
                for o in outputs {
                    writeln!(f, "  {:<20} {} {}", o.name, o.dtype.torch_name(), dims(&o.shape))?;
                }
                Ok(())
            }
            Err(e) => writeln!(f, "outputs: not found: {e}"),
        }
    }
}

/// Input tensors read from files, fitted to a model ([`Model::fit_inputs`]).
#[derive(Debug, Clone)]
pub struct FittedInputs {
    /// The tensors in the model's order, converted where the model takes another dtype.
    pub tensors: Vec<HostTensor>,
    /// What was converted, for the user.
    pub notes: Vec<String>,
}

impl FittedInputs {
    /// Declarations of exactly these tensors' dtypes and shapes.
    pub fn decls(&self) -> Vec<InputDecl> {
        self.tensors.iter().map(|t| InputDecl { name: Some(t.name.clone()), dtype: Some(t.dtype), shape: Some(t.shape.clone()) }).collect()
    }
}

impl Model {
    /// Fits tensors read from files to the model's inputs: matched by name
    /// (a model with one input takes a lone tensor whatever its name), put
    /// in the model's order, and, since NumPy has no bfloat16, a float32
    /// tensor given for a bf16 input converted (noted). Dtypes and shapes
    /// come from the files; a session declared with [`FittedInputs::decls`]
    /// checks them against the model.
    pub fn fit_inputs(&self, mut given: Vec<HostTensor>) -> Result<FittedInputs> {
        let inputs = self.inputs()?;
        if let ([only], [t]) = (inputs, given.as_mut_slice()) {
            t.name.clone_from(&only.name);
        }
        let ordered = order_by_name(inputs, &given).map_err(|e| self.error(e))?;
        let mut notes = Vec::new();
        let tensors = ordered
            .into_iter()
            .zip(inputs)
            .map(|(t, m)| match m.dtype {
                Some(crate::dtype::DType::Bf16) if t.dtype == crate::dtype::DType::F32 => {
                    notes.push(format!("input `{}`: float32 values converted to bf16 (the model's dtype; NumPy has no bfloat16)", t.name));
                    t.converted(crate::dtype::DType::Bf16)
                }
                _ => Ok(t.clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FittedInputs { tensors, notes })
    }
}

/// `inputs` in the model's order, or which names are missing or unknown.
pub fn order_by_name<'a>(model: &[ModelInput], inputs: &'a [HostTensor]) -> std::result::Result<Vec<&'a HostTensor>, String> {
    let unknown: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).filter(|n| !model.iter().any(|m| m.name == *n)).collect();
    let missing: Vec<&str> = model.iter().map(|m| m.name.as_str()).filter(|n| !inputs.iter().any(|t| t.name == *n)).collect();
    if !unknown.is_empty() || !missing.is_empty() {
        let list = |v: &[&str]| v.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !unknown.is_empty() {
            parts.push(format!("the model has no input {}", list(&unknown)));
        }
        if !missing.is_empty() {
            parts.push(format!("input {} not given", list(&missing)));
        }
        return Err(format!("{}; the model takes {}", parts.join(", "), list(&model.iter().map(|m| m.name.as_str()).collect::<Vec<_>>())));
    }
    Ok(model.iter().map(|m| inputs.iter().find(|t| t.name == m.name).expect("checked above")).collect())
}

/// The tensor arguments of a TorchScript `forward` schema (as the shim
/// describes them), in order; arguments with defaults after them are left
/// to their defaults.
fn torchscript_inputs(args: &[serde_json::Value]) -> std::result::Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut defaults_from: Option<String> = None;
    for a in args {
        let (name, ty, has_default) = (a["name"].as_str().unwrap_or("?"), a["type"].as_str().unwrap_or("?"), a["has_default"].as_bool().unwrap_or(false));
        match (&defaults_from, ty == "Tensor", has_default) {
            (None, true, false) => names.push(name.to_string()),
            (None, _, true) => defaults_from = Some(name.to_string()),
            (None, false, false) => return Err(format!("forward takes `{name}: {ty}`; uminfer passes tensors only (wrap the model so that forward takes tensors)")),
            (Some(_), _, true) => {}
            (Some(first), _, false) => return Err(format!("forward's argument `{name}` has no default but follows `{first}`, which has one; uminfer passes tensors positionally")),
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn arg(name: &str, ty: &str, has_default: bool) -> serde_json::Value {
        serde_json::json!({"name": name, "type": ty, "has_default": has_default})
    }

    #[test]
    fn torchscript_inputs_are_the_tensor_arguments_before_the_defaults() {
        assert_eq!(torchscript_inputs(&[arg("input_ids", "Tensor", false), arg("attention_mask", "Tensor", false)]).unwrap(), ["input_ids", "attention_mask"]);
        assert_eq!(torchscript_inputs(&[arg("x", "Tensor", false), arg("scale", "float", true), arg("y", "Optional[Tensor]", true)]).unwrap(), ["x"]);
        assert!(torchscript_inputs(&[arg("x", "Tensor", false), arg("k", "int", false)]).unwrap_err().contains("`k: int`"));
        assert!(torchscript_inputs(&[arg("a", "Tensor", true), arg("b", "Tensor", false)]).unwrap_err().contains("follows `a`"));
    }

    #[test]
    fn named_inputs_are_put_in_the_model_order_and_mismatches_named() {
        let model: Vec<ModelInput> = ["input_ids", "attention_mask"].iter().map(|n| ModelInput { name: n.to_string(), dtype: None, shape: None, range: None, fixed: false }).collect();
        let t = |n: &str| HostTensor::zeros(n, DType::I64, &[1, 4]).unwrap();
        let given = [t("attention_mask"), t("input_ids")];
        let ordered = order_by_name(&model, &given).unwrap();
        assert_eq!(ordered.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["input_ids", "attention_mask"]);
        let e = order_by_name(&model, &[t("input_ids"), t("token_type_ids")]).unwrap_err();
        assert_eq!(e, "the model has no input `token_type_ids`, input `attention_mask` not given; the model takes `input_ids`, `attention_mask`");
    }
}
