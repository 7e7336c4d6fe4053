//! [`SessionSpec`]: what a session is built for.

use crate::dtype::DType;
use crate::model::InputDecl;
use crate::mode::Mode;

/// Which execution mode to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChoice {
    /// Exactly this mode (refused if the doctor found it unusable).
    Fixed(Mode),
    /// The fastest usable mode, picked by a short calibration at build time.
    Auto,
}

impl std::str::FromStr for ModeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            Ok(ModeChoice::Auto)
        } else {
            s.parse::<Mode>().map(ModeChoice::Fixed).map_err(|e| format!("{e}, or auto"))
        }
    }
}

/// Where the pages of a managed session's host-written input and its output
/// live between requests (`gpu-managed`, `gpu-managed-graph`).
///
/// Measured on an H100 (`docs/notes/performance.md`): `HostResident` is the
/// fastest for `tiny` (graph mode 53.7 µs P50 end to end against 231 µs with
/// `Migrate`) and for `resnet18` (473 against 730 µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManagedPlacement {
    /// Each request prefetches the input to the GPU before the work and the
    /// output to the host after it (`cuMemPrefetchAsync`): the pages are
    /// unmapped from the CPU and migrated, twice per request.
    Migrate,
    /// The pages stay in host memory (`SetPreferredLocation(host)` +
    /// `SetAccessedBy(device)`): kernels read the input and write the output
    /// in place over the bus, and no request migrates a page. Needs
    /// `concurrentManagedAccess`; without it pages migrate on demand and the
    /// session's note says so.
    #[default]
    HostResident,
    /// Not managed memory: page-locked host memory mapped for the GPU
    /// (`cuMemHostAlloc` with `DEVICEMAP`, what `gpu-pinned` uses), read and
    /// written in place like `HostResident` but without the unified-memory
    /// driver in between. For comparison with `HostResident`.
    Pinned,
}

impl std::str::FromStr for ManagedPlacement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "migrate" => Ok(Self::Migrate),
            "host-resident" => Ok(Self::HostResident),
            "pinned" => Ok(Self::Pinned),
            other => Err(format!("unknown managed placement {other:?}: migrate, host-resident or pinned")),
        }
    }
}

impl std::fmt::Display for ManagedPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Migrate => "migrate",
            Self::HostResident => "host-resident",
            Self::Pinned => "pinned",
        })
    }
}

/// How a session launches its captured CUDA graph per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphLaunch {
    /// `cuGraphLaunch` of the instantiated graph on the session stream, when
    /// the last two warm-up runs (same input) gave bit-identical outputs, so
    /// the model draws no random numbers that matter; libtorch's replay
    /// otherwise, and the session's note says which and why.
    #[default]
    Direct,
    /// Always libtorch's `CUDAGraph::replay()`, which first refills the
    /// graph's RNG seed and offset (two fill kernels and their dispatch on
    /// the host, every request) so that random ops draw new numbers.
    Libtorch,
}

impl std::str::FromStr for GraphLaunch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Self::Direct),
            "libtorch" => Ok(Self::Libtorch),
            other => Err(format!("unknown graph launch {other:?}: direct or libtorch")),
        }
    }
}

impl std::fmt::Display for GraphLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Libtorch => "libtorch",
        })
    }
}

/// What a session declares of the model's inputs (their outputs are found
/// by running the model at build), plus how to run.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub(crate) inputs: Vec<InputDecl>,
    pub(crate) mode: ModeChoice,
    pub(crate) device: usize,
    pub(crate) warmup: usize,
    pub(crate) calibration_runs: usize,
    pub(crate) allow_eager_fallback: bool,
    pub(crate) pin_core: Option<usize>,
    pub(crate) dedicated_thread: Option<bool>,
    pub(crate) spin: Option<std::time::Duration>,
    pub(crate) managed_placement: ManagedPlacement,
    pub(crate) graph_launch: GraphLaunch,
    pub(crate) capture_graph: bool,
    pub(crate) stage_input: bool,
    pub(crate) preprocess: Option<crate::ops::PreprocessParams>,
    /// GPU sessions that share one stream and one graph memory pool (a
    /// batcher's buckets); `None`: a stream and pool of its own.
    pub(crate) graph_share: Option<GraphShare>,
}

/// One CUDA stream and one CUDA-graph memory pool shared by the GPU
/// sessions built with it, as vLLM shares one pool between the graphs of
/// its batch sizes: captured largest first, each later capture reuses the
/// memory the earlier ones freed, instead of a pool per graph. The first
/// GPU session built with it creates both. Sessions that share them must
/// never run at once (their graphs' scratch memory overlaps): a batcher
/// runs one bucket at a time.
#[derive(Clone, Default)]
pub(crate) struct GraphShare(std::sync::Arc<parking_lot::Mutex<Option<SharedCapture>>>);

/// What a [`GraphShare`] holds once its first session is built.
#[derive(Clone)]
pub(crate) struct SharedCapture {
    /// The device of the sessions that share it.
    pub(crate) device: usize,
    pub(crate) stream: std::sync::Arc<cudarc::driver::CudaStream>,
    pub(crate) pool: crate::shim::GraphPool,
}

impl GraphShare {
    /// The shared stream and pool, created on `gpu` by the first caller.
    pub(crate) fn get(&self, gpu: &crate::cuda::Gpu) -> crate::error::Result<SharedCapture> {
        let mut held = self.0.lock();
        if let Some(c) = &*held {
            if c.device != gpu.ordinal() {
                return Err(crate::error::Error::session(
                    crate::error::SessionErrorKind::Unsupported,
                    format!("sessions sharing a graph pool must be on one GPU: {} and {}", c.device, gpu.ordinal()),
                ));
            }
            return Ok(c.clone());
        }
        let c = SharedCapture { device: gpu.ordinal(), stream: gpu.new_stream()?, pool: crate::shim::GraphPool::new_shared()? };
        *held = Some(c.clone());
        Ok(c)
    }
}

impl std::fmt::Debug for GraphShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0.lock() {
            Some(c) => write!(f, "GraphShare(GPU {}, pool {:?})", c.device, c.pool),
            None => f.write_str("GraphShare(not yet created)"),
        }
    }
}

/// Warm-up runs before timing or capture (libtorch's own CUDA-graph recipe uses 3).
pub const MIN_WARMUP: usize = 3;

impl SessionSpec {
    /// A spec that declares nothing of the inputs (the model's own record
    /// of their dtypes and shapes is used), mode `cpu`, device 0, 3 warm-up runs.
    pub fn new() -> Self {
        Self {
            inputs: Vec::new(),
            mode: ModeChoice::Fixed(Mode::Cpu),
            device: 0,
            warmup: MIN_WARMUP,
            calibration_runs: 30,
            allow_eager_fallback: false,
            pin_core: None,
            dedicated_thread: None,
            spin: None,
            managed_placement: ManagedPlacement::HostResident,
            graph_launch: GraphLaunch::Direct,
            capture_graph: false,
            stage_input: false,
            preprocess: None,
            graph_share: None,
        }
    }

    /// Declares input `name`: its dtype and shape (what the model does not
    /// record must be declared; what it does is checked).
    pub fn input(mut self, name: &str, dtype: DType, shape: &[i64]) -> Self {
        self.inputs.push(InputDecl { name: Some(name.to_string()), dtype: Some(dtype), shape: Some(shape.to_vec()) });
        self
    }

    /// Declares the shape of the model's only input (its dtype from the
    /// model, or a [`TypedSession`](super::TypedSession)'s element type).
    pub fn input_shape(mut self, shape: &[i64]) -> Self {
        self.inputs.push(InputDecl { name: None, dtype: None, shape: Some(shape.to_vec()) });
        self
    }

    /// Declares an input as an [`InputDecl`] (any of its facts may be left out).
    pub fn declare(mut self, decl: InputDecl) -> Self {
        self.inputs.push(decl);
        self
    }

    /// Execution mode (default `cpu`).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = ModeChoice::Fixed(mode);
        self
    }

    /// Mode choice, `auto` included.
    pub fn mode_choice(mut self, choice: ModeChoice) -> Self {
        self.mode = choice;
        self
    }

    /// CUDA device ordinal for GPU modes (default 0).
    pub fn device(mut self, ordinal: usize) -> Self {
        self.device = ordinal;
        self
    }

    /// Warm-up runs at build (at least 3; cuDNN autotuning and library
    /// handles are created there, before any capture).
    pub fn warmup(mut self, runs: usize) -> Self {
        self.warmup = runs.max(MIN_WARMUP);
        self
    }

    /// Timed runs per candidate when the mode is `auto` (default 30).
    pub fn calibration_runs(mut self, runs: usize) -> Self {
        self.calibration_runs = runs.max(1);
        self
    }

    /// In graph mode, run eagerly (and say so) if capture fails, instead of failing.
    pub fn allow_eager_fallback(mut self, allow: bool) -> Self {
        self.allow_eager_fallback = allow;
        self
    }

    /// Pin the session's thread to this CPU core (implies a dedicated thread).
    pub fn pin_core(mut self, core: usize) -> Self {
        self.pin_core = Some(core);
        self
    }

    /// Run requests on a dedicated OS thread (default: no for `cpu`; GPU
    /// modes always keep their engine on one, and by default a graph
    /// launched directly is launched from the calling thread instead, with
    /// no hand-off: `true` launches it from the session thread too).
    pub fn dedicated_thread(mut self, yes: bool) -> Self {
        self.dedicated_thread = Some(yes);
        self
    }

    /// How long the caller and the session thread busy-wait for each other
    /// before sleeping on a condition variable (sessions on a dedicated
    /// thread). Default: 1 ms for GPU modes (a request's result then arrives
    /// without a futex wake-up on either side; a session thread idle for
    /// longer sleeps and costs no CPU), 50 µs for `cpu` (its intra-op threads
    /// need the cores). A batcher's scheduler and its callers wait for each
    /// other the same way, for its sessions' spin.
    pub fn spin(mut self, spin: std::time::Duration) -> Self {
        self.spin = Some(spin);
        self
    }

    /// Page placement of managed regions (managed modes only; default
    /// [`ManagedPlacement::HostResident`]).
    pub fn managed_placement(mut self, placement: ManagedPlacement) -> Self {
        self.managed_placement = placement;
        self
    }

    /// Capture the request's work into a CUDA graph in every GPU mode, not
    /// only `gpu-managed-graph`: `gpu-copy`'s graph holds the copy in, the
    /// forward pass and the copy out; `gpu-pinned`'s and `gpu-managed`'s the
    /// forward pass over their regions (managed prefetches stay outside).
    /// Ignored in `cpu` mode.
    pub fn capture_graph(mut self, yes: bool) -> Self {
        self.capture_graph = yes;
        self
    }

    /// In `gpu-pinned` and the managed modes, copy the input region into a
    /// device buffer with a copy kernel at the start of each request (inside
    /// the graph in graph mode), and run the model over that buffer: the
    /// input crosses the bus once, instead of once per read of the model
    /// (a convolution reads most input elements several times). Ignored in
    /// `cpu` and `gpu-copy`.
    pub fn stage_input(mut self, yes: bool) -> Self {
        self.stage_input = yes;
        self
    }

    /// How a captured graph is launched (default [`GraphLaunch::Direct`]).
    pub fn graph_launch(mut self, launch: GraphLaunch) -> Self {
        self.graph_launch = launch;
        self
    }

    /// Take raw u8 HWC images ([`Session::raw_input_mut`](super::Session::raw_input_mut))
    /// and normalise them into the f32 input region inside each request: the
    /// preprocess kernel on GPU (captured into the graph in graph mode), the
    /// CPU reference in `cpu` mode. The input shape must be `params.output_shape()`.
    /// Not offered in `gpu-copy`.
    pub fn preprocess(mut self, params: crate::ops::PreprocessParams) -> Self {
        self.preprocess = Some(params);
        self
    }

    /// What the spec declares of the inputs.
    pub fn inputs(&self) -> &[InputDecl] {
        &self.inputs
    }
}

impl Default for SessionSpec {
    fn default() -> Self {
        Self::new()
    }
}
