//! # uminfer — zero-copy, low-latency libtorch inference
//!
//! Inputs and outputs live in memory that both the caller and libtorch see
//! (host memory, CUDA managed memory, pinned-mapped memory, shared memory),
//! so no request copies tensor data. At startup the runtime asks the
//! [`doctor`] what this machine can run.
//!
//! | module | holds |
//! |---|---|
//! | [`runtime`] | [`Runtime`]: startup probe, mode gate, the door to models and sessions |
//! | [`model`] | [`Model`]: TorchScript files and AOTInductor packages, their signatures |
//! | [`session`] | [`Session`] (named tensors of any dtype), [`TypedSession`], [`SessionPool`]: requests over zero-copy regions, CUDA graphs, timing |
//! | [`batch`] | [`Batcher`](batch::Batcher): dynamic batching over a session per batch size (bucket) |
//! | [`dtype`] | [`DType`]: the element types, and their names in libtorch, NumPy and the protocol |
//! | [`host_tensor`] | [`HostTensor`](host_tensor::HostTensor): owned named tensors, `.npy` / `.npz` files |
//! | [`doctor`] | startup diagnostics: facts, checks, usable modes |
//! | [`mode`] | the execution modes and their ids |
//! | [`cuda`] | the CUDA driver and NVRTC through cudarc, loaded at run time |
//! | [`kernels`] | the CUDA kernels of `kernels/*.cu`, embedded |
//! | [`ops`] | preprocess (u8 HWC → normalised f32 NCHW) and postprocess (softmax, top-k) kernels with CPU references |
//! | [`shim`] | what tch lacks, from the C++ shim: models of any signature, streams, CUDA graphs, libtorch facts |
//! | [`memory`] | zero-copy regions (host, managed, pinned-mapped), views, pool |
//! | [`intra_op`] | libtorch intra-op threads of server processes whose clients share the machine |
//! | [`tuning`] | polling and spinning times the transports and the intra-op rule share |
//! | [`malloc_tuning`] | glibc malloc thresholds that keep freed memory for the next request |
//! | [`loaded_libs`] | which shared libraries the process loaded, from where |
//! | [`build_info`] | versions and commit fixed at build time |
//! | [`error`] | the library's error type |
//!
//! Behind Cargo features (all on by default; `default-features = false`
//! gives the modules above alone):
//!
//! | feature | module | holds |
//! |---|---|---|
//! | `ipc` | `ipc` | shared-memory transport on iceoryx2: `uminfer serve`, `ipc::Client` |
//! | `grpc` | `oip` | Open Inference Protocol (KServe v2) gRPC and REST endpoint: `uminfer serve --grpc` |
//! | `ipc` or `grpc` | `client_memory` | client-owned shared memory under access: a truncation becomes an error, not a `SIGBUS` |
//! | `profile` | `profile` | CPU flame graphs of this process (`run` and `bench` with `--profile DIR`) |
//! | `bench` | `bench` | `uminfer bench`: every scheme side by side, statistics, table, JSON, SVG |
//! | `cli` | | the `uminfer` binary |
//!
//! Layering follows cudarc: raw FFI (`shim::ffi`, `cudarc::*::sys`) → thin
//! fallible wrappers → safe owning types. `unsafe` stays at that edge.

pub mod batch;
#[cfg(feature = "bench")]
pub mod bench;
pub mod build_info;
#[cfg(any(feature = "ipc", feature = "grpc"))]
pub mod client_memory;
pub mod cuda;
pub mod doctor;
pub mod dtype;
pub mod error;
pub mod host_tensor;
pub mod intra_op;
#[cfg(feature = "ipc")]
pub mod ipc;
pub mod kernels;
pub mod loaded_libs;
pub mod malloc_tuning;
pub mod memory;
pub mod mode;
pub mod model;
#[cfg(feature = "grpc")]
pub mod oip;
pub mod ops;
#[cfg(feature = "profile")]
pub mod profile;
pub mod runtime;
pub mod session;
mod torch_version;
pub mod shim;
pub mod tuning;

pub use error::{Error, IpcErrorKind, Result, SessionErrorKind};
pub use dtype::DType;
pub use mode::Mode;
pub use model::Model;
pub use runtime::Runtime;
pub use session::{Session, SessionPool, SessionSpec, TypedSession};
