//! The Open Inference Protocol messages and service trait, generated at build
//! time by `build.rs` from Triton's `proto/grpc_service.proto` (package
//! `inference`): prost messages plus tonic's `GrpcInferenceService` server.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("inference");
