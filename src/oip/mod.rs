//! Open Inference Protocol (KServe v2) over gRPC, as Triton defines it:
//! `uminfer serve --grpc ADDR`. Triton's own client (`tritonclient[grpc]`)
//! talks to it unmodified. What is implemented and what is not is listed in
//! `docs/oip.md`.
//!
//! | module | holds |
//! |---|---|
//! | [`proto`] | messages and service trait generated from `proto/grpc_service.proto` |
//! | [`models`] | the served models: a [`SessionPool`](crate::SessionPool) each, metadata |
//! | [`tensors`] | request validation: FP32 inputs from raw bytes, typed contents or shared memory |
//! | [`shm`] | Triton's system shared memory extension: registered `/dev/shm` regions |
//! | [`stats`] | Triton's per-model inference statistics (`ModelStatistics`) |
//! | [`status`] | request errors and their gRPC status codes |
//! | [`service`] | the `GRPCInferenceService` implementation |
//! | [`rest_codec`] | the REST/JSON form of inference requests and answers, binary tensor data |
//! | [`rest`] | the REST routes (`--http`): health, metadata, inference, system shared memory |
//! | [`metrics`] | Prometheus request metrics and the `/metrics` HTTP listener |
//! | [`polling`] | the transport thread: inference on it for a lone session with short requests, polling after each answer |
//! | [`access`] | restricted APIs (Triton's `--grpc-restricted-protocol`, `--http-restricted-api`) |
//! | [`conn`] | connections: the bound across listeners, idle timeout, keep-alive, TLS handshakes, backing off when out of descriptors |
//! | [`tls`] | TLS (`--tls-cert`, `--tls-key`): the certificate and key from PEM files, an acceptor per ALPN protocol |
//! | [`server`] | options, listening, the stream bound, graceful shutdown on SIGINT/SIGTERM |

pub mod access;
pub mod conn;
pub mod metrics;
pub mod models;
pub mod polling;
pub mod proto;
pub mod rest;
pub mod rest_codec;
pub mod server;
pub mod service;
pub mod shm;
pub mod stats;
pub mod status;
pub mod tensors;
pub mod tls;

pub use models::{InputShape, InputShapes, ModelSource, Models, ServedModel};
pub use server::{GrpcOptions, GrpcServer, Listening};
