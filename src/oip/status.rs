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

/// The `UNIMPLEMENTED` answer of an RPC uminfer does not offer.
pub fn unimplemented_rpc(rpc: &str) -> Status {
    Status::unimplemented(format!("uminfer does not implement the {rpc} RPC (docs/oip.md lists what it implements)"))
}
