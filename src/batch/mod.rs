//! Dynamic batching: requests from any number of threads gathered into one
//! batch per forward pass ([`Batcher`]), configured by a [`BatchSpec`].
//!
//! A model whose inputs and outputs all have the batch as their first
//! dimension gets one session per batch size ("bucket", by default 1, 2, 4,
//! ... up to `max_batch`; in graph modes each captures its own CUDA graph),
//! built largest first (on a GPU sharing one stream and one graph memory
//! pool, see [`BatchSpec::share_graph_pool`]). A scheduler thread takes the
//! oldest waiting requests up to `max_batch` samples, copies their inputs
//! one after another into the smallest bucket that holds them, fills the
//! rest with zeros (padding), runs the bucket's session once and copies each
//! request's rows of every output into that request's memory. Padding rows
//! are never copied out. On the CPU, where no graph fixes the shapes, a
//! batch runs over its own rows of the bucket only, unpadded, when the
//! model allows it ([`Batcher::unpadded`]).
//!
//! | module | holds |
//! |---|---|
//! | `queue` | the queue: admission, gathering a batch, answering each request once |
//! | [`stats`] | [`BatchSummary`]: batch sizes, padding, queue time |
//!
//! [`Execution`] is either a batcher or a session pool, for callers that
//! serve a model one way or the other.

mod queue;
pub mod stats;

pub use stats::{BatchSizeStats, BatchSummary};

use crate::error::{Error, Result, SessionErrorKind};
use crate::mode::Mode;
use crate::model::{InputDecl, Model, TensorInfo};
use crate::mode::ModeGate;
use crate::session::spec::GraphShare;
use crate::session::{ModeChoice, RunTiming, Session, SessionPool, SessionSpec, TensorMut, TensorRef};
use parking_lot::Mutex;
use queue::{Bindings, Limits, Queue, Request};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests a batcher queues by default before it refuses more.
pub const DEFAULT_MAX_QUEUE: usize = 1024;

/// How a [`Batcher`] gathers requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpec {
    max_batch: usize,
    buckets: Option<Vec<usize>>,
    max_queue_delay: Duration,
    max_queue: usize,
    timeout: Option<Duration>,
    share_graph_pool: bool,
}

impl BatchSpec {
    /// Batches of up to `max_batch` samples, the default buckets, no queue
    /// delay (a lone request runs at once), [`DEFAULT_MAX_QUEUE`] requests
    /// queued at most, no timeout, one graph memory pool for all buckets.
    pub fn new(max_batch: usize) -> Self {
        Self { max_batch, buckets: None, max_queue_delay: Duration::ZERO, max_queue: DEFAULT_MAX_QUEUE, timeout: None, share_graph_pool: true }
    }

    /// The batch sizes to build a session (and graph) for: ascending, the
    /// largest `max_batch`. A batch runs in the smallest that holds it.
    pub fn buckets(mut self, sizes: &[usize]) -> Self {
        self.buckets = Some(sizes.to_vec());
        self
    }

    /// How long the oldest waiting request may wait for others while a
    /// full batch cannot be formed (0: never).
    pub fn max_queue_delay(mut self, delay: Duration) -> Self {
        self.max_queue_delay = delay;
        self
    }

    /// Requests that may wait at once; beyond, a request is refused at once
    /// ([`Error::QueueFull`]).
    pub fn max_queue(mut self, requests: usize) -> Self {
        self.max_queue = requests;
        self
    }

    /// How long a request may wait in the queue before it is refused
    /// ([`Error::QueueTimeout`]); once its batch has started it is answered.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// GPU sessions: whether the buckets share one CUDA stream and one
    /// CUDA-graph memory pool (the default): captured largest first, each
    /// smaller bucket's graph can reuse the scratch memory the larger ones
    /// freed instead of taking a pool of its own. `false`: a stream and a
    /// pool per bucket.
    pub fn share_graph_pool(mut self, share: bool) -> Self {
        self.share_graph_pool = share;
        self
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    pub fn delay(&self) -> Duration {
        self.max_queue_delay
    }

    pub fn queue_bound(&self) -> usize {
        self.max_queue
    }

    /// The buckets, checked: the ones given, else 1, 2, 4, ... below
    /// `max_batch`, then `max_batch`.
    pub fn bucket_sizes(&self) -> Result<Vec<usize>> {
        if self.max_batch == 0 {
            return Err(Error::Argument("max_batch must be at least 1".into()));
        }
        if self.max_queue == 0 {
            return Err(Error::Argument("max_queue must be at least 1".into()));
        }
        let Some(given) = &self.buckets else {
            let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| b.checked_mul(2)).take_while(|&b| b < self.max_batch).collect();
            sizes.push(self.max_batch);
            return Ok(sizes);
        };
        if given.is_empty() || given.contains(&0) || given.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Argument(format!("buckets {given:?}: give ascending batch sizes of at least 1, e.g. 1,2,4,8")));
        }
        if given.last() != Some(&self.max_batch) {
            return Err(Error::Argument(format!("buckets {given:?}: the largest must be max_batch ({}), so that a full batch has a bucket", self.max_batch)));
        }
        Ok(given.clone())
    }
}

/// One bucket: its batch size and what building its session said and cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Samples the bucket's session runs at once.
    pub size: usize,
    /// The session's build note (mode, graph, placement).
    pub note: String,
    /// Bytes of its input and output regions.
    pub region_bytes: usize,
    /// Device memory its build took (the drop in free memory: regions,
    /// libtorch's caching allocator, the graph's pool); `None` on the CPU.
    pub device_bytes: Option<usize>,
    /// Its fastest forward pass at build, alone (host time, over its own
    /// tensors): what the model itself does at this batch size.
    pub pass: Duration,
}

/// How one request ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchedRun {
    /// Time from queueing to its batch's start.
    pub queued: Duration,
    /// The request's samples.
    pub samples: usize,
    /// Samples in the batch it ran in.
    pub batch: usize,
    /// Samples the model computed: the batch's bucket (`batch` plus
    /// padding), or `batch` itself when the batcher runs
    /// [`unpadded`](Batcher::unpadded).
    pub bucket: usize,
    /// The batch's forward pass (host time; device time on the GPU).
    pub run: RunTiming,
}

/// A dynamic batcher in front of one session per bucket; share it between
/// threads (`&self` methods, `Sync`).
///
/// ```
/// use uminfer::batch::BatchSpec;
/// use uminfer::session::{TensorMut, TensorRef};
/// use uminfer::{Runtime, SessionSpec};
///
/// let rt = Runtime::new();
/// let model = rt.model("models/tiny.pt")?; // input x: f32 [1, 3, 128, 128], output [1, 10]
/// let batcher = rt.batcher(&model, SessionSpec::new(), BatchSpec::new(4))?; // buckets 1, 2, 4
/// let x = vec![0.5f32; 2 * 3 * 128 * 128]; // one request of two samples
/// let mut y = vec![0f32; 2 * 10];
/// let ran = batcher.run(&[TensorRef::new(&x)], &mut [TensorMut::new(&mut y)])?;
/// assert_eq!((ran.samples, ran.bucket), (2, 2));
/// # Ok::<(), uminfer::Error>(())
/// ```
pub struct Batcher {
    queue: Arc<Queue>,
    stats: Arc<Mutex<stats::BatchStats>>,
    scheduler: Option<std::thread::JoinHandle<()>>,
    /// One sample of each input and output (first dimension 1).
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    buckets: Vec<Bucket>,
    spec: BatchSpec,
    mode: Mode,
    unpadded: bool,
}

/// `info` with `n` as its first dimension.
pub(crate) fn with_batch(info: &TensorInfo, n: usize) -> TensorInfo {
    let mut shape = info.shape.clone();
    shape[0] = n as i64;
    TensorInfo { name: info.name.clone(), dtype: info.dtype, shape }
}

/// What runs a model's requests: a pool of sessions, or a batcher (the
/// servers' models, `bench --concurrency`'s schemes).
pub enum Execution {
    /// Each request alone, in a session of the pool.
    Sessions(SessionPool),
    /// Requests gathered into batches.
    Batched(Batcher),
}

impl Execution {
    /// Sessions that run at once.
    pub fn sessions(&self) -> usize {
        match self {
            Self::Sessions(p) => p.size(),
            Self::Batched(_) => 1,
        }
    }

    /// The batcher, when requests are batched.
    pub fn batcher(&self) -> Option<&Batcher> {
        match self {
            Self::Sessions(_) => None,
            Self::Batched(b) => Some(b),
        }
    }

    /// Runs one request over caller memory (blocking: waits for a session,
    /// or for its batch to run). `timeout`, batched only: the request's own
    /// queue timeout ([`Batcher::run_within`]).
    pub fn run_on(&self, inputs: &[TensorRef<'_>], outputs: &mut [TensorMut<'_>], timeout: Option<Duration>) -> Result<()> {
        match self {
            Self::Sessions(p) => p.checkout().run_on(inputs, outputs).map(drop),
            Self::Batched(b) => b.run_within(inputs, outputs, timeout).map(drop),
        }
    }
}

/// What the scheduler thread built: the bucket sessions and what they are.
struct Built {
    sessions: Vec<Session>,
    buckets: Vec<Bucket>,
    outputs: Vec<TensorInfo>,
    mode: Mode,
    /// CPU: each batch runs at its own size, over a bucket's first rows.
    unpadded: bool,
}

/// Whether a CPU batcher's batches can run at their own size, with no
/// padding ([`Session::run_rows`]): tried once at build on the largest
/// bucket, at a size that is no bucket (a model exported for fixed batch
/// sizes fails there, and then its batches are padded as on a GPU).
fn runs_unpadded(sessions: &mut [Session], sizes: &[usize]) -> bool {
    let Some(largest) = sessions.last_mut() else { return false };
    if largest.mode() != Mode::Cpu {
        return false;
    }
    let max = sizes.last().copied().unwrap_or(1);
    let Some(probe) = (1..max).rev().find(|n| !sizes.contains(n)) else {
        return false; // every size is a bucket: nothing would be padded
    };
    let ran = largest.run_rows(probe);
    largest.reset_timing();
    match ran {
        Ok(_) => true,
        Err(e) => {
            tracing::info!("batches are padded up to their bucket: the model did not run at batch {probe} ({e})");
            false
        }
    }
}

/// Builds a session of `spec` per size of `sizes`, largest first, over
/// `inputs` (one sample each) with the size as their first dimension; each
/// one's outputs must carry the batch first and agree per sample. Every
/// bucket's fastest pass is timed.
fn build_buckets(gate: &dyn ModeGate, model: &Model, mut spec: SessionSpec, sizes: &[usize], inputs: &[TensorInfo]) -> Result<Built> {
    let mut mode = None;
    let mut outputs: Option<Vec<TensorInfo>> = None;
    let mut built: Vec<(Session, Bucket)> = Vec::with_capacity(sizes.len());
    for &size in sizes.iter().rev() {
        let decls = inputs.iter().map(|t| InputDecl { name: Some(t.name.clone()), dtype: Some(t.dtype), shape: Some(with_batch(t, size).shape) }).collect();
        let s = SessionSpec { inputs: decls, ..spec.clone() };
        let device = s.device;
        let free = |on: bool| on.then(|| crate::cuda::driver::memory_info(device).ok().map(|(free, _)| free)).flatten();
        let before = free(!matches!(s.mode, ModeChoice::Fixed(Mode::Cpu)));
        let mut session = Session::build(gate, model, s, None).map_err(|e| Error::session(SessionErrorKind::Unsupported, format!("bucket {size}: {e}")))?;
        let device_bytes = before.zip(free(session.mode().needs_gpu())).map(|(b, a)| b.saturating_sub(a));
        for o in session.outputs() {
            if o.shape.first() != Some(&(size as i64)) {
                return Err(Error::session(SessionErrorKind::Unsupported, format!("output `{}` is {:?} for a batch of {size}: batching needs the batch as every output's first dimension", o.name, o.shape)));
            }
        }
        let one: Vec<TensorInfo> = session.outputs().iter().map(|o| with_batch(o, 1)).collect();
        match &outputs {
            Some(first) if *first != one => {
                return Err(Error::session(SessionErrorKind::Unsupported, format!("the outputs per sample differ between batch sizes {} and {size}: {first:?} against {one:?}", sizes[sizes.len() - 1])));
            }
            Some(_) => {}
            None => outputs = Some(one),
        }
        if mode.is_none() {
            mode = Some(session.mode());
            spec = spec.mode(session.mode());
        }
        let pass = crate::intra_op::fastest_pass(|| Ok(session.run()?.host))?;
        session.reset_timing();
        let region_bytes = session.inputs().iter().chain(session.outputs()).map(TensorInfo::byte_len).sum();
        let bucket = Bucket { size, note: session.note().to_string(), region_bytes, device_bytes, pass };
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        tracing::info!(
            "bucket {size}: {:.2} MiB of tensors{}, a pass takes {:.1} µs; {}",
            mib(region_bytes),
            device_bytes.map(|b| format!(", {:.1} MiB of device memory", mib(b))).unwrap_or_default(),
            pass.as_secs_f64() * 1e6,
            bucket.note
        );
        built.push((session, bucket));
    }
    built.reverse();
    let (mut sessions, buckets): (Vec<Session>, Vec<Bucket>) = built.into_iter().unzip();
    let unpadded = runs_unpadded(&mut sessions, sizes);
    Ok(Built { sessions, buckets, outputs: outputs.unwrap_or_default(), mode: mode.unwrap_or(Mode::Cpu), unpadded })
}

impl Batcher {
    /// Builds a session of `spec` per bucket of `batch`, largest first (the
    /// first dimension of every input declared or recorded is replaced by the
    /// bucket's size), and starts the scheduler. The sessions are built on
    /// the scheduler's thread and run there (a CPU session's passes, and its
    /// libtorch thread team, stay on that one thread); `ModeChoice::Auto`
    /// picks the mode with the largest bucket, the others use it.
    ///
    /// [`Runtime::batcher`](crate::Runtime::batcher) is the public way.
    pub(crate) fn build(gate: Arc<dyn ModeGate>, model: &Model, spec: SessionSpec, batch: BatchSpec) -> Result<Self> {
        let sizes = batch.bucket_sizes()?;
        if spec.preprocess.is_some() {
            return Err(Error::session(SessionErrorKind::Unsupported, "a batcher's sessions cannot preprocess images: batch the preprocessed tensors"));
        }
        let declared = model.resolve(&spec.inputs, None)?;
        if let Some(t) = declared.iter().find(|t| t.shape.is_empty()) {
            return Err(Error::session(SessionErrorKind::Unsupported, format!("input `{}` is a scalar: batching needs the batch as every input's first dimension", t.name)));
        }
        let inputs: Vec<TensorInfo> = declared.iter().map(|t| with_batch(t, 1)).collect();
        // The scheduler runs the sessions itself, one batch at a time: no
        // session thread of their own, and (on a GPU) one stream and graph
        // pool for all, unless asked otherwise.
        let spin = spec.spin;
        let spec = SessionSpec { dedicated_thread: None, graph_share: batch.share_graph_pool.then(GraphShare::default), ..spec };
        let limits = Limits { max_batch: batch.max_batch, max_queue: batch.max_queue, max_queue_delay: batch.max_queue_delay };
        let queue = Arc::new(Queue::new(limits));
        let stats = Arc::new(Mutex::new(stats::BatchStats::new(batch.max_batch, &sizes)));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (q, st, m, ins) = (queue.clone(), stats.clone(), model.clone(), inputs.clone());
        let scheduler = std::thread::Builder::new()
            .name(format!("uminfer-batch-{}", model.path().file_stem().map(|s| s.to_string_lossy()).unwrap_or_default()))
            .spawn(move || {
                let built = build_buckets(&*gate, &m, spec, &sizes, &ins);
                let (sessions, plan) = match built {
                    Ok(b) => {
                        let plan = Plan { sizes, input_bytes: ins.iter().map(TensorInfo::byte_len).collect(), output_bytes: b.outputs.iter().map(TensorInfo::byte_len).collect(), unpadded: b.unpadded };
                        let _ = tx.send(Ok((b.buckets, b.outputs, b.mode, b.unpadded)));
                        (b.sessions, plan)
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                schedule(&q, sessions, &plan, &st);
            })
            .map_err(|e| Error::session(SessionErrorKind::Failed, format!("starting the batch scheduler thread: {e}")))?;
        let built = rx.recv().unwrap_or_else(|_| Err(Error::session(SessionErrorKind::Failed, "the batch scheduler thread ended while building its sessions")));
        let (buckets, outputs, mode, unpadded) = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = scheduler.join();
                return Err(e);
            }
        };
        queue.set_spin(spin.unwrap_or(crate::session::default_spin(mode)));
        Ok(Self { queue, stats, scheduler: Some(scheduler), inputs, outputs, buckets, spec: batch, mode, unpadded })
    }

    /// Runs one request of `n` samples (`n` from the first input's length,
    /// 1 to `max_batch`): each input holds `n` samples of its tensor (first
    /// dimension `n`, the rest as [`inputs`](Self::inputs) say), each output
    /// room for `n`. Blocks until the request's batch has run; on `Ok` every
    /// byte of every output is written, with this request's results only.
    pub fn run(&self, inputs: &[TensorRef<'_>], outputs: &mut [TensorMut<'_>]) -> Result<BatchedRun> {
        self.run_within(inputs, outputs, None)
    }

    /// [`run`](Self::run) with a queue timeout of this request's own: the
    /// shorter of `timeout` and the batcher's ([`BatchSpec::timeout`])
    /// applies, as Triton lets a request shorten but not lengthen it.
    pub fn run_within(&self, inputs: &[TensorRef<'_>], outputs: &mut [TensorMut<'_>], timeout: Option<Duration>) -> Result<BatchedRun> {
        let timeout = match (timeout, self.spec.timeout) {
            (Some(asked), Some(limit)) => Some(asked.min(limit)),
            (asked, limit) => asked.or(limit),
        };
        let samples = self.samples_of(inputs)?;
        crate::session::tensor_ref::check_bindings("input", &self.infos(&self.inputs, samples), inputs.iter().map(|t| (t.dtype(), t.bytes().len())))?;
        crate::session::tensor_ref::check_bindings("output", &self.infos(&self.outputs, samples), outputs.iter().map(|t| (t.dtype(), t.len())))?;
        let bindings = Bindings {
            inputs: inputs.iter().map(|t| (t.bytes().as_ptr(), t.bytes().len())).collect(),
            outputs: outputs.iter_mut().map(|t| (t.as_mut_ptr(), t.len())).collect(),
        };
        // SAFETY: `inputs` and `outputs` are borrowed (shared, exclusive) for
        // this whole call, which `Queue::run` does not leave while a batch may
        // use them; each pointer is valid for its length (the slices').
        let ran = unsafe { self.queue.run(samples, bindings, timeout) };
        if ran.is_err() {
            self.stats.lock().refused(1);
        }
        ran
    }

    /// The samples a request carries, from its first input.
    fn samples_of(&self, inputs: &[TensorRef<'_>]) -> Result<usize> {
        let (Some(first), Some(info)) = (inputs.first(), self.inputs.first()) else {
            return Err(Error::session(SessionErrorKind::InvalidRequest, format!("run: no inputs given; the model takes {}", crate::session::tensor_ref::list(&self.inputs))));
        };
        let per = info.byte_len();
        let len = first.bytes().len();
        if per == 0 || !len.is_multiple_of(per) || len == 0 {
            return Err(Error::session(SessionErrorKind::InvalidRequest, format!("input `{}`: {len} bytes is not a whole number of samples of {per} bytes ({} {:?} each)", info.name, info.dtype, &info.shape[1..])));
        }
        let n = len / per;
        if n > self.spec.max_batch {
            return Err(Error::session(SessionErrorKind::InvalidRequest, format!("input `{}` holds {n} samples, over max_batch {}: split the request", info.name, self.spec.max_batch)));
        }
        Ok(n)
    }

    fn infos(&self, one: &[TensorInfo], n: usize) -> Vec<TensorInfo> {
        one.iter().map(|t| with_batch(t, n)).collect()
    }

    /// What the batcher is, for logs: `batched: up to 8 samples per pass,
    /// buckets 1,2,4,8, queue delay 0 µs, at most 1024 requests queued;`
    /// and the largest bucket's session note.
    pub fn note(&self) -> String {
        let buckets: Vec<String> = self.buckets.iter().map(|k| k.size.to_string()).collect();
        format!(
            "batched: up to {} samples per pass, buckets {}{}, queue delay {} µs, at most {} requests queued; {}",
            self.spec.max_batch(),
            buckets.join(","),
            if self.unpadded { " (each batch run at its own size, unpadded)" } else { "" },
            self.spec.delay().as_micros(),
            self.spec.queue_bound(),
            self.buckets.last().map(|k| k.note.as_str()).unwrap_or_default()
        )
    }

    /// One sample of each input (first dimension 1; a request may carry
    /// 1 to `max_batch`).
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    /// One sample of each output.
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// The buckets, smallest first.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    pub fn spec(&self) -> &BatchSpec {
        &self.spec
    }

    /// The mode every bucket's session runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether each batch runs at its own size, over the first rows of the
    /// smallest bucket that holds it, with no padding: on the CPU, for a
    /// model that runs at sizes other than the buckets' (checked at build).
    /// Otherwise (GPU modes, whose graphs are captured per bucket) a batch
    /// is padded with zeros up to its bucket.
    pub fn unpadded(&self) -> bool {
        self.unpadded
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// What the batcher did so far.
    pub fn stats(&self) -> BatchSummary {
        self.stats.lock().summary()
    }

    /// Refuses new requests ([`Error::BatcherClosed`]); the waiting ones
    /// still run and are answered. Dropping the batcher closes it and waits
    /// for them.
    pub fn close(&self) {
        self.queue.close();
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(t) = self.scheduler.take() {
            let _ = t.join();
        }
    }
}

/// What the scheduler needs of the signature.
struct Plan {
    sizes: Vec<usize>,
    /// Bytes per sample of each input and output.
    input_bytes: Vec<usize>,
    output_bytes: Vec<usize>,
    /// Batches run at their own size ([`Batcher::unpadded`]).
    unpadded: bool,
}

/// The scheduler thread: runs batches until the queue is closed and empty.
/// If it ends otherwise (a panic), every waiting request is answered.
fn schedule(queue: &Queue, mut sessions: Vec<Session>, plan: &Plan, stats: &Mutex<stats::BatchStats>) {
    struct Answer<'a>(&'a Queue);
    impl Drop for Answer<'_> {
        fn drop(&mut self) {
            self.0.fail_all(|| Error::BatcherClosed);
        }
    }
    let _answer = Answer(queue);
    while let Some(batch) = queue.next_batch() {
        let started = Instant::now();
        let samples: usize = batch.iter().map(|r| r.samples).sum();
        let b = plan.sizes.iter().position(|&s| s >= samples).unwrap_or(plan.sizes.len() - 1);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_batch(&mut sessions[b], &batch, samples, plan)))
            .unwrap_or_else(|_| Err(Error::session(SessionErrorKind::Failed, "the batch's forward pass panicked")));
        match ran {
            Ok(run) => {
                let computed = if plan.unpadded { samples } else { plan.sizes[b] };
                let mut st = stats.lock();
                st.batch(samples, b, computed - samples, started.elapsed());
                for r in &batch {
                    st.answered(started - r.enqueued);
                }
                drop(st);
                for r in &batch {
                    r.complete(Ok(BatchedRun { queued: started - r.enqueued, samples: r.samples, batch: samples, bucket: computed, run }));
                }
            }
            Err(e) if batch.len() == 1 => {
                stats.lock().refused(1);
                batch[0].complete(Err(e));
            }
            Err(e) => {
                stats.lock().refused(batch.len() as u64);
                let message = format!("the batch of {samples} samples from {} requests this one ran in failed: {e}", batch.len());
                for r in &batch {
                    r.complete(Err(Error::session(SessionErrorKind::Failed, message.clone())));
                }
            }
        }
    }
}

/// Gathers `batch`'s inputs (`samples` in all) into `session`'s (padded:
/// zeros after them), runs it (unpadded: over the batch's rows only), and copies each request's rows of
/// every output into its memory.
fn run_batch(session: &mut Session, batch: &[Arc<Request>], samples: usize, plan: &Plan) -> Result<RunTiming> {
    for (i, per) in plan.input_bytes.iter().enumerate() {
        // SAFETY: every byte written below is a request's input byte (a
        // TensorRef of this input's dtype, checked in `Batcher::run`: valid
        // elements) or zero, a valid element of every dtype.
        let dst = unsafe { session.input_bytes_mut(i) }?;
        let mut at = 0;
        for r in batch {
            let (p, len) = r.bindings.inputs[i];
            debug_assert_eq!(len, r.samples * per);
            // SAFETY: `p` is valid for reads of `len` bytes while the request
            // is in a batch (Request's `Send`); it is caller memory, distinct
            // from the session's regions.
            let src = unsafe { std::slice::from_raw_parts(p, len) };
            dst[at..at + len].copy_from_slice(src);
            at += len;
        }
        if !plan.unpadded {
            dst[at..].fill(0);
        }
    }
    let t = if plan.unpadded { session.run_rows(samples)? } else { session.run()? };
    for i in 0..plan.output_bytes.len() {
        let src = session.output_bytes(i)?;
        let mut at = 0;
        for r in batch {
            let (p, len) = r.bindings.outputs[i];
            let rows = &src[at..at + len];
            // SAFETY: `p` is valid for writes of `len` bytes, and nothing
            // else accesses them, while the request is in a batch (Request's
            // `Send`); `rows` (the session's region) is a distinct allocation.
            unsafe { std::ptr::copy_nonoverlapping(rows.as_ptr(), p, len) };
            at += len;
        }
    }
    Ok(t)
}
