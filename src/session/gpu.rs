//! The GPU engines: `gpu-copy`, `gpu-pinned`, `gpu-managed` and
//! `gpu-managed-graph`. Each lives on its session's own thread (see
//! `worker`), where its CUDA stream is libtorch's current stream.
//!
//! Every request is bracketed by two CUDA events on the session stream
//! (device time) and ends with a stream synchronisation, so no GPU work is
//! pending when `run()` returns and the host may read the output region.

use super::engine::Engine;
use super::spec::{GraphLaunch, GraphShare};
use super::timing::{PhasedRun, RunTiming};
use crate::cuda::Gpu;
use crate::error::{Error, Result, SessionErrorKind};
use crate::memory::managed::{attach_raw, prefetch_raw};
use crate::memory::{Attach, Location};
use crate::mode::Mode;
use crate::ops::{Preprocess, PreprocessParams, Stage};
use crate::shim::{copy_tensor, launch_exec, CudaGraph, CurrentStream, GraphPool, LoadedModel};
use cudarc::driver::{result, CudaEvent, CudaStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A managed range to prefetch around each request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ManagedRange {
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
}

/// What a GPU engine is built from (all `Send`, moved to the session thread).
pub(crate) struct GpuParts {
    pub(crate) mode: Mode,
    pub(crate) gpu: Gpu,
    pub(crate) model: Arc<LoadedModel>,
    /// Tensors the model reads: over the pinned-mapped or managed input
    /// regions (`gpu-copy`: CPU tensors over the pinned staging regions).
    pub(crate) inputs: Vec<tch::Tensor>,
    /// Tensors the results are copied into (same rules as `inputs`).
    pub(crate) outputs: Vec<tch::Tensor>,
    /// Managed ranges to attach and prefetch (managed modes with placement
    /// `Migrate`): the host-written ones (the inputs, or the raw region when
    /// preprocessing) and the outputs.
    pub(crate) managed: Option<(Vec<ManagedRange>, Vec<ManagedRange>)>,
    pub(crate) warmup: usize,
    pub(crate) allow_eager_fallback: bool,
    /// Capture the request's work into a CUDA graph after warm-up (always in
    /// `gpu-managed-graph`; in the other modes when the spec asks).
    pub(crate) capture: bool,
    pub(crate) graph_launch: GraphLaunch,
    /// Stage the input in device memory first (ignored in `gpu-copy`).
    pub(crate) stage_input: bool,
    /// Raw u8 region (device address) → input region (device address).
    pub(crate) preprocess: Option<(PreprocessParams, u64, u64)>,
    /// The stream and graph pool shared with other sessions, if any.
    pub(crate) share: Option<GraphShare>,
}

enum Path {
    /// Pinned staging ↔ device copies around the forward.
    Copy { d_in: Vec<tch::Tensor>, d_out: Vec<tch::Tensor> },
    /// Forward straight over device-visible regions.
    Direct,
    /// The input regions copied into device buffers by the staging kernel,
    /// then the forward over those buffers (`SessionSpec::stage_input`).
    Staged { d_in: Vec<tch::Tensor>, stage: Stage },
}

/// A request's work captured into a CUDA graph; `direct`: launched with
/// `cuGraphLaunch` rather than libtorch's replay (see [`GraphLaunch`]).
struct Captured {
    graph: CudaGraph,
    direct: bool,
}

/// A captured graph launched with `cuGraphLaunch` from whichever thread
/// calls, with no hand-off to the session thread: a request is two event
/// records, the launch and a stream synchronisation, all driver calls that
/// need none of libtorch's per-thread state. Made by [`GpuEngine::launcher`]
/// for graphs launched directly whose requests need nothing outside the
/// graph (no prefetches).
pub(crate) struct GraphLauncher {
    exec: cudarc::driver::sys::CUgraphExec,
    /// Its own pair of events on the session's stream.
    events: RequestEvents,
}

// SAFETY: `exec` is a handle into the engine's `CudaGraph`, which the
// session thread keeps alive and never touches again after capture until it
// is dropped; the session drops its launcher before that thread's engine
// (field order in `Session`), so the handle never dangles, and `run` takes
// `&mut self`, so one thread at a time launches it (not `Sync`). The stream
// and events are cudarc's `Send` types.
unsafe impl Send for GraphLauncher {}

impl GraphLauncher {
    /// One request: the graph between two timing events, then a stream synchronisation.
    pub(crate) fn run(&mut self) -> Result<RunTiming> {
        let t0 = self.events.begin()?;
        // SAFETY: `exec` is alive and launched by this thread only (see the
        // `Send` impl above); `begin` has bound the stream's context here.
        match unsafe { launch_exec(self.exec, &self.events.stream) } {
            Ok(()) => self.events.finish(t0),
            Err(e) => Err(self.events.abandon(e)),
        }
    }
}

/// The two timing events that bracket every request on a session's stream.
///
/// The per-request calls go through cudarc's `result` layer: one context
/// check, two `cuEventRecord`, `cuStreamSynchronize` and
/// `cuEventElapsedTime`. cudarc's safe `record`/`elapsed_ms` would re-bind
/// the context before each call and synchronise both events again after the
/// stream (about 13 driver calls a request instead of 5 around the launch);
/// the invariants they check hold here by construction (see `new`).
struct RequestEvents {
    start: CudaEvent,
    end: CudaEvent,
    stream: Arc<CudaStream>,
}

impl RequestEvents {
    /// Two timing events in `stream`'s context, for requests on `stream`.
    fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT); // timing enabled
        let ctx = stream.context();
        Ok(Self {
            start: ctx.new_event(timing).map_err(Error::driver("cuEventCreate"))?,
            end: ctx.new_event(timing).map_err(Error::driver("cuEventCreate"))?,
            stream: stream.clone(),
        })
    }

    /// Binds the stream's context to the calling thread (a no-op when it is
    /// current already), records the start event; returns the host clock's start.
    fn begin(&self) -> Result<Instant> {
        let t0 = Instant::now();
        self.stream.context().bind_to_thread().map_err(Error::driver("cuCtxSetCurrent"))?;
        // SAFETY: `start` and `stream` are live (owned by `self`) and belong
        // to the same context (`new`), which is now current on this thread.
        unsafe { result::event::record(self.start.cu_event(), self.stream.cu_stream()) }.map_err(Error::driver("cuEventRecord"))?;
        Ok(t0)
    }

    /// Records the end event, synchronises the stream (no work of the request
    /// is pending afterwards) and returns host and device time since `begin`.
    /// Call on the thread that called `begin` (whose current context it bound).
    fn finish(&self, t0: Instant) -> Result<RunTiming> {
        let (stream, start, end) = (self.stream.cu_stream(), self.start.cu_event(), self.end.cu_event());
        // SAFETY: as in `begin`; `begin` bound their context on this thread.
        if let Err(e) = unsafe { result::event::record(end, stream) } {
            return Err(self.abandon(Error::driver("cuEventRecord")(e)));
        }
        // SAFETY: `stream` is live and its context current.
        unsafe { result::stream::synchronize(stream) }.map_err(Error::driver("cuStreamSynchronize"))?;
        // SAFETY: both events are live timing events (created without
        // DISABLE_TIMING) of the current context, recorded on `stream` before
        // the synchronisation above, so both have completed.
        let ms = unsafe { result::event::elapsed(start, end) }.map_err(Error::driver("cuEventElapsedTime"))?;
        Ok(RunTiming { host: t0.elapsed(), device: Some(Duration::from_secs_f64(ms as f64 / 1000.0)) })
    }

    /// Ends a request whose work could not all be queued (`failed`, after
    /// `begin`): synchronises the stream, so that nothing the request did
    /// queue (input copies, staging, preprocessing, part of a forward pass)
    /// is still pending when the error returns and the session hands its
    /// regions out again. Returns `failed`, or, when the synchronisation
    /// fails too, an error that names both (the context is then unusable).
    fn abandon(&self, failed: Error) -> Error {
        // SAFETY: `stream` is live (owned by `self`); `begin` bound its context on
        // this thread, and the callers run on the thread that called `begin`.
        match unsafe { result::stream::synchronize(self.stream.cu_stream()) } {
            Ok(()) => failed,
            Err(e) => Error::session(SessionErrorKind::Failed, format!("{failed}; synchronising the session stream afterwards failed too ({e}): the GPU context is unusable, build a new session")),
        }
    }
}

/// Where a request's stages begin on the session stream: nothing for a plain
/// request ([`Unmarked`], compiled away), an event per stage for a phased
/// one ([`StageMarks`]).
trait Stages {
    /// The stage `name` begins here, after everything queued so far.
    fn begin(&mut self, name: &'static str) -> Result<()>;
}

/// The plain request path: no marks.
struct Unmarked;

impl Stages for Unmarked {
    #[inline(always)]
    fn begin(&mut self, _: &'static str) -> Result<()> {
        Ok(())
    }
}

/// The names of the device phases ([`PhasedRun::device_phases`]).
const PREPROCESS: &str = "device: preprocess";
const INPUT_PREFETCH: &str = "device: input prefetch";
const INPUT_COPY: &str = "device: input copy";
const INPUT_STAGING: &str = "device: input staging";
const FORWARD: &str = "device: forward pass";
const OUTPUT_COPY: &str = "device: output copy";
const GRAPH: &str = "device: CUDA graph (all of the request's work in it)";
const OUTPUT_PREFETCH: &str = "device: output prefetch";

/// Timing events recorded where each stage of a phased request begins
/// (the first stage begins at the request's start event), kept for the
/// next phased request.
struct StageMarks {
    /// `events[i]`: where stage `i + 1` begins.
    events: Vec<CudaEvent>,
    /// The stages of the current request, in order.
    names: Vec<&'static str>,
    stream: Arc<CudaStream>,
}

impl StageMarks {
    fn new(stream: &Arc<CudaStream>) -> Self {
        Self { events: Vec::new(), names: Vec::new(), stream: stream.clone() }
    }

    /// The device time of each stage, from where it began to where the next
    /// did (the last: to `end`). Call after the stream was synchronised past
    /// `end`, on the thread whose context is current.
    fn phases(&self, start: &CudaEvent, end: &CudaEvent) -> Result<Vec<(&'static str, Duration)>> {
        let n = self.names.len();
        (0..n)
            .map(|i| {
                let from = if i == 0 { start } else { &self.events[i - 1] };
                let to = if i + 1 == n { end } else { &self.events[i] };
                // SAFETY: both are live timing events of the stream's
                // context (current on this thread), recorded on the stream
                // during this request before it was synchronised.
                let ms = unsafe { result::event::elapsed(from.cu_event(), to.cu_event()) }.map_err(Error::driver("cuEventElapsedTime"))?;
                Ok((self.names[i], Duration::from_secs_f64(ms.max(0.0) as f64 / 1000.0)))
            })
            .collect()
    }
}

impl Stages for StageMarks {
    fn begin(&mut self, name: &'static str) -> Result<()> {
        let i = self.names.len();
        if i > 0 {
            if self.events.len() < i {
                let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
                self.events.push(self.stream.context().new_event(timing).map_err(Error::driver("cuEventCreate"))?);
            }
            // SAFETY: the event and the stream are live and of the same
            // context, which the request's `begin` bound on this thread.
            unsafe { result::event::record(self.events[i - 1].cu_event(), self.stream.cu_stream()) }.map_err(Error::driver("cuEventRecord"))?;
        }
        self.names.push(name);
        Ok(())
    }
}

/// The engine of the four GPU modes.
pub(crate) struct GpuEngine {
    /// Replayed instead of running `path` eagerly, once captured.
    captured: Option<Captured>,
    path: Path,
    parts: GpuParts,
    preprocess: Option<Preprocess>,
    // Drop order: graph and tensors (above), then libtorch's previous
    // stream is restored, then our stream and events are destroyed.
    _current: CurrentStream,
    stream: Arc<CudaStream>,
    events: RequestEvents,
    /// The graph pool to capture into (`None`: a private one).
    pool: Option<GraphPool>,
    /// Made by the first phased request.
    marks: Option<StageMarks>,
}

impl GpuEngine {
    /// Builds the engine on the calling (session) thread: stream, events,
    /// warm-up, and for graph mode the capture. Returns a note on what was done.
    pub(crate) fn build(parts: GpuParts) -> Result<(Self, String)> {
        let gpu = parts.gpu.clone();
        gpu.bind()?;
        let (stream, pool) = match &parts.share {
            Some(share) => {
                let shared = share.get(&gpu)?;
                (shared.stream, Some(shared.pool))
            }
            None => (gpu.new_stream()?, None),
        };
        // SAFETY: the stream was created on `gpu`'s primary context (the one
        // libtorch uses; a shared one is checked to be on this GPU) and is
        // kept alive by `self.stream`, which is dropped after `_current`
        // (field order) and synchronised first (Drop).
        let current = unsafe { CurrentStream::set(stream.cu_stream().cast(), gpu.ordinal() as i32) }?;
        let events = RequestEvents::new(&stream)?;
        if let Some((i, o)) = &parts.managed {
            if !gpu.concurrent_managed_access() {
                // Without concurrentManagedAccess the host may touch managed memory
                // only while no kernel *that can access it* runs: tie the regions to
                // this session's stream so other sessions' kernels do not count.
                for r in i.iter().chain(o) {
                    // SAFETY: `r.ptr` starts a live managed allocation (the
                    // session's region) and the stream is live on the bound context.
                    unsafe { attach_raw(r.ptr, stream.cu_stream(), Attach::SingleStream) }?;
                }
            }
        }
        // Device tensors of the shapes and dtypes of `ts`.
        let on_device = |ts: &[tch::Tensor]| -> Result<Vec<tch::Tensor>> {
            ts.iter().map(|t| Ok(tch::Tensor::f_empty(t.size(), (t.kind(), tch::Device::Cuda(gpu.ordinal())))?)).collect()
        };
        let path = match parts.mode {
            Mode::GpuCopy => Path::Copy { d_in: on_device(&parts.inputs)?, d_out: on_device(&parts.outputs)? },
            _ if parts.stage_input => Path::Staged { d_in: on_device(&parts.inputs)?, stage: Stage::new(&gpu)? },
            _ => Path::Direct,
        };
        tch::Cuda::cudnn_set_benchmark(true);
        let preprocess = parts.preprocess.as_ref().map(|_| Preprocess::new(&gpu)).transpose()?;
        let mut engine = Self { captured: None, path, parts, preprocess, _current: current, stream, events, pool, marks: None };
        // Warm-up: cuDNN autotuning, cuBLAS handles and the TorchScript
        // profiling executor's optimisation all happen here, not in a request.
        // Graph mode compares the last two outputs (same input): bit-identical
        // ones mean the model draws no random numbers that matter, so the graph
        // may be launched without libtorch's RNG bookkeeping.
        let graph_mode = engine.parts.capture;
        let mut before_last: Option<Vec<tch::Tensor>> = None;
        for i in 0..engine.parts.warmup {
            engine.run()?;
            if graph_mode && i + 2 == engine.parts.warmup {
                before_last = Some(engine.parts.outputs.iter().map(|t| Ok(t.f_detach_copy()?)).collect::<Result<_>>()?);
            }
        }
        let repeatable = match before_last {
            Some(prev) => prev.iter().zip(&engine.parts.outputs).try_fold(true, |same, (a, b)| Ok::<_, Error>(same && a.f_equal(b)?))?,
            None => true,
        };
        let mut note = format!("{} warm-up runs on GPU {}", engine.parts.warmup, gpu.ordinal());
        if matches!(engine.path, Path::Staged { .. }) {
            note.push_str("; each request stages the input into device memory with a copy kernel first");
        }
        if graph_mode {
            match engine.capture() {
                Ok(graph) => {
                    let direct = engine.parts.graph_launch == GraphLaunch::Direct && repeatable;
                    engine.captured = Some(Captured { graph, direct });
                    engine.run()?; // the first replay uploads the graph
                    note.push_str(match engine.path {
                        Path::Copy { .. } => "; input copy, forward and output copy captured into a CUDA graph",
                        Path::Staged { .. } => "; input staging, forward and output copy captured into a CUDA graph",
                        Path::Direct => "; forward and output copy captured into a CUDA graph",
                    });
                    note.push_str(match (engine.parts.graph_launch, repeatable) {
                        (GraphLaunch::Direct, true) => ", launched directly (cuGraphLaunch; identical warm-up outputs: no random draws)",
                        (GraphLaunch::Direct, false) => {
                            ", replayed through libtorch (two warm-up runs on the same input differed: random ops or non-deterministic kernels, whose RNG state libtorch's replay advances)"
                        }
                        (GraphLaunch::Libtorch, _) => ", replayed through libtorch (as asked)",
                    });
                    if engine.pool.is_some() {
                        note.push_str("; its memory pool and stream shared with the other buckets");
                    }
                }
                Err(e) if engine.parts.allow_eager_fallback => {
                    tracing::warn!("CUDA graph capture failed, running eagerly as allowed: {e}");
                    note.push_str(&format!("; CUDA graph capture FAILED ({e}), running eager (fallback allowed)"));
                }
                Err(e) => return Err(Error::Capture(e.to_string())),
            }
        }
        Ok((engine, note))
    }

    /// A launcher for the calling thread, when a request is nothing but the
    /// directly launched graph (no managed prefetches around it).
    pub(crate) fn launcher(&self) -> Result<Option<GraphLauncher>> {
        let Some(Captured { graph, direct: true }) = &self.captured else { return Ok(None) };
        if self.parts.managed.is_some() {
            return Ok(None);
        }
        Ok(Some(GraphLauncher { exec: graph.raw_exec()?, events: RequestEvents::new(&self.stream)? }))
    }

    /// Captures a request's work (`enqueue`) on the session stream.
    fn capture(&mut self) -> Result<CudaGraph> {
        self.stream.synchronize().map_err(Error::driver("cuStreamSynchronize"))?;
        let mut graph = CudaGraph::new()?;
        graph.capture_begin(self.pool)?;
        let captured = self.enqueue(&mut Unmarked);
        // End the capture even when the forward failed (it leaves the stream capturing otherwise).
        let ended = graph.capture_end();
        captured?;
        ended?;
        Ok(graph)
    }

    /// Queues a request's work on the session stream: preprocessing, then the
    /// mode's copies and forward pass, each stage begun in `stages`.
    fn enqueue(&mut self, stages: &mut impl Stages) -> Result<()> {
        if self.preprocess.is_some() {
            stages.begin(PREPROCESS)?;
        }
        self.launch_preprocess()?;
        let p = &mut self.parts;
        match &mut self.path {
            Path::Copy { d_in, d_out } => {
                stages.begin(INPUT_COPY)?;
                for (d, h) in d_in.iter_mut().zip(&p.inputs) {
                    copy_tensor(d, h, true)?;
                }
                stages.begin(FORWARD)?;
                p.model.run_into(d_in, d_out)?;
                stages.begin(OUTPUT_COPY)?;
                for (h, d) in p.outputs.iter_mut().zip(d_out.iter()) {
                    copy_tensor(h, d, true)?;
                }
                Ok(())
            }
            Path::Direct => {
                stages.begin(FORWARD)?;
                p.model.run_into(&p.inputs, &mut p.outputs)
            }
            Path::Staged { d_in, stage } => {
                stages.begin(INPUT_STAGING)?;
                for (d, h) in d_in.iter().zip(&p.inputs) {
                    let bytes = d.numel() * d.kind().elt_size_in_bytes();
                    // SAFETY: `h` views one of the session's input regions
                    // and `d` is a device tensor of the same shape and dtype
                    // (made at build): `bytes` fits both, they are distinct
                    // allocations, both live as long as the engine, and the
                    // host does not touch the input regions until the stream
                    // is synchronised at the end of the request (the session
                    // hands out slices only between runs).
                    unsafe { stage.launch(&self.stream, h.data_ptr() as u64, d.data_ptr() as u64, bytes) }?;
                }
                stages.begin(FORWARD)?;
                p.model.run_into(d_in, &mut p.outputs)
            }
        }
    }

    /// Queues a request's work on the session stream: the prefetches around
    /// the captured graph, or the eager work (`enqueue`), each stage begun
    /// in `stages`.
    fn queue_request(&mut self, stages: &mut impl Stages) -> Result<()> {
        let prefetches = self.prefetches();
        if prefetches {
            stages.begin(INPUT_PREFETCH)?;
        }
        self.prefetch(Location::Device)?;
        match &mut self.captured {
            Some(captured) => {
                stages.begin(GRAPH)?;
                match captured {
                    Captured { graph, direct: true } => graph.launch(&self.stream)?,
                    Captured { graph, direct: false } => graph.replay()?,
                }
            }
            None => self.enqueue(stages)?,
        }
        if prefetches {
            stages.begin(OUTPUT_PREFETCH)?;
        }
        self.prefetch(Location::Host)
    }

    /// Managed ranges are prefetched around each request (managed modes with
    /// placement `Migrate`, on devices with concurrentManagedAccess).
    fn prefetches(&self) -> bool {
        self.parts.managed.is_some() && self.parts.gpu.concurrent_managed_access()
    }

    /// Queues the preprocess kernel (raw u8 region → input region), if configured.
    fn launch_preprocess(&self) -> Result<()> {
        let (Some(k), Some((params, src, dst))) = (&self.preprocess, &self.parts.preprocess) else { return Ok(()) };
        // SAFETY: `src` and `dst` are the device addresses of the session's raw
        // u8 region and f32 input region (distinct, sized `params.len()`
        // elements each, checked at build), alive while the engine lives;
        // the host does not touch them until the stream is synchronised at
        // the end of the request; managed regions are attached to this
        // stream on devices without concurrentManagedAccess.
        unsafe { k.launch(&self.stream, params, *src, *dst) }
    }

    fn prefetch(&self, to: Location) -> Result<()> {
        // Prefetching needs concurrentManagedAccess; without it pages migrate on demand.
        let (Some((i, o)), true) = (&self.parts.managed, self.prefetches()) else { return Ok(()) };
        // Inputs towards the device before the work, outputs towards the host after it.
        let ranges = match to {
            Location::Device => i,
            Location::Host => o,
        };
        for r in ranges {
            // SAFETY: `r` is a live managed region of this session; the stream is live.
            unsafe { prefetch_raw(r.ptr, r.bytes, self.parts.gpu.ordinal(), to, self.stream.cu_stream()) }?;
        }
        Ok(())
    }
}

impl Engine for GpuEngine {
    /// Every exit after `begin` synchronises the stream (`finish`, or
    /// `abandon` when queueing failed part way), which the session's host
    /// slices rely on.
    fn run(&mut self) -> Result<RunTiming> {
        let t0 = self.events.begin()?;
        match self.queue_request(&mut Unmarked) {
            Ok(()) => self.events.finish(t0),
            Err(e) => Err(self.events.abandon(e)),
        }
    }

    /// As `run`, with an event recorded where each stage begins; the stages'
    /// device times are read once `finish` has synchronised the stream.
    fn run_phased(&mut self) -> Result<PhasedRun> {
        let mut marks = self.marks.take().unwrap_or_else(|| StageMarks::new(&self.stream));
        marks.names.clear();
        let t0 = self.events.begin()?;
        let timing = match self.queue_request(&mut marks) {
            Ok(()) => self.events.finish(t0),
            Err(e) => Err(self.events.abandon(e)),
        };
        let phased = timing.and_then(|timing| Ok(PhasedRun { timing, device_phases: marks.phases(&self.events.start, &self.events.end)? }));
        self.marks = Some(marks);
        phased
    }
}

impl Drop for GpuEngine {
    fn drop(&mut self) {
        if let Err(e) = self.stream.synchronize() {
            crate::memory::record_deferred_error(format!("synchronising a session stream before teardown: {e}"));
        }
    }
}
