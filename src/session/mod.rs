//! Inference sessions: a model bound to fixed input and output tensors
//! (names, dtypes, shapes) and an execution mode, over zero-copy regions.
//!
//! | module | holds |
//! |---|---|
//! | [`spec`] | [`SessionSpec`], [`ModeChoice`] |
//! | `typed` | [`TypedSession`]: one input and one output of known element types |
//! | [`tensor_ref`] | [`TensorRef`], [`TensorMut`]: caller memory for [`Session::run_on`] |
//! | `engine` | the per-mode request path; the CPU engine |
//! | `gpu` | the GPU engines (copy, pinned, managed, managed + CUDA graph) |
//! | `worker` | the dedicated session thread and the request handoff |
//! | [`timing`] | [`RunTiming`], [`Timing`] summaries (hdrhistogram) |
//! | [`pool`] | [`SessionPool`]: K sessions shared across threads |
//!
//! Per request: write the inputs ([`Session::input_mut`]), call
//! [`Session::run`], read the outputs ([`Session::output`]). The slices are
//! the regions the model reads and writes: nothing is copied on the way in,
//! and `run()` allocates nothing on the Rust side.

mod engine;
mod gpu;
pub mod pool;
pub mod spec;
pub mod tensor_ref;
pub mod timing;
mod typed;
mod worker;

pub use crate::model::TensorInfo;
pub use pool::{PooledSession, SessionPool};
pub use spec::{GraphLaunch, ManagedPlacement, ModeChoice, SessionSpec};
pub use tensor_ref::{TensorMut, TensorRef};
pub use timing::{PhasedRun, RunTiming, Summary, Timing, TimingRecorder};
pub use typed::TypedSession;
pub use worker::pin_to_core as pin_current_thread;
pub(crate) use worker::spin_until;

/// How long a caller and the thread that runs its request busy-wait for
/// each other before sleeping, by default ([`SessionSpec::spin`]).
pub(crate) fn default_spin(mode: Mode) -> std::time::Duration {
    if mode.needs_gpu() { worker::GPU_SPIN } else { worker::CPU_SPIN }
}

use crate::cuda::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result, SessionErrorKind};
use crate::host_tensor::{fill_random, HostTensor};
use crate::memory::region::{contiguous_strides, raw_tensor, TensorSide};
use crate::memory::{Advice, Element, Location, RawRegion, Region};
use crate::mode::Mode;
use crate::model::Model;
use crate::mode::ModeGate;
use crate::shim::LoadedModel;
use engine::{CpuEngine, Engine, HostPreprocess};
use gpu::{GpuEngine, GpuParts, GraphLauncher, ManagedRange};
use smallvec::SmallVec;
use std::sync::Arc;
use worker::Worker;

enum Runner {
    /// Runs on the caller's thread.
    Inline(Box<dyn Engine + Send>),
    /// Runs on the session's own thread.
    Thread(Worker),
}

impl Runner {
    fn run(&mut self) -> Result<RunTiming> {
        match self {
            Runner::Inline(e) => e.run(),
            Runner::Thread(w) => w.run(),
        }
    }
}

/// `requests` calls of `run` on this thread under a libtorch trace, each in
/// its scope, the trace written to `path` (see [`Session::trace`]).
fn trace_requests(cuda: bool, requests: usize, path: &std::path::Path, mut run: impl FnMut() -> Result<RunTiming>) -> Result<()> {
    let trace = crate::shim::TorchTrace::start(cuda)?;
    for i in 0..requests {
        let _scope = trace.scope(&format!("{} {i}", crate::shim::trace::REQUEST_SCOPE))?;
        run()?;
    }
    trace.save(path)
}

/// Names one of a session's tensors: by name (`&str`, `String`) or by index (`usize`).
pub trait TensorKey {
    /// Its index among `infos`.
    fn index_in(&self, infos: &[TensorInfo]) -> Option<usize>;
    /// How messages name it.
    fn describe(&self) -> String;
}

impl TensorKey for &str {
    fn index_in(&self, infos: &[TensorInfo]) -> Option<usize> {
        infos.iter().position(|i| i.name == *self)
    }
    fn describe(&self) -> String {
        format!("`{self}`")
    }
}

impl TensorKey for &String {
    fn index_in(&self, infos: &[TensorInfo]) -> Option<usize> {
        self.as_str().index_in(infos)
    }
    fn describe(&self) -> String {
        self.as_str().describe()
    }
}

impl TensorKey for usize {
    fn index_in(&self, infos: &[TensorInfo]) -> Option<usize> {
        (*self < infos.len()).then_some(*self)
    }
    fn describe(&self) -> String {
        format!("number {self}")
    }
}

/// One side's tensors: what they are, the regions holding them, and the
/// `data_ptr()` of the tensor the model reads or its result is copied into.
struct Tensors {
    side: &'static str,
    infos: Vec<TensorInfo>,
    regions: Vec<RawRegion>,
    /// Contiguous strides per tensor (precomputed: `run_on` allocates nothing).
    strides: Vec<Vec<i64>>,
    addrs: Vec<usize>,
}

impl Tensors {
    /// Regions for `infos` from `alloc` (bytes → region).
    fn allocate(side: &'static str, infos: Vec<TensorInfo>, mut alloc: impl FnMut(usize) -> Result<RawRegion>) -> Result<Self> {
        let regions = infos.iter().map(|i| alloc(i.byte_len())).collect::<Result<Vec<_>>>()?;
        let strides = infos.iter().map(|i| contiguous_strides(&i.shape)).collect();
        Ok(Self { side, infos, regions, strides, addrs: Vec::new() })
    }

    /// Tensors over the regions, on `side`; records their `data_ptr()`.
    ///
    /// # Safety
    /// As for [`Region::tensor_unbounded`]: the tensors must be dropped
    /// before the regions, and no host slice may be used while GPU work
    /// through them may be pending.
    unsafe fn tensors(&mut self, side: TensorSide) -> Result<Vec<tch::Tensor>> {
        let ts = self
            .infos
            .iter()
            .zip(&self.regions)
            // SAFETY: each region holds exactly the info's elements
            // (`allocate`); the lifetime and host-access rules are the caller's.
            .map(|(i, r)| unsafe { raw_tensor(r, i.numel(), i.dtype, &i.shape, side) })
            .collect::<Result<Vec<_>>>()?;
        self.addrs = ts.iter().map(|t| t.data_ptr() as usize).collect();
        Ok(ts)
    }

    fn index(&self, key: &impl TensorKey) -> Result<usize> {
        key.index_in(&self.infos).ok_or_else(|| Error::NoSuchTensor { side: self.side, given: key.describe(), known: tensor_ref::list(&self.infos) })
    }

    fn typed<T: Element>(&self, key: &impl TensorKey) -> Result<usize> {
        let i = self.index(key)?;
        if self.infos[i].dtype != T::DTYPE {
            return Err(Error::DType { tensor: self.infos[i].name.clone(), expected: self.infos[i].dtype, given: T::DTYPE });
        }
        Ok(i)
    }

    /// Tensor `i`'s elements.
    ///
    /// # Safety
    /// Tensor `i` holds `T`s, and no GPU work that writes its region is
    /// pending or queued while the slice lives (sessions guarantee this
    /// between runs).
    unsafe fn slice<T: Element>(&self, i: usize) -> &[T] {
        // SAFETY: the region holds numel elements of the tensor's dtype (T,
        // by the caller), aligned (REGION_ALIGN), initialised (zero-filled or
        // written), any bit pattern valid; GPU idleness is the caller's.
        unsafe { std::slice::from_raw_parts(self.regions[i].as_ptr().cast::<T>(), self.infos[i].numel()) }
    }

    /// Mutable form of [`slice`](Self::slice).
    ///
    /// # Safety
    /// As for `slice`, and no GPU work may read it meanwhile.
    unsafe fn slice_mut<T: Element>(&mut self, i: usize) -> &mut [T] {
        // SAFETY: as in `slice`; `&mut self` makes it the only view.
        unsafe { std::slice::from_raw_parts_mut(self.regions[i].as_ptr().cast::<T>(), self.infos[i].numel()) }
    }

    /// Tensor `i`'s bytes.
    ///
    /// # Safety
    /// As for [`slice`](Self::slice).
    unsafe fn bytes(&self, i: usize) -> &[u8] {
        // SAFETY: as in `slice`, for the region's first `byte_len` bytes.
        unsafe { std::slice::from_raw_parts(self.regions[i].as_ptr(), self.infos[i].byte_len()) }
    }
}

/// A model ready to serve requests of fixed tensors in one mode.
///
/// # Thread safety
/// `Send` (a session can move between threads; its GPU work runs on its own
/// thread, except a directly launched graph's, which the calling thread
/// launches) but used through `&mut self`: one request at a time. Use a
/// [`SessionPool`] to serve several threads.
pub struct Session {
    // Field order is drop order: the launcher (a handle into the runner's
    // graph) goes first, then the runner (its thread, tensors, stream and
    // graph), then the regions those tensors view.
    /// Graph sessions launched directly: requests run from the calling thread.
    launcher: Option<GraphLauncher>,
    runner: Runner,
    /// Raw u8 images when the spec asks for preprocessing.
    raw: Option<Region<u8>>,
    inputs: Tensors,
    outputs: Tensors,
    mode: Mode,
    note: String,
    timing: TimingRecorder,
    spec: SessionSpec,
    /// `cpu` mode without preprocessing: `run_on` runs over caller memory.
    cpu_direct: Option<Arc<LoadedModel>>,
}

/// Fills fresh input regions with pseudo-random data in the model's value
/// ranges (token ids inside the vocabulary), so that warm-up runs (and
/// cuDNN autotuning) see realistic values, not zeros.
fn fill_inputs(t: &mut Tensors, ranges: &[Option<(i64, i64)>]) -> Result<()> {
    for (i, (r, info)) in t.regions.iter().zip(&t.infos).enumerate() {
        r.prepare_host_access()?;
        // SAFETY: the region holds `byte_len` bytes (`allocate`), no GPU work
        // touches a fresh region, and nothing else views it during the call.
        let bytes = unsafe { std::slice::from_raw_parts_mut(r.as_ptr(), info.byte_len()) };
        fill_random(info.dtype, ranges.get(i).copied().flatten(), i as u64 + 1, bytes);
    }
    Ok(())
}

impl Session {
    /// Builds a session in a mode `gate` allows; see
    /// [`Runtime::session`](crate::Runtime::session), the public way.
    /// `default_dtype`: the dtype of an input neither the spec nor the model
    /// gives one.
    pub(crate) fn build(gate: &dyn ModeGate, model: &Model, spec: SessionSpec, default_dtype: Option<DType>) -> Result<Self> {
        match spec.mode {
            ModeChoice::Fixed(mode) => Self::build_mode(gate, model, spec, mode, default_dtype),
            ModeChoice::Auto => Self::build_auto(gate, model, spec, default_dtype),
        }
    }

    fn build_mode(gate: &dyn ModeGate, model: &Model, spec: SessionSpec, mode: Mode, default_dtype: Option<DType>) -> Result<Self> {
        if mode == Mode::ShmIpc {
            return Err(Error::session(SessionErrorKind::Unsupported, "shm-ipc is a transport, not a session mode: serve a session with `uminfer serve`"));
        }
        gate.check_mode(mode).map_err(|reason| Error::ModeUnusable { mode, reason })?;
        let in_infos = model.resolve(&spec.inputs, default_dtype)?;
        let ranges: Vec<Option<(i64, i64)>> = model.inputs()?.iter().map(|m| m.range).collect();
        if let Some(p) = &spec.preprocess {
            let fits = matches!(in_infos.as_slice(), [only] if only.dtype == DType::F32 && only.shape == p.output_shape());
            if !fits {
                return Err(Error::session(SessionErrorKind::Unsupported, format!(
                    "preprocessing writes one f32 input {:?}; the session's inputs are {}",
                    p.output_shape(),
                    tensor_ref::list(&in_infos)
                )));
            }
            if mode == Mode::GpuCopy {
                return Err(Error::session(SessionErrorKind::Unsupported, "preprocessing is not offered in gpu-copy; use gpu-pinned, gpu-managed or gpu-managed-graph"));
            }
        }
        let fail = |e: Error| build_error(model, &in_infos, e);
        let mut session = if mode == Mode::Cpu {
            let loaded = model.loaded(tch::Device::Cpu)?;
            let mut inputs = Tensors::allocate("input", in_infos.clone(), RawRegion::host)?;
            fill_inputs(&mut inputs, &ranges)?;
            let mut raw = spec.preprocess.as_ref().map(|p| Region::<u8>::host(p.len())).transpose()?;
            if let Some(r) = raw.as_mut() {
                fill_raw(r)?;
            }
            let preprocess = spec.preprocess.as_ref().zip(raw.as_ref()).map(|(p, r)| HostPreprocess { params: *p, src: r.as_ptr() as usize, dst: inputs.regions[0].as_ptr() as usize });
            // SAFETY: the tensors live in the engine, which the session drops
            // before the regions (field order); host slices are handed out only
            // between runs, when no work is in flight (CPU work is synchronous).
            let ti = unsafe { inputs.tensors(TensorSide::Native) }?;
            let (out_infos, _) = model.discover_outputs(&loaded, &ti).map_err(fail)?;
            let mut outputs = Tensors::allocate("output", out_infos, RawRegion::host)?;
            // SAFETY: as for the input tensors.
            let to = unsafe { outputs.tensors(TensorSide::Native) }?;
            let cpu_direct = spec.preprocess.is_none().then(|| loaded.clone());
            let mut engine = CpuEngine { model: loaded, inputs: ti, outputs: to, preprocess };
            let note = format!("{} warm-up runs on the CPU", spec.warmup);
            let threaded = spec.dedicated_thread.unwrap_or(false) || spec.pin_core.is_some();
            let runner = if threaded {
                let spin = spec.spin.unwrap_or(default_spin(Mode::Cpu));
                // Warm up on the session thread: every forward pass of this
                // session, and with it libtorch's OpenMP team, stays on that
                // thread (see `intra_op`: more teams than cores' worth of
                // threads stop libgomp's spinning in all of them).
                let (m, infos, warmup) = (model.clone(), in_infos.clone(), spec.warmup);
                let (w, _) = Worker::spawn(format!("uminfer-cpu-{}", model.path().display()), spec.pin_core, spin, move || {
                    for _ in 0..warmup {
                        engine.run().map_err(|e| build_error(&m, &infos, e))?;
                    }
                    Ok((engine, ()))
                })?;
                Runner::Thread(w)
            } else {
                for _ in 0..spec.warmup {
                    engine.run().map_err(fail)?;
                }
                Runner::Inline(Box::new(engine))
            };
            Self { launcher: None, runner, raw, inputs, outputs, mode, note, timing: TimingRecorder::new(), spec, cpu_direct }
        } else {
            let gpu = Gpu::open(spec.device)?;
            let loaded = model.loaded(tch::Device::Cuda(spec.device))?;
            let pinned = spec.managed_placement == ManagedPlacement::Pinned;
            let managed_mode = matches!(mode, Mode::GpuManaged | Mode::GpuManagedGraph) && !pinned;
            let alloc = |bytes: usize| {
                if managed_mode {
                    let o = crate::memory::ManagedOptions::default();
                    RawRegion::managed(&gpu, bytes, o.attach_host, o.headroom_bytes)
                } else {
                    RawRegion::pinned_mapped(&gpu, bytes)
                }
            };
            let mut inputs = Tensors::allocate("input", in_infos.clone(), alloc)?;
            fill_inputs(&mut inputs, &ranges)?;
            let mut raw = match (&spec.preprocess, managed_mode) {
                (None, _) => None,
                (Some(p), true) => Some(Region::<u8>::managed(&gpu, p.len(), crate::memory::ManagedOptions::default())?),
                (Some(p), false) => Some(Region::<u8>::pinned_mapped(&gpu, p.len())?),
            };
            if let Some(r) = raw.as_mut() {
                fill_raw(r)?;
            }
            let side = if mode == Mode::GpuCopy { TensorSide::Host } else { TensorSide::Native };
            // SAFETY: as for the CPU engine; in addition every GPU request ends
            // with a stream synchronisation, so no GPU work is pending when the
            // session hands out host slices.
            let ti = unsafe { inputs.tensors(side) }?;
            // The outputs: one eager run on the device, from this thread.
            let copies;
            let probe_inputs = if side == TensorSide::Host {
                copies = ti.iter().map(|t| Ok(t.f_to_device(tch::Device::Cuda(spec.device))?)).collect::<Result<Vec<_>>>()?;
                &copies
            } else {
                &ti
            };
            let (out_infos, probed) = model.discover_outputs(&loaded, probe_inputs).map_err(fail)?;
            drop(probed);
            tch::Cuda::synchronize(spec.device as i64);
            let mut outputs = Tensors::allocate("output", out_infos, alloc)?;
            // SAFETY: as for the input tensors.
            let to = unsafe { outputs.tensors(side) }?;
            // Host-resident placement: the host-written regions (raw when
            // preprocessing, else the inputs) and the outputs stay in host
            // memory, mapped for the GPU; a preprocessed input stays where the
            // kernel writes it.
            let wants_host = managed_mode && spec.managed_placement == ManagedPlacement::HostResident;
            let host_resident = wants_host && gpu.concurrent_managed_access();
            if host_resident {
                for advice in [Advice::PreferredLocation(Location::Host), Advice::AccessedByDevice] {
                    match raw.as_mut() {
                        Some(r) => r.advise(advice)?,
                        None => inputs.regions.iter().try_for_each(|r| crate::memory::managed::advise_raw(r, r.bytes(), advice))?,
                    }
                    outputs.regions.iter().try_for_each(|r| crate::memory::managed::advise_raw(r, r.bytes(), advice))?;
                }
            }
            let placement_note = match (host_resident, wants_host) {
                (true, _) => "; managed pages host-resident, read and written in place by the GPU (no per-request prefetch)",
                (false, true) => "; host-resident placement needs concurrentManagedAccess, which this GPU lacks: pages migrate on demand",
                _ if pinned && matches!(mode, Mode::GpuManaged | Mode::GpuManagedGraph) => {
                    "; regions in pinned-mapped host memory instead of managed memory (placement `pinned`), read and written in place by the GPU"
                }
                _ => "",
            };
            let preprocess = spec.preprocess.zip(raw.as_ref()).map(|(p, r)| (p, r.device_ptr().unwrap_or(0), inputs.regions[0].device_ptr().unwrap_or(0)));
            let range = |r: &RawRegion| ManagedRange { ptr: r.device_ptr().unwrap_or(0), bytes: r.bytes() };
            // With preprocessing the host writes the raw region: that is what
            // to prefetch. Host-resident pages are neither prefetched nor
            // (needing concurrentManagedAccess) attached: the engine gets no ranges.
            let managed = (managed_mode && !host_resident).then(|| {
                let written = match raw.as_ref() {
                    Some(r) => vec![ManagedRange { ptr: r.device_ptr().unwrap_or(0), bytes: r.byte_len() }],
                    None => inputs.regions.iter().map(range).collect(),
                };
                (written, outputs.regions.iter().map(range).collect())
            });
            let parts = GpuParts {
                mode,
                model: loaded,
                gpu,
                inputs: ti,
                outputs: to,
                managed,
                warmup: spec.warmup,
                allow_eager_fallback: spec.allow_eager_fallback,
                capture: mode == Mode::GpuManagedGraph || spec.capture_graph,
                stage_input: spec.stage_input,
                graph_launch: spec.graph_launch,
                preprocess,
                share: spec.graph_share.clone(),
            };
            let name = format!("uminfer-{}-{}", mode, spec.device);
            let spin = spec.spin.unwrap_or(default_spin(mode));
            // Unless the spec asks for the session thread, a graph launched
            // directly is launched from the calling thread.
            let inline_launch = spec.dedicated_thread.is_none() && spec.pin_core.is_none();
            let (w, (mut note, launcher)) = Worker::spawn(name, spec.pin_core, spin, move || {
                let (engine, note) = GpuEngine::build(parts)?;
                let launcher = if inline_launch { engine.launcher()? } else { None };
                Ok((engine, (note, launcher)))
            })
            .map_err(fail)?;
            if launcher.is_some() {
                note.push_str("; requests launch it from the calling thread (no hand-off to the session thread)");
            }
            note.push_str(placement_note);
            Self { launcher, runner: Runner::Thread(w), raw, inputs, outputs, mode, note, timing: TimingRecorder::new(), spec, cpu_direct: None }
        };
        session.timing.reset();
        Ok(session)
    }

    fn build_auto(gate: &dyn ModeGate, model: &Model, spec: SessionSpec, default_dtype: Option<DType>) -> Result<Self> {
        let mut best: Option<(f64, Self)> = None;
        let mut tried = Vec::new();
        for mode in gate.usable_modes() {
            let built = Self::build_mode(gate, model, spec.clone().mode(mode), mode, default_dtype).and_then(|mut s| {
                for _ in 0..spec.calibration_runs {
                    s.run()?;
                }
                Ok(s)
            });
            match built {
                Ok(s) => {
                    let p50 = s.timing().map(|t| t.host.p50_us).unwrap_or(f64::INFINITY);
                    tried.push(format!("{mode} P50 {p50:.1} µs"));
                    if best.as_ref().is_none_or(|(b, _)| p50 < *b) {
                        best = Some((p50, s));
                    }
                }
                Err(e) => tried.push(format!("{mode} failed: {e}")),
            }
        }
        let (p50, mut s) = best.ok_or_else(|| Error::session(SessionErrorKind::Unsupported, format!("auto: no mode could be built ({})", tried.join("; "))))?;
        s.note = format!(
            "auto picked {} (fastest host P50 {p50:.1} µs over {} calibration runs; {}); {}",
            s.mode,
            spec.calibration_runs,
            tried.join(", "),
            s.note
        );
        s.timing.reset();
        Ok(s)
    }

    /// The mode this session runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What was done at build (warm-up, capture, auto's choice and why, fallbacks).
    pub fn note(&self) -> &str {
        &self.note
    }

    /// The spec the session was built from.
    pub fn spec(&self) -> &SessionSpec {
        &self.spec
    }

    /// The inputs, in the order the model takes them.
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs.infos
    }

    /// The outputs, in the order the model returns them (flattened).
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs.infos
    }

    /// Input `key`'s region as a slice: write the request here (no copy
    /// follows). Fails when the input holds another dtype than `T`.
    pub fn input_mut<T: Element>(&mut self, key: impl TensorKey) -> Result<&mut [T]> {
        let i = self.inputs.typed::<T>(&key)?;
        // SAFETY: input `i` holds Ts (checked); between runs no GPU work is
        // pending (every run ends with a synchronisation; build too), and
        // `&mut self` excludes a concurrent run.
        Ok(unsafe { self.inputs.slice_mut(i) })
    }

    /// Input `key`'s region, read-only.
    pub fn input<T: Element>(&self, key: impl TensorKey) -> Result<&[T]> {
        let i = self.inputs.typed::<T>(&key)?;
        // SAFETY: as for `input_mut`.
        Ok(unsafe { self.inputs.slice(i) })
    }

    /// Output `key`'s region: its result of the last `run()`.
    pub fn output<T: Element>(&self, key: impl TensorKey) -> Result<&[T]> {
        let i = self.outputs.typed::<T>(&key)?;
        // SAFETY: as for `input_mut`.
        Ok(unsafe { self.outputs.slice(i) })
    }

    /// Output `key`'s region, writable (the tests poison it before a run).
    /// Hidden from the documentation: for the test suite, not the API.
    #[doc(hidden)]
    pub fn output_mut<T: Element>(&mut self, key: impl TensorKey) -> Result<&mut [T]> {
        let i = self.outputs.typed::<T>(&key)?;
        // SAFETY: as for `input_mut`.
        Ok(unsafe { self.outputs.slice_mut(i) })
    }

    /// Output `key`'s bytes, whatever its dtype (bools are 0 or 1).
    pub fn output_bytes(&self, key: impl TensorKey) -> Result<&[u8]> {
        let i = self.outputs.index(&key)?;
        // SAFETY: as for `input_mut`.
        Ok(unsafe { self.outputs.bytes(i) })
    }

    /// Input `key`'s bytes, writable (the batcher gathers a batch here).
    ///
    /// # Safety
    /// Before the next run every byte written must make a valid element of
    /// the input's dtype (a bool is 0 or 1).
    pub(crate) unsafe fn input_bytes_mut(&mut self, key: impl TensorKey) -> Result<&mut [u8]> {
        let i = self.inputs.index(&key)?;
        // SAFETY: as for `input_mut` (between runs, `&mut self`); the region
        // holds `byte_len` bytes; valid values are the caller's promise.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.inputs.regions[i].as_ptr(), self.inputs.infos[i].byte_len()) })
    }

    /// Writes `t` into the input of its name, checking dtype and shape.
    pub fn write_input(&mut self, t: &HostTensor) -> Result<()> {
        let i = self.inputs.index(&t.name.as_str())?;
        let info = &self.inputs.infos[i];
        if info.dtype != t.dtype || info.shape != t.shape {
            return Err(Error::session(SessionErrorKind::InvalidRequest, format!("input `{}` takes {} {:?}; {} {:?} given", info.name, info.dtype, info.shape, t.dtype, t.shape)));
        }
        // SAFETY: as for `input_mut`; the region holds exactly `byte_len`
        // bytes, which `t` has (same dtype and shape), and `t`'s bytes are a
        // valid value of the dtype (HostTensor checks bools).
        let dst = unsafe { std::slice::from_raw_parts_mut(self.inputs.regions[i].as_ptr(), info.byte_len()) };
        dst.copy_from_slice(t.bytes());
        Ok(())
    }

    /// A copy of output `key`.
    pub fn read_output(&self, key: impl TensorKey) -> Result<HostTensor> {
        let i = self.outputs.index(&key)?;
        let info = &self.outputs.infos[i];
        // SAFETY: as for `input_mut`.
        HostTensor::new(&info.name, info.dtype, &info.shape, unsafe { self.outputs.bytes(i) }.to_vec())
    }

    /// The raw u8 HWC image region, when the spec asked for preprocessing:
    /// write the image here; `run()` normalises it into the input region.
    pub fn raw_input_mut(&mut self) -> Result<&mut [u8]> {
        match self.raw.as_mut() {
            // SAFETY: as for `input_mut`.
            Some(r) => Ok(unsafe { r.host_slice_mut_unchecked() }),
            None => Err(Error::session(SessionErrorKind::Unsupported, "this session has no preprocessing: build it with SessionSpec::preprocess")),
        }
    }

    /// `data_ptr()` of the tensors the model reads and of the tensors its
    /// results are copied into, in order: the regions' own addresses in the
    /// zero-copy modes (the device address for pinned-mapped memory; the
    /// pinned staging address in `gpu-copy`, whose device tensors are separate).
    /// Hidden from the documentation: for the test suite's zero-copy checks.
    #[doc(hidden)]
    pub fn tensor_addresses(&self) -> (&[usize], &[usize]) {
        (&self.inputs.addrs, &self.outputs.addrs)
    }

    /// Input `key`'s region. Hidden from the documentation: for the test
    /// suite's zero-copy checks.
    #[doc(hidden)]
    pub fn input_region(&self, key: impl TensorKey) -> Result<&RawRegion> {
        Ok(&self.inputs.regions[self.inputs.index(&key)?])
    }

    /// Output `key`'s region. Hidden from the documentation: for the test
    /// suite's zero-copy checks.
    #[doc(hidden)]
    pub fn output_region(&self, key: impl TensorKey) -> Result<&RawRegion> {
        Ok(&self.outputs.regions[self.outputs.index(&key)?])
    }

    /// Runs one request: reads the input regions, writes the output regions.
    pub fn run(&mut self) -> Result<RunTiming> {
        let t = self.run_untimed()?;
        self.timing.record(t);
        Ok(t)
    }

    /// Runs `requests` requests over the session's regions (not recorded in
    /// its timing) under a libtorch trace ([`TorchTrace`](crate::shim::TorchTrace);
    /// on a GPU with its kernels and copies), each inside a scope named
    /// [`REQUEST_SCOPE`](crate::shim::trace::REQUEST_SCOPE)` I`, and writes
    /// the trace to `path` as Chrome trace JSON. The trace is taken on the
    /// thread that runs the requests: the session's own, when it has one.
    ///
    /// ```
    /// let rt = uminfer::Runtime::new();
    /// let model = rt.model("models/tiny.pt")?;
    /// let mut s = rt.session(&model, uminfer::SessionSpec::new())?;
    /// let path = std::env::temp_dir().join(format!("uminfer-doctest-trace-{}.json", std::process::id()));
    /// s.trace(3, &path)?;
    /// assert!(std::fs::read_to_string(&path)?.contains("\"uminfer::request 2\""));
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn trace(&mut self, requests: usize, path: &std::path::Path) -> Result<()> {
        let cuda = self.mode().needs_gpu();
        if let Some(l) = &mut self.launcher {
            return trace_requests(cuda, requests, path, || l.run());
        }
        match &mut self.runner {
            Runner::Inline(e) => trace_requests(cuda, requests, path, || e.run()),
            Runner::Thread(w) => {
                let mut traced = None;
                w.with_engine(&mut |e| traced = Some(trace_requests(cuda, requests, path, || e.run())))?;
                traced.unwrap_or_else(|| Err(Error::session(SessionErrorKind::Failed, "the session thread did not run the trace")))
            }
        }
    }

    /// Runs one request over the session's regions (not recorded in its
    /// timing) split into phases: on a GPU, the device time split at CUDA
    /// events recorded where each stage begins on the session's stream
    /// ([`PhasedRun::device_phases`]). The plain [`run`](Self::run) records
    /// none of these events. It runs on the session's thread when it has one
    /// (a graph launched from the calling thread is launched there instead);
    /// the host time is then the pass on that thread, without the hand-off.
    ///
    /// ```
    /// let rt = uminfer::Runtime::new();
    /// let model = rt.model("models/tiny.pt")?;
    /// let mut s = rt.session(&model, uminfer::SessionSpec::new())?;
    /// let phased = s.run_phased()?;
    /// assert!(phased.device_phases.is_empty()); // CPU: no device time
    /// assert!(s.timing().is_none()); // not recorded
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run_phased(&mut self) -> Result<PhasedRun> {
        match &mut self.runner {
            Runner::Inline(e) => e.run_phased(),
            Runner::Thread(w) => {
                let mut phased = None;
                w.with_engine(&mut |e| phased = Some(e.run_phased()))?;
                phased.unwrap_or_else(|| Err(Error::session(SessionErrorKind::Failed, "the session thread did not run the request")))
            }
        }
    }

    /// One request over the first `rows` rows (first dimension) of every
    /// input and output region, the rest untouched: in a CPU session that
    /// runs on the calling thread (a batcher's), a batch of fewer samples
    /// than the session's, with no padding. Recorded in the timing.
    pub(crate) fn run_rows(&mut self, rows: usize) -> Result<RunTiming> {
        let t = match &mut self.runner {
            Runner::Inline(e) => e.run_rows(rows)?,
            Runner::Thread(_) => return Err(Error::session(SessionErrorKind::Unsupported, "a session on a thread of its own runs its whole batch")),
        };
        self.timing.record(t);
        Ok(t)
    }

    /// The session runs its requests on a thread of its own
    /// ([`SessionSpec::dedicated_thread`], `pin_core`, GPU modes).
    pub fn has_own_thread(&self) -> bool {
        matches!(self.runner, Runner::Thread(_))
    }

    /// One request over the session's regions, not recorded.
    fn run_untimed(&mut self) -> Result<RunTiming> {
        match &mut self.launcher {
            Some(l) => l.run(),
            None => self.runner.run(),
        }
    }

    /// Runs one request over caller-owned memory (e.g. a shared-memory
    /// sample): one [`TensorRef`] per input and one [`TensorMut`] per
    /// output, in the session's order. In `cpu` mode the model reads the
    /// inputs and its results are written into the outputs through tensors
    /// over them: no copy of the inputs (on the session's thread when it has
    /// one, else on the calling thread). In GPU modes the inputs are copied
    /// into the session's input regions and the output regions into the
    /// outputs. When it returns `Ok`, every byte of every output is written.
    pub fn run_on(&mut self, inputs: &[TensorRef<'_>], outputs: &mut [TensorMut<'_>]) -> Result<RunTiming> {
        tensor_ref::check_bindings("input", &self.inputs.infos, inputs.iter().map(|t| (t.dtype(), t.bytes().len())))?;
        tensor_ref::check_bindings("output", &self.outputs.infos, outputs.iter().map(|t| (t.dtype(), t.len())))?;
        let t = match &self.cpu_direct {
            Some(model) => {
                let (ins, outs) = (&self.inputs, &self.outputs);
                let mut ran: Result<()> = Err(Error::session(SessionErrorKind::Failed, "the session thread did not run the request"));
                let mut job = || {
                    ran = (|| {
                        let ti = ins
                            .infos
                            .iter()
                            .zip(&ins.strides)
                            .zip(inputs)
                            // SAFETY: each input holds exactly numel(shape) elements of its
                            // dtype (checked above), outlives this call and is only read; the
                            // tensors are dropped before the closure returns.
                            .map(|((i, st), r)| Ok(unsafe { tch::Tensor::f_from_blob(r.bytes().as_ptr(), &i.shape, st, i.dtype.kind(), tch::Device::Cpu) }?))
                            .collect::<Result<SmallVec<[tch::Tensor; 8]>>>()?;
                        let mut to = outs
                            .infos
                            .iter()
                            .zip(&outs.strides)
                            .zip(outputs.iter_mut())
                            // SAFETY: each output holds exactly numel(shape) slots of its
                            // dtype, is exclusively borrowed for this call, and libtorch only
                            // writes it (copy_ of the result); the tensors are dropped before
                            // the closure returns.
                            .map(|((i, st), o)| Ok(unsafe { tch::Tensor::f_from_blob(o.as_mut_ptr(), &i.shape, st, i.dtype.kind(), tch::Device::Cpu) }?))
                            .collect::<Result<SmallVec<[tch::Tensor; 8]>>>()?;
                        model.run_into(&ti, &mut to)
                    })();
                };
                // With several intra-op threads, a session with its own thread runs
                // the pass there, so that one OpenMP team serves all of its passes
                // whoever calls (every calling thread would start a team of its
                // own; `intra_op::on_passing_thread` says what that costs). With
                // one there is no team, and the calling thread saves two hand-offs.
                let t = match &self.runner {
                    Runner::Thread(w) if tch::get_num_threads() > 1 => w.call(&mut job)?,
                    Runner::Thread(_) | Runner::Inline(_) => {
                        let t0 = std::time::Instant::now();
                        job();
                        RunTiming { host: t0.elapsed(), device: None }
                    }
                };
                ran?;
                t
            }
            None => {
                for (i, r) in inputs.iter().enumerate() {
                    // SAFETY: between runs no GPU work is pending and `&mut
                    // self` excludes a concurrent run; the region holds
                    // `byte_len` bytes, the length of `r` (checked above),
                    // whose bytes are valid elements of the dtype (TensorRef).
                    unsafe { std::slice::from_raw_parts_mut(self.inputs.regions[i].as_ptr(), r.bytes().len()) }.copy_from_slice(r.bytes());
                }
                let t = self.run_untimed()?;
                for (i, o) in outputs.iter_mut().enumerate() {
                    // SAFETY: as above, the run has ended (synchronised); the
                    // output region and `o` both hold `o.len()` bytes (checked
                    // above) and are distinct allocations.
                    unsafe { std::ptr::copy_nonoverlapping(self.outputs.regions[i].as_ptr(), o.as_mut_ptr(), o.len()) };
                }
                t
            }
        };
        self.timing.record(t);
        Ok(t)
    }

    /// Count, P50, P90, P99, mean and standard deviation of host (and device) time.
    pub fn timing(&self) -> Option<Timing> {
        self.timing.summary()
    }

    /// Forgets recorded timings.
    pub fn reset_timing(&mut self) {
        self.timing.reset();
    }
}

/// Fills a fresh raw image region with pseudo-random bytes.
fn fill_raw(r: &mut Region<u8>) -> Result<()> {
    let mut h = r.host_view_mut()?;
    fill_random(DType::U8, Some((0, 256)), 7, &mut h);
    Ok(())
}

/// Turns a libtorch error at build into a session error that names the
/// model and the inputs it was given.
fn build_error(model: &Model, inputs: &[crate::model::TensorInfo], e: Error) -> Error {
    match e {
        Error::Shim { message, .. } => Error::session(SessionErrorKind::Unsupported, format!("model {} with inputs {}: {message}", model.path().display(), tensor_ref::list(inputs))),
        other => other,
    }
}
