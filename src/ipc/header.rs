//! The wire contract's headers (protocol version 1) and the validation of a
//! request before any of it is used. See `docs/ipc.md`.

use iceoryx2::prelude::ZeroCopySend;

/// `"UMIF"`: first field of every header.
pub const MAGIC: u32 = 0x554D_4946;
/// Version of the contract these headers implement.
pub const PROTOCOL_VERSION: u16 = 1;
/// Highest tensor rank a header can describe.
pub const MAX_RANK: usize = 8;
/// Bytes of error text a response can carry.
pub const MAX_ERROR_LEN: usize = 256;

/// Element type codes (`dtype` fields). Protocol v1 payloads are float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DType {
    F32 = 1,
}

/// Status of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    /// The payload is the model's output.
    Ok = 0,
    /// The request was malformed (header, size, shape); `error` says how.
    BadRequest = 1,
    /// The model failed on a well-formed request; `error` has libtorch's reason.
    ModelError = 2,
}

/// Metadata of a request; the payload is the input tensor's elements.
#[derive(Debug, Default, Clone, Copy, ZeroCopySend)]
#[repr(C)]
#[type_name("UminferRequestHeaderV1")]
pub struct RequestHeader {
    pub magic: u32,
    pub version: u16,
    pub dtype: u8,
    pub rank: u8,
    pub request_id: u64,
    pub shape: [u64; MAX_RANK],
}

/// Metadata of a response; the payload is the output tensor's elements
/// (empty unless `status` is `Ok`).
#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
#[type_name("UminferResponseHeaderV1")]
pub struct ResponseHeader {
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

impl Default for ResponseHeader {
    fn default() -> Self {
        Self {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            status: Status::Ok as u16,
            dtype: DType::F32 as u8,
            rank: 0,
            error_len: 0,
            reserved: 0,
            request_id: 0,
            shape: [0; MAX_RANK],
            error: [0; MAX_ERROR_LEN],
        }
    }
}

/// The first [`MAX_RANK`] dimensions of `shape` in a header's fixed array (rest 0).
fn pack_shape(shape: &[i64]) -> [u64; MAX_RANK] {
    let mut out = [0; MAX_RANK];
    for (s, &d) in out.iter_mut().zip(shape) {
        *s = d as u64;
    }
    out
}

impl RequestHeader {
    /// A v1 float32 request header for `shape`.
    pub fn new(request_id: u64, shape: &[i64]) -> Option<Self> {
        if shape.is_empty() || shape.len() > MAX_RANK || shape.iter().any(|&d| d < 0) {
            return None;
        }
        Some(Self { magic: MAGIC, version: PROTOCOL_VERSION, dtype: DType::F32 as u8, rank: shape.len() as u8, request_id, shape: pack_shape(shape) })
    }
}

impl ResponseHeader {
    /// An `Ok` response header for `shape`.
    pub fn ok(request_id: u64, shape: &[i64]) -> Self {
        Self { request_id, rank: shape.len().min(MAX_RANK) as u8, shape: pack_shape(shape), ..Self::default() }
    }

    /// A failed response carrying `message` (cut to [`MAX_ERROR_LEN`] bytes on a char boundary).
    pub fn failed(request_id: u64, status: Status, message: &str) -> Self {
        let mut h = Self { request_id, status: status as u16, ..Self::default() };
        let mut end = message.len().min(MAX_ERROR_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        h.error[..end].copy_from_slice(&message.as_bytes()[..end]);
        h.error_len = end as u16;
        h
    }

    /// The shape, as far as `rank` says.
    pub fn shape(&self) -> Vec<i64> {
        self.shape[..(self.rank as usize).min(MAX_RANK)].iter().map(|&d| d as i64).collect()
    }

    /// The error text (lossy UTF-8), empty for `Ok`.
    pub fn error_text(&self) -> String {
        String::from_utf8_lossy(&self.error[..(self.error_len as usize).min(MAX_ERROR_LEN)]).into_owned()
    }
}

/// Checks every field of a request against the payload it came with and the
/// model's input shape, before anything is read. `max_elements` bounds the
/// payload (the server's `--max-bytes` / 4). Pure: the fuzz test drives it.
pub fn validate_request(h: &RequestHeader, payload_elements: usize, model_shape: &[i64], max_elements: usize) -> Result<(), String> {
    if h.magic != MAGIC {
        return Err(format!("bad magic 0x{:08x}: not a uminfer request", h.magic));
    }
    if h.version != PROTOCOL_VERSION {
        return Err(format!("protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}", h.version));
    }
    if h.dtype != DType::F32 as u8 {
        return Err(format!("dtype code {} is not supported; protocol {PROTOCOL_VERSION} carries float32 (code 1)", h.dtype));
    }
    let rank = h.rank as usize;
    if rank == 0 || rank > MAX_RANK {
        return Err(format!("rank {rank} is outside 1..={MAX_RANK}"));
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
