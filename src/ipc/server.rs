//! `uminfer serve`: one endpoint, a [`SessionPool`](crate::SessionPool) (or,
//! with [`ServeOptions::batching`], a [`Batcher`](crate::batch::Batcher))
//! behind it, any model.
//!
//! The endpoint offers both protocols (`docs/ipc.md`): v2 (`uminfer/NAME/v2`,
//! named tensors of any dtype) and v1 (`uminfer/NAME`, one float32 tensor
//! each way: served when the model is such, else each request refused with
//! a message that names protocol v2). A dispatcher thread waits for requests
//! on both (a short spin, then iceoryx2's WaitSet on the request-event
//! listener they share, so an idle server uses no CPU) and hands each to one
//! of K workers. A worker validates the header (v2: its whole tensor table)
//! before it reads the payload, runs the model over the request sample in
//! shared memory (`cpu`: tensors over the sample, no copy; GPU modes: copied
//! into the session's input regions) straight into the loaned response
//! sample, sends it and wakes that client's listener. Batched, each worker
//! hands its request to the batcher and waits for its batch; the batcher
//! copies the request's samples in and its outputs back.

use super::header::{validate_request_v1, RequestHeaderV1, ResponseHeaderV1, Status, MAGIC};
use super::service::{self, Ipc};
use super::table::{BatchCounts, RequestHeaderV2, ResponseHeaderV2, Signature, KIND_DESCRIBE, MAX_TENSORS, PROTOCOL_V2};
use crate::dtype::DType;
use crate::batch::{BatchSpec, Execution};
use crate::error::{Error, IpcErrorKind, Result};
use crate::model::InputDecl;
use crate::runtime::Runtime;
use crate::session::{ModeChoice, SessionSpec, TensorMut, TensorRef};
use iceoryx2::active_request::ActiveRequest;
use iceoryx2::prelude::*;
use iceoryx2::waitset::WaitSetRunResult;
use smallvec::SmallVec;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tuning::YIELD_EVERY;

/// The clients of protocol v2 to point a v1 client to (the Python package's
/// version, and the Rust crate's release this server belongs to).
pub const V2_CLIENTS: &str = concat!("uminfer_client >= 0.2.0 (Python) or uminfer::ipc::Client / `uminfer infer` of this server's release (uminfer ", env!("CARGO_PKG_VERSION"), ")");

type RequestV1 = ActiveRequest<Ipc, [f32], RequestHeaderV1, [f32], ResponseHeaderV1>;
type RequestV2 = ActiveRequest<Ipc, [u8], RequestHeaderV2, [u8], ResponseHeaderV2>;

/// A request of either protocol.
enum Incoming {
    V1(RequestV1),
    V2(RequestV2),
}

impl Incoming {
    fn is_connected(&self) -> bool {
        match self {
            Incoming::V1(r) => r.is_connected(),
            Incoming::V2(r) => r.is_connected(),
        }
    }

    fn origin(&self) -> iceoryx2::identifiers::UniqueClientId {
        match self {
            Incoming::V1(r) => r.origin(),
            Incoming::V2(r) => r.origin(),
        }
    }

    fn request_id(&self) -> u64 {
        match self {
            Incoming::V1(r) => r.user_header().request_id,
            Incoming::V2(r) => r.user_header().request_id,
        }
    }

    /// The request's sample in the client's data segment: from iceoryx2's
    /// header to the end of the payload (addresses only: nothing is read).
    fn sample(&self) -> (*const u8, usize) {
        fn span<A: ?Sized, B: ?Sized, C>(header: &A, user_header: &B, payload: &[C]) -> (*const u8, usize) {
            let parts = [(header as *const A).cast::<u8>() as usize, (user_header as *const B).cast::<u8>() as usize, payload.as_ptr() as usize];
            let start = parts.into_iter().min().unwrap_or(0);
            let end = parts.into_iter().max().unwrap_or(0).max(payload.as_ptr_range().end as usize).max(start);
            (start as *const u8, end - start)
        }
        match self {
            Incoming::V1(r) => span(r.header(), r.user_header(), r.payload()),
            Incoming::V2(r) => span(r.header(), r.user_header(), r.payload()),
        }
    }
}

/// What a client is told when it truncated its own data segment under its request.
const TRUNCATED: &str = "the request's shared memory (the client's iceoryx2 data segment) was truncated during the request: its data was lost; reconnect with a fresh client";

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Endpoint name: the services are `uminfer/<name>` (v1) and `uminfer/<name>/v2`.
    pub name: String,
    /// Model file (TorchScript or AOTInductor package).
    pub model: std::path::PathBuf,
    /// What is declared of the model's inputs where it records nothing (or
    /// overrides a TorchScript file's record): requests must match. A
    /// declaration without a name (`--input-shape`) is the only input's, of
    /// the model's dtype or float32 when it records none.
    pub inputs: Vec<InputDecl>,
    /// Session mode.
    pub mode: ModeChoice,
    /// Sessions, and worker threads.
    pub workers: usize,
    /// Largest request payload in bytes.
    pub max_bytes: usize,
    /// Poll for the next request this long before blocking (yielding the
    /// CPU between polls, so that a client on the same core still runs).
    pub spin: Duration,
    /// Answer v2 requests without running the model: zeros of the outputs'
    /// dtypes and shapes, after the same checks (`uminfer bench`'s
    /// `shm-echo`, the transport's floor).
    pub echo: bool,
    /// Gather requests into batches (`--max-batch`): every input's and
    /// output's first dimension is the batch, a request carries 1 to
    /// `max_batch` samples, and [`BATCH_WORKERS_PER_SAMPLE`] × `max_batch`
    /// worker threads (at most [`MAX_BATCH_WORKERS`]) hand requests to one
    /// batcher; `workers` must then be 1.
    pub batching: Option<BatchSpec>,
}

/// Worker threads per sample of `max_batch` when batching: enough that the
/// next batch gathers while one runs.
pub const BATCH_WORKERS_PER_SAMPLE: usize = 2;
/// Most worker threads when batching (iceoryx2's port holds at most 128
/// requests in flight: 64 clients, 2 each).
pub const MAX_BATCH_WORKERS: usize = 128;

impl ServeOptions {
    /// Defaults: the inputs as the model records them, `cpu`, 1 worker, 64 MiB, 200 µs spin.
    pub fn new(name: &str, model: impl Into<std::path::PathBuf>) -> Self {
        Self {
            name: name.to_string(),
            model: model.into(),
            inputs: Vec::new(),
            mode: ModeChoice::Fixed(crate::Mode::Cpu),
            workers: 1,
            max_bytes: 64 << 20,
            spin: Duration::from_micros(200),
            echo: false,
            batching: None,
        }
    }

    /// Declares the shape of a one-input model's input (`--input-shape`).
    pub fn input_shape(mut self, shape: &[i64]) -> Self {
        self.inputs.push(InputDecl { name: None, dtype: None, shape: Some(shape.to_vec()) });
        self
    }
}

/// Counters of a running or finished server.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub served: AtomicU64,
    pub bad_requests: AtomicU64,
    pub model_errors: AtomicU64,
    /// Refused while batching: the queue full, a queue timeout, shutdown.
    pub busy: AtomicU64,
    pub abandoned: AtomicU64,
}

/// How the v1 service answers: the model's one float32 tensor each way, or
/// a refusal that names protocol v2.
enum V1 {
    Serve { input_shape: Vec<i64>, output_shape: Vec<i64>, max_elements: usize },
    Refuse(String),
}

/// A running server: [`Server::run`] blocks until the flag of
/// [`Server::stop_handle`] is set from another thread or SIGINT/SIGTERM arrives.
pub struct Server {
    opts: ServeOptions,
    node: Node<Ipc>,
    port_v2: iceoryx2::port::server::Server<Ipc, [u8], RequestHeaderV2, [u8], ResponseHeaderV2>,
    port_v1: iceoryx2::port::server::Server<Ipc, [f32], RequestHeaderV1, [f32], ResponseHeaderV1>,
    listener: iceoryx2::port::listener::Listener<Ipc>,
    response_events: iceoryx2::service::port_factory::event::PortFactory<Ipc>,
    exec: Execution,
    /// Worker threads (1: the dispatcher answers requests itself).
    workers: usize,
    signature: Signature,
    /// The describe response's payload.
    describe: String,
    v1: V1,
    stop: Arc<AtomicBool>,
    stats: Arc<ServeStats>,
    // Keep the services alive while the server runs.
    _services: (service::ServiceV2, service::ServiceV1),
}

impl Server {
    /// Cleans up dead nodes, refuses a second live server of the same name,
    /// builds the sessions and opens the ports.
    pub fn new(rt: &Runtime, opts: ServeOptions) -> Result<Self> {
        let names = service::names(&opts.name)?;
        // iceoryx2 node names hold at most 128 bytes; endpoint names are ASCII.
        let node = service::node(&format!("uminfer-server-{}", &opts.name[..opts.name.len().min(100)]))?;
        let cleaned = service::cleanup_dead_nodes(&node);
        if cleaned > 0 {
            tracing::info!("removed the resources of {cleaned} dead node(s) (crashed servers or clients)");
        }
        let svc_v2 = service::service_v2(&node, &names, true)?;
        let svc_v1 = service::service_v1(&node, &names, true)?;
        let refuse = || Error::ipc(IpcErrorKind::AlreadyServing, format!("a live server already serves {}; stop it first", names.service));
        if svc_v2.dynamic_config().number_of_servers() > 0 || svc_v1.dynamic_config().number_of_servers() > 0 {
            return Err(refuse());
        }
        let model = rt.model(&opts.model)?;
        let recorded = model.inputs()?;
        let mut spec = SessionSpec::new().mode_choice(opts.mode);
        for d in &opts.inputs {
            // A bare shape is a one-input model's, float32 where it records no dtype.
            let dtype = match (&d.name, d.dtype, recorded) {
                (None, None, [only]) => Some(only.dtype.unwrap_or(DType::F32)),
                _ => d.dtype,
            };
            spec = spec.declare(InputDecl { dtype, ..d.clone() });
        }
        let invalid = |e: String| Error::ipc(IpcErrorKind::Invalid, format!("model {}: {e}", opts.model.display()));
        let (exec, signature, workers, mode, note) = match &opts.batching {
            None => {
                let pool = rt.session_pool(&model, spec, opts.workers.max(1))?;
                let signature = Signature::new(pool.inputs(), pool.outputs(), opts.max_bytes).map_err(invalid)?;
                let (mode, note) = {
                    let s = pool.checkout();
                    (s.mode(), s.note().to_string())
                };
                (Execution::Sessions(pool), signature, opts.workers.max(1), mode, note)
            }
            Some(b) => {
                if opts.workers > 1 {
                    return Err(Error::Argument(format!("batching runs one batcher, with a session per bucket, fed by its own worker threads: drop --workers {}", opts.workers)));
                }
                let batcher = rt.batcher(&model, spec, b.clone())?;
                let signature = Signature::batched(batcher.inputs(), batcher.outputs(), b.max_batch(), opts.max_bytes).map_err(invalid)?;
                let note = batcher.note();
                let workers = (BATCH_WORKERS_PER_SAMPLE * b.max_batch()).clamp(2, MAX_BATCH_WORKERS);
                let mode = batcher.mode();
                (Execution::Batched(batcher), signature, workers, mode, note)
            }
        };
        let request_bytes = signature.max_request_len();
        if request_bytes > opts.max_bytes {
            return Err(Error::ipc(IpcErrorKind::Invalid, format!(
                "the model's inputs ({}{}) take {request_bytes} bytes, above --max-bytes {}",
                crate::session::tensor_ref::list(signature.inputs()),
                signature.max_batch().map(|n| format!(" per sample, {n} samples")).unwrap_or_default(),
                opts.max_bytes
            )));
        }
        let ranges: Vec<Option<(i64, i64)>> = recorded.iter().map(|m| m.range).collect();
        let describe = signature.describe(&ranges);
        let v1 = match (signature.inputs(), signature.outputs()) {
            ([i], [o]) if i.dtype == DType::F32 && o.dtype == DType::F32 => {
                V1::Serve { input_shape: i.shape.clone(), output_shape: o.shape.clone(), max_elements: opts.max_bytes / std::mem::size_of::<f32>() }
            }
            (ins, outs) => V1::Refuse(format!(
                "this model needs protocol v2 ({}): use {V2_CLIENTS}. Protocol v1 carries one float32 tensor each way; the model takes {} and returns {}",
                names.service_v2,
                crate::session::tensor_ref::list(ins),
                crate::session::tensor_ref::list(outs)
            )),
        };
        let server_port_err = |e: &dyn std::fmt::Display| if format!("{e}").contains("ExceedsMaxSupportedServers") { refuse() } else { Error::ipc(IpcErrorKind::Transport, format!("server port: {e}")) };
        let port_v2 = svc_v2
            .server_builder()
            .initial_max_slice_len(signature.max_response_len().max(1))
            .allocation_strategy(AllocationStrategy::PowerOfTwo)
            .backpressure_strategy(BackpressureStrategy::DiscardData)
            .create()
            .map_err(|e| server_port_err(&e))?;
        let v1_out = match &v1 {
            V1::Serve { output_shape, .. } => output_shape.iter().product::<i64>() as usize,
            V1::Refuse(_) => 1,
        };
        let port_v1 = svc_v1
            .server_builder()
            .initial_max_slice_len(v1_out.max(1))
            .allocation_strategy(AllocationStrategy::PowerOfTwo)
            .backpressure_strategy(BackpressureStrategy::DiscardData)
            .create()
            .map_err(|e| server_port_err(&e))?;
        let listener = service::request_events(&node, &names)?
            .listener_builder()
            .create()
            .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("request listener: {e}")))?;
        let response_events = service::response_events(&node, &names)?;
        let v1_note = if matches!(v1, V1::Serve { .. }) { "v1 too" } else { "v1 refused: the model is not one float32 tensor each way" };
        tracing::info!(
            "serving {} on {} (protocol v2; {v1_note} on {}) in mode {mode}: {note}; inputs {}; outputs {}",
            opts.model.display(),
            names.service_v2,
            names.service,
            crate::session::tensor_ref::list(signature.inputs()),
            crate::session::tensor_ref::list(signature.outputs())
        );
        Ok(Self {
            opts,
            node,
            port_v2,
            port_v1,
            listener,
            response_events,
            exec,
            workers,
            signature,
            describe,
            v1,
            stop: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(ServeStats::default()),
            _services: (svc_v2, svc_v1),
        })
    }

    /// A flag that makes [`run`](Self::run) return when set.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Counters.
    pub fn stats(&self) -> Arc<ServeStats> {
        self.stats.clone()
    }

    /// The batcher's statistics (batch sizes, padding, queue time), when batching.
    pub fn batch_stats(&self) -> Option<crate::batch::BatchSummary> {
        self.exec.batcher().map(crate::batch::Batcher::stats)
    }

    /// The next request of either protocol, if one is waiting (v2 first).
    fn receive(&self) -> Result<Option<Incoming>> {
        // iceoryx2 reads the request's header out of the client's data
        // segment while receiving it: a client that truncated its segment
        // would kill the server here with SIGBUS.
        // SAFETY: while receiving, this thread touches only iceoryx2's shared
        // memory, whose pages hold requests and port state shared with the
        // clients; a zeroed page is detected (`truncated`) and its request dropped.
        let guard = unsafe { crate::client_memory::ThreadAccess::begin() };
        let received = self.receive_unguarded();
        if guard.as_ref().is_ok_and(|g| g.truncated()) {
            tracing::warn!("a request's header was truncated by its client while it was received: dropped unanswered");
            self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        received
    }

    fn receive_unguarded(&self) -> Result<Option<Incoming>> {
        let err = |e: &dyn std::fmt::Display| Error::ipc(IpcErrorKind::Transport, format!("receiving a request: {e}"));
        if let Some(r) = self.port_v2.receive().map_err(|e| err(&e))? {
            return Ok(Some(Incoming::V2(r)));
        }
        Ok(self.port_v1.receive().map_err(|e| err(&e))?.map(Incoming::V1))
    }

    /// Serves until stopped; finishes the requests in flight before returning.
    pub fn run(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Incoming>(self.workers * 2);
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let waitset = WaitSetBuilder::new()
            .signal_handling_mode(SignalHandlingMode::HandleTerminationRequests)
            .create::<Ipc>()
            .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("waitset: {e:?}")))?;
        let guard = waitset.attach_notification(&self.listener).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("waitset attach: {e:?}")))?;
        std::thread::scope(|sc| -> Result<()> {
            let worker = Worker { exec: &self.exec, signature: &self.signature, describe: &self.describe, v1: &self.v1, stats: &self.stats, echo: self.opts.echo };
            let new_notifier = || self.response_events.notifier_builder().create().map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("response notifier: {e}")));
            // One worker: the dispatcher answers requests itself (no thread handoff).
            let inline = if self.workers <= 1 { Some(new_notifier()?) } else { None };
            for w in 0..if inline.is_some() { 0 } else { self.workers } {
                let rx = rx.clone();
                let notifier = new_notifier()?;
                std::thread::Builder::new()
                    .name(format!("uminfer-serve-{w}"))
                    .spawn_scoped(sc, move || loop {
                        let next = rx.lock().recv();
                        match next {
                            Ok(req) => worker.handle(req, &notifier),
                            Err(_) => return, // dispatcher finished: no more requests
                        }
                    })
                    .map_err(|e| Error::Os { call: "spawning a server worker", source: e })?;
            }
            let mut last_cleanup = Instant::now();
            'serve: loop {
                // Drain, then poll briefly for back-to-back requests, yielding the
                // CPU every YIELD_EVERY: the scheduler may have woken this thread
                // onto the core of a client that is itself polling for its answer
                // (a pinned client cannot be moved away), and a pure spin there
                // starves the client until the spin ends (identity model: P50 =
                // the spin + 28 µs; with a yield every 20 µs, 29 µs). Yielding
                // more often slows the usual case, client and server on cores of
                // their own (identity round trip 12.5 µs; yield every 5 µs: 18.6,
                // at every poll: 21).
                let mut spin_until = Instant::now() + self.opts.spin;
                let mut next_yield = Instant::now() + YIELD_EVERY;
                loop {
                    match self.receive()? {
                        Some(req) => match &inline {
                            Some(notifier) => {
                                worker.handle(req, notifier);
                                spin_until = Instant::now() + self.opts.spin;
                            }
                            None => {
                                if tx.send(req).is_err() {
                                    break 'serve;
                                }
                            }
                        },
                        None if Instant::now() < spin_until => {
                            if Instant::now() >= next_yield {
                                std::thread::yield_now();
                                next_yield = Instant::now() + YIELD_EVERY;
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                        None => break,
                    }
                }
                if self.stop.load(Ordering::Acquire) {
                    break;
                }
                if last_cleanup.elapsed() > Duration::from_secs(1) {
                    service::cleanup_dead_nodes(&self.node);
                    last_cleanup = Instant::now();
                }
                let mut woke = false;
                let r = waitset
                    .wait_and_process_once_with_timeout(
                        |id| {
                            if id.has_event_from(&guard) {
                                woke = true;
                            }
                            CallbackProgression::Continue
                        },
                        Duration::from_millis(250),
                    )
                    .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("waiting for requests: {e:?}")))?;
                if woke {
                    // Consume the events, or the WaitSet reports them again at once.
                    let _ = self.listener.try_wait(|_| {});
                }
                // `Interrupt` is any EINTR (SIGSTOP/SIGCONT, a debugger); SIGINT and
                // SIGTERM come back as `TerminationRequest`.
                if r == WaitSetRunResult::TerminationRequest {
                    tracing::info!("termination requested: finishing the requests in flight");
                    break;
                }
            }
            drop(tx); // workers finish what is queued, then exit
            Ok(())
        })
    }
}

/// A client's id as its response listener is named (`format!("{}", id)`),
/// written on the stack: naming the listener to wake allocates nothing.
struct ListenerName {
    buf: [u8; 64],
    len: usize,
}

impl ListenerName {
    fn of(id: iceoryx2::identifiers::UniqueClientId) -> Self {
        let mut n = Self { buf: [0; 64], len: 0 };
        // An id is a number in hex: far under 64 bytes (a longer one is cut, and wakes nobody).
        let _ = std::fmt::Write::write_fmt(&mut n, format_args!("{id}"));
        n
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for ListenerName {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len.checked_add(s.len()).filter(|&e| e <= self.buf.len()).ok_or(std::fmt::Error)?;
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Worker<'a> {
    exec: &'a Execution,
    signature: &'a Signature,
    describe: &'a str,
    v1: &'a V1,
    stats: &'a ServeStats,
    /// [`ServeOptions::echo`].
    echo: bool,
}

impl Worker<'_> {
    fn handle(&self, req: Incoming, notifier: &iceoryx2::port::notifier::Notifier<Ipc>) {
        if !req.is_connected() {
            self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            return; // the client gave up or died: nobody to answer
        }
        // The request lies in the client's data segment, which the client can
        // truncate under us: guarded, so that a SIGBUS becomes an error.
        let (at, len) = req.sample();
        // SAFETY: the range is the request's sample, inside the client's data
        // segment, mapped while `req` lives (the access is dropped first, at
        // the end of this function); its pages hold client samples only.
        let access = match unsafe { crate::client_memory::Access::begin(at, len) } {
            Ok(a) => a,
            Err(busy) => {
                tracing::warn!("request dropped unanswered: {busy}");
                return;
            }
        };
        let client = ListenerName::of(req.origin());
        let id = req.request_id();
        let answered = match req {
            Incoming::V2(r) => self.answer_v2(r, &access),
            Incoming::V1(r) => self.answer_v1(r, &access),
        };
        drop(access);
        if let Err(e) = answered {
            tracing::warn!("request {id} from client {}: {e}", String::from_utf8_lossy(client.as_bytes()));
        }
        notifier.for_each_listener(|m, d| {
            if d.listener_name.as_str().as_bytes() == client.as_bytes() {
                let _ = m.notify();
            }
            CallbackProgression::Continue
        });
    }

    fn bad_v2(&self, req: &RequestV2, message: &str) -> Result<()> {
        self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        respond_error_v2(req, Status::BadRequest, message)
    }

    fn answer_v2(&self, req: RequestV2, access: &crate::client_memory::Access) -> Result<()> {
        let h = req.user_header();
        if h.kind == KIND_DESCRIBE && h.magic == MAGIC && h.version == PROTOCOL_V2 {
            return self.describe(&req);
        }
        let placement = match self.signature.check_request(h, req.payload().len()) {
            Ok(p) => p,
            Err(msg) => return self.bad_v2(&req, &msg),
        };
        let payload = req.payload();
        let mut inputs: SmallVec<[TensorRef<'_>; MAX_TENSORS]> = SmallVec::new();
        for (info, &(offset, len)) in self.signature.inputs().iter().zip(&placement.spans) {
            match TensorRef::from_bytes(info.dtype, &payload[offset..offset + len]) {
                Ok(t) => inputs.push(t),
                Err(Error::Argument(why)) => return self.bad_v2(&req, &format!("input `{}`: {why}", info.name)),
                Err(e) => return self.bad_v2(&req, &format!("input `{}`: {e}", info.name)),
            }
        }
        let table = self.signature.response(&placement);
        let mut resp = match req.loan_slice_uninit(table.len) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("no shared memory for the response of {} bytes: {e}", table.len);
                return respond_error_v2(&req, Status::ServerError, &msg).and(Err(Error::ipc(IpcErrorKind::Transport, msg)));
            }
        };
        let ran = {
            let mut outputs: SmallVec<[TensorMut<'_>; MAX_TENSORS]> = SmallVec::new();
            let mut rest: &mut [MaybeUninit<u8>] = resp.payload_mut();
            let mut pos = 0;
            let mut split = Ok(());
            for (e, info) in table.used().iter().zip(self.signature.outputs()) {
                // Offsets grow and lie inside the payload (`layout`): the gap before
                // each output is padding, zeroed so that every byte sent is initialised.
                let (pad, r) = std::mem::take(&mut rest).split_at_mut(e.offset as usize - pos);
                pad.fill(MaybeUninit::new(0));
                let (o, r) = r.split_at_mut(e.len as usize);
                rest = r;
                pos = (e.offset + e.len) as usize;
                match TensorMut::from_bytes(info.dtype, o) {
                    Ok(t) => outputs.push(t),
                    Err(err) => split = Err(err),
                }
            }
            split.and_then(|()| {
                if self.echo {
                    outputs.iter_mut().for_each(TensorMut::fill_zero);
                    Ok(())
                } else {
                    self.exec.run_on(&inputs, &mut outputs, None)
                }
            })
        };
        if access.truncated() {
            drop(resp);
            return self.bad_v2(&req, TRUNCATED);
        }
        match ran {
            Ok(()) => {
                let rh = resp.user_header_mut();
                rh.request_id = h.request_id;
                rh.count = table.count as u8;
                rh.tensors[..table.count].copy_from_slice(table.used());
                // SAFETY: `run_on` returned Ok, which guarantees every byte of every
                // output was written (or, echoing, `fill_zero` wrote them), and the
                // padding between them was zeroed above: the whole payload is initialised.
                self.sent(unsafe { resp.assume_init() }.send().map(drop))
            }
            Err(e) => {
                drop(resp);
                let (status, message) = self.failure(&e);
                respond_error_v2(&req, status, &message)
            }
        }
    }

    /// Counts a response sent (or says why it was not).
    fn sent<E: std::fmt::Display>(&self, sent: std::result::Result<(), E>) -> Result<()> {
        sent.map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("sending a response: {e}")))?;
        self.stats.served.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The status and message of a request that failed: busy (the batch
    /// queue full, the request waited past its timeout, the batcher closing)
    /// or a model error, each counted.
    fn failure(&self, e: &Error) -> (Status, String) {
        match e {
            Error::QueueFull { .. } | Error::QueueTimeout(_) | Error::BatcherClosed => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                (Status::Busy, e.to_string())
            }
            _ => {
                self.stats.model_errors.fetch_add(1, Ordering::Relaxed);
                (Status::ModelError, e.to_string())
            }
        }
    }

    /// Answers a describe request: the signature as JSON; a batching
    /// server's with its batcher's counters so far ([`BatchCounts`]).
    fn describe(&self, req: &RequestV2) -> Result<()> {
        let with_counts;
        let bytes = match self.exec.batcher() {
            Some(b) => {
                with_counts = BatchCounts::of(&b.stats()).add_to(self.describe);
                with_counts.as_bytes()
            }
            None => self.describe.as_bytes(),
        };
        let resp = req.loan_slice_uninit(bytes.len()).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("loaning a describe response: {e}")))?;
        let mut resp = resp.write_from_slice(bytes);
        resp.user_header_mut().request_id = req.user_header().request_id;
        resp.send().map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("sending a describe response: {e}")))
    }

    fn answer_v1(&self, req: RequestV1, access: &crate::client_memory::Access) -> Result<()> {
        let h = *req.user_header();
        let (input_shape, output_shape, max_elements) = match self.v1 {
            V1::Serve { input_shape, output_shape, max_elements } => (input_shape, output_shape, *max_elements),
            V1::Refuse(why) => {
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                return respond_error_v1(&req, h.request_id, Status::BadRequest, why);
            }
        };
        if let Err(msg) = validate_request_v1(&h, req.payload().len(), input_shape, max_elements) {
            self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return respond_error_v1(&req, h.request_id, Status::BadRequest, &msg);
        }
        let n_out: i64 = output_shape.iter().product();
        let mut resp = req.loan_slice_uninit(n_out as usize).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("loaning a response: {e}")))?;
        let ran = self.exec.run_on(&[TensorRef::new(req.payload())], &mut [TensorMut::uninit(resp.payload_mut())], None);
        if access.truncated() {
            drop(resp);
            self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return respond_error_v1(&req, h.request_id, Status::BadRequest, TRUNCATED);
        }
        match ran {
            Ok(()) => {
                *resp.user_header_mut() = ResponseHeaderV1::ok(h.request_id, output_shape);
                // SAFETY: `run_on` returned Ok, which guarantees every output element was written.
                self.sent(unsafe { resp.assume_init() }.send().map(drop))
            }
            Err(e) => {
                drop(resp);
                let (status, message) = self.failure(&e);
                respond_error_v1(&req, h.request_id, status, &message)
            }
        }
    }
}

fn respond_error_v2(req: &RequestV2, status: Status, message: &str) -> Result<()> {
    let mut resp = req.loan_slice_uninit(0).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("loaning an error response: {e}")))?;
    resp.user_header_mut().fail(req.user_header().request_id, status, message);
    // SAFETY: the payload has zero bytes, so there is nothing to initialise.
    let resp = unsafe { resp.assume_init() };
    resp.send().map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("sending an error response: {e}")))
}

fn respond_error_v1(req: &RequestV1, request_id: u64, status: Status, message: &str) -> Result<()> {
    let mut resp = req.loan_slice_uninit(0).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("loaning an error response: {e}")))?;
    *resp.user_header_mut() = ResponseHeaderV1::failed(request_id, status, message);
    // SAFETY: the payload has zero elements, so there is nothing to initialise.
    let resp = unsafe { resp.assume_init() };
    resp.send().map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("sending an error response: {e}")))
}
