//! The schemes `uminfer bench` compares. Each owns the caller-side memory it
//! reads its input from, and times one request from "the input is in that
//! memory" to "the output is readable by the caller".

use super::BenchOptions;
use crate::error::{Error, IpcErrorKind, Result, SessionErrorKind};
use crate::host_tensor::HostTensor;
use crate::ipc::{BatchCounts, Client, LoanedRequest, NamedTensor, Response};
use crate::mode::Mode;
use crate::model::{Model, TensorInfo};
use crate::runtime::Runtime;
use crate::session::{RunTiming, Session, SessionSpec};
use std::io::{BufRead, BufReader, Write};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};


/// A way of running the model, measured side by side with the others.
pub(crate) trait Scheme {
    /// Writes this round's inputs (one per model input, in its order) into
    /// the scheme's caller memory (untimed).
    fn refresh(&mut self, seed: u64, sample: &[HostTensor]) -> Result<()>;
    /// One timed request.
    fn request(&mut self) -> Result<RunTiming>;
    /// Runs `sample` once and returns the outputs in the model's order (the
    /// correctness check).
    fn check(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>>;
    /// Thread settings the scheme runs with.
    fn threads(&self) -> String;
    /// A server scheme started with a profile: starts its server's CPU
    /// profile now (written when the server stops) and says where it goes.
    fn start_server_profile(&mut self) -> Option<PathBuf> {
        None
    }
    /// One request split into phases that add up to its time (`--phases`);
    /// by default the request whole.
    fn request_phased(&mut self) -> Result<super::phases::Phases> {
        Ok(vec![("request", self.request()?.host)])
    }
    /// Copies the last request's outputs out, as a caller reading them
    /// does (`--phases`); `false` where they are gone once the request is
    /// answered (the scheme read them inside it).
    fn read_outputs(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// A server scheme's own statistics so far: each phase's total time
    /// over every request it served (`--phases`); empty where it keeps none.
    fn server_account(&mut self) -> Result<super::phases::Phases> {
        Ok(Vec::new())
    }
    /// A batching server scheme's batcher counters so far
    /// (`--concurrency`); `None` where its server does not batch.
    fn batch_counts(&mut self) -> Result<Option<BatchCounts>> {
        Ok(None)
    }
}

/// The float32 values of a sample of one float32 tensor into `dst` (the
/// schemes that carry one float32 tensor, checked by `Bench::one_f32`).
pub(super) fn copy_f32(sample: &[HostTensor], dst: &mut [f32]) -> Result<()> {
    let dst: &mut [u8] = bytemuck::cast_slice_mut(dst);
    match sample {
        [t] if t.dtype == crate::dtype::DType::F32 && t.bytes().len() == dst.len() => {
            dst.copy_from_slice(t.bytes());
            Ok(())
        }
        _ => Err(Error::Argument(format!("this scheme takes one float32 tensor of {} bytes", dst.len()))),
    }
}

/// A scheme whose caller memory is a plain float32 buffer it copies from:
/// one request is `once()`, from that buffer to its output buffer.
trait BufferScheme {
    fn input_buf(&mut self) -> &mut [f32];
    fn once(&mut self) -> Result<()>;
    fn output(&self) -> Result<HostTensor>;
    fn thread_settings(&self) -> String;
}

impl<T: BufferScheme> Scheme for T {
    fn refresh(&mut self, _: u64, sample: &[HostTensor]) -> Result<()> {
        copy_f32(sample, self.input_buf())
    }
    fn request(&mut self) -> Result<RunTiming> {
        timed(|| self.once())
    }
    fn check(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        copy_f32(sample, self.input_buf())?;
        self.once()?;
        Ok(vec![self.output()?])
    }
    fn threads(&self) -> String {
        self.thread_settings()
    }
}

/// Times one request on the host clock.
pub(super) fn timed(request: impl FnOnce() -> Result<()>) -> Result<RunTiming> {
    let t = Instant::now();
    request()?;
    Ok(RunTiming { host: t.elapsed(), device: None })
}

/// The thread settings of a server process the bench started with
/// `--intra-op-threads threads`, and why (`crate::intra_op`).
pub(super) fn server_threads_note(threads: usize, why: &str) -> String {
    format!("server process: intra-op {threads} (--intra-op-threads {threads}, {why})")
}

fn threads_here() -> String {
    format!("intra-op {} (OMP_NUM_THREADS={})", tch::get_num_threads(), std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| "unset".into()))
}

/// `serialize-copy`: JSON over a loopback HTTP request to a real HTTP server
/// (axum, in a `uminfer bench-json-server` child process), deserialised,
/// copied into a tensor, forward, serialised back.
pub(crate) struct SerializeCopy {
    url: String,
    agent: ureq::Agent,
    input: Vec<f32>,
    output: Vec<f32>,
    /// [`server_threads_note`], taken at start.
    server: String,
    _server: ServerChild,
}

impl SerializeCopy {
    pub(crate) fn start(exe: &Path, model: &Path, shape: &[i64], threads: usize) -> Result<Self> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let args = ["bench-json-server", "--input-shape", &dims.join(","), "--intra-op-threads", &threads.to_string(), "--model"].map(OsString::from);
        let (server, addr) = ServerChild::start_reporting(exe, args.into_iter().chain([model.as_os_str().to_owned()]), "http", None)?;
        let n = shape.iter().product::<i64>() as usize;
        Ok(Self { url: format!("http://{addr}/infer"), agent: ureq::Agent::new_with_defaults(), input: vec![0.0; n], output: Vec::new(), server: server_threads_note(threads, "all cores: its client blocks"), _server: server })
    }

    fn post(&mut self) -> Result<()> {
        let body = serde_json::to_string(&self.input).map_err(|e| Error::session(SessionErrorKind::Failed, e.to_string()))?;
        let mut resp = self.agent.post(&self.url).send(body).map_err(|e| Error::session(SessionErrorKind::Failed, format!("HTTP: {e}")))?;
        let text = resp.body_mut().read_to_string().map_err(|e| Error::session(SessionErrorKind::Failed, format!("HTTP body: {e}")))?;
        self.output = serde_json::from_str(&text).map_err(|e| Error::session(SessionErrorKind::Failed, format!("JSON: {e}")))?;
        Ok(())
    }
}

impl BufferScheme for SerializeCopy {
    fn input_buf(&mut self) -> &mut [f32] {
        &mut self.input
    }
    fn once(&mut self) -> Result<()> {
        self.post()
    }
    fn output(&self) -> Result<HostTensor> {
        HostTensor::from_values("output__0", &[self.output.len() as i64], &self.output)
    }
    fn thread_settings(&self) -> String {
        self.server.clone()
    }
}

/// `cpu-zero-copy` and the GPU session modes: a [`Session`]; the caller's
/// memory is the session's input regions.
pub(crate) struct SessionScheme {
    pub(crate) session: Session,
}

impl SessionScheme {
    pub(crate) fn build(rt: &Runtime, model: &Model, opts: &BenchOptions, inputs: &[TensorInfo], mode: Mode) -> Result<Self> {
        let mut spec = SessionSpec::new().mode(mode).warmup(5).managed_placement(opts.managed_placement).graph_launch(opts.graph_launch).capture_graph(opts.capture_graphs).stage_input(opts.stage_input);
        for i in inputs {
            spec = spec.input(&i.name, i.dtype, &i.shape);
        }
        if let Some(spin) = opts.spin {
            spec = spec.spin(spin);
        }
        if opts.gpu_session_thread && mode.needs_gpu() {
            spec = spec.dedicated_thread(true);
        }
        Ok(Self { session: rt.session(model, spec)? })
    }
}

impl Scheme for SessionScheme {
    fn refresh(&mut self, _: u64, sample: &[HostTensor]) -> Result<()> {
        sample.iter().try_for_each(|t| self.session.write_input(t))
    }
    fn request(&mut self) -> Result<RunTiming> {
        let t = Instant::now();
        let r = self.session.run()?;
        std::hint::black_box(self.session.output_bytes(0)?.first().copied());
        Ok(RunTiming { host: t.elapsed(), device: r.device })
    }
    fn check(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        self.refresh(0, sample)?;
        self.session.run()?;
        (0..self.session.outputs().len()).map(|i| self.session.read_output(i)).collect()
    }
    fn request_phased(&mut self) -> Result<super::phases::Phases> {
        let t = Instant::now();
        let r = self.session.run_phased()?;
        std::hint::black_box(self.session.output_bytes(0)?.first().copied());
        let outer = t.elapsed();
        // The session's own account of its pass (on its thread, when it has one).
        let inner = r.timing.host.min(outer);
        let mut phases = match r.timing.device {
            Some(device) => {
                // The device's stages (CUDA events between them), then the
                // host's time beyond them; each clamped so that they add up.
                let device = device.min(inner);
                let mut left = device;
                let mut phases: super::phases::Phases = r
                    .device_phases
                    .iter()
                    .map(|&(name, d)| {
                        let d = d.min(left);
                        left -= d;
                        (name, d)
                    })
                    .collect();
                if phases.is_empty() {
                    phases.push(("device work (CUDA events)", device));
                } else if let Some(last) = phases.last_mut() {
                    last.1 += left; // the events' rounding
                }
                phases.push(("host work of the pass", inner - device));
                phases
            }
            None => vec![("forward pass", inner)],
        };
        let around = if self.session.has_own_thread() { "hand-off to the session thread and back" } else { "session call around the pass" };
        phases.push((around, outer - inner));
        Ok(phases)
    }
    fn read_outputs(&mut self) -> Result<bool> {
        for i in 0..self.session.outputs().len() {
            std::hint::black_box(self.session.read_output(i)?);
        }
        Ok(true)
    }
    fn threads(&self) -> String {
        let mode = self.session.mode();
        match mode {
            Mode::Cpu => format!("{}; session mode {mode}", threads_here()),
            // What the build did (capture, graph launch, page placement).
            _ => format!("{}; session mode {mode}: {}", threads_here(), self.session.note()),
        }
    }
}

/// How a server scheme starts its `uminfer serve` process.
pub(crate) struct ServerLaunch<'a> {
    /// The `uminfer` binary.
    pub exe: &'a Path,
    /// Its libtorch intra-op threads.
    pub threads: usize,
    /// Its session mode.
    pub mode: Mode,
    /// Armed to profile itself into this SVG (`serve --profile`), from
    /// [`ServerChild::start_profile`] on.
    pub profile: Option<PathBuf>,
    /// More `serve` arguments (`--max-batch N ...`).
    pub extra: Vec<OsString>,
}

/// Has the kernel send SIGTERM to the child `cmd` starts when the bench
/// dies: a bench killed outright (SIGKILL, or SIGTERM to it alone) runs no
/// Drop, and its children must not stay behind. (The signal follows the
/// thread that started the child; the bench starts them from the thread
/// that runs it throughout.)
pub(super) fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only prctl(2) and getppid(2), both async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The bench may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    };
}

/// A `uminfer serve` child process, sent SIGTERM and waited for on drop.
pub(super) struct ServerChild {
    child: Child,
    /// The flame graph the server writes when profiled (`serve --profile`).
    profile: Option<PathBuf>,
}

impl ServerChild {
    /// Starts the `uminfer` binary `exe` with `args` and reads the first line
    /// it prints, `KEY=VALUE` (a server's address, once it listens): returns
    /// the child and VALUE. The child's log goes to the bench's stderr. With
    /// `profile` (an SVG path), the server is armed to profile itself from
    /// [`start_profile`](Self::start_profile) until it stops.
    pub(super) fn start_reporting(exe: &Path, args: impl IntoIterator<Item = OsString>, key: &str, profile: Option<PathBuf>) -> Result<(Self, String)> {
        let mut args: Vec<OsString> = args.into_iter().collect();
        if let Some(svg) = &profile {
            let (dir, stem) = (svg.parent().unwrap_or(Path::new(".")), svg.file_stem().unwrap_or_default());
            args.extend([OsString::from("--profile"), dir.as_os_str().to_owned(), "--profile-from-signal".into(), "--profile-name".into(), stem.to_owned()]);
        }
        let what = args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
        let mut cmd = Command::new(exe);
        cmd.args(&args).env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = Self { child: cmd.spawn().map_err(|source| Error::Os { call: "starting a uminfer server process", source })?, profile };
        let stdout = child.child.stdout.take().ok_or_else(|| Error::session(SessionErrorKind::Failed, format!("uminfer {what}: no stdout pipe")))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map_err(|source| Error::Os { call: "reading a server process's first line", source })?;
        let value = line
            .trim()
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or_else(|| Error::session(SessionErrorKind::Failed, format!("uminfer {what} did not report {key}=… (it said {:?}; its log is above)", line.trim())))?;
        Ok((child, value.to_string()))
    }

    /// Starts the server's profile (SIGUSR1), if it was armed with one; where it goes.
    pub(super) fn start_profile(&self) -> Option<PathBuf> {
        let svg = self.profile.clone()?;
        // SAFETY: kill(2) on our own child's pid (not reaped while `self` lives).
        (unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) } == 0).then_some(svg)
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid (not reaped before the wait below).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// `shm-ipc`: a `uminfer serve` child process and the shared-memory client
/// (protocol v2, any model: every input of the sample carried, every output
/// checked). The caller's input memory is a request sample loaned ahead
/// ([`Client::loan`]), as a session's input regions are `cpu-zero-copy`'s:
/// the inputs are written there outside the timing, and a request is the
/// send and the wait; the caller reads the outputs where they lie in the
/// response sample, as `cpu-zero-copy`'s caller reads its session's output
/// regions and `oip-grpc-shm`'s its output region (copying them out is the
/// correctness check's business, untimed). `shm-echo` is the same with a
/// server that answers zeros without running the model (`serve --echo`).
pub(crate) struct ShmIpc {
    client: Client,
    /// The next request, loaned and filled by `refresh`.
    next: Option<LoanedRequest>,
    /// [`server_threads_note`] and the session mode, taken at start.
    server: String,
    /// The server's endpoint name.
    endpoint: String,
    /// Declared last: stopped after the client is gone (`None`: a client of
    /// a server started elsewhere).
    child: Option<ServerChild>,
}

impl ShmIpc {
    /// Starts `uminfer serve` on `model` with every input declared as the
    /// bench resolved it (`--input-spec`), and connects; with `echo`, the
    /// server answers without running the model (`shm-echo`); with
    /// `profile`, the server is armed to profile itself there.
    pub(crate) fn start(launch: ServerLaunch<'_>, model: &Path, inputs: &[TensorInfo], echo: bool) -> Result<Self> {
        let ServerLaunch { exe, threads, mode, profile, extra } = launch;
        // One endpoint per server: a run of several models has one per model.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!("bench-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut args: Vec<OsString> = ["serve", "--name", &name, "--mode", mode.id(), "--intra-op-threads", &threads.to_string()].map(OsString::from).into();
        if echo {
            args.push("--echo".into());
        }
        args.extend(inputs.iter().flat_map(|i| [OsString::from("--input-spec"), OsString::from(spec_arg(i))]));
        args.extend(extra);
        args.extend([OsString::from("--model"), model.as_os_str().to_owned()]);
        let (child, _) = ServerChild::start_reporting(exe, args, "ipc", profile)?;
        let why = if threads < crate::intra_op::cores() { "cores - 1, as `uminfer serve` chooses: a tiny forward pass" } else { "all cores, as `uminfer serve` chooses: its client gives its core away while it polls" };
        let note = format!("{}; serve --mode {mode}", server_threads_note(threads, why));
        Self::connect(&name, inputs, note, Some(child))
    }

    /// Connects to the server at endpoint `name`, which must take `inputs`
    /// (a batching server: one sample of them); `child`: the server's
    /// process, when this scheme started it.
    pub(crate) fn connect(name: &str, inputs: &[TensorInfo], server: String, child: Option<ServerChild>) -> Result<Self> {
        let client = Client::connect(name, Duration::from_secs(10))?;
        let one_sample = |t: &TensorInfo| {
            let mut t = t.clone();
            if let (Some(_), Some(first)) = (client.max_batch(), t.shape.first_mut()) {
                *first = 1;
            }
            t
        };
        let took: Vec<TensorInfo> = client.inputs().iter().map(one_sample).collect();
        if took != inputs {
            return Err(Error::ipc(IpcErrorKind::Invalid, format!("the server took the inputs {}, not {}", crate::session::tensor_ref::list(&took), crate::session::tensor_ref::list(inputs))));
        }
        Ok(Self { client, next: None, server, endpoint: name.to_string(), child })
    }

    /// The server's endpoint name (`serve --name`).
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Disconnects, leaving the server process running: it is the caller's.
    pub(crate) fn into_server(self) -> Option<ServerChild> {
        self.child
    }

    /// Sends the request `refresh` prepared; `read` gets the outputs in place.
    fn round_trip<R>(&mut self, read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
        let req = self.next.take().ok_or_else(|| Error::ipc(IpcErrorKind::Invalid, "shm-ipc: no request was prepared"))?;
        self.client.send(req, read)
    }
}

impl Scheme for ShmIpc {
    fn refresh(&mut self, _: u64, sample: &[HostTensor]) -> Result<()> {
        let req = match &mut self.next {
            Some(req) => req,
            empty => empty.insert(self.client.loan()?),
        };
        sample.iter().try_for_each(|t| req.write(&NamedTensor::of(t)?))
    }
    fn request(&mut self) -> Result<RunTiming> {
        timed(|| self.round_trip(|r| std::hint::black_box(r.tensor(0).and_then(|t| t.bytes().first().copied()))).map(drop))
    }
    fn check(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        self.refresh(0, sample)?;
        self.round_trip(|r| r.to_host())?
    }
    fn threads(&self) -> String {
        self.server.clone()
    }
    fn start_server_profile(&mut self) -> Option<PathBuf> {
        self.child.as_ref()?.start_profile()
    }
    fn request_phased(&mut self) -> Result<super::phases::Phases> {
        Ok(vec![(super::phases::ROUND_TRIP_SHM, self.request()?.host)])
    }
    fn batch_counts(&mut self) -> Result<Option<BatchCounts>> {
        Ok(self.client.describe()?.batch_counts)
    }
}

/// `NAME=DTYPE:D0,D1,...`: `t` as a `--input-spec` argument.
pub(super) fn spec_arg(t: &TensorInfo) -> String {
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    format!("{}={}:{}", t.name, t.dtype.name(), dims.join(","))
}

/// `tch-naive`: what a tch user writes today: each input copied into a
/// tensor and moved to the device, `forward_is`, the outputs moved back and
/// copied out.
pub(crate) struct TchNaive {
    module: tch::CModule,
    device: tch::Device,
    inputs: Vec<HostTensor>,
    outputs: Vec<HostTensor>,
}

/// The tensors of `v`, flattened in order (tuples, lists, dict values).
fn flatten_ivalue(v: tch::IValue, out: &mut Vec<tch::Tensor>) -> Result<()> {
    match v {
        tch::IValue::Tensor(t) => out.push(t),
        tch::IValue::Tuple(vs) | tch::IValue::GenericList(vs) => vs.into_iter().try_for_each(|v| flatten_ivalue(v, out))?,
        tch::IValue::TensorList(ts) => out.extend(ts),
        tch::IValue::GenericDict(kvs) => kvs.into_iter().try_for_each(|(_, v)| flatten_ivalue(v, out))?,
        other => return Err(Error::session(SessionErrorKind::Failed, format!("tch-naive: the model returned {other:?} among its outputs"))),
    }
    Ok(())
}

impl TchNaive {
    pub(crate) fn load(path: &Path, device: tch::Device) -> Result<Self> {
        let mut module = tch::CModule::load_on_device(path, device)?;
        module.set_eval();
        Ok(Self { module, device, inputs: Vec::new(), outputs: Vec::new() })
    }

    fn forward(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let xs = self.inputs.iter().map(|t| Ok(tch::IValue::Tensor(t.to_tensor()?.to_device(self.device)))).collect::<Result<Vec<_>>>()?;
        let mut ys = Vec::new();
        flatten_ivalue(self.module.forward_is(&xs)?, &mut ys)?;
        self.outputs = ys.iter().enumerate().map(|(i, y)| HostTensor::from_tensor(&format!("output__{i}"), y)).collect::<Result<_>>()?;
        Ok(())
    }
}

impl Scheme for TchNaive {
    fn refresh(&mut self, _: u64, sample: &[HostTensor]) -> Result<()> {
        self.inputs.clear();
        self.inputs.extend_from_slice(sample);
        Ok(())
    }
    fn request(&mut self) -> Result<RunTiming> {
        timed(|| self.forward())
    }
    fn check(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        self.refresh(0, sample)?;
        self.forward()?;
        Ok(self.outputs.clone())
    }
    fn threads(&self) -> String {
        format!("{}; device {:?}", threads_here(), self.device)
    }
}

/// `py-torchscript` / `py-cuda-graph` / `py-onnxruntime`: a Python process
/// with torch (and ONNX Runtime), driven one request at a time
/// (`peer.py`); it times itself and reports.
pub(crate) struct PyPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ready: String,
    seed: u64,
    dir: PathBuf,
}

impl PyPeer {
    /// Starts the peer on `model` in `mode` over `inputs` (drawn in
    /// `ranges`); `Err` with the peer's reason when it cannot run the model.
    pub(crate) fn start(python: &Path, model: &Path, mode: &str, inputs: &[TensorInfo], ranges: &[Option<(i64, i64)>], device: &str) -> std::result::Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("uminfer-bench-{}-{mode}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let script = dir.join("peer.py");
        std::fs::write(&script, include_str!("peer.py")).map_err(|e| format!("{}: {e}", script.display()))?;
        let spec: Vec<serde_json::Value> = inputs
            .iter()
            .zip(ranges)
            .map(|(i, r)| serde_json::json!({"name": i.name, "dtype": i.dtype.torch_name(), "shape": i.shape, "range": r}))
            .collect();
        let mut child = Command::new(python)
            .arg(&script)
            .args(["--mode", mode, "--device", device, "--inputs-json", &serde_json::Value::from(spec).to_string(), "--model"])
            .arg(model)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting the Python peer: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("Python peer without pipes".into());
        };
        let mut peer = Self { child, stdin, stdout: BufReader::new(stdout), ready: String::new(), seed: 0, dir };
        let line = peer.line().map_err(|e| e.to_string())?;
        if let Some(why) = line.strip_prefix("unavailable ") {
            return Err(format!("the Python peer cannot run it: {why}"));
        }
        peer.ready = line.strip_prefix("ready ").ok_or_else(|| format!("Python peer said {line:?}"))?.to_string();
        Ok(peer)
    }

    fn line(&mut self) -> Result<String> {
        let mut s = String::new();
        let n = self.stdout.read_line(&mut s).map_err(|e| Error::session(SessionErrorKind::Failed, format!("Python peer: {e}")))?;
        if n == 0 {
            return Err(Error::session(SessionErrorKind::Failed, "the Python peer exited (see its stderr above)"));
        }
        Ok(s.trim().to_string())
    }

    fn send(&mut self, cmd: &str) -> Result<String> {
        writeln!(self.stdin, "{cmd}").and_then(|_| self.stdin.flush()).map_err(|e| Error::session(SessionErrorKind::Failed, format!("Python peer: {e}")))?;
        self.line()
    }
}

impl Scheme for PyPeer {
    fn refresh(&mut self, seed: u64, _: &[HostTensor]) -> Result<()> {
        self.seed = seed; // the peer makes its own fresh inputs from the seed, untimed
        Ok(())
    }
    fn request(&mut self) -> Result<RunTiming> {
        let seed = self.seed;
        let line = self.send(&format!("run {seed}"))?;
        let ns: u64 = line.strip_prefix("t ").and_then(|v| v.parse().ok()).ok_or_else(|| Error::session(SessionErrorKind::Failed, format!("Python peer said {line:?}")))?;
        Ok(RunTiming { host: Duration::from_nanos(ns), device: None })
    }
    fn check(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let (inp, out) = (self.dir.join("check-in.npz"), self.dir.join("check-out.npz"));
        crate::host_tensor::write_npz(&inp, sample)?;
        let reply = self.send(&format!("check {} {}", inp.display(), out.display()))?;
        if reply != "ok" {
            return Err(Error::session(SessionErrorKind::Failed, format!("Python peer said {reply:?}")));
        }
        crate::host_tensor::read_npz(&out)
    }
    fn threads(&self) -> String {
        format!("python: intra-op / device {}", self.ready)
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A python3 that imports torch: `--python`, else the project's `.venv`, else `python3` on PATH.
pub(crate) fn find_python(explicit: Option<&Path>) -> std::result::Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else {
        candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
        candidates.push(PathBuf::from("python3"));
    }
    for c in &candidates {
        let ok = Command::new(c)
            .args(["-c", "import torch, numpy; assert torch.__version__.startswith('2.11')"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(c.clone());
        }
    }
    Err(format!("no Python with torch 2.11 and numpy among {candidates:?} (pass --python PATH)"))
}
