//! The `GRPCInferenceService` implementation: health, metadata, unary and
//! streaming inference over the served models. Inference runs on tokio's
//! blocking threads (one [`SessionPool`](crate::SessionPool) session per
//! request), so the transport thread stays free, except when the server has
//! a single session whose requests are short ([`runs_inline`]): then the
//! transport thread runs it itself, saving two thread wake-ups per request
//! ([`polling`](super::polling)). A stream's
//! requests run one after another, each answered in order with its request
//! id; a refused request is answered in the stream (`error_message`, as
//! Triton does) and the stream goes on. Every RPC this server does not offer
//! answers `UNIMPLEMENTED` and says so. System shared memory regions
//! ([`shm`](super::shm)) are registered here and used by inference; every
//! inference request is counted in the [`metrics`](super::metrics).

use super::metrics::Metrics;
use super::models::{platform, Models, ServedModel, VERSION};
use super::polling::Polling;
use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::*;
use super::shm::Registry;
use super::stats::Phases;
use super::status::{unimplemented_rpc, RequestError};
use super::tensors;
use crate::model::TensorInfo;
use crate::session::{TensorMut, TensorRef};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

/// The service state shared by all connections (and by the REST routes:
/// clones share it).
#[derive(Clone)]
pub struct OipService {
    models: Models,
    shm: Arc<Registry>,
    stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    run: Runner,
    calls: Admission,
    /// Accept shared memory registration from any peer, not only loopback.
    shm_any_peer: bool,
}

/// The server-wide bound on inference calls (`--max-calls`): a unary
/// inference holds a permit while it runs, an inference stream while it is
/// open. Beyond the bound a call is refused at once with
/// `RESOURCE_EXHAUSTED`, so that waiting calls cannot pile up (each would
/// hold a blocking thread, or a session's queue); health, metadata and
/// `/metrics` are never refused, so that probes still answer under load.
#[derive(Clone)]
struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl Admission {
    fn new(max: usize) -> Self {
        Self { permits: Arc::new(tokio::sync::Semaphore::new(max)), max }
    }

    /// A permit, or `RESOURCE_EXHAUSTED` saying why.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the server is at its bound of {} inference calls in flight or streams open (--max-calls); retry later",
                self.max
            ))
        })
    }
}

/// The longest request a lone session runs on the transport thread itself.
/// While it runs, that thread serves nothing else: health checks, metadata,
/// `/metrics` and the next frames of every connection wait, and behind a
/// stream of requests they wait for several (`resnet18`, 8 ms a request on 2
/// cores: `ServerLive` took 39 ms P50, 54 ms at most, during a stream). A
/// longer request goes to a blocking thread, whose hand-off (25–100 µs of
/// thread wake-ups on 2 cores) is under a tenth of it.
pub const INLINE_LIMIT: Duration = Duration::from_millis(1);

/// Whether inference runs on the transport thread: a single session among
/// all models (nothing else to run side by side) whose requests take less
/// than [`INLINE_LIMIT`] (`slowest`, measured at load).
pub fn runs_inline(sessions: usize, slowest: Duration) -> bool {
    sessions == 1 && slowest < INLINE_LIMIT
}

/// Where inference runs, and who hears of each answer.
#[derive(Clone)]
struct Runner {
    /// On the calling (transport) thread instead of a blocking thread.
    inline: bool,
    polling: Arc<Polling>,
}

impl OipService {
    /// Serves `models`; `stopping` turns true when shutdown begins: the
    /// server is no longer ready, a stream's next request is refused with
    /// `UNAVAILABLE` and the stream ends after the request it is running
    /// (new calls are refused by HTTP/2 itself, tonic's graceful shutdown).
    /// Inference requests are recorded in `metrics`, and each answer is told
    /// to `polling`. Inference runs on the calling thread when
    /// [`runs_inline`] says so.
    /// At most `max_calls` inference calls run or streams are open at once
    /// (admission control); shared memory registrations are bounded by `shm_limits`.
    pub fn new(models: Models, stopping: watch::Receiver<bool>, metrics: Arc<Metrics>, polling: Arc<Polling>, max_calls: usize, shm_limits: super::shm::Limits) -> Self {
        let (sessions, slowest) = (models.sessions(), models.slowest_request());
        let inline = runs_inline(sessions, slowest) && !models.batching();
        let us = slowest.as_secs_f64() * 1e6;
        if models.batching() {
            tracing::info!("inference runs on blocking threads: requests wait there for their batch");
        } else if inline {
            tracing::info!("inference runs on the transport thread: one session, whose requests take {us:.1} µs (under {} µs)", INLINE_LIMIT.as_micros());
        } else if sessions == 1 {
            tracing::info!("inference runs on blocking threads: its requests take {us:.1} µs, over {} µs, and would hold up health checks, metadata and /metrics", INLINE_LIMIT.as_micros());
        } else {
            tracing::info!("inference runs on blocking threads: {sessions} sessions run side by side");
        }
        let run = Runner { inline, polling };
        Self { models, shm: Arc::new(Registry::new(shm_limits)), stopping, metrics, run, calls: Admission::new(max_calls), shm_any_peer: false }
    }

    /// Accept system shared memory (un)registration from peers beyond
    /// loopback too (`--shm-from-any-peer`); by default only from loopback.
    pub fn allow_shm_from_any_peer(mut self, yes: bool) -> Self {
        self.shm_any_peer = yes;
        self
    }

    /// Refuses `doing` (shared memory registration) for a peer beyond
    /// loopback, or one of unknown address, unless `--shm-from-any-peer`: a
    /// registered region is read back through the model, so whoever
    /// registers can read any `/dev/shm` object the server's user owns.
    fn local_peer<T>(&self, r: &Request<T>, doing: &str) -> Result<(), Status> {
        let peer = r.extensions().get::<super::conn::ConnInfo>().map(|i| i.peer);
        match peer {
            _ if self.shm_any_peer => Ok(()),
            Some(p) if p.ip().to_canonical().is_loopback() => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "{doing} system shared memory is allowed only from this machine (a loopback address); this call came from {}: \
                 shared memory is a local capability (a registered region is read through the model). Connect over 127.0.0.1 or ::1, \
                 or start the server with --shm-from-any-peer",
                peer.map_or("an unknown address".to_string(), |p| p.ip().to_string())
            ))),
        }
    }

    fn accepting(&self) -> bool {
        !*self.stopping.borrow()
    }

    fn model(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, RequestError> {
        self.models.get(name, version).cloned()
    }
}

/// Responses a stream holds before its request loop waits for the client to read them.
const STREAM_BUFFER: usize = 16;

/// One inference request, unary or from a stream: run where `run` says;
/// counted in `metrics`. A stream passes its `stopping` flag: once shutdown
/// began its next request is refused with `UNAVAILABLE`. A unary request is
/// always answered: after shutdown begins, HTTP/2 refuses new calls (GOAWAY)
/// and every call the server has read is in flight, even one still waiting
/// for the transport thread while it runs another request.
async fn infer_request(models: &Models, shm: &Arc<Registry>, stopping: Option<&watch::Receiver<bool>>, metrics: &Metrics, run: &Runner, req: ModelInferRequest) -> Result<ModelInferResponse, Status> {
    let _in_flight = metrics.in_flight();
    let start = std::time::Instant::now();
    let model = models.get(&req.model_name, &req.model_version).cloned();
    let labels = model.as_ref().map(|m| m.labels()).unwrap_or_default();
    let known = model.as_ref().ok().cloned();
    let result = async {
        if stopping.is_some_and(|s| *s.borrow()) {
            return Err(RequestError::ShuttingDown.into());
        }
        let m = model?;
        if run.inline {
            return caught(|| infer(&req, &m, shm))?.map_err(Status::from);
        }
        let shm = shm.clone();
        tokio::task::spawn_blocking(move || caught(|| infer(&req, &m, &shm)))
            .await
            .map_err(|e| Status::internal(format!("the inference task failed: {e}")))??
            .map_err(Status::from)
    }
    .await;
    run.polling.answered();
    let took = start.elapsed();
    match &result {
        Ok(a) => metrics.success(&labels, took, a.copied),
        Err(status) => metrics.failure(&labels, status.code()),
    }
    if let Some(m) = known {
        match &result {
            Ok(_) => m.stats.success(took),
            Err(_) => m.stats.failure(took),
        }
    }
    result.map(|a| a.response)
}

/// Runs `f` (inference, on the transport thread or a blocking thread),
/// answering a panic in it with `INTERNAL` and the panic's message: the call
/// fails, the connection and its other streams go on. The session checked
/// out by `f` goes back to its pool while unwinding.
fn caught<T>(f: impl FnOnce() -> T) -> Result<T, Status> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Status::internal(format!("the inference panicked: {}", what.as_deref().unwrap_or("(no message)")))
    })
}

/// The answer to one request, and the tensor bytes the server copied for it.
pub struct Answer {
    pub response: ModelInferResponse,
    /// Input bytes copied or encoded (unaligned, typed contents) plus output
    /// bytes copied after the session wrote them (an unaligned response
    /// buffer); 0 when every tensor was read and written in place.
    pub copied: usize,
}

/// Where the session writes one output.
enum Target<'p> {
    /// A registered region (the plan's), in place.
    Region(&'p super::shm::ShmTensor),
    /// The response's bytes, in place (the spare capacity of the vector).
    Response(Vec<u8>),
    /// The response's bytes through aligned scratch memory and one copy,
    /// when the allocator did not align the vector for the dtype.
    Staged(Vec<u8>, tensors::Aligned),
    /// Scratch memory: the request did not ask for this output.
    Discard(tensors::Aligned),
}

/// The request parameter Triton's clients send as `timeout` (`infer(...,
/// timeout=US)`): microseconds a request may wait in a batching model's
/// queue, shortening the server's `--queue-timeout-ms`; 0 or absent: the
/// server's. An integer; anything else is refused.
pub const TIMEOUT_PARAMETER: &str = "timeout";

/// The request's own queue timeout ([`TIMEOUT_PARAMETER`]).
fn request_timeout(req: &ModelInferRequest) -> Result<Option<Duration>, RequestError> {
    use super::proto::infer_parameter::ParameterChoice;
    let Some(p) = req.parameters.get(TIMEOUT_PARAMETER) else { return Ok(None) };
    let us = match p.parameter_choice {
        Some(ParameterChoice::Int64Param(us)) if us >= 0 => us as u64,
        Some(ParameterChoice::Uint64Param(us)) => us,
        _ => return Err(RequestError::Invalid(format!("the request's parameter \"{TIMEOUT_PARAMETER}\" must be a non-negative integer (microseconds in the batch queue); {:?} given", p.parameter_choice))),
    };
    Ok((us > 0).then(|| Duration::from_micros(us)))
}

/// Runs one request on model `m` (blocking: takes a session from its pool).
/// The session reads every input where it lies and writes every output once,
/// into its final place: the response's bytes or the shared memory region
/// the request names for it.
pub fn infer(req: &ModelInferRequest, m: &ServedModel, shm: &Registry) -> Result<Answer, RequestError> {
    let received = Instant::now();
    let timeout = request_timeout(req)?;
    let batched;
    let (in_sig, out_sig): (&[TensorInfo], &[TensorInfo]) = match m.exec.batcher() {
        None => (&m.inputs, &m.outputs),
        Some(b) => {
            batched = m.batched_signature(samples(req, m, b.spec().max_batch())?);
            (&batched.0, &batched.1)
        }
    };
    let plan = tensors::plan(req, &m.name, in_sig, out_sig, shm)?;
    let mut copied = plan.copied;
    let mut targets: Vec<Target<'_>> = out_sig
        .iter()
        .zip(&plan.outputs)
        .map(|(o, place)| -> Result<Target<'_>, RequestError> {
            let what = || format!("output {:?}", o.name);
            Ok(match place {
                tensors::OutputPlace::Shm(_, t) => Target::Region(t),
                tensors::OutputPlace::Response(_) => {
                    let v = super::status::try_capacity(o.byte_len(), what)?;
                    if (v.as_ptr() as usize).is_multiple_of(o.dtype.size()) {
                        Target::Response(v)
                    } else {
                        Target::Staged(v, tensors::Aligned::zeroed(o.byte_len(), what)?)
                    }
                }
                tensors::OutputPlace::Discard => Target::Discard(tensors::Aligned::zeroed(o.byte_len(), what)?),
            })
        })
        .collect::<Result<_, _>>()?;
    let input_regions = plan.inputs.iter().filter_map(|b| if let tensors::InputBytes::Shm(t) = b { Some(t) } else { None });
    let output_regions = plan.outputs.iter().filter_map(|p| if let tensors::OutputPlace::Shm(_, t) = p { Some(t) } else { None });
    let locks = super::shm::lock_regions(input_regions.chain(output_regions));
    let ins = in_sig.iter().zip(&plan.inputs).map(|(i, b)| TensorRef::from_bytes(i.dtype, b.bytes())).collect::<crate::Result<Vec<_>>>()?;
    let mut outs = Vec::with_capacity(out_sig.len());
    for (o, target) in out_sig.iter().zip(targets.iter_mut()) {
        let n = o.byte_len();
        let bytes: &mut [std::mem::MaybeUninit<u8>] = match target {
            // SAFETY: the region's lock is held (`locks`) until the session
            // has run, and the plan refused outputs overlapping other tensors
            // of the request, so this is the only view of these bytes here.
            Target::Region(t) => unsafe { t.output_bytes(n) }?,
            Target::Response(v) => &mut v.spare_capacity_mut()[..n],
            Target::Staged(_, a) | Target::Discard(a) => as_uninit(a.bytes_mut()),
        };
        outs.push(TensorMut::from_bytes(o.dtype, bytes)?);
    }
    let checked = Instant::now();
    let started = Instant::now();
    let run = if m.echo {
        for o in &mut outs {
            o.fill_zero();
        }
        Ok(())
    } else {
        m.exec.run_on(&ins, &mut outs, timeout)
    };
    drop((outs, ins));
    // A region its owner truncated meanwhile held zeros and lost the writes:
    // said before the locks go, so that the next request using it sees it too.
    let intact = plan
        .inputs
        .iter()
        .filter_map(|b| if let tensors::InputBytes::Shm(t) = b { Some(t) } else { None })
        .chain(plan.outputs.iter().filter_map(|p| if let tensors::OutputPlace::Shm(_, t) = p { Some(t) } else { None }))
        .try_for_each(|t| t.intact());
    drop(locks);
    intact?;
    run?;
    let ran = Instant::now();
    let mut in_response: Vec<Option<Vec<u8>>> = targets
        .into_iter()
        .zip(out_sig)
        .map(|(t, o)| match t {
            Target::Response(mut v) => {
                // SAFETY: every byte of every output (here the first
                // `byte_len` bytes of the spare capacity) was written: `run_on`
                // returned Ok, which guarantees it, or (echo) `fill_zero` did.
                unsafe { v.set_len(o.byte_len()) };
                Some(v)
            }
            Target::Staged(mut v, a) => {
                v.extend_from_slice(a.bytes());
                copied += a.bytes().len();
                Some(v)
            }
            Target::Region(_) | Target::Discard(_) => None,
        })
        .collect();
    // One raw entry per answered output when any is in the response
    // (Triton's clients index them by output position); none when every
    // answered output went to shared memory.
    let any_in_response = plan.answer.iter().any(|a| in_response[a.index].is_some());
    let mut raw_output_contents = Vec::new();
    let mut outputs = Vec::with_capacity(plan.answer.len());
    for a in &plan.answer {
        let o = &out_sig[a.index];
        outputs.push(InferOutputTensor { name: a.name.clone(), datatype: o.dtype.oip_name().into(), shape: o.shape.clone(), parameters: Default::default(), contents: None });
        if any_in_response {
            raw_output_contents.push(in_response[a.index].take().unwrap_or_default());
        }
    }
    m.stats.record_phases(Phases { compute_input: checked - received, queue: started - checked, compute_infer: ran - started, compute_output: ran.elapsed() });
    let response = ModelInferResponse { model_name: m.name.clone(), model_version: VERSION.into(), id: req.id.clone(), parameters: Default::default(), outputs, raw_output_contents };
    Ok(Answer { response, copied })
}

/// The samples a request to batched model `m` carries: its first input's
/// first dimension, 1 to `max_batch` (the plan then checks every tensor
/// against it).
fn samples(req: &ModelInferRequest, m: &ServedModel, max_batch: usize) -> Result<usize, RequestError> {
    let Some(first) = req.inputs.first() else { return Ok(1) };
    match first.shape.first() {
        Some(&n) if n >= 1 && n as u64 <= max_batch as u64 => Ok(n as usize),
        _ => Err(RequestError::Invalid(format!(
            "model {:?} batches: every tensor's first dimension is the request's samples, 1 to {max_batch}; input {} has shape {:?}",
            m.name,
            super::status::echo(&first.name),
            super::status::echo_debug(&first.shape)
        ))),
    }
}

/// Initialised bytes viewed as bytes that may be uninitialised (to be overwritten).
fn as_uninit(b: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: MaybeUninit<u8> has u8's layout, and viewing initialised bytes
    // as maybe-uninitialised claims nothing more; the borrow stays exclusive.
    unsafe { &mut *(b as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) }
}

/// The model configuration's datatype of `d` (`TYPE_FP32`, `TYPE_BF16`, ...).
fn config_type(d: crate::DType) -> DataType {
    use crate::DType::*;
    match d {
        F32 => DataType::TypeFp32,
        F64 => DataType::TypeFp64,
        F16 => DataType::TypeFp16,
        Bf16 => DataType::TypeBf16,
        I64 => DataType::TypeInt64,
        I32 => DataType::TypeInt32,
        I16 => DataType::TypeInt16,
        I8 => DataType::TypeInt8,
        U8 => DataType::TypeUint8,
        Bool => DataType::TypeBool,
    }
}

/// RPCs answered `UNIMPLEMENTED`, each naming itself. Written in the form
/// `#[async_trait]` expands `async fn` into, because that attribute does not
/// see inside macro invocations.
macro_rules! unimplemented_rpcs {
    ($($method:ident: $req:ty => $resp:ty, $rpc:literal;)*) => {$(
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _: Request<$req>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<$resp>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(std::future::ready(Err(unimplemented_rpc($rpc))))
        }
    )*};
}

#[tonic::async_trait]
impl GrpcInferenceService for OipService {
    type ModelStreamInferStream = tonic::codegen::BoxStream<ModelStreamInferResponse>;

    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.accepting() }))
    }

    /// Unknown models are not ready (Triton answers the same way), not an error.
    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let ready = self.accepting() && self.model(&r.name, &r.version).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse { name: "uminfer".into(), version: env!("CARGO_PKG_VERSION").into(), extensions: vec!["system_shared_memory".into()] }))
    }

    async fn model_metadata(&self, r: Request<ModelMetadataRequest>) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let m = self.model(&r.name, &r.version)?;
        // A batched model's first dimension is the request's: -1, as Triton shows it.
        let batched = m.exec.batcher().is_some();
        let shape = |t: &TensorInfo| {
            let mut shape = t.shape.clone();
            if batched {
                shape[0] = -1;
            }
            shape
        };
        let tensors = |ts: &[TensorInfo]| ts.iter().map(|t| TensorMetadata { name: t.name.clone(), datatype: t.dtype.oip_name().into(), shape: shape(t) }).collect();
        Ok(Response::new(ModelMetadataResponse {
            name: m.name.clone(),
            versions: vec![VERSION.into()],
            platform: platform(m.format).into(),
            inputs: tensors(&m.inputs),
            outputs: tensors(&m.outputs),
        }))
    }

    /// The configuration Triton would show for the model: platform and
    /// backend, every input and output with its datatype and shape, and one
    /// instance group of the model's sessions (CPU or GPU by its mode).
    /// Unbatched: `max_batch_size` 0, shapes include the batch dimension.
    /// Batched: `max_batch_size`, shapes without the batch dimension,
    /// `dynamic_batching` with the queue delay, and the buckets with what
    /// each cost in `parameters` (`bucket_sizes`, `bucket_bytes`).
    async fn model_config(&self, r: Request<ModelConfigRequest>) -> Result<Response<ModelConfigResponse>, Status> {
        let r = r.into_inner();
        let m = self.model(&r.name, &r.version)?;
        let gpu = m.mode != crate::Mode::Cpu;
        let kind = if gpu { model_instance_group::Kind::Gpu } else { model_instance_group::Kind::Cpu };
        let batcher = m.exec.batcher();
        let dims = |t: &TensorInfo| if batcher.is_some() { t.shape[1..].to_vec() } else { t.shape.clone() };
        let mut parameters = std::collections::HashMap::new();
        if let Some(b) = batcher {
            let param = |v: Vec<String>| ModelParameter { string_value: v.join(",") };
            parameters.insert("bucket_sizes".to_string(), param(b.buckets().iter().map(|k| k.size.to_string()).collect()));
            parameters.insert("bucket_bytes".to_string(), param(b.buckets().iter().map(|k| format!("{}:{}", k.size, k.device_bytes.unwrap_or(k.region_bytes))).collect()));
        }
        let config = ModelConfig {
            name: m.name.clone(),
            platform: platform(m.format).into(),
            backend: "pytorch".into(),
            max_batch_size: batcher.map(|b| i32::try_from(b.spec().max_batch()).unwrap_or(i32::MAX)).unwrap_or(0),
            input: m.inputs.iter().map(|t| ModelInput { name: t.name.clone(), data_type: config_type(t.dtype) as i32, dims: dims(t), ..Default::default() }).collect(),
            output: m.outputs.iter().map(|t| ModelOutput { name: t.name.clone(), data_type: config_type(t.dtype) as i32, dims: dims(t), ..Default::default() }).collect(),
            instance_group: vec![ModelInstanceGroup {
                name: m.name.clone(),
                kind: kind as i32,
                count: i32::try_from(m.exec.sessions()).unwrap_or(i32::MAX),
                ..Default::default()
            }],
            scheduling_choice: batcher.map(|b| {
                model_config::SchedulingChoice::DynamicBatching(ModelDynamicBatching {
                    max_queue_delay_microseconds: u64::try_from(b.spec().delay().as_micros()).unwrap_or(u64::MAX),
                    preserve_ordering: true,
                    ..Default::default()
                })
            }),
            parameters,
            ..Default::default()
        };
        Ok(Response::new(ModelConfigResponse { config: Some(config) }))
    }

    /// The statistics of model `name` (every model when `name` is empty).
    async fn model_statistics(&self, r: Request<ModelStatisticsRequest>) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = r.into_inner();
        let model_stats = if r.name.is_empty() {
            self.models.all().map(|m| m.stats.to_proto(&m.name, VERSION, m.exec.batcher().map(|b| b.stats()).as_ref())).collect()
        } else {
            let m = self.model(&r.name, &r.version)?;
            vec![m.stats.to_proto(&m.name, VERSION, m.exec.batcher().map(|b| b.stats()).as_ref())]
        };
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    /// The served models: each `READY` while the server accepts requests,
    /// `UNAVAILABLE` once shutdown began (with `ready`, only the ready ones).
    /// Models come from `--model`, not from a repository: a repository name
    /// is refused.
    async fn repository_index(&self, r: Request<RepositoryIndexRequest>) -> Result<Response<RepositoryIndexResponse>, Status> {
        let r = r.into_inner();
        if !r.repository_name.is_empty() {
            return Err(RequestError::Invalid(format!(
                "repository {}: uminfer serves the models given by --model, not a repository; send an empty repository name",
                super::status::echo(&r.repository_name)
            ))
            .into());
        }
        let accepting = self.accepting();
        let (state, reason) = if accepting { ("READY", "") } else { ("UNAVAILABLE", "the server is shutting down") };
        let models = if r.ready && !accepting {
            vec![]
        } else {
            self.models
                .all()
                .map(|m| repository_index_response::ModelIndex { name: m.name.clone(), version: VERSION.into(), state: state.into(), reason: reason.into() })
                .collect()
        };
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let _permit = self.calls.admit().inspect_err(|s| {
            let labels = self.model(&r.get_ref().model_name, &r.get_ref().model_version).map(|m| m.labels()).unwrap_or_default();
            self.metrics.failure(&labels, s.code());
        })?;
        infer_request(&self.models, &self.shm, None, &self.metrics, &self.run, r.into_inner()).await.map(Response::new)
    }

    async fn model_stream_infer(&self, r: Request<Streaming<ModelInferRequest>>) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let permit = self.calls.admit().inspect_err(|s| self.metrics.failure(&Default::default(), s.code()))?;
        let mut inbound = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let (models, shm, mut stopping, metrics, run) = (self.models.clone(), self.shm.clone(), self.stopping.clone(), self.metrics.clone(), self.run.clone());
        tokio::spawn(async move {
            let _permit = permit; // held while the stream is open
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stopping.wait_for(|s| *s) => return, // shutdown: end the stream
                    next = inbound.message() => next,
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => return, // the client closed its side
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let (id, model_name) = (req.id.clone(), req.model_name.clone());
                let answer = match infer_request(&models, &shm, Some(&stopping), &metrics, &run, req).await {
                    Ok(resp) => ModelStreamInferResponse { error_message: String::new(), infer_response: Some(resp) },
                    // The id goes back with the error too, so that the client can match it.
                    Err(status) => ModelStreamInferResponse {
                        error_message: format!("[{:?}] {}", status.code(), status.message()),
                        infer_response: Some(ModelInferResponse { model_name, id, ..Default::default() }),
                    },
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn system_shared_memory_register(&self, r: Request<SystemSharedMemoryRegisterRequest>) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        self.local_peer(&r, "registering")?;
        let r = r.into_inner();
        let shm = self.shm.clone();
        tokio::task::spawn_blocking(move || shm.register(&r.name, &r.key, r.offset, r.byte_size))
            .await
            .map_err(|e| Status::internal(format!("the registration task failed: {e}")))??;
        Ok(Response::new(SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(&self, r: Request<SystemSharedMemoryUnregisterRequest>) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        self.local_peer(&r, "unregistering")?;
        self.shm.unregister(&r.into_inner().name);
        Ok(Response::new(SystemSharedMemoryUnregisterResponse {}))
    }

    async fn system_shared_memory_status(&self, r: Request<SystemSharedMemoryStatusRequest>) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        Ok(Response::new(SystemSharedMemoryStatusResponse { regions: self.shm.status(&r.into_inner().name)? }))
    }

    unimplemented_rpcs! {
        repository_model_load: RepositoryModelLoadRequest => RepositoryModelLoadResponse, "RepositoryModelLoad";
        repository_model_unload: RepositoryModelUnloadRequest => RepositoryModelUnloadResponse, "RepositoryModelUnload";
        cuda_shared_memory_status: CudaSharedMemoryStatusRequest => CudaSharedMemoryStatusResponse, "CudaSharedMemoryStatus";
        cuda_shared_memory_register: CudaSharedMemoryRegisterRequest => CudaSharedMemoryRegisterResponse, "CudaSharedMemoryRegister";
        cuda_shared_memory_unregister: CudaSharedMemoryUnregisterRequest => CudaSharedMemoryUnregisterResponse, "CudaSharedMemoryUnregister";
        trace_setting: TraceSettingRequest => TraceSettingResponse, "TraceSetting";
        log_settings: LogSettingsRequest => LogSettingsResponse, "LogSettings";
    }
}

#[cfg(test)]
mod tests {
    use super::{caught, request_timeout, runs_inline, INLINE_LIMIT, TIMEOUT_PARAMETER};
    use crate::oip::proto::infer_parameter::ParameterChoice;
    use crate::oip::proto::{InferParameter, ModelInferRequest};
    use std::time::Duration;

    #[test]
    fn the_timeout_parameter_is_microseconds_and_anything_else_is_refused() {
        let with = |p: Option<ParameterChoice>| {
            let mut req = ModelInferRequest::default();
            if let Some(p) = p {
                req.parameters.insert(TIMEOUT_PARAMETER.into(), InferParameter { parameter_choice: Some(p) });
            }
            request_timeout(&req)
        };
        assert_eq!(with(None).unwrap(), None);
        assert_eq!(with(Some(ParameterChoice::Int64Param(30_000))).unwrap(), Some(Duration::from_millis(30)));
        assert_eq!(with(Some(ParameterChoice::Uint64Param(5))).unwrap(), Some(Duration::from_micros(5)));
        assert_eq!(with(Some(ParameterChoice::Int64Param(0))).unwrap(), None, "0: the server's timeout");
        for bad in [ParameterChoice::Int64Param(-1), ParameterChoice::StringParam("30ms".into()), ParameterChoice::DoubleParam(1.5), ParameterChoice::BoolParam(true)] {
            let e = with(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("parameter \"timeout\" must be a non-negative integer (microseconds"), "{e}");
        }
    }

    #[test]
    fn only_a_lone_session_with_short_requests_runs_on_the_transport_thread() {
        assert!(runs_inline(1, Duration::from_micros(150)));
        assert!(!runs_inline(1, INLINE_LIMIT), "a request as long as the limit");
        assert!(!runs_inline(1, Duration::from_millis(8)), "resnet18 on 2 cores");
        assert!(!runs_inline(2, Duration::from_micros(150)), "two sessions run side by side");
    }

    #[test]
    fn a_panic_in_inline_inference_becomes_an_internal_status() {
        assert_eq!(caught(|| 7).unwrap(), 7);
        let status = caught(|| -> u32 { panic!("boom in the forward pass") }).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "the inference panicked: boom in the forward pass");
        let n = 3;
        let formatted = caught(|| -> u32 { panic!("request {n} failed") }).unwrap_err();
        assert_eq!(formatted.message(), "the inference panicked: request 3 failed");
    }
}
