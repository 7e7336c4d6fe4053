//! `uminfer bench`: every scheme side by side on one or more models,
//! interleaved round-robin in one run, each checked against the CPU eager
//! result before it is timed. Inputs of any signature: drawn per dtype and
//! value range, or a sample file. [`Bench::prepare`] gives one scheme, built
//! and checked, to another harness (the criterion bench `benches/schemes.rs`).
//!
//! | module | holds |
//! |---|---|
//! | `schemes` | the schemes: serialize-copy, cpu-zero-copy, shm-ipc and its floor shm-echo, GPU session modes, tch-naive, Python peers (TorchScript, CUDA graph, ONNX Runtime) |
//! | [`json_server`] | serialize-copy's HTTP/JSON server process (`uminfer bench-json-server`) |
//! | `oip` | the Open Inference Protocol schemes: oip-grpc, oip-grpc-shm and their floor grpc-echo (a `serve --grpc` child, a tonic client) |
//! | [`stats`] | per-scheme statistics (hdrhistogram), ratios, the table |
//! | [`plot`] | the latency CDF and throughput-vs-latency pictures (plotters, SVG) |
//! | [`throughput`] | `--concurrency`: closed-loop throughput, unbatched and batched |

pub mod json_server;
pub mod load;
mod oip;
pub mod phases;
pub mod plot;
mod schemes;
pub mod stats;
pub mod throughput;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host_tensor::{fill_random, HostTensor};
use crate::mode::Mode;
use crate::model::{InputDecl, TensorInfo};
use crate::runtime::Runtime;
use crate::session::{RunTiming, TimingRecorder};
use crate::shim::Format;
use schemes::{PyPeer, Scheme, SerializeCopy, SessionScheme, ShmIpc, TchNaive};
use serde::Serialize;
use stats::{add_ratios, SchemeResult, Status};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every scheme, in table order.
pub const SCHEMES: [&str; 15] = [
    "serialize-copy",
    "cpu-zero-copy",
    "shm-ipc",
    "shm-echo",
    "oip-grpc",
    "oip-grpc-shm",
    "grpc-echo",
    "gpu-copy",
    "gpu-pinned",
    "gpu-managed",
    "gpu-managed-graph",
    "tch-naive",
    "py-torchscript",
    "py-cuda-graph",
    "py-onnxruntime",
];

/// The schemes whose server process runs in [`BenchOptions::server_mode`].
pub const SERVER_SCHEMES: [&str; 5] = ["shm-ipc", "shm-echo", "oip-grpc", "oip-grpc-shm", "grpc-echo"];

/// The schemes whose CPU forward passes run in the bench's own process.
pub const IN_PROCESS_CPU: [&str; 2] = ["cpu-zero-copy", "tch-naive"];

/// The floor schemes: the same requests and answers through a server that
/// runs no model (their answers are zeros: only their shapes are checked).
pub const ECHO_SCHEMES: [&str; 2] = ["shm-echo", "grpc-echo"];

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Model files (TorchScript or AOTInductor packages), run side by side.
    pub models: Vec<PathBuf>,
    /// What is declared of the models' inputs (their dtypes and shapes where
    /// a model does not record them); the same for every model. A
    /// declaration without a name or dtype (`--shape`) is the only input's
    /// shape, of the model's dtype or float32 when it records none.
    pub inputs: Vec<InputDecl>,
    /// Value ranges `[low, high)` of integer inputs, by name, over the
    /// models' own (token ids must stay inside the vocabulary); each applies
    /// to every model that has the input.
    pub input_ranges: Vec<(String, (i64, i64))>,
    /// Sample inputs (`.npz`, by input name): every request and the check
    /// use them instead of random draws.
    pub sample_inputs: Option<PathBuf>,
    /// Timed requests per scheme.
    pub requests: usize,
    /// Requests a scheme runs back to back in its turn (1: strict
    /// round-robin; `requests`: each scheme alone, in steady state).
    pub burst: usize,
    /// Pause after each scheme's turn (when more than one scheme runs), so
    /// that threads still spinning from that turn have gone to sleep before
    /// the next scheme's turn: libtorch's OpenMP workers spin for several
    /// milliseconds after a forward pass (measured ~7.5 ms of CPU on the
    /// 2-core build machine), taking a core from whatever runs next.
    pub settle: Duration,
    /// Warm-up requests per scheme before timing...
    pub warmup: usize,
    /// ...lasting at least this long.
    pub warmup_time: Duration,
    /// Schemes to run (default: all).
    pub schemes: Vec<String>,
    /// Python for the peers (default: the project's .venv, else python3).
    pub python: Option<PathBuf>,
    /// Busy-wait of the session schemes' threads ([`SessionSpec::spin`](crate::session::SessionSpec::spin));
    /// `None`: the session default.
    pub spin: Option<Duration>,
    /// Page placement of the managed schemes' regions.
    pub managed_placement: crate::session::ManagedPlacement,
    /// How `gpu-managed-graph` launches its graph.
    pub graph_launch: crate::session::GraphLaunch,
    /// Capture every GPU session scheme into a CUDA graph ([`SessionSpec::capture_graph`](crate::session::SessionSpec::capture_graph)).
    pub capture_graphs: bool,
    /// GPU session schemes launch graphs from their session thread ([`SessionSpec::dedicated_thread`](crate::session::SessionSpec::dedicated_thread)).
    pub gpu_session_thread: bool,
    /// GPU session schemes stage their input in device memory ([`SessionSpec::stage_input`](crate::session::SessionSpec::stage_input)).
    pub stage_input: bool,
    /// Session mode of the `uminfer serve` processes of `shm-ipc`,
    /// `oip-grpc` and `oip-grpc-shm` (`cpu`, or a GPU mode).
    pub server_mode: Mode,
    /// Core the measuring thread is pinned to.
    pub core: Option<usize>,
    /// The `uminfer` binary the server schemes start (`serve`,
    /// `bench-json-server`): the running one for `uminfer bench`.
    pub server_exe: PathBuf,
    /// Show a progress bar on stderr (only drawn on a terminal).
    pub progress: bool,
    /// Write CPU flame graphs of this process here, one per scheme and
    /// model (`MODEL-SCHEME.svg`), of extra requests after the timed run
    /// ([`crate::profile`]; a server scheme's shows its client side).
    pub profile: Option<PathBuf>,
    /// After the timed run, split `requests` more requests of each scheme
    /// into phases ([`phases`]).
    pub phases: bool,
    /// libtorch intra-op threads of this process's own CPU sessions; `None`:
    /// measured ([`crate::intra_op::measured_threads`]).
    pub intra_op_threads: Option<usize>,
}

/// Machine description recorded with the results.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub gpus: Vec<String>,
    pub driver_cuda: Option<String>,
    pub libtorch: String,
    pub os: String,
}

/// One model of a run, as the schemes saw it.
#[derive(Debug, Clone, Serialize)]
pub struct BenchModel {
    /// The file, as given.
    pub path: String,
    /// Its label in the results (the file name).
    pub label: String,
    pub format: Format,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// How its inputs were made: `random` draws (with each integer input's
    /// range) or the sample file.
    pub input_source: String,
}

/// The JSON document of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub schema_version: u32,
    pub command: String,
    pub models: Vec<BenchModel>,
    pub requests: usize,
    /// Requests per scheme per turn (see [`BenchOptions::burst`]).
    pub burst: usize,
    /// Pause between turns in milliseconds (see [`BenchOptions::settle`]).
    pub settle_ms: f64,
    /// Session busy-wait set by `--spin-us` (`null`: the session default).
    pub spin_us: Option<u64>,
    /// Page placement of the managed schemes (`migrate`, `host-resident`).
    pub managed_placement: String,
    /// How `gpu-managed-graph` launches its graph (`direct`, `libtorch`).
    pub graph_launch: String,
    /// Whether every GPU session scheme ran from a CUDA graph (`--capture-graphs`).
    pub capture_graphs: bool,
    /// Whether GPU session schemes launched graphs from their session thread (`--gpu-session-thread`).
    pub gpu_session_thread: bool,
    /// Whether GPU session schemes staged their input in device memory (`--stage-input`).
    pub stage_input: bool,
    /// Session mode of the server processes (`--server-mode`).
    pub server_mode: String,
    /// libtorch intra-op threads of the in-process schemes, and why.
    pub intra_op_threads: usize,
    pub intra_op_choice: String,
    pub warmup: usize,
    pub machine: Machine,
    pub results: Vec<SchemeResult>,
}

/// Version of [`BenchReport`]'s JSON (2: several models, named inputs of any dtype).
pub const SCHEMA_VERSION: u32 = 2;

fn machine(rt: &Runtime) -> Machine {
    let f = &rt.report().facts;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu,
        // Online CPUs, not this (pinned) thread's affinity.
        // SAFETY: sysconf has no preconditions.
        cores: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
        gpus: f.devices.iter().map(|d| format!("{} ({:.0} GiB)", d.name, d.total_memory as f64 / (1u64 << 30) as f64)).collect(),
        driver_cuda: f.driver.version.map(|v| crate::cuda::driver::format_version(v as i64)),
        libtorch: f.torch.runtime_version.clone().unwrap_or_else(|| f.torch.build_version.clone()),
        os: f.env.os.clone(),
    }
}

/// Most memory the pre-drawn inputs take.
const INPUT_POOL_BYTES: usize = 64 << 20;
/// Most pre-drawn inputs.
const INPUT_POOL_LEN: usize = 32;

/// A request's inputs, one tensor per model input, in the model's order.
pub type Sample = Vec<HostTensor>;

/// Inputs drawn before the run, so that the bench's own work between two
/// requests is a copy (~10 µs for 196 KB) rather than drawing 49 152
/// random numbers: a long gap lets a server that spins briefly for the next
/// request fall asleep, and the scheme would pay a wake-up the harness caused.
/// Consecutive requests get different inputs (at least 2 in the pool) unless
/// a sample file gives the one input.
struct InputPool(Vec<Sample>);

impl InputPool {
    fn random(inputs: &[TensorInfo], ranges: &[Option<(i64, i64)>]) -> Result<Self> {
        let bytes: usize = inputs.iter().map(TensorInfo::byte_len).sum();
        let len = (INPUT_POOL_BYTES / bytes.max(1)).clamp(2, INPUT_POOL_LEN);
        Ok(Self((1..=len as u64).map(|seed| random_sample(inputs, ranges, seed)).collect::<Result<_>>()?))
    }

    /// The input of request `seed`.
    fn get(&self, seed: u64) -> &[HostTensor] {
        &self.0[(seed % self.0.len() as u64) as usize]
    }

    /// Every input, in request order (`get(0)`, `get(1)`, ...).
    fn samples(&self) -> Vec<&[HostTensor]> {
        self.0.iter().map(Vec::as_slice).collect()
    }
}

/// Fresh pseudo-random inputs for round `seed`: floats in [0, 1), integers
/// in their range ([0, 2) without one), bools 0 or 1.
fn random_sample(inputs: &[TensorInfo], ranges: &[Option<(i64, i64)>], seed: u64) -> Result<Sample> {
    inputs
        .iter()
        .zip(ranges)
        .enumerate()
        .map(|(i, (info, range))| {
            let mut t = HostTensor::zeros(&info.name, info.dtype, &info.shape)?;
            fill_random(info.dtype, *range, seed.wrapping_mul(31).wrapping_add(i as u64), t.bytes_mut());
            Ok(t)
        })
        .collect()
}

/// Parses `NAME=LOW..HIGH` (`input_ids=0..1000`): input NAME's integer
/// values are drawn in `[LOW, HIGH)`.
pub fn parse_input_range(s: &str) -> std::result::Result<(String, (i64, i64)), String> {
    let usage = || format!("{s:?}: expected NAME=LOW..HIGH, e.g. input_ids=0..1000 (values in [LOW, HIGH))");
    let (name, range) = s.split_once('=').filter(|(n, _)| !n.is_empty()).ok_or_else(usage)?;
    let (lo, hi) = range.split_once("..").ok_or_else(usage)?;
    let (lo, hi) = (lo.trim().parse::<i64>().map_err(|_| usage())?, hi.trim().parse::<i64>().map_err(|_| usage())?);
    if lo >= hi {
        return Err(format!("{s:?}: the range [{lo}, {hi}) is empty"));
    }
    Ok((name.to_string(), (lo, hi)))
}

fn boxed<S: Scheme + 'static>(r: Result<S>) -> std::result::Result<Box<dyn Scheme>, String> {
    r.map(|s| Box::new(s) as Box<dyn Scheme>).map_err(|e| e.to_string())
}

/// What the schemes of one model are built from and checked against: the
/// model, its inputs and outputs, the options, the CPU eager answer to one
/// sample. `uminfer bench` and the criterion bench `schemes`
/// (`benches/schemes.rs`) both start here.
pub struct Bench<'a> {
    rt: &'a Runtime,
    model: crate::model::Model,
    opts: &'a BenchOptions,
    /// The model as the results name it, with its inputs and outputs.
    entry: BenchModel,
    /// Value ranges of the inputs, in their order.
    ranges: Vec<Option<(i64, i64)>>,
    /// A GPU is usable here.
    gpu: bool,
    /// The model's CPU forward pass, timed when the first server scheme is built.
    forward: std::cell::OnceCell<Duration>,
    /// The input of the correctness check, and the CPU eager answer to it.
    check_input: Sample,
    reference: Vec<HostTensor>,
    /// The inputs requests get, drawn once.
    inputs: std::sync::Arc<InputPool>,
}

/// One scheme, built and checked against the CPU eager answer
/// ([`Bench::prepare`]), for a harness of its own.
pub struct PreparedScheme {
    scheme: Box<dyn Scheme>,
    inputs: std::sync::Arc<InputPool>,
    seed: u64,
}

impl PreparedScheme {
    /// One request on the next input, written into the scheme's input memory
    /// first, outside the timing: the returned time is the request's alone.
    pub fn request(&mut self) -> Result<RunTiming> {
        self.seed += 1;
        self.scheme.refresh(self.seed, self.inputs.get(self.seed))?;
        self.scheme.request()
    }

    /// The scheme's thread settings (as in the bench's JSON `threads`).
    pub fn threads(&self) -> String {
        self.scheme.threads()
    }

    /// A server scheme prepared under `--profile`: starts its server's CPU
    /// profile (written when the server stops); where it goes.
    pub fn start_server_profile(&mut self) -> Option<PathBuf> {
        self.scheme.start_server_profile()
    }

    /// One request on the next input, split into phases ([`phases`]):
    /// writing the input, the request's own phases, reading the outputs.
    /// Also returns where the request's own phases lie among them.
    pub fn request_phased(&mut self) -> Result<(phases::Phases, std::ops::Range<usize>)> {
        self.seed += 1;
        let t = Instant::now();
        self.scheme.refresh(self.seed, self.inputs.get(self.seed))?;
        let mut phases = vec![("write input", t.elapsed())];
        phases.extend(self.scheme.request_phased()?);
        let request = 1..phases.len();
        let t = Instant::now();
        if self.scheme.read_outputs()? {
            phases.push(("read outputs", t.elapsed()));
        }
        Ok((phases, request))
    }
}

/// Whether `got` is `want` (in order, names aside): float outputs within
/// `tol` relative, the rest exactly. A Python peer gives bf16 outputs as
/// float32; the JSON and shared-memory schemes give values without a shape
/// (a flat tensor of the right length is compared by its values).
fn check_outputs(got: &[HostTensor], want: &[HostTensor], tol: f64) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    for (g, w) in got.iter().zip(want) {
        let mut g = if w.dtype == DType::Bf16 && g.dtype == DType::F32 { g.converted(DType::Bf16).map_err(|e| e.to_string())? } else { g.clone() };
        if g.shape.len() == 1 && g.numel() == w.numel() {
            g.shape.clone_from(&w.shape);
        }
        g.check_close(w, tol)?;
    }
    Ok(())
}

impl<'a> Bench<'a> {
    /// Loads `model`, fits the inputs (declared, drawn, or the sample file)
    /// and computes the CPU eager answer the schemes are checked against.
    pub fn new(rt: &'a Runtime, opts: &'a BenchOptions, model_path: &Path) -> Result<Self> {
        if opts.server_mode == Mode::ShmIpc {
            return Err(Error::Argument("--server-mode shm-ipc is a transport, not a session mode: give cpu, gpu-copy, gpu-pinned, gpu-managed or gpu-managed-graph".into()));
        }
        let model = rt.model(model_path)?;
        let gpu = rt.check_mode(Mode::GpuCopy).is_ok();
        let (infos, sample) = match &opts.sample_inputs {
            Some(file) => {
                let fitted = model.fit_inputs(crate::host_tensor::read_npz(file)?)?;
                for n in &fitted.notes {
                    tracing::info!("{}: {n}", model_path.display());
                }
                (model.resolve(&fitted.decls(), None)?, Some(fitted.tensors))
            }
            // `--shape` alone: float32 where the model records no dtype.
            None => (model.resolve(&opts.inputs, opts.inputs.iter().any(|d| d.name.is_none() && d.dtype.is_none()).then_some(DType::F32))?, None),
        };
        let model_inputs = model.inputs()?;
        let mut ranges: Vec<Option<(i64, i64)>> = model_inputs.iter().map(|m| m.range).collect();
        // A range applies to every model with that input (`run` refuses one no model has).
        for (name, range) in &opts.input_ranges {
            if let Some(i) = model_inputs.iter().position(|m| &m.name == name) {
                ranges[i] = Some(*range);
            }
        }
        let (check_input, inputs, input_source) = match sample {
            Some(s) => (s.clone(), InputPool(vec![s]), format!("sample file {}", opts.sample_inputs.as_ref().map(|p| p.display().to_string()).unwrap_or_default())),
            None => {
                let drawn: Vec<String> = infos.iter().zip(&ranges).filter(|(i, _)| !i.dtype.is_float() && i.dtype != DType::Bool).map(|(i, r)| format!("{} in {:?}", i.name, r.unwrap_or((0, 2)))).collect();
                let source = if drawn.is_empty() { "random".to_string() } else { format!("random ({})", drawn.join(", ")) };
                (random_sample(&infos, &ranges, 12345)?, InputPool::random(&infos, &ranges)?, source)
            }
        };
        // The reference: CPU eager (a GPU package's: on the GPU, eager).
        let reference = model.run_eager(model.reference_device(), &check_input)?;
        let outputs = reference.iter().map(|t| TensorInfo { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() }).collect();
        let label = model_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| model_path.display().to_string());
        let entry = BenchModel { path: model_path.display().to_string(), label, format: model.format(), inputs: infos, outputs, input_source };
        Ok(Self { rt, model, opts, entry, ranges, gpu, forward: std::cell::OnceCell::new(), check_input, reference, inputs: std::sync::Arc::new(inputs) })
    }

    /// The model as the results describe it.
    pub fn model(&self) -> &BenchModel {
        &self.entry
    }

    /// Builds scheme `name` and checks its answer against CPU eager; or says
    /// why it is unavailable (this machine cannot run it) or failed (a wrong
    /// answer, an error).
    pub fn prepare(&self, name: &str) -> std::result::Result<PreparedScheme, (Status, String)> {
        let mut s = build(name, self).map_err(|reason| (Status::Unavailable, reason))?;
        // GPU convolutions may use TF32 (libtorch's default): a looser bound there.
        let on_gpu = name.starts_with("gpu")
            || name == "py-cuda-graph"
            || (self.gpu && matches!(name, "tch-naive" | "py-torchscript"))
            || (self.opts.server_mode.needs_gpu() && SERVER_SCHEMES.contains(&name));
        let tol = if on_gpu { 2e-2 } else if name == "py-onnxruntime" { 1e-4 } else { 1e-5 };
        // An echo answers zeros: only its outputs' dtypes and shapes are checked.
        let zeros: Vec<HostTensor>;
        let want = if ECHO_SCHEMES.contains(&name) {
            zeros = self.reference.iter().map(|t| HostTensor::zeros(&t.name, t.dtype, &t.shape)).collect::<Result<_>>().map_err(|e| (Status::Failed, e.to_string()))?;
            &zeros
        } else {
            &self.reference
        };
        match s.check(&self.check_input) {
            Ok(out) => match check_outputs(&out, want, tol) {
                Ok(()) => Ok(PreparedScheme { scheme: s, inputs: self.inputs.clone(), seed: 0 }),
                Err(e) => Err((Status::Failed, format!("wrong answer against CPU eager: {e}"))),
            },
            Err(e) => Err((Status::Failed, format!("check run failed: {e}"))),
        }
    }

    /// `Ok` when the model takes one float32 input and returns one float32
    /// output, which is all serialize-copy's JSON server carries.
    fn one_f32(&self, what: &str) -> std::result::Result<(), String> {
        let f32_only = |ts: &[TensorInfo]| matches!(ts, [t] if t.dtype == DType::F32);
        if f32_only(&self.entry.inputs) && f32_only(&self.entry.outputs) {
            return Ok(());
        }
        Err(format!(
            "{what} carries one float32 tensor each way; {} takes {} and returns {}",
            self.entry.label,
            crate::session::tensor_ref::list(&self.entry.inputs),
            crate::session::tensor_ref::list(&self.entry.outputs)
        ))
    }

    /// `Ok` for a TorchScript model (what tch and the Python peers load).
    fn torchscript(&self, who: &str) -> std::result::Result<(), String> {
        match self.model.format() {
            Format::TorchScript => Ok(()),
            Format::Aoti => Err(format!("{who} loads TorchScript files; {} is an AOTInductor package", self.entry.label)),
        }
    }

    /// The model's CPU forward pass with libtorch's default threads, timed
    /// once, on first use (this process still has them, as the rules of
    /// [`crate::intra_op`] want): the server processes get the intra-op
    /// threads `uminfer serve` would choose from it.
    fn forward(&self) -> std::result::Result<Duration, String> {
        if let Some(&t) = self.forward.get() {
            return Ok(t);
        }
        let t = crate::intra_op::time_forward(&self.model, &self.entry.inputs).map_err(|e| e.to_string())?;
        tracing::info!(
            "a CPU forward pass takes {t:?}: shared-memory server processes get {} intra-op threads, gRPC ones {}",
            crate::intra_op::for_shm_clients(t),
            crate::intra_op::for_grpc_clients(t)
        );
        Ok(*self.forward.get_or_init(|| t))
    }
}

fn build(name: &str, cx: &Bench<'_>) -> std::result::Result<Box<dyn Scheme>, String> {
    let Bench { rt, ref model, opts, ref entry, gpu, .. } = *cx;
    let all_cores = crate::intra_op::cores();
    let path = model.path();
    let shape = || entry.inputs[0].shape.clone();
    // With --profile, a server scheme's server profiles itself during the scheme's profiled requests.
    let launch = |threads| schemes::ServerLaunch {
        exe: &opts.server_exe,
        threads,
        mode: opts.server_mode,
        profile: opts.profile.as_ref().map(|dir| crate::profile::svg_path(dir, &format!("{}-{name}-server", entry.label))),
        extra: Vec::new(),
    };
    match name {
        "serialize-copy" => {
            cx.one_f32("serialize-copy")?;
            cx.torchscript("serialize-copy's JSON server")?;
            boxed(SerializeCopy::start(&opts.server_exe, path, &shape(), all_cores))
        }
        "cpu-zero-copy" => boxed(SessionScheme::build(rt, model, opts, &entry.inputs, Mode::Cpu)),
        "shm-ipc" | "shm-echo" => {
            rt.check_mode(Mode::ShmIpc).map_err(|e| e.to_string())?;
            rt.check_mode(opts.server_mode).map_err(|e| e.to_string())?;
            let echo = name == "shm-echo";
            boxed(ShmIpc::start(launch(crate::intra_op::for_shm_clients(cx.forward()?)), path, &entry.inputs, echo))
        }
        "oip-grpc" | "oip-grpc-shm" | "grpc-echo" => {
            rt.check_mode(opts.server_mode).map_err(|e| e.to_string())?;
            let scheme = oip::GrpcScheme::named(name).ok_or("not a gRPC scheme")?;
            boxed(oip::OipGrpc::start(launch(crate::intra_op::for_grpc_clients(cx.forward()?)), path, &entry.inputs, &entry.outputs, scheme))
        }
        "gpu-copy" | "gpu-pinned" | "gpu-managed" | "gpu-managed-graph" => {
            let mode: Mode = name.parse()?;
            rt.check_mode(mode).map_err(|e| e.to_string())?;
            boxed(SessionScheme::build(rt, model, opts, &entry.inputs, mode))
        }
        "tch-naive" => {
            cx.torchscript("tch")?;
            let dev = if gpu { tch::Device::Cuda(0) } else { tch::Device::Cpu };
            boxed(TchNaive::load(path, dev))
        }
        "py-torchscript" | "py-cuda-graph" | "py-onnxruntime" => {
            cx.torchscript("the Python peer")?;
            if name == "py-cuda-graph" && !gpu {
                return Err(rt.check_mode(Mode::GpuCopy).err().map(|e| format!("needs a GPU: {e}")).unwrap_or_default());
            }
            let python = schemes::find_python(opts.python.as_deref())?;
            let (mode, dev) = match name {
                "py-cuda-graph" => ("cuda-graph", "cuda:0"),
                "py-onnxruntime" => ("onnxruntime", "cpu"),
                _ => ("torchscript", if gpu { "cuda:0" } else { "cpu" }),
            };
            PyPeer::start(&python, path, mode, &entry.inputs, &cx.ranges, dev).map(|p| Box::new(p) as Box<dyn Scheme>)
        }
        other => Err(format!("unknown scheme {other}; known: {}", SCHEMES.join(", "))),
    }
}

/// `--phases`: for each live scheme, `requests` more requests split into
/// phases, with a server scheme's own account of them; the breakdown goes
/// into its result. A scheme that fails here keeps its timed figures and logs why.
fn phase_schemes(requests: usize, live: &mut [(String, String, PreparedScheme, TimingRecorder)], results: &mut [SchemeResult]) {
    for (name, label, scheme, _) in live.iter_mut() {
        tracing::info!("splitting {requests} requests of {name} on {label} into phases");
        let mut split = || -> Result<(phases::PhaseRecorder, phases::Phases)> {
            let before = scheme.scheme.server_account()?;
            let mut recorder = phases::PhaseRecorder::default();
            for _ in 0..requests {
                let (phases, request) = scheme.request_phased()?;
                recorder.record(&phases, request);
            }
            let after = scheme.scheme.server_account()?;
            let since = |phase: &str| before.iter().find(|(p, _)| *p == phase).map_or(Duration::ZERO, |(_, t)| *t);
            let server = after.into_iter().map(|(phase, total)| (phase, total.saturating_sub(since(phase)))).collect();
            Ok((recorder, server))
        };
        let result = results.iter_mut().find(|r| &r.scheme == name && &r.model == label);
        match (split(), result) {
            (Ok((recorder, server)), Some(r)) => r.phases = Some(recorder.breakdown(server, r.p50_us)),
            (Ok(_), None) => {}
            (Err(e), _) => tracing::warn!("{name} on {label} failed while split into phases ({e}); no breakdown kept for it"),
        }
    }
}

/// `--profile DIR`: for each live scheme, `requests` more requests (each
/// after writing its input, as in the timed run) under a CPU profile of this
/// process, written to `DIR/MODEL-SCHEME.svg` and listed in its result; a
/// server scheme's server profiles itself from then until it stops
/// (`DIR/MODEL-SCHEME-server.svg`, written when the bench ends). A scheme
/// that fails here keeps its timed figures and logs why.
fn profile_schemes(dir: &Path, requests: usize, live: &mut [(String, String, PreparedScheme, TimingRecorder)], results: &mut [SchemeResult]) -> Result<()> {
    for (name, label, scheme, _) in live.iter_mut() {
        tracing::info!("profiling {name} on {label}: {requests} requests");
        let server = scheme.start_server_profile();
        let profile = crate::profile::CpuProfile::start(&format!("uminfer bench: {name} on {label}, {requests} requests"))?;
        let ran = (0..requests).try_for_each(|_| scheme.request().map(drop));
        let path = crate::profile::svg_path(dir, &format!("{label}-{name}"));
        let written = profile.write_svg(&path);
        match (ran, written) {
            (Ok(()), Ok(_)) => {
                if let Some(r) = results.iter_mut().find(|r| &r.scheme == name && &r.model == label) {
                    r.profile = Some(path.display().to_string());
                    r.server_profile = server.map(|p| p.display().to_string());
                }
            }
            (Err(e), _) => tracing::warn!("{name} on {label} failed while profiled ({e}); no flame graph kept for it"),
            (Ok(()), Err(e)) => tracing::warn!("{name} on {label}: {e}"),
        }
    }
    Ok(())
}

/// Runs the comparison (progress is logged with `tracing`).
pub fn run(rt: &Runtime, opts: &BenchOptions) -> Result<BenchReport> {
    let benches = opts.models.iter().map(|m| Bench::new(rt, opts, m)).collect::<Result<Vec<_>>>()?;
    if benches.is_empty() {
        return Err(Error::Argument("no model to bench".into()));
    }
    for (name, _) in &opts.input_ranges {
        if !benches.iter().any(|b| b.entry.inputs.iter().any(|i| &i.name == name)) {
            let known: Vec<String> = benches.iter().map(|b| format!("{}: {}", b.entry.label, b.entry.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "))).collect();
            return Err(Error::Argument(format!("--input-range {name}: no model has an input `{name}` ({})", known.join("; "))));
        }
    }

    // The in-process CPU schemes run their passes on this thread.
    let (threads, why) = if opts.schemes.iter().any(|s| IN_PROCESS_CPU.contains(&s.as_str())) {
        let models: Vec<(&crate::model::Model, &[TensorInfo])> = benches.iter().map(|b| (&b.model, b.entry.inputs.as_slice())).collect();
        crate::intra_op::set_for_sessions(opts.intra_op_threads, &models, 1)?
    } else {
        (tch::get_num_threads().max(1) as usize, "libtorch's default (no in-process CPU scheme)".to_string())
    };
    tracing::info!("in-process intra-op threads: {threads} ({why})");

    // Build and check every scheme of every model.
    let mut results: Vec<SchemeResult> = Vec::new();
    let mut live: Vec<(String, String, PreparedScheme, TimingRecorder)> = Vec::new();
    for bench in &benches {
        let label = &bench.entry.label;
        for name in &opts.schemes {
            tracing::info!("preparing {name} on {label}");
            match bench.prepare(name) {
                Ok(s) => live.push((name.clone(), label.clone(), s, TimingRecorder::new())),
                Err((status, reason)) => results.push(SchemeResult::without_samples(name, label, status, reason)),
            }
        }
    }

    // Pin only now: libtorch's intra-op threads were created by the check runs
    // above and keep every core; threads created after pinning would inherit it.
    if let Some(core) = opts.core {
        crate::session::pin_current_thread(core)?;
    }
    // Interleaved rounds: every live scheme `burst` times per round (fresh
    // input each time, written outside the timing), the starting scheme rotating.
    let burst = opts.burst.clamp(1, opts.requests.max(1)) as u64;
    let bar = if opts.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new((opts.requests + opts.warmup.max(opts.burst)) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut failed: Vec<(String, String, String)> = Vec::new();
    let warm_start = Instant::now();
    let mut round: u64 = 0;
    let mut timed = 0usize;
    while timed < opts.requests && !live.is_empty() {
        // Warm-up counts requests per scheme (rounds × burst), then time.
        let warming = ((round * burst) as usize) < opts.warmup || warm_start.elapsed() < opts.warmup_time;
        let this_burst = if warming { burst } else { burst.min((opts.requests - timed) as u64) };
        let mut dead: Vec<usize> = Vec::new();
        for j in 0..live.len() {
            let idx = (j + round as usize) % live.len();
            let (name, label, scheme, timing) = &mut live[idx];
            for _ in 0..this_burst {
                match scheme.request() {
                    Ok(t) if !warming => timing.record(t),
                    Ok(_) => {}
                    Err(e) => {
                        failed.push((name.clone(), label.clone(), format!("failed during the run: {e}")));
                        dead.push(idx);
                        break;
                    }
                }
            }
            if live.len() > 1 {
                std::thread::sleep(opts.settle);
            }
        }
        dead.sort_unstable();
        for idx in dead.into_iter().rev() {
            live.remove(idx);
        }
        if !warming {
            timed += this_burst as usize;
        }
        round += 1;
        bar.inc(this_burst);
    }
    bar.finish_and_clear();
    for (name, label, s, timing) in &live {
        results.push(SchemeResult::measured(name, label, s.threads(), timing));
    }
    if opts.phases {
        phase_schemes(opts.requests, &mut live, &mut results);
    }
    if let Some(dir) = &opts.profile {
        profile_schemes(dir, opts.requests, &mut live, &mut results)?;
    }
    for (name, label, reason) in failed {
        results.push(SchemeResult::without_samples(&name, &label, Status::Failed, reason));
    }
    let model_order = |label: &str| benches.iter().position(|b| b.entry.label == label).unwrap_or(usize::MAX);
    results.sort_by_key(|r| (model_order(&r.model), SCHEMES.iter().position(|s| *s == r.scheme).unwrap_or(usize::MAX)));
    add_ratios(&mut results);
    drop(live); // stops servers and peers
    Ok(BenchReport {
        schema_version: SCHEMA_VERSION,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        models: benches.iter().map(|b| b.entry.clone()).collect(),
        requests: opts.requests,
        burst: burst as usize,
        settle_ms: opts.settle.as_secs_f64() * 1e3,
        spin_us: opts.spin.map(|d| d.as_micros() as u64),
        managed_placement: opts.managed_placement.to_string(),
        graph_launch: opts.graph_launch.to_string(),
        capture_graphs: opts.capture_graphs,
        gpu_session_thread: opts.gpu_session_thread,
        stage_input: opts.stage_input,
        server_mode: opts.server_mode.to_string(),
        intra_op_threads: threads,
        intra_op_choice: why,
        warmup: opts.warmup,
        machine: machine(rt),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_answer_fails_the_check() {
        let t = |v: &[f32]| HostTensor::from_values("output__0", &[v.len() as i64], v).unwrap();
        assert!(check_outputs(&[t(&[1.0, f32::NAN])], &[t(&[1.0, 2.0])], 1e-5).is_err());
        assert!(check_outputs(&[t(&[1.0, 2.0])], &[t(&[1.0, 2.0])], 0.0).is_ok());
    }

    #[test]
    fn outputs_are_compared_in_order_and_a_peer_may_give_bf16_as_float32() {
        let want = HostTensor::from_values("output__0", &[2], &[half::bf16::from_f32(1.5), half::bf16::from_f32(-2.0)]).unwrap();
        let as_f32 = HostTensor::from_values("out", &[2], &[1.5f32, -2.0]).unwrap();
        assert!(check_outputs(std::slice::from_ref(&as_f32), std::slice::from_ref(&want), 0.0).is_ok());
        assert!(check_outputs(&[as_f32.clone(), as_f32], &[want], 0.0).unwrap_err().contains("2 outputs, expected 1"));
    }

    #[test]
    fn input_ranges_parse_as_half_open_intervals() {
        assert_eq!(parse_input_range("input_ids=0..1000").unwrap(), ("input_ids".to_string(), (0, 1000)));
        assert_eq!(parse_input_range("t=-5..5").unwrap().1, (-5, 5));
        assert!(parse_input_range("t=5..5").unwrap_err().contains("empty"));
        assert!(parse_input_range("t=0-9").unwrap_err().contains("NAME=LOW..HIGH"));
    }

    #[test]
    fn drawn_integers_stay_in_their_ranges() {
        let infos = [TensorInfo { name: "input_ids".into(), dtype: DType::I64, shape: vec![1, 64] }, TensorInfo { name: "mask".into(), dtype: DType::I64, shape: vec![1, 64] }];
        let s = random_sample(&infos, &[Some((0, 1000)), None], 3).unwrap();
        assert!(s[0].to_vec::<i64>().unwrap().iter().all(|v| (0..1000).contains(v)));
        assert!(s[0].to_vec::<i64>().unwrap().iter().any(|&v| v > 1));
        assert!(s[1].to_vec::<i64>().unwrap().iter().all(|v| (0..2).contains(v)));
        let pool = InputPool::random(&infos, &[None, None]).unwrap();
        assert_ne!(pool.get(1), pool.get(2), "consecutive requests get different inputs");
    }
}
