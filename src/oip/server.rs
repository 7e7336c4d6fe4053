//! [`GrpcServer`]: loads the models, listens (and serves `/metrics` on its
//! own port when asked), serves until SIGINT or SIGTERM, then stops taking
//! new requests and returns once the requests in flight have been answered
//! (tonic's graceful shutdown). Each connection is bounded to
//! [`GrpcOptions::max_streams`] concurrent HTTP/2 streams; connections are
//! bounded, timed out when idle and pinged ([`conn`](super::conn)), and with
//! [`GrpcOptions::tls`] every listener serves TLS only ([`tls`](super::tls)). Beside the
//! inference service it serves the standard `grpc.health.v1.Health` service
//! (`tonic-health`) for orchestrators' probes: `""` and
//! `inference.GRPCInferenceService` follow `ServerReady`, [`LIVENESS`]
//! follows `ServerLive`.

use super::metrics::Metrics;
use super::models::{ModelSource, Models};
use super::polling::Polling;
use super::proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::access::{RestrictLayer, Restrictions};
use super::conn::{Gate, Guarded, TrackLayer};
use super::service::OipService;
use super::tls::{Alpn, Tls};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::session::ModeChoice;
use std::net::SocketAddr;
use std::sync::Arc;

/// The default listening address (Triton's gRPC port).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8001";

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct GrpcOptions {
    /// Where to listen; port 0 picks a free port (reported to `run`'s callback).
    pub addr: SocketAddr,
    /// The models, by protocol name.
    pub models: Vec<ModelSource>,
    /// The declared input shape of each model.
    pub input_shapes: super::models::InputShapes,
    /// Session mode.
    pub mode: ModeChoice,
    /// Sessions per model (requests to one model run this many at a time).
    pub sessions: usize,
    /// Largest request message accepted, in bytes (larger: `OUT_OF_RANGE`, tonic's code).
    pub max_message_bytes: usize,
    /// Where to serve Prometheus `/metrics` (HTTP/1); `None`: not served.
    pub metrics_addr: Option<SocketAddr>,
    /// Where to serve the protocol's REST/JSON form (HTTP/1, [`rest`](super::rest)); `None`: not served.
    pub http_addr: Option<SocketAddr>,
    /// Concurrent HTTP/2 streams (RPCs) per client connection, advertised in
    /// the SETTINGS frame (`SETTINGS_MAX_CONCURRENT_STREAMS`): a client opens
    /// no more (gRPC clients queue further calls), and h2 refuses any more.
    pub max_streams: u32,
    /// Inference calls in flight and inference streams open at once across
    /// all connections (unary and REST inference, `ModelStreamInfer`); beyond
    /// it a call is refused with `RESOURCE_EXHAUSTED`.
    pub max_calls: usize,
    /// System shared memory regions registered at once; beyond it a
    /// registration is refused with `RESOURCE_EXHAUSTED`.
    pub max_shm_regions: usize,
    /// Bytes mapped by all registered regions together; beyond it a
    /// registration is refused with `RESOURCE_EXHAUSTED`.
    pub max_shm_bytes: u64,
    /// How long the transport thread polls the network after each answer
    /// before it sleeps ([`polling`](super::polling)); zero: it sleeps at once.
    pub spin: std::time::Duration,
    /// Answer every request without running the model (zero-filled outputs
    /// of its shapes), after the same checks: the transport's own cost, which
    /// `uminfer bench`'s `grpc-echo` scheme measures.
    pub echo: bool,
    /// The bound on open connections across every listener, the idle
    /// timeout and the HTTP/1 header and body timeouts ([`conn`](super::conn)).
    pub connections: super::conn::Limits,
    /// Accept system shared memory registration from any peer; by default
    /// only from loopback addresses (`--shm-from-any-peer`).
    pub shm_from_any_peer: bool,
    /// gRPC calls of some categories served only with a given metadata key
    /// and value (`--grpc-restricted-protocol`, [`access`](super::access)).
    pub grpc_restricted: Vec<super::access::Restriction>,
    /// REST routes of some categories served only with a given header and
    /// value (`--http-restricted-api`).
    pub http_restricted: Vec<super::access::Restriction>,
    /// Gather requests into batches (`--max-batch` and its options): one
    /// batcher per model instead of `sessions` sessions.
    pub batching: Option<crate::batch::BatchSpec>,
    /// Serve every listener (gRPC, REST, `/metrics`) over TLS with this
    /// certificate and key (`--tls-cert`, `--tls-key`); `None`: plain text.
    pub tls: Option<Tls>,
}

/// The `grpc.health.v1` service name that answers `SERVING` while the
/// process serves (as `ServerLive`); `""` answers as `ServerReady` does.
pub const LIVENESS: &str = "liveness";

/// The default of [`GrpcOptions::max_streams`] (hyper's own default).
pub const DEFAULT_MAX_STREAMS: u32 = 200;

/// The default of [`GrpcOptions::max_calls`].
pub const DEFAULT_MAX_CALLS: usize = 1024;

/// The largest HTTP/2 DATA frame clients may send (advertised in SETTINGS):
/// 1 MiB instead of the protocol's default 16 KiB, so that a 196 KB tensor
/// arrives in one frame instead of 12 (`identity` in raw bytes: 255–287 →
/// 177–209 µs P50 on the 2-core build machine).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// The largest request body the `/metrics` listener reads (it serves GET only).
const METRICS_MAX_BODY: usize = 64 << 10;

/// Where a started server listens.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// The `/metrics` address, when served.
    pub metrics: Option<SocketAddr>,
    /// The REST address, when served.
    pub http: Option<SocketAddr>,
}

/// An HTTP/1 listener's address and its task, which ends (with the
/// listener's result) once `stopping` turns true and its requests are answered.
type HttpListener = (SocketAddr, tokio::task::JoinHandle<Result<()>>);

/// Serves `router` on `at` (HTTP/1, over TLS when `tls` is given) until
/// `stopping` turns true; `what` names it in the log and in errors. Its
/// connections count under `gate`; a request head must arrive within the
/// header timeout, a body (at most `max_body` bytes) within the body timeout.
#[allow(clippy::too_many_arguments)]
async fn serve_http(
    at: SocketAddr,
    what: &'static str,
    router: axum::Router,
    gate: &Arc<Gate>,
    max_body: usize,
    restricted: Arc<Restrictions>,
    tls: Option<&Tls>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<HttpListener> {
    let err = move |doing: &str, e: &dyn std::fmt::Display| Error::Grpc(format!("{doing} {what} on {at}: {e}"));
    let listener = tokio::net::TcpListener::bind(at).await.map_err(|e| err("listening for", &e))?;
    let bound = listener.local_addr().map_err(|e| err("reading the address of", &e))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("serving {what} on {scheme}://{bound}");
    let limits = *gate.limits();
    let mut incoming = gate.incoming(listener, what, tls.map(|t| t.acceptor(Alpn::Http1)));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header);
    let task = async move {
        // Each connection's task holds a sender: all are gone once the last ends.
        let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
        loop {
            let conn = tokio::select! {
                _ = stopping.wait_for(|s| *s) => break,
                conn = incoming.next() => conn,
            };
            let info = conn.info().clone();
            let (router, open, mut stopping, restricted) = (router.clone(), open.clone(), stopping.clone(), restricted.clone());
            let svc = hyper::service::service_fn(move |req| http_request(router.clone(), info.clone(), restricted.clone(), limits.body, max_body, req));
            let served = http1.serve_connection(hyper_util::rt::TokioIo::new(conn), svc);
            tokio::spawn(async move {
                let _open = open;
                let mut served = std::pin::pin!(served);
                tokio::select! {
                    r = served.as_mut() => return log_connection_end(what, r),
                    _ = stopping.wait_for(|s| *s) => served.as_mut().graceful_shutdown(),
                }
                log_connection_end(what, served.await);
            });
        }
        drop((incoming, open)); // stop listening
        let _ = all_closed.recv().await;
        Ok(())
    };
    Ok((bound, tokio::spawn(task)))
}

fn log_connection_end(what: &str, r: std::result::Result<(), hyper::Error>) {
    if let Err(e) = r {
        tracing::debug!("{what}: a connection ended: {e}");
    }
}

/// One HTTP/1 request: refused (403) when its category is restricted and
/// it lacks the header, else its body read whole within `body_timeout` (else 408)
/// and at most `max_body` bytes (else 413), then routed; the connection's
/// [`Activity`](super::conn::Activity) counts it until its response body is dropped.
async fn http_request(
    router: axum::Router,
    info: super::conn::ConnInfo,
    restricted: Arc<Restrictions>,
    body_timeout: std::time::Duration,
    max_body: usize,
    req: hyper::Request<hyper::body::Incoming>,
) -> std::result::Result<axum::response::Response, std::convert::Infallible> {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let active = info.activity.begin();
    let (mut parts, body) = req.into_parts();
    let refuse = |code: axum::http::StatusCode, message: String| Ok((code, axum::Json(serde_json::json!({ "error": message }))).into_response());
    if let Some(category) = super::access::rest_category(parts.uri.path()) {
        if let Err(why) = restricted.check(category, &parts.headers) {
            return refuse(axum::http::StatusCode::FORBIDDEN, why);
        }
    }
    let body = match tokio::time::timeout(body_timeout, http_body_util::Limited::new(body, max_body).collect()).await {
        Err(_) => return refuse(axum::http::StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {} s (--body-timeout-s)", body_timeout.as_secs_f64())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(axum::http::StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over {max_body} bytes (--max-bytes)"))
        }
        Ok(Err(e)) => return refuse(axum::http::StatusCode::BAD_REQUEST, format!("reading the request body: {e}")),
        Ok(Ok(b)) => b.to_bytes(),
    };
    parts.extensions.insert(info);
    let response = router.oneshot(axum::http::Request::from_parts(parts, axum::body::Body::from(body))).await?;
    Ok(response.map(|b| axum::body::Body::new(Guarded::new(b, Some(active)))))
}

impl GrpcOptions {
    /// Defaults: the models' recorded input shapes, `cpu`, 1 session per model, 64 MiB
    /// messages, no metrics listener, 200 streams per connection, 200 µs of
    /// polling after each answer.
    pub fn new(addr: SocketAddr, models: Vec<ModelSource>) -> Self {
        Self {
            addr,
            models,
            input_shapes: Default::default(),
            mode: ModeChoice::Fixed(crate::Mode::Cpu),
            sessions: 1,
            max_message_bytes: 64 << 20,
            metrics_addr: None,
            http_addr: None,
            max_streams: DEFAULT_MAX_STREAMS,
            max_calls: DEFAULT_MAX_CALLS,
            max_shm_regions: super::shm::DEFAULT_MAX_REGIONS,
            max_shm_bytes: super::shm::DEFAULT_MAX_BYTES,
            spin: std::time::Duration::from_micros(200),
            echo: false,
            connections: Default::default(),
            shm_from_any_peer: false,
            grpc_restricted: Vec::new(),
            http_restricted: Vec::new(),
            batching: None,
            tls: None,
        }
    }
}

/// A gRPC server with its models loaded.
///
/// ```no_run
/// use uminfer::oip::{GrpcOptions, GrpcServer};
///
/// let rt = uminfer::Runtime::new();
/// let models = vec!["tiny=models/tiny.pt".parse().map_err(uminfer::Error::Argument)?];
/// let mut opts = GrpcOptions::new("127.0.0.1:8001".parse().unwrap(), models);
/// opts.http_addr = Some("127.0.0.1:8000".parse().unwrap()); // REST beside gRPC
/// let server = GrpcServer::new(&rt, opts)?; // loads the models, builds their sessions
/// server.run(|at| println!("serving on {}", at.grpc))?; // until SIGINT/SIGTERM
/// # Ok::<(), uminfer::Error>(())
/// ```
pub struct GrpcServer {
    opts: GrpcOptions,
    models: Models,
}

impl GrpcServer {
    /// Loads every model and builds its sessions (errors name the model).
    pub fn new(rt: &Runtime, opts: GrpcOptions) -> Result<Self> {
        let models = Models::load(rt, &opts.models, &opts.input_shapes, opts.mode, opts.sessions, opts.echo, opts.batching.as_ref())?;
        Ok(Self { opts, models })
    }

    /// Listens, calls `on_listening` with the bound addresses, and serves until
    /// SIGINT or SIGTERM; then refuses new inference requests (`UNAVAILABLE`,
    /// server not ready), answers those in flight, ends the open streams
    /// after their current request, and returns.
    pub fn run(mut self, on_listening: impl FnOnce(Listening)) -> Result<()> {
        let grpc = |what: &str, e: &dyn std::fmt::Display| Error::Grpc(format!("{what}: {e}"));
        // One transport thread: it polls after answers and may run a lone
        // session itself (see `polling`); several would hand work to each other.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("uminfer-grpc")
            .build()
            .map_err(|e| Error::Os { call: "starting the gRPC runtime", source: e })?;
        if self.opts.max_calls == 0 {
            return Err(Error::Argument("--max-calls 0 would refuse every inference call: expected at least 1".into()));
        }
        if self.opts.max_streams == 0 {
            return Err(Error::Argument("--max-streams 0 would refuse every request: expected at least 1".into()));
        }
        let grpc_restricted = Restrictions::new(std::mem::take(&mut self.opts.grpc_restricted), "--grpc-restricted-protocol").map_err(Error::Argument)?;
        let http_restricted = Arc::new(Restrictions::new(std::mem::take(&mut self.opts.http_restricted), "--http-restricted-api").map_err(Error::Argument)?);
        rt.block_on(async move {
            let limits = self.opts.connections;
            limits.check_descriptors();
            let gate = Gate::new(limits);
            let listener = tokio::net::TcpListener::bind(self.opts.addr).await.map_err(|e| grpc(&format!("listening on {}", self.opts.addr), &e))?;
            let tls = self.opts.tls.take();
            let incoming = gate.incoming(listener, "gRPC", tls.as_ref().map(|t| t.acceptor(Alpn::H2)));
            let addr = incoming.local_addr().map_err(|e| grpc("reading the bound address", &e))?;
            let (stop, stopping) = tokio::sync::watch::channel(false);
            let metrics = Arc::new(Metrics::default());
            let metrics_server = match self.opts.metrics_addr {
                None => None,
                Some(at) => Some(serve_http(at, "Prometheus /metrics", super::metrics::router(metrics.clone()), &gate, METRICS_MAX_BODY, Default::default(), tls.as_ref(), stopping.clone()).await?),
            };
            let polling = Arc::new(Polling::new(self.opts.spin));
            tokio::spawn({
                let (polling, stopping) = (polling.clone(), stopping.clone());
                async move { polling.run(stopping).await }
            });
            let shm_limits = super::shm::Limits { regions: self.opts.max_shm_regions, bytes: self.opts.max_shm_bytes };
            let oip = OipService::new(self.models, stopping.clone(), metrics, polling, self.opts.max_calls, shm_limits).allow_shm_from_any_peer(self.opts.shm_from_any_peer);
            let rest_server = match self.opts.http_addr {
                None => None,
                Some(at) => Some(serve_http(at, "the REST form", super::rest::router(oip.clone(), self.opts.max_message_bytes), &gate, self.opts.max_message_bytes, http_restricted, tls.as_ref(), stopping).await?),
            };
            let service = GrpcInferenceServiceServer::new(oip).max_decoding_message_size(self.opts.max_message_bytes);
            // `""` (the whole server) starts SERVING: every model is loaded by now.
            let (health, health_service) = tonic_health::server::health_reporter();
            health.set_serving::<GrpcInferenceServiceServer<OipService>>().await;
            health.set_service_status(LIVENESS, tonic_health::ServingStatus::Serving).await;
            let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| grpc("installing the SIGTERM handler", &e))?;
            let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(|e| grpc("installing the SIGINT handler", &e))?;
            let shutdown = async move {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = sigint.recv() => {}
                }
                let _ = stop.send(true);
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                health.set_not_serving::<GrpcInferenceServiceServer<OipService>>().await;
                tracing::info!("termination requested: finishing the requests in flight");
            };
            match &tls {
                None => tracing::info!("serving the Open Inference Protocol (gRPC) on {addr}"),
                Some(t) => tracing::info!("serving the Open Inference Protocol (gRPC) on {addr} over TLS only (certificate {})", t.cert().display()),
            }
            on_listening(Listening { grpc: addr, metrics: metrics_server.as_ref().map(|(a, _)| *a), http: rest_server.as_ref().map(|(a, _)| *a) });
            let served = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(super::conn::KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(super::conn::KEEPALIVE_TIMEOUT))
                .layer(tower::ServiceBuilder::new().layer(TrackLayer).layer(RestrictLayer::new(grpc_restricted)))
                .max_frame_size(MAX_FRAME_BYTES)
                .max_concurrent_streams(self.opts.max_streams)
                .add_service(service)
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(|e| grpc("serving", &e));
            for (_, task) in metrics_server.into_iter().chain(rest_server) {
                task.await.map_err(|e| grpc("an HTTP listener's task", &e))??;
            }
            served
        })
    }
}
