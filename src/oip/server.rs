//! [`GrpcServer`]: loads the models, listens, serves until SIGINT or SIGTERM,
//! then stops taking new requests and returns once the requests in flight
//! have been answered (tonic's graceful shutdown).

use super::models::{ModelSource, Models};
use super::proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::service::OipService;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::session::ModeChoice;
use std::net::SocketAddr;

/// The default listening address (Triton's gRPC port).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8001";

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct GrpcOptions {
    /// Where to listen; port 0 picks a free port (reported to `run`'s callback).
    pub addr: SocketAddr,
    /// The models, by protocol name.
    pub models: Vec<ModelSource>,
    /// The declared input shape of every model.
    pub input_shape: Vec<i64>,
    /// Session mode.
    pub mode: ModeChoice,
    /// Sessions per model (requests to one model run this many at a time).
    pub sessions: usize,
    /// Largest request message accepted, in bytes (larger: `OUT_OF_RANGE`, tonic's code).
    pub max_message_bytes: usize,
}

impl GrpcOptions {
    /// Defaults: input `1×3×128×128`, `cpu`, 1 session per model, 64 MiB messages.
    pub fn new(addr: SocketAddr, models: Vec<ModelSource>) -> Self {
        Self { addr, models, input_shape: vec![1, 3, 128, 128], mode: ModeChoice::Fixed(crate::Mode::Cpu), sessions: 1, max_message_bytes: 64 << 20 }
    }
}

/// A gRPC server with its models loaded.
pub struct GrpcServer {
    opts: GrpcOptions,
    models: Models,
}

impl GrpcServer {
    /// Loads every model and builds its sessions (errors name the model).
    pub fn new(rt: &Runtime, opts: GrpcOptions) -> Result<Self> {
        let models = Models::load(rt, &opts.models, &opts.input_shape, opts.mode, opts.sessions)?;
        Ok(Self { opts, models })
    }

    /// Listens, calls `on_listening` with the bound address, and serves until
    /// SIGINT or SIGTERM; then refuses new inference requests (`UNAVAILABLE`,
    /// server not ready), answers those in flight, ends the open streams
    /// after their current request, and returns.
    pub fn run(self, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
        let grpc = |what: &str, e: &dyn std::fmt::Display| Error::Grpc(format!("{what}: {e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("uminfer-grpc")
            .build()
            .map_err(|e| Error::Os { call: "starting the gRPC runtime", source: e })?;
        rt.block_on(async move {
            let incoming = tonic::transport::server::TcpIncoming::bind(self.opts.addr).map_err(|e| grpc(&format!("listening on {}", self.opts.addr), &e))?;
            let addr = incoming.local_addr().map_err(|e| grpc("reading the bound address", &e))?;
            let (stop, stopping) = tokio::sync::watch::channel(false);
            let service = GrpcInferenceServiceServer::new(OipService::new(self.models, stopping))
                .max_decoding_message_size(self.opts.max_message_bytes);
            let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| grpc("installing the SIGTERM handler", &e))?;
            let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(|e| grpc("installing the SIGINT handler", &e))?;
            let shutdown = async move {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = sigint.recv() => {}
                }
                let _ = stop.send(true);
                tracing::info!("termination requested: finishing the requests in flight");
            };
            tracing::info!("serving the Open Inference Protocol (gRPC) on {addr}");
            on_listening(addr);
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(|e| grpc("serving", &e))
        })
    }
}
