//! `uminfer bench`: every scheme side by side on one model, interleaved
//! round-robin in one run, each checked against the CPU eager result before
//! it is timed. [`Bench::prepare`] gives one scheme, built and checked, to
//! another harness (the criterion bench `benches/schemes.rs`).
//!
//! | module | holds |
//! |---|---|
//! | `schemes` | the schemes: serialize-copy, cpu-zero-copy, shm-ipc, GPU session modes, tch-naive, Python peers |
//! | [`json_server`] | serialize-copy's HTTP/JSON server process (`uminfer bench-json-server`) |
//! | `oip` | the Open Inference Protocol schemes: oip-grpc, oip-grpc-shm (a `serve --grpc` child, a tonic client) |
//! | [`stats`] | per-scheme statistics (hdrhistogram), ratios, the table |
//! | [`plot`] | the latency CDF picture (plotters, SVG) |

pub mod json_server;
mod oip;
pub mod plot;
mod schemes;
pub mod stats;

use crate::error::Result;
use crate::mode::Mode;
use crate::runtime::Runtime;
use schemes::{PyPeer, Scheme, SerializeCopy, SessionScheme, ShmIpc, TchNaive};
use serde::Serialize;
use crate::session::{RunTiming, TimingRecorder};
use stats::{add_ratios, SchemeResult, Status};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Every scheme, in table order.
pub const SCHEMES: [&str; 12] = [
    "serialize-copy",
    "cpu-zero-copy",
    "shm-ipc",
    "oip-grpc",
    "oip-grpc-shm",
    "gpu-copy",
    "gpu-pinned",
    "gpu-managed",
    "gpu-managed-graph",
    "tch-naive",
    "py-torchscript",
    "py-cuda-graph",
];

/// The schemes whose server process runs in [`BenchOptions::server_mode`].
pub const SERVER_SCHEMES: [&str; 3] = ["shm-ipc", "oip-grpc", "oip-grpc-shm"];

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Model file.
    pub model: PathBuf,
    /// Input shape.
    pub shape: Vec<i64>,
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

/// The JSON document of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub schema_version: u32,
    pub command: String,
    pub model: String,
    pub shape: Vec<i64>,
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
    pub warmup: usize,
    pub machine: Machine,
    pub results: Vec<SchemeResult>,
}

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

/// Inputs drawn before the run, so that the bench's own work between two
/// requests is one copy (~10 µs for 196 KB) rather than drawing 49 152
/// random numbers: a long gap lets a server that spins briefly for the next
/// request fall asleep, and the scheme would pay a wake-up the harness caused.
/// Consecutive requests get different inputs (at least 2 in the pool).
struct InputPool(Vec<Vec<f32>>);

impl InputPool {
    fn new(n: usize) -> Self {
        let len = (INPUT_POOL_BYTES / (n * std::mem::size_of::<f32>()).max(1)).clamp(2, INPUT_POOL_LEN);
        Self(
            (0..len as u64)
                .map(|i| {
                    let mut v = vec![0f32; n];
                    random_input(i + 1, n, &mut v);
                    v
                })
                .collect(),
        )
    }

    /// The input of request `seed`.
    fn get(&self, seed: u64) -> &[f32] {
        &self.0[(seed % self.0.len() as u64) as usize]
    }
}

/// Fresh pseudo-random input for round `seed`.
fn random_input(seed: u64, n: usize, out: &mut [f32]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for v in out.iter_mut().take(n) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *v = (x >> 40) as f32 / (1u64 << 24) as f32;
    }
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    if got.len() != want.len() {
        return f32::INFINITY;
    }
    let scale = want.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
    // A NaN on either side is an infinite error: f32::max would drop it, and
    // a scheme answering NaN would pass the check.
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).map(|d| if d.is_nan() { f32::INFINITY } else { d }).fold(0.0, f32::max) / scale
}

fn boxed<S: Scheme + 'static>(r: Result<S>) -> std::result::Result<Box<dyn Scheme>, String> {
    r.map(|s| Box::new(s) as Box<dyn Scheme>).map_err(|e| e.to_string())
}

/// What the schemes are built from and checked against: the model, the
/// options, the CPU eager answer to one input. `uminfer bench` and the
/// criterion bench `schemes` (`benches/schemes.rs`) both start here.
pub struct Bench<'a> {
    rt: &'a Runtime,
    model: crate::runtime::Model,
    opts: &'a BenchOptions,
    out_shape: Vec<i64>,
    /// A GPU is usable here.
    gpu: bool,
    /// The model's CPU forward pass, timed when the first server scheme is built.
    forward: std::cell::OnceCell<Duration>,
    /// The input of the correctness check, and the CPU eager answer to it.
    check_input: Vec<f32>,
    reference: Vec<f32>,
    model_name: String,
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
}

impl<'a> Bench<'a> {
    /// Loads the model and computes the CPU eager answer the schemes are checked against.
    pub fn new(rt: &'a Runtime, opts: &'a BenchOptions) -> Result<Self> {
        if opts.server_mode == Mode::ShmIpc {
            return Err(crate::error::Error::Argument("--server-mode shm-ipc is a transport, not a session mode: give cpu, gpu-copy, gpu-pinned, gpu-managed or gpu-managed-graph".into()));
        }
        let model = rt.model(&opts.model)?;
        let n = crate::memory::region::checked_numel(&opts.shape)?;
        let gpu = rt.check_mode(Mode::GpuCopy).is_ok();
        let mut check_input = vec![0f32; n];
        random_input(12345, n, &mut check_input);
        let reference = model.forward_cpu(&tch::Tensor::from_slice(&check_input).view(opts.shape.as_slice()))?;
        let out_shape = reference.size();
        let reference = Vec::<f32>::try_from(reference.flatten(0, -1))?;
        let model_name = opts.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let inputs = std::sync::Arc::new(InputPool::new(n));
        Ok(Self { rt, model, opts, out_shape, gpu, forward: std::cell::OnceCell::new(), check_input, reference, model_name, inputs })
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
        let tol = if on_gpu { 2e-2 } else { 1e-5 };
        match s.check(&self.check_input) {
            Ok(out) if max_rel_err(&out, &self.reference) <= tol => Ok(PreparedScheme { scheme: s, inputs: self.inputs.clone(), seed: 0 }),
            Ok(out) => Err((Status::Failed, format!("wrong answer: relative error {} against CPU eager (limit {tol})", max_rel_err(&out, &self.reference)))),
            Err(e) => Err((Status::Failed, format!("check run failed: {e}"))),
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
        let t = crate::intra_op::time_forward(&self.model, &self.opts.shape).map_err(|e| e.to_string())?;
        tracing::info!(
            "a CPU forward pass takes {t:?}: shared-memory server processes get {} intra-op threads, gRPC ones {}",
            crate::intra_op::for_shm_clients(t),
            crate::intra_op::for_grpc_clients(t)
        );
        Ok(*self.forward.get_or_init(|| t))
    }
}

fn build(name: &str, cx: &Bench<'_>) -> std::result::Result<Box<dyn Scheme>, String> {
    let Bench { rt, ref model, opts, ref out_shape, gpu, .. } = *cx;
    let all_cores = crate::intra_op::cores();
    match name {
        "serialize-copy" => boxed(SerializeCopy::start(&opts.server_exe, &opts.model, &opts.shape, all_cores)),
        "cpu-zero-copy" => boxed(SessionScheme::build(rt, model, opts, out_shape, Mode::Cpu)),
        "shm-ipc" => {
            rt.check_mode(Mode::ShmIpc).map_err(|e| e.to_string())?;
            rt.check_mode(opts.server_mode).map_err(|e| e.to_string())?;
            boxed(ShmIpc::start(&opts.server_exe, &opts.model, &opts.shape, crate::intra_op::for_shm_clients(cx.forward()?), opts.server_mode))
        }
        "oip-grpc" | "oip-grpc-shm" => {
            rt.check_mode(opts.server_mode).map_err(|e| e.to_string())?;
            boxed(oip::OipGrpc::start(&opts.server_exe, &opts.model, &opts.shape, out_shape, name == "oip-grpc-shm", crate::intra_op::for_grpc_clients(cx.forward()?), opts.server_mode))
        }
        "gpu-copy" | "gpu-pinned" | "gpu-managed" | "gpu-managed-graph" => {
            let mode: Mode = name.parse()?;
            rt.check_mode(mode).map_err(|e| e.to_string())?;
            boxed(SessionScheme::build(rt, model, opts, out_shape, mode))
        }
        "tch-naive" => {
            let dev = if gpu { tch::Device::Cuda(0) } else { tch::Device::Cpu };
            boxed(TchNaive::load(&opts.model, &opts.shape, dev))
        }
        "py-torchscript" | "py-cuda-graph" => {
            if name == "py-cuda-graph" && !gpu {
                return Err(rt.check_mode(Mode::GpuCopy).err().map(|e| format!("needs a GPU: {e}")).unwrap_or_default());
            }
            let python = schemes::find_python(opts.python.as_deref())?;
            let (mode, dev) = if name == "py-cuda-graph" { ("cuda-graph", "cuda:0") } else { ("torchscript", if gpu { "cuda:0" } else { "cpu" }) };
            boxed(PyPeer::start(&python, &opts.model, mode, &opts.shape, dev))
        }
        other => Err(format!("unknown scheme {other}; known: {}", SCHEMES.join(", "))),
    }
}

/// Runs the comparison (progress is logged with `tracing`).
pub fn run(rt: &Runtime, opts: &BenchOptions) -> Result<BenchReport> {
    let bench = Bench::new(rt, opts)?;
    let model_name = bench.model_name.as_str();

    // Build and check every scheme.
    let mut results: Vec<SchemeResult> = Vec::new();
    let mut live: Vec<(String, PreparedScheme, TimingRecorder)> = Vec::new();
    for name in &opts.schemes {
        tracing::info!("preparing {name}");
        match bench.prepare(name) {
            Ok(s) => live.push((name.clone(), s, TimingRecorder::new())),
            Err((status, reason)) => results.push(SchemeResult::without_samples(name, model_name, status, reason)),
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
    let mut failed: Vec<(String, String)> = Vec::new();
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
            let (name, scheme, timing) = &mut live[idx];
            for _ in 0..this_burst {
                match scheme.request() {
                    Ok(t) if !warming => timing.record(t),
                    Ok(_) => {}
                    Err(e) => {
                        failed.push((name.clone(), format!("failed during the run: {e}")));
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
    for (name, s, timing) in &live {
        results.push(SchemeResult::measured(name, model_name, s.threads(), timing));
    }
    for (name, reason) in failed {
        results.push(SchemeResult::without_samples(&name, model_name, Status::Failed, reason));
    }
    results.sort_by_key(|r| SCHEMES.iter().position(|s| *s == r.scheme).unwrap_or(usize::MAX));
    add_ratios(&mut results);
    drop(live); // stops servers and peers
    Ok(BenchReport {
        schema_version: 1,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: opts.model.display().to_string(),
        shape: opts.shape.clone(),
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
        warmup: opts.warmup,
        machine: machine(rt),
        results,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nan_answer_fails_the_check() {
        assert_eq!(super::max_rel_err(&[1.0, f32::NAN], &[1.0, 2.0]), f32::INFINITY);
        assert!(super::max_rel_err(&[1.0, 2.0], &[1.0, 2.0]) == 0.0);
    }
}
