//! `uminfer serve`: one endpoint, a [`SessionPool`] behind it.
//!
//! A dispatcher thread waits for requests (a short spin, then iceoryx2's
//! WaitSet on the request-event listener, so an idle server uses no CPU) and
//! hands each to one of K workers. A worker validates the header, runs the
//! model over the request sample in shared memory (`cpu`: a `from_blob` view,
//! no copy; GPU modes: copied into the session's input region) straight into
//! the loaned response sample, sends it and wakes that client's listener.

use super::header::{validate_request, RequestHeader, ResponseHeader, Status};
use super::service::{self, Ipc};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::session::pool::one_f32_tensor;
use crate::session::{ModeChoice, SessionPool, SessionSpec, TensorMut, TensorRef};
use iceoryx2::active_request::ActiveRequest;
use iceoryx2::prelude::*;
use iceoryx2::waitset::WaitSetRunResult;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the server's poll for the next request gives up the CPU (the
/// gRPC server's poller too).
pub(crate) const YIELD_EVERY: Duration = Duration::from_micros(20);

type Request = ActiveRequest<Ipc, [f32], RequestHeader, [f32], ResponseHeader>;

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Endpoint name: the service is `uminfer/<name>`.
    pub name: String,
    /// TorchScript model file.
    pub model: std::path::PathBuf,
    /// The model's input shape (requests must match it).
    pub input_shape: Vec<i64>,
    /// Session mode.
    pub mode: ModeChoice,
    /// Sessions, and worker threads.
    pub workers: usize,
    /// Largest request payload in bytes.
    pub max_bytes: usize,
    /// Poll for the next request this long before blocking (yielding the
    /// CPU between polls, so that a client on the same core still runs).
    pub spin: Duration,
}

impl ServeOptions {
    /// Largest request payload in float32 elements (`max_bytes / 4`).
    pub fn max_elements(&self) -> usize {
        self.max_bytes / std::mem::size_of::<f32>()
    }

    /// Defaults: input `1×3×128×128`, `cpu`, 1 worker, 64 MiB, 200 µs spin.
    pub fn new(name: &str, model: impl Into<std::path::PathBuf>) -> Self {
        Self {
            name: name.to_string(),
            model: model.into(),
            input_shape: vec![1, 3, 128, 128],
            mode: ModeChoice::Fixed(crate::Mode::Cpu),
            workers: 1,
            max_bytes: 64 << 20,
            spin: Duration::from_micros(200),
        }
    }
}

/// Counters of a running or finished server.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub served: AtomicU64,
    pub bad_requests: AtomicU64,
    pub model_errors: AtomicU64,
    pub abandoned: AtomicU64,
}

/// A running server: [`Server::run`] blocks until [`Server::stop`] is called
/// from another thread or SIGINT/SIGTERM arrives.
pub struct Server {
    opts: ServeOptions,
    node: Node<Ipc>,
    port: iceoryx2::port::server::Server<Ipc, [f32], RequestHeader, [f32], ResponseHeader>,
    listener: iceoryx2::port::listener::Listener<Ipc>,
    response_events: iceoryx2::service::port_factory::event::PortFactory<Ipc>,
    pool: Arc<SessionPool>,
    output_shape: Vec<i64>,
    stop: Arc<AtomicBool>,
    stats: Arc<ServeStats>,
    // Keeps the service alive while the server runs.
    _service: service::TensorService,
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
        let svc = service::tensor_service(&node, &names, true)?;
        let refuse = || Error::Ipc(format!("a live server already serves {}; stop it first", names.service));
        if svc.dynamic_config().number_of_servers() > 0 {
            return Err(refuse());
        }
        let max_elements = opts.max_elements();
        let model = rt.model(&opts.model)?;
        let n_in: i64 = opts.input_shape.iter().product();
        if n_in <= 0 || n_in as usize > max_elements {
            return Err(Error::Ipc(format!("input shape {:?} does not fit --max-bytes {}", opts.input_shape, opts.max_bytes)));
        }
        let spec = SessionSpec::new().mode_choice(opts.mode);
        let (pool, output_shape) = one_f32_tensor(rt, &model, spec, &opts.input_shape, opts.workers.max(1), "the shared-memory protocol v1")?;
        let pool = Arc::new(pool);
        let n_out: usize = output_shape.iter().product::<i64>() as usize;
        let port = svc
            .server_builder()
            .initial_max_slice_len(n_out.max(1))
            .allocation_strategy(AllocationStrategy::PowerOfTwo)
            .backpressure_strategy(BackpressureStrategy::DiscardData)
            .create()
            .map_err(|e| if format!("{e}").contains("ExceedsMaxSupportedServers") { refuse() } else { Error::Ipc(format!("server port: {e}")) })?;
        let listener = service::request_events(&node, &names)?
            .listener_builder()
            .create()
            .map_err(|e| Error::Ipc(format!("request listener: {e}")))?;
        let response_events = service::response_events(&node, &names)?;
        {
            let s = pool.checkout();
            tracing::info!("serving {} on {} in mode {}: {}", opts.model.display(), names.service, s.mode(), s.note());
        }
        Ok(Self {
            opts,
            node,
            port,
            listener,
            response_events,
            pool,
            output_shape,
            stop: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(ServeStats::default()),
            _service: svc,
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

    /// Serves until stopped; finishes the requests in flight before returning.
    pub fn run(&self) -> Result<()> {
        let max_elements = self.opts.max_elements();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Request>(self.opts.workers.max(1) * 2);
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let waitset = WaitSetBuilder::new()
            .signal_handling_mode(SignalHandlingMode::HandleTerminationRequests)
            .create::<Ipc>()
            .map_err(|e| Error::Ipc(format!("waitset: {e:?}")))?;
        let guard = waitset.attach_notification(&self.listener).map_err(|e| Error::Ipc(format!("waitset attach: {e:?}")))?;
        std::thread::scope(|sc| -> Result<()> {
            let worker = Worker { pool: &self.pool, input_shape: &self.opts.input_shape, output_shape: &self.output_shape, max_elements, stats: &self.stats };
            let new_notifier = || self.response_events.notifier_builder().create().map_err(|e| Error::Ipc(format!("response notifier: {e}")));
            // One worker: the dispatcher answers requests itself (no thread handoff).
            let inline = if self.opts.workers <= 1 { Some(new_notifier()?) } else { None };
            for w in 0..if inline.is_some() { 0 } else { self.opts.workers } {
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
                    match self.port.receive() {
                        Ok(Some(req)) => match &inline {
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
                        Ok(None) if Instant::now() < spin_until => {
                            if Instant::now() >= next_yield {
                                std::thread::yield_now();
                                next_yield = Instant::now() + YIELD_EVERY;
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return Err(Error::Ipc(format!("receiving a request: {e}"))),
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
                    .map_err(|e| Error::Ipc(format!("waiting for requests: {e:?}")))?;
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

#[derive(Clone, Copy)]
struct Worker<'a> {
    pool: &'a SessionPool,
    input_shape: &'a [i64],
    output_shape: &'a [i64],
    max_elements: usize,
    stats: &'a ServeStats,
}

impl Worker<'_> {
    fn handle(&self, req: Request, notifier: &iceoryx2::port::notifier::Notifier<Ipc>) {
        if !req.is_connected() {
            self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            return; // the client gave up or died: nobody to answer
        }
        let client = format!("{}", req.origin());
        let h = *req.user_header();
        if let Err(e) = self.answer(req, &h) {
            tracing::warn!("request {} from client {client}: {e}", h.request_id);
        }
        notifier.for_each_listener(|m, d| {
            if d.listener_name.as_str() == client {
                let _ = m.notify();
            }
            CallbackProgression::Continue
        });
    }

    fn answer(&self, req: Request, h: &RequestHeader) -> Result<()> {
        let send_err = |e: &dyn std::fmt::Display| Error::Ipc(format!("sending a response: {e}"));
        if let Err(msg) = validate_request(h, req.payload().len(), self.input_shape, self.max_elements) {
            self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return respond_error(&req, h.request_id, Status::BadRequest, &msg);
        }
        let n_out: i64 = self.output_shape.iter().product();
        let mut resp = req.loan_slice_uninit(n_out as usize).map_err(|e| send_err(&e))?;
        let ran = self.pool.infer(&[TensorRef::new(req.payload())], &mut [TensorMut::uninit(resp.payload_mut())]);
        match ran {
            Ok(_) => {
                *resp.user_header_mut() = ResponseHeader::ok(h.request_id, self.output_shape);
                // SAFETY: `run_on` returned Ok, which guarantees every output element was written.
                let resp = unsafe { resp.assume_init() };
                resp.send().map_err(|e| send_err(&e))?;
                self.stats.served.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                drop(resp);
                self.stats.model_errors.fetch_add(1, Ordering::Relaxed);
                respond_error(&req, h.request_id, Status::ModelError, &e.to_string())
            }
        }
    }
}

fn respond_error(req: &Request, request_id: u64, status: Status, message: &str) -> Result<()> {
    let mut resp = req.loan_slice_uninit(0).map_err(|e| Error::Ipc(format!("loaning an error response: {e}")))?;
    *resp.user_header_mut() = ResponseHeader::failed(request_id, status, message);
    // SAFETY: the payload has zero elements, so there is nothing to initialise.
    let resp = unsafe { resp.assume_init() };
    resp.send().map_err(|e| Error::Ipc(format!("sending an error response: {e}")))
}
