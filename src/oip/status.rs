//! Why a request was refused, as a typed error, and the gRPC status each
//! case becomes: an unknown model is `NOT_FOUND`, a request that does not
//! fit the model is `INVALID_ARGUMENT`, a shared memory region registered
//! twice `ALREADY_EXISTS`, one of another user `PERMISSION_DENIED`, one
//! its owner truncated `FAILED_PRECONDITION`, a request beyond a bound
//! `RESOURCE_EXHAUSTED`, a
//! feature uminfer lacks `UNIMPLEMENTED`, a failure inside the model is `INTERNAL`.

use tonic::{Code, Status};

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No model of that name (or version) is served.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the model: names, dtype, shape, byte length.
    #[error("{0}")]
    Invalid(String),
    /// A shared memory region of that name is already registered.
    #[error("{0}")]
    AlreadyExists(String),
    /// A shared memory object the server's user does not own.
    #[error("{0}")]
    PermissionDenied(String),
    /// A shared memory region whose object its owner truncated: unusable
    /// until registered again.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Beyond a bound of the server (regions, bytes), or more memory than the
    /// process can hold.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A protocol feature this server does not implement.
    #[error("{0}")]
    Unimplemented(String),
    /// The model failed on a valid request.
    #[error("inference failed: {0}")]
    Model(#[from] crate::Error),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Status {
        let code = match &e {
            RequestError::NotFound(_) => Code::NotFound,
            RequestError::Invalid(_) => Code::InvalidArgument,
            RequestError::AlreadyExists(_) => Code::AlreadyExists,
            RequestError::PermissionDenied(_) => Code::PermissionDenied,
            RequestError::FailedPrecondition(_) => Code::FailedPrecondition,
            RequestError::ResourceExhausted(_) => Code::ResourceExhausted,
            RequestError::Unimplemented(_) => Code::Unimplemented,
            RequestError::Model(_) => Code::Internal,
            RequestError::ShuttingDown => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

/// A zeroed buffer of `len` elements for `what` (called only to name it in
/// the error), or `RESOURCE_EXHAUSTED` when the process cannot hold it
/// (never an abort).
pub fn try_buffer<T: Clone + Default>(len: usize, what: impl FnOnce() -> String) -> Result<Vec<T>, RequestError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| out_of_memory(what, len.saturating_mul(std::mem::size_of::<T>())))?;
    v.resize(len, T::default());
    Ok(v)
}

/// An empty vector with room for `len` bytes for `what`, or `RESOURCE_EXHAUSTED`.
pub fn try_capacity(len: usize, what: impl FnOnce() -> String) -> Result<Vec<u8>, RequestError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| out_of_memory(what, len))?;
    Ok(v)
}

fn out_of_memory(what: impl FnOnce() -> String, bytes: usize) -> RequestError {
    RequestError::ResourceExhausted(format!("{}: the server cannot allocate {bytes} bytes for this request now; retry later", what()))
}

/// The `UNIMPLEMENTED` answer of an RPC uminfer does not offer.
pub fn unimplemented_rpc(rpc: &str) -> Status {
    Status::unimplemented(format!("uminfer does not implement the {rpc} RPC (docs/oip.md lists what it implements)"))
}
