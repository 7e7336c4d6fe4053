//! Why a request was refused, as a typed error, and the gRPC status each
//! case becomes: an unknown model is `NOT_FOUND`, a request that does not
//! fit the model is `INVALID_ARGUMENT`, a shared memory region registered
//! twice `ALREADY_EXISTS`, one of another user `PERMISSION_DENIED`, one
//! its owner truncated `FAILED_PRECONDITION`, a request beyond a bound
//! `RESOURCE_EXHAUSTED`, a
//! feature uminfer lacks `UNIMPLEMENTED`, a failure inside the model is `INTERNAL`.
//!
//! Messages echo what the client sent (a model name, a tensor name, a
//! shape) through [`echo`] and [`echo_debug`], which cut a long value after
//! [`ECHO_CHARS`] characters and say so, and every message is cut at
//! [`MESSAGE_BYTES`]: a refusal travels in the `grpc-message` header, and a
//! default gRPC client refuses headers over 8 KiB (it would see
//! `RESOURCE_EXHAUSTED` instead of the refusal).

use std::fmt;
use tonic::{Code, Status};

/// The most characters of one client-given value a message echoes.
pub const ECHO_CHARS: usize = 256;

/// The longest refusal message, in bytes.
pub const MESSAGE_BYTES: usize = 2048;

/// A client-given string as a message shows it: quoted as `{:?}` quotes,
/// and cut after [`ECHO_CHARS`] characters: `"abc…" (cut, 102400 bytes)`.
pub struct Echo<'a>(&'a str);

/// `s` for a message ([`Echo`]).
pub fn echo(s: &str) -> Echo<'_> {
    Echo(s)
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(ECHO_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((end, _)) => {
                let quoted = format!("{:?}", &self.0[..end]);
                write!(f, "{}…\" (cut, {} bytes)", &quoted[..quoted.len() - 1], self.0.len())
            }
        }
    }
}

/// A client-given value (a shape, a parameter) as `{:?}` writes it, cut
/// after [`ECHO_CHARS`] characters saying so.
pub fn echo_debug(v: &impl fmt::Debug) -> String {
    cut(format!("{v:?}"), ECHO_CHARS)
}

/// A client-given value (JSON, say) as `{}` writes it, cut after
/// [`ECHO_CHARS`] characters saying so.
pub fn echo_value(v: &impl fmt::Display) -> String {
    cut(v.to_string(), ECHO_CHARS)
}

/// `s` cut after `chars` characters, saying so.
fn cut(s: String, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        None => s,
        Some((end, _)) => format!("{}… (cut, {} bytes)", &s[..end], s.len()),
    }
}

/// A message cut to at most about [`MESSAGE_BYTES`] bytes, saying so.
pub fn bounded(message: String) -> String {
    if message.len() <= MESSAGE_BYTES {
        return message;
    }
    let mut end = MESSAGE_BYTES - 64;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (message cut, {} bytes)", &message[..end], message.len())
}

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
    /// A request that waited in the batch queue past its timeout.
    #[error("{0}")]
    Unavailable(String),
    /// The model failed on a valid request.
    #[error("inference failed: {0}")]
    Model(crate::Error),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<crate::Error> for RequestError {
    /// A batcher's refusals keep their kind (a full queue is the client's
    /// cue to back off); every other error is the model's.
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::QueueFull { .. } => RequestError::ResourceExhausted(e.to_string()),
            crate::Error::QueueTimeout(_) => RequestError::Unavailable(e.to_string()),
            crate::Error::BatcherClosed => RequestError::ShuttingDown,
            e => RequestError::Model(e),
        }
    }
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
            RequestError::ShuttingDown | RequestError::Unavailable(_) => Code::Unavailable,
        };
        Status::new(code, bounded(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_quotes_short_values_and_cuts_long_ones_saying_so() {
        assert_eq!(echo("tiny").to_string(), "\"tiny\"");
        assert_eq!(echo("a\"b").to_string(), "\"a\\\"b\"");
        let long = "x".repeat(102400);
        let shown = echo(&long).to_string();
        assert_eq!(shown, format!("\"{}…\" (cut, 102400 bytes)", "x".repeat(ECHO_CHARS)));
        let wide = "é".repeat(1000);
        assert!(echo(&wide).to_string().ends_with("…\" (cut, 2000 bytes)"));
        assert_eq!(echo_debug(&[1, 2]), "[1, 2]");
        assert!(echo_debug(&vec![7i64; 2000]).ends_with("(cut, 6000 bytes)"));
    }

    #[test]
    fn every_refusal_message_is_bounded() {
        let s: Status = RequestError::NotFound(format!("no model named {} is served", "y".repeat(100_000))).into();
        assert!(s.message().len() <= MESSAGE_BYTES, "{}", s.message().len());
        assert!(s.message().ends_with("(message cut, 100025 bytes)"), "{}", &s.message()[s.message().len() - 40..]);
        assert_eq!(bounded("short".into()), "short");
    }
}
