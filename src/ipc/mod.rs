//! Shared-memory IPC on iceoryx2: `uminfer serve` and its clients.
//!
//! | module | holds |
//! |---|---|
//! | [`header`] | the v1 request/response headers, dtype and status codes, request validation |
//! | [`service`] | service names (`uminfer/<NAME>`), iceoryx2 node and service settings shared by all sides |
//! | [`server`] | [`Server`]: dispatcher + workers over a `SessionPool` |
//! | [`client`] | [`Client`]: connect, `infer`, `infer_in_place` |
//!
//! The contract is documented in `docs/ipc.md`; the Python client in
//! `clients/python/` implements the same one.

pub mod client;
pub mod header;
pub mod server;
pub mod service;

pub use client::{Client, LoanedRequest, Response};
pub use server::{ServeOptions, ServeStats, Server};
