//! Shared-memory IPC on iceoryx2: `uminfer serve` and its clients.
//!
//! | module | holds |
//! |---|---|
//! | [`header`] | what both protocol versions share (magic, statuses, limits); the v1 headers and request validation |
//! | [`table`] | protocol v2: the tensor table ([`table::TensorEntry`]), its headers, dtype codes, the layout of a payload, [`table::Signature`] (validation of a request against the model) |
//! | [`service`] | service names (`uminfer/<NAME>`, `uminfer/<NAME>/v2`), iceoryx2 node and service settings shared by all sides |
//! | [`server`] | [`Server`]: dispatcher + workers over a `SessionPool`, both protocols |
//! | [`client`] | [`Client`] (protocol v2): connect, `infer_tensors`, `infer_with`, `loan` + `send` |
//!
//! The contract is documented in `docs/ipc.md`; the Python client in
//! `clients/python/` implements the same one.

pub mod client;
pub mod header;
pub mod server;
pub mod service;
pub mod table;

pub use client::{Client, LoanedRequest, NamedTensor, Response};
pub use server::{ServeOptions, ServeStats, Server};
pub use table::BatchCounts;
