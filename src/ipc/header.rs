//! What both protocol versions share (magic, statuses, limits), and the
//! protocol v1 headers with the validation of a v1 request. Protocol v2's
//! tensor table is in [`table`](super::table). See `docs/ipc.md`.

use iceoryx2::prelude::ZeroCopySend;

/// `"UMIF"`: first field of every header.
pub const MAGIC: u32 = 0x554D_4946;
/// Protocol version 1: one float32 tensor each way.
pub const PROTOCOL_V1: u16 = 1;
/// Highest tensor rank a header can describe.
pub const MAX_RANK: usize = 8;
/// Bytes of error text a response can carry.
pub const MAX_ERROR_LEN: usize = 256;
/// Protocol v1's only dtype code: float32 (protocol v2 gives it the same code).
pub const DTYPE_F32: u8 = 1;

/// Status of a response (both versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    /// The payload is the model's output.
    Ok = 0,
    /// The request was malformed (header, table, size, shape, dtype); `error` says how.
    BadRequest = 1,
    /// The model failed on a well-formed request; `error` has libtorch's reason.
    ModelError = 2,
    /// The server could not answer a well-formed request (no shared memory
    /// for the response); `error` says why.
    ServerError = 3,
    /// The server is at capacity (a batching server's queue is full, the
    /// request waited past the queue timeout, or the server is stopping):
    /// retry later; `error` says which.
    Busy = 4,
}

impl Status {
    /// How [`Error::Remote`](crate::Error::Remote) names status code `code`.
    pub fn describe(code: u16) -> &'static str {
        match code {
            x if x == Status::BadRequest as u16 => "bad request",
            x if x == Status::ModelError as u16 => "model error",
            x if x == Status::ServerError as u16 => "server error",
            x if x == Status::Busy as u16 => "busy",
            _ => "unknown status",
        }
    }
}

/// Metadata of a v1 request; the payload is the input tensor's float32 elements.
#[derive(Debug, Default, Clone, Copy, ZeroCopySend)]
#[repr(C)]
#[type_name("UminferRequestHeaderV1")]
pub struct RequestHeaderV1 {
    pub magic: u32,
    pub version: u16,
    pub dtype: u8,
    pub rank: u8,
    pub request_id: u64,
    pub shape: [u64; MAX_RANK],
}

/// Metadata of a v1 response; the payload is the output tensor's float32
/// elements (empty unless `status` is `Ok`).
#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
#[type_name("UminferResponseHeaderV1")]
pub struct ResponseHeaderV1 {
    pub magic: u32,
    pub version: u16,
    pub status: u16,
    pub dtype: u8,
    pub rank: u8,
    pub error_len: u16,
    pub reserved: u32,
    pub request_id: u64,
    pub shape: [u64; MAX_RANK],
    pub error: [u8; MAX_ERROR_LEN],
}

impl Default for ResponseHeaderV1 {
    fn default() -> Self {
        Self {
            magic: MAGIC,
            version: PROTOCOL_V1,
            status: Status::Ok as u16,
            dtype: DTYPE_F32,
            rank: 0,
            error_len: 0,
            reserved: 0,
            request_id: 0,
            shape: [0; MAX_RANK],
            error: [0; MAX_ERROR_LEN],
        }
    }
}

/// The first [`MAX_RANK`] dimensions of `shape` in a header's fixed array
/// (the rest 0); `None` for a longer shape or a negative dimension.
pub(crate) fn pack_shape(shape: &[i64]) -> Option<[u64; MAX_RANK]> {
    if shape.len() > MAX_RANK {
        return None;
    }
    let mut out = [0; MAX_RANK];
    for (s, &d) in out.iter_mut().zip(shape) {
        *s = u64::try_from(d).ok()?;
    }
    Some(out)
}

/// Writes `message` into an error field (cut to [`MAX_ERROR_LEN`] bytes on a
/// char boundary); returns the bytes used.
pub(crate) fn write_error(field: &mut [u8; MAX_ERROR_LEN], message: &str) -> u16 {
    let mut end = message.len().min(MAX_ERROR_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&message.as_bytes()[..end]);
    end as u16
}

/// The text of an error field (lossy UTF-8).
pub(crate) fn read_error(field: &[u8; MAX_ERROR_LEN], len: u16) -> String {
    String::from_utf8_lossy(&field[..(len as usize).min(MAX_ERROR_LEN)]).into_owned()
}

impl RequestHeaderV1 {
    /// A v1 float32 request header for `shape`.
    pub fn new(request_id: u64, shape: &[i64]) -> Option<Self> {
        if shape.is_empty() {
            return None;
        }
        Some(Self { magic: MAGIC, version: PROTOCOL_V1, dtype: DTYPE_F32, rank: shape.len() as u8, request_id, shape: pack_shape(shape)? })
    }
}

impl ResponseHeaderV1 {
    /// An `Ok` response header for `shape`.
    pub fn ok(request_id: u64, shape: &[i64]) -> Self {
        Self { request_id, rank: shape.len().min(MAX_RANK) as u8, shape: pack_shape(shape).unwrap_or_default(), ..Self::default() }
    }

    /// A failed response carrying `message` (cut to [`MAX_ERROR_LEN`] bytes on a char boundary).
    pub fn failed(request_id: u64, status: Status, message: &str) -> Self {
        let mut h = Self { request_id, status: status as u16, ..Self::default() };
        h.error_len = write_error(&mut h.error, message);
        h
    }

    /// The shape, as far as `rank` says.
    pub fn shape(&self) -> Vec<i64> {
        self.shape[..(self.rank as usize).min(MAX_RANK)].iter().map(|&d| d as i64).collect()
    }

    /// The error text (lossy UTF-8), empty for `Ok`.
    pub fn error_text(&self) -> String {
        read_error(&self.error, self.error_len)
    }
}

/// Checks every field of a v1 request against the payload it came with and
/// the model's input shape, before anything is read. `max_elements` bounds
/// the payload (the server's `--max-bytes` / 4). Pure: the fuzz test drives it.
pub fn validate_request_v1(h: &RequestHeaderV1, payload_elements: usize, model_shape: &[i64], max_elements: usize) -> Result<(), String> {
    if h.magic != MAGIC {
        return Err(format!("bad magic 0x{:08x}: not a uminfer request", h.magic));
    }
    if h.version != PROTOCOL_V1 {
        return Err(format!("protocol version {} is not supported on this service; it speaks {PROTOCOL_V1} (protocol 2 has a service of its own, see docs/ipc.md)", h.version));
    }
    if h.dtype != DTYPE_F32 {
        return Err(format!("dtype code {} is not supported; protocol {PROTOCOL_V1} carries float32 (code 1)", h.dtype));
    }
    let rank = h.rank as usize;
    if rank == 0 || rank > MAX_RANK {
        return Err(format!("rank {rank} is outside 1..={MAX_RANK}"));
    }
    if h.shape[rank..].iter().any(|&d| d != 0) {
        return Err(format!("shape entries past rank {rank} must be 0; the header has {:?}", h.shape));
    }
    let shape = &h.shape[..rank];
    let mut elements: usize = 1;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| format!("dimension {d} does not fit this machine"))?;
        if d == 0 {
            return Err(format!("shape {shape:?} has a zero dimension"));
        }
        elements = elements.checked_mul(d).ok_or_else(|| format!("shape {shape:?} overflows"))?;
    }
    if elements > max_elements {
        return Err(format!("shape {shape:?} has {elements} elements, above this server's limit of {max_elements}"));
    }
    if elements != payload_elements {
        return Err(format!("payload holds {payload_elements} elements but shape {shape:?} needs {elements}"));
    }
    if shape.len() != model_shape.len() || shape.iter().zip(model_shape).any(|(&a, &b)| a as i64 != b) {
        return Err(format!("shape {shape:?} does not match the model's input shape {model_shape:?}"));
    }
    Ok(())
}
