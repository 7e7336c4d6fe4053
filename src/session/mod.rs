//! Inference sessions: a model bound to fixed input/output shapes and an
//! execution mode, over zero-copy regions.
//!
//! | module | holds |
//! |---|---|
//! | [`spec`] | [`SessionSpec`], [`ModeChoice`] |
//! | `engine` | the per-mode request path; the CPU engine |
//! | `gpu` | the GPU engines (copy, pinned, managed, managed + CUDA graph) |
//! | `worker` | the dedicated session thread and the request handoff |
//! | [`timing`] | [`RunTiming`], [`Timing`] summaries (hdrhistogram) |
//! | [`pool`] | [`SessionPool`]: K sessions shared across threads |
//!
//! Per request: write [`Session::input_mut`], call [`Session::run`], read
//! [`Session::output`]. Both slices are the regions the model reads and
//! writes: nothing is copied on the way in, and `run()` allocates nothing on
//! the Rust side.

mod engine;
mod gpu;
pub mod pool;
pub mod spec;
pub mod timing;
mod worker;

pub use pool::{PooledSession, SessionPool};
pub use worker::pin_to_core as pin_current_thread;
pub use spec::{GraphLaunch, ManagedPlacement, ModeChoice, SessionSpec};
pub use timing::{RunTiming, Summary, Timing, TimingRecorder};

use crate::cuda::Gpu;
use crate::error::{Error, Result};
use crate::memory::region::{contiguous_strides, TensorSide};
use crate::memory::{Advice, Element, Location, ManagedOptions, Region, RegionKind};
use crate::mode::Mode;
use crate::runtime::{Model, Runtime};
use engine::{CpuEngine, Engine, HostPreprocess};
use gpu::{GpuEngine, GpuParts, GraphLauncher, ManagedRange};
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

/// What `run_on` needs to run a `cpu` session over caller memory.
struct CpuDirect {
    module: std::sync::Arc<crate::shim::TorchModule>,
    /// Contiguous strides of the input and output shapes (precomputed: no allocation per request).
    strides: (Vec<i64>, Vec<i64>),
}

/// A model ready to serve requests of one fixed shape in one mode.
///
/// # Thread safety
/// `Send` (a session can move between threads; its GPU work runs on its own
/// thread, except a directly launched graph's, which the calling thread
/// launches) but used through `&mut self`: one request at a time. Use a
/// [`SessionPool`] to serve several threads.
pub struct Session<I: Element = f32, O: Element = f32> {
    // Field order is drop order: the launcher (a handle into the runner's
    // graph) goes first, then the runner (its thread, tensors, stream and
    // graph), then the regions those tensors view.
    /// Graph sessions launched directly: requests run from the calling thread.
    launcher: Option<GraphLauncher>,
    runner: Runner,
    /// Raw u8 images when the spec asks for preprocessing.
    raw: Option<Region<u8>>,
    input: Region<I>,
    output: Region<O>,
    mode: Mode,
    note: String,
    timing: TimingRecorder,
    spec: SessionSpec,
    /// `data_ptr()` of the tensors the model reads and its result is copied into.
    tensor_addrs: (usize, usize),
    /// `cpu` mode without preprocessing: `run_on` runs over caller memory.
    cpu_direct: Option<CpuDirect>,
}

fn numel(shape: &[i64], what: &str) -> Result<usize> {
    crate::memory::region::checked_numel(shape)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::Session(format!("{what} shape {shape:?} must have positive dimensions")))
}

impl<I: Element, O: Element> Session<I, O> {
    /// Builds a session; see [`Runtime::session`].
    pub(crate) fn build(rt: &Runtime, model: &Model, spec: SessionSpec) -> Result<Self> {
        match spec.mode {
            ModeChoice::Fixed(mode) => Self::build_mode(rt, model, spec, mode),
            ModeChoice::Auto => Self::build_auto(rt, model, spec),
        }
    }

    fn build_mode(rt: &Runtime, model: &Model, spec: SessionSpec, mode: Mode) -> Result<Self> {
        if mode == Mode::ShmIpc {
            return Err(Error::Session("shm-ipc is a transport, not a session mode: serve a session with `uminfer serve`".into()));
        }
        rt.check_mode(mode)?;
        let n_in = numel(&spec.input_shape, "input")?;
        let n_out = numel(&spec.output_shape, "output")?;
        if let Some(p) = &spec.preprocess {
            if I::KIND != tch::Kind::Float || spec.input_shape != p.output_shape() {
                return Err(Error::Session(format!(
                    "preprocessing writes f32 {:?}; the session's input is {} {:?}",
                    p.output_shape(),
                    I::NAME,
                    spec.input_shape
                )));
            }
            if mode == Mode::GpuCopy {
                return Err(Error::Session("preprocessing is not offered in gpu-copy; use gpu-pinned, gpu-managed or gpu-managed-graph".into()));
            }
        }
        let mut session = if mode == Mode::Cpu {
            let mut input = Region::<I>::host(n_in)?;
            let output = Region::<O>::host(n_out)?;
            random_fill(&mut input)?;
            let mut raw = spec.preprocess.as_ref().map(|p| Region::<u8>::host(p.len())).transpose()?;
            if let Some(r) = raw.as_mut() {
                random_fill(r)?;
            }
            let preprocess = spec.preprocess.as_ref().zip(raw.as_ref()).map(|(p, r)| HostPreprocess {
                params: *p,
                src: r.as_ptr() as usize,
                dst: input.as_ptr() as usize,
            });
            let module = model.module(tch::Device::Cpu)?;
            let cpu_direct = spec.preprocess.is_none().then(|| CpuDirect {
                module: module.clone(),
                strides: (contiguous_strides(&spec.input_shape), contiguous_strides(&spec.output_shape)),
            });
            // SAFETY: the tensors live in the engine, which the session drops
            // before the regions (field order); host slices are handed out only
            // between runs, when no work is in flight (CPU work is synchronous).
            let (ti, to) = unsafe {
                (input.tensor_unbounded(&spec.input_shape, TensorSide::Native)?, output.tensor_unbounded(&spec.output_shape, TensorSide::Native)?)
            };
            let tensor_addrs = (ti.data_ptr() as usize, to.data_ptr() as usize);
            let mut engine = CpuEngine { module, input: ti, output: to, preprocess };
            let note = format!("{} warm-up runs on the CPU", spec.warmup);
            let threaded = spec.dedicated_thread.unwrap_or(false) || spec.pin_core.is_some();
            let runner = if threaded {
                let spin = spec.spin.unwrap_or(worker::CPU_SPIN);
                // Warm up on the session thread: every forward pass of this
                // session, and with it libtorch's OpenMP team, stays on that
                // thread (see `intra_op`: more teams than cores' worth of
                // threads stop libgomp's spinning in all of them).
                let (m, sp) = (model.clone(), spec.clone());
                let (w, _) = Worker::spawn(format!("uminfer-cpu-{}", model.path().display()), spec.pin_core, spin, move || {
                    for _ in 0..sp.warmup {
                        engine.run().map_err(|e| shape_error(&m, &sp, e))?;
                    }
                    Ok((engine, ()))
                })?;
                Runner::Thread(w)
            } else {
                for _ in 0..spec.warmup {
                    engine.run().map_err(|e| shape_error(model, &spec, e))?;
                }
                Runner::Inline(Box::new(engine))
            };
            Self { launcher: None, runner, raw, input, output, mode, note, timing: TimingRecorder::new(), spec, tensor_addrs, cpu_direct }
        } else {
            let gpu = Gpu::open(spec.device)?;
            let pinned = spec.managed_placement == ManagedPlacement::Pinned;
            let (mut input, mut output) = match mode {
                Mode::GpuManaged | Mode::GpuManagedGraph if !pinned => {
                    (Region::<I>::managed(&gpu, n_in, ManagedOptions::default())?, Region::<O>::managed(&gpu, n_out, ManagedOptions::default())?)
                }
                _ => (Region::<I>::pinned_mapped(&gpu, n_in)?, Region::<O>::pinned_mapped(&gpu, n_out)?),
            };
            random_fill(&mut input)?;
            let mut raw = match (&spec.preprocess, input.kind()) {
                (None, _) => None,
                (Some(p), RegionKind::Managed) => Some(Region::<u8>::managed(&gpu, p.len(), ManagedOptions::default())?),
                (Some(p), _) => Some(Region::<u8>::pinned_mapped(&gpu, p.len())?),
            };
            if let Some(r) = raw.as_mut() {
                random_fill(r)?;
            }
            // Host-resident placement: the host-written region (raw when
            // preprocessing, else the input) and the output stay in host memory,
            // mapped for the GPU; a preprocessed input stays where the kernel writes it.
            let managed_regions = input.kind() == RegionKind::Managed;
            let wants_host = managed_regions && spec.managed_placement == ManagedPlacement::HostResident;
            let host_resident = wants_host && gpu.concurrent_managed_access();
            if host_resident {
                for advice in [Advice::PreferredLocation(Location::Host), Advice::AccessedByDevice] {
                    match raw.as_mut() {
                        Some(r) => r.advise(advice)?,
                        None => input.advise(advice)?,
                    }
                    output.advise(advice)?;
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
            let preprocess = spec.preprocess.zip(raw.as_ref()).map(|(p, r)| (p, r.device_ptr().unwrap_or(0), input.device_ptr().unwrap_or(0)));
            let side = if mode == Mode::GpuCopy { TensorSide::Host } else { TensorSide::Native };
            // SAFETY: as for the CPU engine; in addition every GPU request ends
            // with a stream synchronisation, so no GPU work is pending when the
            // session hands out host slices.
            let (ti, to) = unsafe { (input.tensor_unbounded(&spec.input_shape, side)?, output.tensor_unbounded(&spec.output_shape, side)?) };
            let tensor_addrs = (ti.data_ptr() as usize, to.data_ptr() as usize);
            // With preprocessing the host writes the raw region: that is what to prefetch.
            let host_written = raw.as_ref().map_or((input.device_ptr(), input.byte_len()), |r| (r.device_ptr(), r.byte_len()));
            // Host-resident pages are neither prefetched nor (needing
            // concurrentManagedAccess) attached: the engine gets no ranges.
            let managed = (managed_regions && !host_resident).then(|| {
                (
                    ManagedRange { ptr: host_written.0.unwrap_or(0), bytes: host_written.1 },
                    ManagedRange { ptr: output.device_ptr().unwrap_or(0), bytes: output.byte_len() },
                )
            });
            let parts = GpuParts {
                mode,
                module: model.module(tch::Device::Cuda(spec.device))?,
                gpu,
                input: ti,
                output: to,
                managed,
                warmup: spec.warmup,
                allow_eager_fallback: spec.allow_eager_fallback,
                capture: mode == Mode::GpuManagedGraph || spec.capture_graph,
                stage_input: spec.stage_input,
                graph_launch: spec.graph_launch,
                preprocess,
            };
            let name = format!("uminfer-{}-{}", mode, spec.device);
            let spin = spec.spin.unwrap_or(worker::GPU_SPIN);
            // Unless the spec asks for the session thread, a graph launched
            // directly is launched from the calling thread.
            let inline_launch = spec.dedicated_thread.is_none() && spec.pin_core.is_none();
            let (w, (mut note, launcher)) = Worker::spawn(name, spec.pin_core, spin, move || {
                let (engine, note) = GpuEngine::build(parts)?;
                let launcher = if inline_launch { engine.launcher()? } else { None };
                Ok((engine, (note, launcher)))
            })
            .map_err(|e| shape_error(model, &spec, e))?;
            if launcher.is_some() {
                note.push_str("; requests launch it from the calling thread (no hand-off to the session thread)");
            }
            note.push_str(placement_note);
            Self { launcher, runner: Runner::Thread(w), raw, input, output, mode, note, timing: TimingRecorder::new(), spec, tensor_addrs, cpu_direct: None }
        };
        session.timing.reset();
        Ok(session)
    }

    fn build_auto(rt: &Runtime, model: &Model, spec: SessionSpec) -> Result<Self> {
        let mut best: Option<(f64, Self)> = None;
        let mut tried = Vec::new();
        for mode in rt.usable_modes() {
            let built = Self::build_mode(rt, model, spec.clone().mode(mode), mode).and_then(|mut s| {
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
        let (p50, mut s) = best.ok_or_else(|| Error::Session(format!("auto: no mode could be built ({})", tried.join("; "))))?;
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

    /// The input region as a slice: write the request here (no copy follows).
    pub fn input_mut(&mut self) -> &mut [I] {
        // SAFETY: between runs no GPU work is pending (every run ends with a
        // synchronisation; build too), and `&mut self` excludes a concurrent run.
        unsafe { self.input.host_slice_mut_unchecked() }
    }

    /// The raw u8 HWC image region, when the spec asked for preprocessing:
    /// write the image here; `run()` normalises it into the input region.
    pub fn raw_input_mut(&mut self) -> Result<&mut [u8]> {
        match self.raw.as_mut() {
            // SAFETY: as for `input_mut`.
            Some(r) => Ok(unsafe { r.host_slice_mut_unchecked() }),
            None => Err(Error::Session("this session has no preprocessing: build it with SessionSpec::preprocess".into())),
        }
    }

    /// The input region, read-only.
    pub fn input(&self) -> &[I] {
        // SAFETY: as for `input_mut`.
        unsafe { self.input.host_slice_unchecked() }
    }

    /// The output region: the result of the last `run()`.
    pub fn output(&self) -> &[O] {
        // SAFETY: as for `input_mut`.
        unsafe { self.output.host_slice_unchecked() }
    }

    /// The output region, writable (e.g. to poison it before a run in tests).
    pub fn output_mut(&mut self) -> &mut [O] {
        // SAFETY: as for `input_mut`.
        unsafe { self.output.host_slice_mut_unchecked() }
    }

    /// `data_ptr()` of the tensor the model reads and of the tensor its result
    /// is copied into: the regions' own addresses in the zero-copy modes (the
    /// device address for pinned-mapped memory; the pinned staging address in
    /// `gpu-copy`, whose device tensors are separate).
    pub fn tensor_addresses(&self) -> (usize, usize) {
        self.tensor_addrs
    }

    /// The input region.
    pub fn input_region(&self) -> &Region<I> {
        &self.input
    }

    /// The output region.
    pub fn output_region(&self) -> &Region<O> {
        &self.output
    }

    /// Runs one request: reads the input region, writes the output region.
    pub fn run(&mut self) -> Result<RunTiming> {
        let t = self.run_untimed()?;
        self.timing.record(t);
        Ok(t)
    }

    /// One request over the session's regions, not recorded.
    fn run_untimed(&mut self) -> Result<RunTiming> {
        match &mut self.launcher {
            Some(l) => l.run(),
            None => self.runner.run(),
        }
    }

    /// Runs one request over caller-owned memory (e.g. a shared-memory
    /// sample). In `cpu` mode the model reads `input` and its result is
    /// written into `output` through tensors over them: no copy of the input
    /// (on the session's thread when it has one, else on the calling thread).
    /// In GPU modes `input` is copied into the
    /// session's input region and the output region into `output`. When it
    /// returns `Ok`, every element of `output` is initialised.
    pub fn run_on(&mut self, input: &[I], output: &mut [std::mem::MaybeUninit<O>]) -> Result<RunTiming> {
        if input.len() != self.input.len() || output.len() != self.output.len() {
            return Err(Error::Session(format!(
                "run_on: {} input and {} output elements given, the session takes {} and {}",
                input.len(),
                output.len(),
                self.input.len(),
                self.output.len()
            )));
        }
        let t = match &self.cpu_direct {
            Some(CpuDirect { module, strides: (si, so) }) => {
                let (ishape, oshape) = (&self.spec.input_shape, &self.spec.output_shape);
                let mut ran: Result<()> = Err(Error::Session("the session thread did not run the request".into()));
                let mut job = || {
                    ran = (|| {
                        // SAFETY: `input` holds exactly numel(input_shape) elements of I
                        // (checked above), outlives this call, and is only read; the
                        // tensor is dropped before the closure returns.
                        let ti = unsafe { tch::Tensor::f_from_blob(input.as_ptr().cast(), ishape, si, I::KIND, tch::Device::Cpu) }?;
                        // SAFETY: `output` holds exactly numel(output_shape) slots of O,
                        // is exclusively borrowed for this call, and libtorch only writes
                        // it (copy_ of the result); the tensor is dropped before the
                        // closure returns.
                        let mut to = unsafe { tch::Tensor::f_from_blob(output.as_mut_ptr().cast(), oshape, so, O::KIND, tch::Device::Cpu) }?;
                        module.forward_into(&ti, &mut to)
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
            _ => {
                self.input_mut().copy_from_slice(input);
                let t = self.run_untimed()?;
                for (dst, src) in output.iter_mut().zip(self.output()) {
                    dst.write(*src);
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

/// Fills a fresh input region with pseudo-random data so that warm-up runs
/// (and cuDNN autotuning) see realistic values, not zeros.
fn random_fill<T: Element>(r: &mut Region<T>) -> Result<()> {
    let mut h = r.host_view_mut()?;
    let bytes = std::mem::size_of_val(&*h);
    // SAFETY: any bit pattern is a valid T (Element), and the byte slice
    // covers exactly the elements' storage.
    let raw = unsafe { std::slice::from_raw_parts_mut(h.as_mut_ptr().cast::<u8>(), bytes) };
    let mut x: u32 = 0x9E37_79B9;
    for b in raw.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Small values: the low bits only, so floats stay finite and tame.
        *b = (x & 0x3f) as u8;
    }
    Ok(())
}

/// Turns a libtorch error at build into a session error that names the model and the spec.
fn shape_error(model: &Model, spec: &SessionSpec, e: Error) -> Error {
    match e {
        Error::Shim { message, .. } => Error::Session(format!(
            "model {} with input {:?} → output {:?}: {message}",
            model.path().display(),
            spec.input_shape,
            spec.output_shape
        )),
        other => other,
    }
}
