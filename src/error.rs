//! The library's error type: every failure says what was wrong, what was
//! expected and, where there is one, what to do about it.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by uminfer's library API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA driver library (`libcuda.so`) could not be loaded.
    #[error("no CUDA driver: libcuda.so could not be loaded ({detail}); install the NVIDIA driver or use a CPU mode")]
    NoDriver { detail: String },

    /// A CUDA driver call failed.
    #[error("CUDA driver call {call} failed: {source}")]
    Driver {
        call: &'static str,
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// NVRTC could not be loaded or a kernel did not compile.
    #[error("NVRTC compile of kernel `{kernel}` failed: {detail}")]
    Nvrtc { kernel: String, detail: String },

    /// libtorch raised an error (through tch).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// The C++ shim caught a C++ exception in `call`.
    #[error("libtorch ({call}): {message}")]
    Shim { call: &'static str, message: String },

    /// A self-check computed a wrong result.
    #[error("{what} failed its check: {detail}")]
    Check { what: &'static str, detail: String },

    /// A kernel name that is not in `kernels/`.
    #[error("no kernel named `{0}` in kernels/ (known: {1})")]
    UnknownKernel(String, String),

    /// A device ordinal beyond what the driver exposes.
    #[error("no CUDA device {ordinal}: the driver exposes {count} device(s) (check CUDA_VISIBLE_DEVICES)")]
    NoSuchDevice { ordinal: usize, count: i32 },

    /// A region of zero elements, or one whose byte size overflows.
    #[error("invalid region size: {0}")]
    RegionSize(String),

    /// A managed allocation that would oversubscribe the device.
    #[error("refusing to allocate {requested} bytes of managed memory on GPU {device}: only {free} bytes are free and {headroom} must stay free (headroom); use a smaller region or lower ManagedOptions::headroom_bytes")]
    Oversubscription { device: usize, requested: usize, free: usize, headroom: usize },

    /// A region kind this device cannot provide.
    #[error("GPU {device} does not support {what}")]
    Unsupported { device: usize, what: &'static str },

    /// An argument out of its valid range (kernel parameters, sizes, k > classes, ...).
    #[error("invalid argument: {0}")]
    Argument(String),

    /// A tensor view whose shape or dtype does not fit its region.
    #[error("tensor view does not fit: {0}")]
    Shape(String),

    /// Memory that must stay locked could not be mapped.
    #[error("{call} failed: {source}")]
    Os {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The model file does not exist.
    #[error("model file {} not found; export one with models/export.py (or run `bash ci/setup`)", path.display())]
    ModelNotFound { path: PathBuf },

    /// The model file could not be loaded or run.
    #[error("model {}: {message}", path.display())]
    Model { path: PathBuf, message: String },

    /// A mode the doctor found unusable on this machine.
    #[error("mode {mode} is not usable here: {reason} (see `uminfer doctor`)")]
    ModeUnusable { mode: crate::Mode, reason: String },

    /// A session could not be built as asked, or a request on it failed;
    /// `kind` says which, for a caller to match on.
    #[error("session: {message}")]
    Session { kind: SessionErrorKind, message: String },

    /// A session's declarations do not fit the model's inputs.
    #[error("model {}: {source}", path.display())]
    Signature {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },

    /// A tensor accessed or given with another dtype than the session's.
    #[error("tensor `{tensor}` holds {expected}, not {given}")]
    DType { tensor: String, expected: crate::dtype::DType, given: crate::dtype::DType },

    /// A tensor name or index the session does not have.
    #[error("the session has no {side} {given}; its {side}s: {known}")]
    NoSuchTensor { side: &'static str, given: String, known: String },

    /// CUDA graph capture failed (and eager fallback was not allowed).
    #[error("CUDA graph capture failed: {0}; allow eager fallback with SessionSpec::allow_eager_fallback(true) to run without a graph")]
    Capture(String),

    /// The shared-memory transport failed; `kind` says how.
    #[error("shared-memory IPC: {message}")]
    Ipc { kind: IpcErrorKind, message: String },

    /// The gRPC endpoint could not listen or serve.
    #[error("gRPC endpoint: {0}")]
    Grpc(String),

    /// The server is not running, died, or stopped answering.
    #[error("server gone: {0}")]
    ServerGone(String),

    /// No response within the client's timeout.
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),

    /// The server answered with an error status.
    #[error("the server refused the request ({status}): {message}")]
    Remote { status: &'static str, message: String },

    /// A batcher's queue holds `max_queue` requests: this one was refused.
    #[error("the batch queue is full ({queued} requests waiting, max_queue {max_queue}): retry later, or raise max_queue (`uminfer serve --max-queue`)")]
    QueueFull { queued: usize, max_queue: usize },

    /// A request waited in a batcher's queue past its timeout without running.
    #[error("the request waited {0:?} in the batch queue without running (the queue timeout): the model is overloaded; retry later, or raise the timeout")]
    QueueTimeout(std::time::Duration),

    /// The batcher was closed (shutting down): the request did not run.
    #[error("the batcher is shutting down: the request did not run")]
    BatcherClosed,

    /// The CPU profiler could not start or write its flame graph.
    #[error("CPU profile: {0}")]
    Profile(String),

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What went wrong in an [`Error::Session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionErrorKind {
    /// The request does not fit the session (how many tensors, their bytes,
    /// dtypes, shapes or samples): fix the request; the session is fine.
    InvalidRequest,
    /// The model and spec cannot be built as asked (a mode, preprocessing,
    /// batching, a typed signature, a pool of no sessions): change the spec.
    Unsupported,
    /// No session became free within the caller's timeout: retry, or build
    /// more sessions.
    Busy,
    /// The request did not complete: the model's run, the session's thread
    /// or its GPU context failed. If it persists, build a new session.
    Failed,
}

/// What went wrong in an [`Error::Ipc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpcErrorKind {
    /// iceoryx2 could not create, open, loan, send, receive or wait (shared
    /// memory, ports, events).
    Transport,
    /// The other side's bytes do not follow the protocol (a malformed
    /// response, a foreign magic or version, an answer to another request).
    Protocol,
    /// A live server already serves this endpoint name.
    AlreadyServing,
    /// The call cannot work as given: an endpoint name outside the rules, a
    /// request loaned from another client, a model whose tensors the
    /// protocol cannot carry within the byte limit.
    Invalid,
}

impl Error {
    /// An [`Error::Session`] of `kind`.
    pub fn session(kind: SessionErrorKind, message: impl Into<String>) -> Self {
        Error::Session { kind, message: message.into() }
    }

    /// An [`Error::Ipc`] of `kind`.
    pub fn ipc(kind: IpcErrorKind, message: impl Into<String>) -> Self {
        Error::Ipc { kind, message: message.into() }
    }

    /// Maps a failed CUDA driver call named `call` into [`Error::Driver`]
    /// (for `map_err`).
    pub(crate) fn driver(call: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
        move |source| Error::Driver { call, source }
    }
}

/// Why a session's declarations do not fit the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the model has no input `{given}`; its inputs: {known}")]
    UnknownInput { given: String, known: String },
    #[error("input `{0}` is declared twice")]
    Duplicate(String),
    #[error("an input declared without a name needs a model with one input; this one takes {0}: name each")]
    Unnamed(String),
    #[error("input `{name}`: the model does not record its {what}; declare it (SessionSpec::input(\"{name}\", dtype, &shape), or --input-spec {name}=DTYPE:DIMS on the command line)")]
    Missing { name: String, what: &'static str },
    #[error("input `{name}`: declared {declared}, but the package was compiled for {compiled}; declare {compiled} or export the model again for {declared}")]
    Fixed { name: String, declared: String, compiled: String },
    #[error("input `{name}`: shape {shape:?} must have positive dimensions")]
    BadShape { name: String, shape: Vec<i64> },
}
