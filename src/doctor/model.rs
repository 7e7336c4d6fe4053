//! `uminfer doctor --model M`: what this machine can do with one model file.
//!
//! | item | does |
//! |---|---|
//! | [`probe`] | opens the file and gathers [`ModelFacts`] (impure; never panics: every failure becomes a fact) |
//! | [`verdicts`] | model facts + machine facts + the machine's verdict → a verdict per mode (pure) |
//! | [`notes`] | what the user must supply (inputs the model does not record) (pure) |
//! | [`diagnose_model`] | both, as a [`ModelReport`]; [`ModelReport::exit_code`] |
//!
//! The text and JSON forms are [`super::render::model_text`] and
//! [`super::render::model_json`].
//!
//! What the probe does: open the model (as the runtime would: the format, a
//! package's metadata, and for what runs on the CPU a load there); read its
//! inputs; resolve them without declarations; when they resolve and the
//! model runs on the CPU, run it once there (zeros; values inside an input's
//! recorded range) to find its outputs. On a machine whose verdict has a
//! usable GPU, and only there, it then builds a `gpu-copy` session and a
//! `gpu-managed-graph` session, where the facts gathered so far say they
//! should run, to learn whether the model runs on that GPU and whether it
//! can be captured into a CUDA graph (`try_gpu_sessions`).
//!
//! What the verdict refuses, beyond what the machine's verdict already
//! refuses (kept, with the machine's reason): a file that does not open
//! (every mode, with the error); a package compiled for another device
//! type, compute capability, instruction set, torch version or platform
//! ([`check_target`]); a model with a bf16 input or output on a GPU below
//! compute capability 8.0; a model that fails its CPU run (mode `cpu`), or
//! whose session on the GPU failed to build (that mode, or every GPU mode
//! when `gpu-copy` failed).

use super::facts::{DeviceFacts, Facts};
use super::verdict::{self, ModeVerdict};
use super::Report;
use crate::dtype::DType;
use crate::error::Error;
use crate::host_tensor::{fill_random, HostTensor};
use crate::mode::Mode;
use crate::model::file::{self, check_target, Target};
use crate::model::{Model, ModelInput, PackageFacts, TensorInfo};
use crate::session::{Session, SessionSpec};
use crate::shim::Format;
use serde::Serialize;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Version of the `model` object's schema in the JSON report.
pub const MODEL_SCHEMA_VERSION: u32 = 1;

/// The compute capability from which GPUs have bf16 GEMMs and convolutions (sm_80).
pub const BF16_MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// The GPU modes, in report order.
const GPU_MODES: [Mode; 4] = [Mode::GpuCopy, Mode::GpuPinned, Mode::GpuManaged, Mode::GpuManagedGraph];

/// Everything the probe learnt about one model file, as plain data: the
/// input of the pure [`verdicts`] and [`notes`].
#[derive(Debug, Clone, Serialize, Default)]
pub struct ModelFacts {
    /// The file, as given.
    pub path: PathBuf,
    /// Why the file did not open (`None`: it opened). Opening tells the
    /// format, reads a package's metadata, and loads onto the CPU what runs
    /// there (a TorchScript file, a CPU package); a CUDA package opens
    /// without a GPU (metadata only).
    pub open_error: Option<String>,
    pub format: Option<Format>,
    /// What a package was compiled for (`None` for TorchScript).
    pub package: Option<PackageFacts>,
    /// The inputs as the model records them, or why they could not be read
    /// (a CUDA package without a recorded signature needs a GPU); `None`
    /// when the file did not open.
    pub inputs: Option<Result<Vec<ModelInput>, String>>,
    /// The inputs resolved without declarations, or what must be declared;
    /// `None` when the inputs could not be read.
    pub resolved: Option<Result<Vec<TensorInfo>, String>>,
    /// One eager run on the CPU: the outputs, or why it failed; `None` when
    /// not run (the model does not run on the CPU, or its inputs did not resolve).
    pub cpu_run: Option<Result<Vec<TensorInfo>, String>>,
    /// Sessions built on the GPU, by mode (GPU machines only, where the
    /// other facts say the mode should run the model: `gpu-copy`, then
    /// `gpu-managed-graph`).
    pub gpu_sessions: BTreeMap<Mode, GpuTry>,
    /// This CPU's `/proc/cpuinfo` flags, read for CPU packages only (what
    /// [`check_target`] compares their instruction sets with); empty otherwise.
    pub cpu_flags: Vec<String>,
}

/// One session built on the GPU for the doctor.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GpuTry {
    /// The CUDA device ordinal.
    pub device: usize,
    /// The session's note (warm-up, capture) after a build and one request,
    /// or why it failed.
    pub outcome: Result<String, String>,
    /// The session's outputs (empty when it failed).
    pub outputs: Vec<TensorInfo>,
}

impl ModelFacts {
    /// The outputs some run found (the CPU run first, else a GPU session).
    pub fn outputs(&self) -> Option<&[TensorInfo]> {
        if let Some(Ok(o)) = &self.cpu_run {
            return Some(o);
        }
        self.gpu_sessions.values().find_map(|t| t.outcome.is_ok().then_some(t.outputs.as_slice()))
    }

    /// The inputs the model records (empty when they could not be read).
    pub fn recorded_inputs(&self) -> &[ModelInput] {
        match &self.inputs {
            Some(Ok(i)) => i,
            _ => &[],
        }
    }

    /// The first bf16 tensor of the model (an input, or an output some run found).
    fn bf16_tensor(&self) -> Option<(&'static str, &str)> {
        let input = self.recorded_inputs().iter().find(|i| i.dtype == Some(DType::Bf16)).map(|i| ("input", i.name.as_str()));
        let resolved = match &self.resolved {
            Some(Ok(r)) => r.iter().find(|t| t.dtype == DType::Bf16).map(|t| ("input", t.name.as_str())),
            _ => None,
        };
        let output = self.outputs().and_then(|o| o.iter().find(|t| t.dtype == DType::Bf16)).map(|t| ("output", t.name.as_str()));
        input.or(resolved).or(output)
    }
}

/// The doctor's answer for one model on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub schema_version: u32,
    /// The raw findings the verdicts were derived from.
    pub facts: ModelFacts,
    /// What the user must supply or should know (inputs to declare).
    pub notes: Vec<String>,
    /// Whether each mode runs this model here, and why (not).
    pub modes: BTreeMap<Mode, ModeVerdict>,
}

impl ModelReport {
    /// Builds the report from model facts and the machine's report (pure).
    pub fn from_facts(facts: ModelFacts, machine: &Report) -> Self {
        Self { schema_version: MODEL_SCHEMA_VERSION, notes: notes(&facts), modes: verdicts(&facts, &machine.facts, &machine.modes), facts }
    }

    /// Modes that run the model, in report order.
    pub fn usable_modes(&self) -> Vec<Mode> {
        Mode::ALL.into_iter().filter(|m| self.modes.get(m).is_some_and(|v| v.usable)).collect()
    }

    /// The exit code of `uminfer doctor --model`: 2 when the model does not
    /// open or no mode runs it here; otherwise the machine's
    /// ([`Report::exit_code`]: 0 all passed, 1 warnings, 2 a check the CPU
    /// modes need failed).
    pub fn exit_code(&self, machine: &Report) -> i32 {
        if self.facts.open_error.is_some() || self.usable_modes().is_empty() {
            2
        } else {
            machine.exit_code()
        }
    }

    /// `Ok` when `mode` runs the model here, else the reason.
    pub fn check_mode(&self, mode: Mode) -> Result<(), String> {
        match self.modes.get(&mode) {
            Some(v) if v.usable => Ok(()),
            Some(v) => Err(v.reason.clone()),
            None => Err(format!("mode {mode} was not assessed")),
        }
    }
}

/// Probes `path` on the machine `machine` describes and gives the verdict
/// per mode: what `uminfer doctor --model M` prints. Never panics.
pub fn diagnose_model(machine: &Report, path: &Path) -> ModelReport {
    ModelReport::from_facts(probe(machine, path), machine)
}

fn yes(reason: impl Into<String>) -> ModeVerdict {
    ModeVerdict { usable: true, reason: reason.into() }
}

fn no(reason: impl Into<String>) -> ModeVerdict {
    ModeVerdict { usable: false, reason: reason.into() }
}

/// The libtorch version packages are checked against (as the runtime does).
fn torch_version(machine: &Facts) -> &str {
    machine.torch.runtime_version.as_deref().unwrap_or(&machine.torch.build_version)
}

/// The machine's verdict on `mode`, or a refusal when it has none.
fn machine_verdict(machine_modes: &BTreeMap<Mode, ModeVerdict>, mode: Mode) -> ModeVerdict {
    machine_modes.get(&mode).cloned().unwrap_or_else(|| no(format!("mode {mode} was not assessed on this machine")))
}

/// Whether each mode runs the model, and why (not): the machine's refusals
/// stand; a model that did not open is refused everywhere; then what the
/// model needs of the target (pure: over facts only).
pub fn verdicts(model: &ModelFacts, machine: &Facts, machine_modes: &BTreeMap<Mode, ModeVerdict>) -> BTreeMap<Mode, ModeVerdict> {
    let mut out = BTreeMap::new();
    if let Some(e) = &model.open_error {
        for m in Mode::ALL {
            out.insert(m, no(format!("does not load: {e}")));
        }
        return out;
    }
    let torch = torch_version(machine);
    out.insert(Mode::Cpu, cpu_verdict(model, machine_verdict(machine_modes, Mode::Cpu), torch));
    let gpu = verdict::gpu_blocker(machine).ok();
    for m in GPU_MODES {
        out.insert(m, gpu_verdict(m, model, machine_verdict(machine_modes, m), gpu, torch));
    }
    let shm = machine_verdict(machine_modes, Mode::ShmIpc);
    let shm = if !shm.usable {
        shm
    } else if let Err(why) = one_f32_tensor(model) {
        no(format!("the shared-memory protocol v1 carries one float32 tensor each way; {why}"))
    } else if let Some(m) = [Mode::Cpu].into_iter().chain(GPU_MODES).find(|m| out[m].usable) {
        yes(format!("`uminfer serve` runs it in a {m} session and hands tensors over /dev/shm"))
    } else {
        no(format!("no session mode runs it (cpu: {})", out[&Mode::Cpu].reason))
    };
    out.insert(Mode::ShmIpc, shm);
    out
}

/// `Ok` unless the model is known to take or return anything but one
/// float32 tensor (what the serving front ends carry until protocol v2).
fn one_f32_tensor(model: &ModelFacts) -> Result<(), String> {
    match model.recorded_inputs() {
        [i] if i.dtype.is_none_or(|d| d == DType::F32) => {}
        [i] => return Err(format!("input `{}` is {}", i.name, i.dtype.map_or("?", DType::name))),
        more => return Err(format!("the model takes {} inputs", more.len())),
    }
    match model.outputs() {
        None | Some([]) => Ok(()),
        Some([o]) if o.dtype == DType::F32 => Ok(()),
        Some(outs) => Err(format!("the model returns {}", outs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))),
    }
}

fn cpu_verdict(model: &ModelFacts, machine: ModeVerdict, torch: &str) -> ModeVerdict {
    if !machine.usable {
        return machine;
    }
    if let Some(p) = &model.package {
        if let Err(e) = check_target(p, Target::Cpu { flags: &model.cpu_flags }, torch) {
            return no(e);
        }
    }
    if let Some(Err(e)) = &model.inputs {
        return no(format!("its inputs could not be read: {e}"));
    }
    match (&model.cpu_run, &model.resolved) {
        (Some(Err(e)), _) => no(format!("fails on the CPU: {e}")),
        (Some(Ok(_)), _) => yes("loads and runs on the CPU (one run over zero inputs)"),
        (None, Some(Err(_))) => yes("loads on the CPU; not run: its inputs' dtypes or shapes are not recorded (declare them with --input-spec)"),
        (None, _) => yes("loads on the CPU (not run)"),
    }
}

fn gpu_verdict(mode: Mode, model: &ModelFacts, machine: ModeVerdict, gpu: Option<&DeviceFacts>, torch: &str) -> ModeVerdict {
    if !machine.usable {
        return machine;
    }
    let Some(d) = gpu else {
        return no("the machine's verdict found no usable GPU");
    };
    let (ord, cc) = (d.ordinal, d.compute_capability);
    if let Some(p) = &model.package {
        if let Err(e) = check_target(p, Target::Cuda { ordinal: ord.max(0) as usize, capability: cc }, torch) {
            return no(e);
        }
    }
    if let Some((what, name)) = model.bf16_tensor() {
        if cc < BF16_MIN_COMPUTE_CAPABILITY {
            return no(format!(
                "{what} `{name}` is bf16: bf16 GEMMs and convolutions need compute capability {}.{} (sm_80) or newer; GPU {ord} ({}) has {}.{}",
                BF16_MIN_COMPUTE_CAPABILITY.0, BF16_MIN_COMPUTE_CAPABILITY.1, d.name, cc.0, cc.1
            ));
        }
    }
    let copy = model.gpu_sessions.get(&Mode::GpuCopy);
    match (model.gpu_sessions.get(&mode), copy) {
        (Some(t), _) => {
            return match &t.outcome {
                Ok(note) if mode == Mode::GpuManagedGraph => yes(format!("captured into a CUDA graph and replayed on GPU {} ({note})", t.device)),
                Ok(note) => yes(format!("runs on GPU {} ({note})", t.device)),
                Err(e) if mode == Mode::GpuManagedGraph => no(format!("a gpu-managed-graph session could not be built on GPU {}: {e}", t.device)),
                Err(e) => no(format!("does not run on GPU {}: {e}", t.device)),
            };
        }
        (None, Some(GpuTry { device, outcome: Err(e), .. })) => return no(format!("does not run on GPU {device} (gpu-copy failed): {e}")),
        (None, Some(GpuTry { device, outcome: Ok(_), .. })) => return yes(format!("{}; the model ran on GPU {device} in gpu-copy", machine.reason)),
        (None, None) => {}
    }
    if let Some(Err(_)) = &model.inputs {
        return yes(format!("{}; not tried on the GPU: its inputs are read on the GPU", machine.reason));
    }
    let untried = if matches!(model.resolved, Some(Err(_))) {
        "not tried on the GPU: its inputs' dtypes or shapes are not recorded (declare them with --input-spec)"
    } else {
        "not tried on the GPU"
    };
    let capture = if mode == Mode::GpuManagedGraph { "; whether it can be captured is unknown" } else { "" };
    yes(format!("{}; {untried}{capture}", machine.reason))
}

/// What the user must supply or should know about the model (pure).
pub fn notes(model: &ModelFacts) -> Vec<String> {
    let mut out = Vec::new();
    if model.open_error.is_some() {
        return out;
    }
    for i in model.recorded_inputs() {
        let missing = match (i.dtype.is_some(), i.shape.is_some()) {
            (false, false) => "dtype and shape",
            (false, true) => "dtype",
            (true, false) => "shape",
            (true, true) => "",
        };
        if !missing.is_empty() {
            out.push(format!("input `{}`: the model does not record its {missing}: declare it with --input-spec {}=DTYPE:DIMS", i.name, i.name));
        } else if i.shape.as_ref().is_some_and(|s| s.contains(&-1)) {
            out.push(format!("input `{}` has a dimension of any size (-1): declare its size with --input-spec {}=DTYPE:DIMS", i.name, i.name));
        }
    }
    if let Some(Err(e)) = &model.resolved {
        if out.is_empty() {
            out.push(e.clone());
        }
    }
    if let Some(Err(e)) = &model.inputs {
        out.push(format!("its inputs could not be read here: {e}"));
    }
    out
}

/// An error's text without the model's path (the report names it once).
fn error_text(e: &Error) -> String {
    match e {
        Error::Model { message, .. } => message.clone(),
        Error::Signature { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Runs `f`, turning a panic into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "unknown panic".into());
        Err(format!("{what} panicked: {msg}"))
    })
}

/// Gathers the facts about `path` on the machine `machine` describes.
/// Never panics: every failure becomes a fact.
pub fn probe(machine: &Report, path: &Path) -> ModelFacts {
    let mut facts = ModelFacts { path: path.to_path_buf(), ..ModelFacts::default() };
    let model = match guarded("opening the model", || Model::open(path, machine.machine_view()).map_err(|e| error_text(&e))) {
        Ok(m) => m,
        Err(e) => {
            facts.open_error = Some(e);
            return facts;
        }
    };
    facts.format = Some(model.format());
    facts.package = model.package().cloned();
    if facts.package.as_ref().is_some_and(PackageFacts::is_cpu) {
        facts.cpu_flags = file::cpu_flags().to_vec();
    }
    let inputs = guarded("reading the inputs", || model.inputs().map(<[ModelInput]>::to_vec).map_err(|e| error_text(&e)));
    let ranges: Vec<Option<(i64, i64)>> = inputs.as_ref().map(|i| i.iter().map(|m| m.range).collect()).unwrap_or_default();
    facts.inputs = Some(inputs);
    if matches!(facts.inputs, Some(Ok(_))) {
        facts.resolved = Some(guarded("resolving the inputs", || model.resolve(&[], None).map_err(|e| error_text(&e))));
    }
    if let (true, Some(Ok(resolved))) = (model.runs_on_cpu(), &facts.resolved) {
        let resolved = resolved.clone();
        facts.cpu_run = Some(guarded("running the model on the CPU", || run_on_zeros(&model, &resolved, &ranges)));
    }
    try_gpu_sessions(&model, machine, &mut facts);
    facts
}

/// One CPU run over zeros (integer inputs with a recorded range: values
/// inside it); the outputs' names, dtypes and shapes.
fn run_on_zeros(model: &Model, inputs: &[TensorInfo], ranges: &[Option<(i64, i64)>]) -> Result<Vec<TensorInfo>, String> {
    let tensors = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut h = HostTensor::zeros(&t.name, t.dtype, &t.shape)?;
            if let Some(r) = ranges.get(i).copied().flatten().filter(|_| !t.dtype.is_float()) {
                fill_random(t.dtype, Some(r), i as u64 + 1, h.bytes_mut());
            }
            Ok(h)
        })
        .collect::<crate::error::Result<Vec<_>>>()
        .map_err(|e| error_text(&e))?;
    let outs = model.run_cpu(&tensors).map_err(|e| error_text(&e))?;
    Ok(outs.into_iter().map(|o| TensorInfo { name: o.name, dtype: o.dtype, shape: o.shape }).collect())
}

/// GPU machines only: builds a `gpu-copy` session, then a
/// `gpu-managed-graph` one, each where the facts gathered so far say the
/// mode should run it, and serves one request on it; records what happened.
/// Returns at once where the machine's verdict has no usable GPU (so it is
/// never executed without one), or where the inputs did not resolve.
fn try_gpu_sessions(model: &Model, machine: &Report, facts: &mut ModelFacts) {
    if machine.check_mode(Mode::GpuCopy).is_err() || !matches!(facts.resolved, Some(Ok(_))) {
        return;
    }
    let Ok(device) = verdict::gpu_blocker(&machine.facts) else { return };
    let device = device.ordinal.max(0) as usize;
    for mode in [Mode::GpuCopy, Mode::GpuManagedGraph] {
        if !verdicts(facts, &machine.facts, &machine.modes)[&mode].usable {
            continue;
        }
        let built = guarded("building a session", || {
            let mut s = Session::build(machine, model, SessionSpec::new().mode(mode).device(device), None).map_err(|e| error_text(&e))?;
            s.run().map_err(|e| format!("the first request failed: {}", error_text(&e)))?;
            Ok((s.note().to_string(), s.outputs().to_vec()))
        });
        let failed = built.is_err();
        let (outcome, outputs) = match built {
            Ok((note, outputs)) => (Ok(note), outputs),
            Err(e) => (Err(e), Vec::new()),
        };
        facts.gpu_sessions.insert(mode, GpuTry { device, outcome, outputs });
        if failed && mode == Mode::GpuCopy {
            return;
        }
    }
}
