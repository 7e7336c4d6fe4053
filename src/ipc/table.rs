//! Protocol v2: several named tensors of any dtype each way, described by a
//! table in the header ([`TensorEntry`]) over a byte payload in which every
//! tensor starts on a [`TENSOR_ALIGN`]-byte boundary. [`Signature`] is what a
//! server checks each request's table against before it reads a byte of the
//! payload, and where it lays out its response. See `docs/ipc.md`.

use super::header::{pack_shape, read_error, write_error, Status, MAGIC, MAX_ERROR_LEN, MAX_RANK};
use crate::dtype::DType;
use crate::model::TensorInfo;
use iceoryx2::prelude::ZeroCopySend;

/// Protocol version 2: named tensors of any dtype.
pub const PROTOCOL_V2: u16 = 2;
/// Most tensors one table describes (a request's inputs, a response's outputs).
pub const MAX_TENSORS: usize = 16;
/// Longest tensor name, in UTF-8 bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Every tensor's offset in a payload is a multiple of this (and payloads
/// start on such a boundary).
pub const TENSOR_ALIGN: usize = 64;

/// `kind` of a request: run the model on the tensors of the table.
pub const KIND_INFER: u8 = 0;
/// `kind` of a request: no tensors; the response's payload is the model's
/// signature as JSON (see `docs/ipc.md`).
pub const KIND_DESCRIBE: u8 = 1;

/// The dtype code of `dtype` in a table entry.
pub const fn dtype_code(dtype: DType) -> u8 {
    match dtype {
        DType::F32 => 1,
        DType::F64 => 2,
        DType::F16 => 3,
        DType::Bf16 => 4,
        DType::I64 => 5,
        DType::I32 => 6,
        DType::I16 => 7,
        DType::I8 => 8,
        DType::U8 => 9,
        DType::Bool => 10,
    }
}

/// The dtype of a table entry's code, if it is one.
pub fn dtype_of_code(code: u8) -> Option<DType> {
    DType::ALL.into_iter().find(|&d| dtype_code(d) == code)
}

/// `code 4 (bf16)`, or `code 77 (no dtype)`.
fn describe_code(code: u8) -> String {
    match dtype_of_code(code) {
        Some(d) => format!("code {code} ({d})"),
        None => format!("code {code} (no dtype; known: 1..=10)"),
    }
}

/// One tensor of a table: its name, dtype, shape, and where its bytes lie
/// in the payload (`#[repr(C)]`, 152 bytes, align 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ZeroCopySend)]
#[repr(C)]
#[type_name("UminferTensorEntryV2")]
pub struct TensorEntry {
    /// UTF-8, the first `name_len` bytes; the rest 0.
    pub name: [u8; MAX_NAME_LEN],
    pub name_len: u8,
    /// [`dtype_code`].
    pub dtype: u8,
    /// 0..=[`MAX_RANK`].
    pub rank: u8,
    pub reserved: [u8; 5],
    /// The first `rank` entries are the dimensions; the rest 0.
    pub shape: [u64; MAX_RANK],
    /// Byte offset in the payload, a multiple of [`TENSOR_ALIGN`].
    pub offset: u64,
    /// Byte length: the shape's element count × the dtype's size.
    pub len: u64,
}

impl TensorEntry {
    /// An all-zero entry (an unused slot of a table).
    pub const EMPTY: Self = Self { name: [0; MAX_NAME_LEN], name_len: 0, dtype: 0, rank: 0, reserved: [0; 5], shape: [0; MAX_RANK], offset: 0, len: 0 };

    /// The entry of a tensor `name` of `dtype` and `shape` at `offset`, or
    /// why it cannot be described (a name over [`MAX_NAME_LEN`] bytes, a rank
    /// over [`MAX_RANK`], a negative dimension, a size that overflows).
    pub fn new(name: &str, dtype: DType, shape: &[i64], offset: usize) -> Result<Self, String> {
        if name.len() > MAX_NAME_LEN {
            return Err(format!("tensor name `{name}` has {} bytes; protocol v2 carries names of at most {MAX_NAME_LEN}", name.len()));
        }
        let dims = pack_shape(shape).ok_or_else(|| format!("tensor `{name}`: shape {shape:?} cannot be sent (rank 0..={MAX_RANK}, no negative dimension)"))?;
        let len = shape
            .iter()
            .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d as u64))
            .filter(|&l| usize::try_from(l).is_ok())
            .ok_or_else(|| format!("tensor `{name}`: {dtype} {shape:?} does not fit in memory"))?;
        let mut e = Self { name_len: name.len() as u8, dtype: dtype_code(dtype), rank: shape.len() as u8, shape: dims, offset: offset as u64, len, ..Self::EMPTY };
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(e)
    }

    /// The name's bytes (as far as `name_len` says, at most [`MAX_NAME_LEN`]).
    pub fn name_bytes(&self) -> &[u8] {
        &self.name[..(self.name_len as usize).min(MAX_NAME_LEN)]
    }

    /// The name, for messages (lossy UTF-8).
    fn name_lossy(&self) -> String {
        String::from_utf8_lossy(self.name_bytes()).into_owned()
    }

    /// The dimensions (as far as `rank` says, at most [`MAX_RANK`]).
    pub fn dims(&self) -> &[u64] {
        &self.shape[..(self.rank as usize).min(MAX_RANK)]
    }
}

/// Metadata of a v2 request (`#[repr(C)]`, 2456 bytes, align 8); the payload
/// holds the tensors where the table says.
#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
#[type_name("UminferRequestHeaderV2")]
pub struct RequestHeaderV2 {
    pub magic: u32,
    pub version: u16,
    /// [`KIND_INFER`] or [`KIND_DESCRIBE`].
    pub kind: u8,
    /// Entries of `tensors` in use.
    pub count: u8,
    /// Chosen by the client, echoed in the response.
    pub request_id: u64,
    /// Largest response payload the client takes, in bytes (0: any).
    pub max_response_bytes: u64,
    pub tensors: [TensorEntry; MAX_TENSORS],
}

impl Default for RequestHeaderV2 {
    fn default() -> Self {
        Self { magic: MAGIC, version: PROTOCOL_V2, kind: KIND_INFER, count: 0, request_id: 0, max_response_bytes: 0, tensors: [TensorEntry::EMPTY; MAX_TENSORS] }
    }
}

impl RequestHeaderV2 {
    /// The entries in use (at most [`MAX_TENSORS`]).
    pub fn entries(&self) -> &[TensorEntry] {
        &self.tensors[..(self.count as usize).min(MAX_TENSORS)]
    }
}

/// Metadata of a v2 response (`#[repr(C)]`, 2712 bytes, align 8); with
/// status `Ok` the payload holds the outputs where the table says,
/// otherwise it is empty and `error` says what was wrong.
#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
#[type_name("UminferResponseHeaderV2")]
pub struct ResponseHeaderV2 {
    pub magic: u32,
    pub version: u16,
    /// [`Status`].
    pub status: u16,
    /// Entries of `tensors` in use.
    pub count: u8,
    pub reserved0: u8,
    /// Bytes of `error` used.
    pub error_len: u16,
    pub reserved: u32,
    pub request_id: u64,
    pub tensors: [TensorEntry; MAX_TENSORS],
    pub error: [u8; MAX_ERROR_LEN],
}

impl Default for ResponseHeaderV2 {
    fn default() -> Self {
        Self {
            magic: MAGIC,
            version: PROTOCOL_V2,
            status: Status::Ok as u16,
            count: 0,
            reserved0: 0,
            error_len: 0,
            reserved: 0,
            request_id: 0,
            tensors: [TensorEntry::EMPTY; MAX_TENSORS],
            error: [0; MAX_ERROR_LEN],
        }
    }
}

impl ResponseHeaderV2 {
    /// Makes this (default) header a failed response carrying `message`.
    pub fn fail(&mut self, request_id: u64, status: Status, message: &str) {
        self.request_id = request_id;
        self.status = status as u16;
        self.count = 0;
        self.error_len = write_error(&mut self.error, message);
    }

    /// The error text (lossy UTF-8), empty for `Ok`.
    pub fn error_text(&self) -> String {
        read_error(&self.error, self.error_len)
    }

    /// The entries in use (at most [`MAX_TENSORS`]).
    pub fn entries(&self) -> &[TensorEntry] {
        &self.tensors[..(self.count as usize).min(MAX_TENSORS)]
    }
}

/// `x` rounded up to the next multiple of [`TENSOR_ALIGN`] (`None` on overflow).
pub fn align_up(x: usize) -> Option<usize> {
    x.checked_add(TENSOR_ALIGN - 1).map(|v| v & !(TENSOR_ALIGN - 1))
}

/// A table of tensors laid out one after the other ([`layout`]).
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// The first `count` are in use.
    pub entries: [TensorEntry; MAX_TENSORS],
    pub count: usize,
    /// Bytes of the payload the entries describe.
    pub len: usize,
}

impl Table {
    /// The entries in use.
    pub fn used(&self) -> &[TensorEntry] {
        &self.entries[..self.count]
    }

    /// An infer request's header with this table (`request_id` 0).
    pub fn request(&self) -> RequestHeaderV2 {
        let mut h = RequestHeaderV2 { count: self.count as u8, ..RequestHeaderV2::default() };
        h.tensors[..self.count].copy_from_slice(self.used());
        h
    }
}

/// The table of `tensors` laid out one after the other, each at the next
/// [`TENSOR_ALIGN`]-byte boundary (allocates nothing).
pub fn layout<'a>(tensors: impl IntoIterator<Item = (&'a str, DType, &'a [i64])>) -> Result<Table, String> {
    let mut t = Table { entries: [TensorEntry::EMPTY; MAX_TENSORS], count: 0, len: 0 };
    for (name, dtype, shape) in tensors {
        if t.count == MAX_TENSORS {
            return Err(format!("protocol v2 carries at most {MAX_TENSORS} tensors each way"));
        }
        let offset = align_up(t.len).ok_or("the tensors overflow the address space")?;
        let e = TensorEntry::new(name, dtype, shape, offset)?;
        t.len = offset.checked_add(e.len as usize).ok_or("the tensors overflow the address space")?;
        t.entries[t.count] = e;
        t.count += 1;
    }
    Ok(t)
}

/// Where each of the model's inputs lies in a request's payload, in the
/// model's order: `(offset, len)` for the first `inputs` slots; and, for a
/// batched signature, the samples the request carries.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub spans: [(usize, usize); MAX_TENSORS],
    /// Samples (every tensor's first dimension) of a batched signature's
    /// request; `None` for a signature of fixed shapes.
    pub samples: Option<usize>,
}

/// A model's signature as a v2 server checks requests against it and lays
/// out its responses: fixed shapes, or (batched) every tensor's first
/// dimension the request's samples, 1 to `max_batch`.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The inputs (batched: one sample's, first dimension 1).
    inputs: Vec<TensorInfo>,
    /// Each input's entry as a request must carry it (offsets aside;
    /// batched: one sample's).
    expected: Vec<TensorEntry>,
    /// The outputs (batched: one sample's).
    outputs: Vec<TensorInfo>,
    /// The response's table (batched: for `max_batch` samples).
    response: Table,
    /// Bytes of the largest request's payload.
    max_request_len: usize,
    max_batch: Option<usize>,
    max_bytes: usize,
}

/// `shape` with its first dimension `n`, on the stack (rank ≤ [`MAX_RANK`]).
fn shape_with_batch(shape: &[i64], n: usize) -> ([i64; MAX_RANK], usize) {
    let mut s = [0i64; MAX_RANK];
    let rank = shape.len().min(MAX_RANK);
    s[..rank].copy_from_slice(&shape[..rank]);
    if rank > 0 {
        s[0] = n as i64;
    }
    (s, rank)
}

/// `[N, 3, 128, 128]`: a batched shape of one sample's `dims` (without the batch), for messages.
fn batched_shape(per_sample: &[u64]) -> String {
    std::iter::once("N".to_string()).chain(per_sample.iter().map(u64::to_string)).collect::<Vec<_>>().join(", ")
}

impl Signature {
    /// The signature of a model with `inputs` and `outputs`, serving requests
    /// of at most `max_bytes` of payload; or why protocol v2 cannot carry it
    /// (more than [`MAX_TENSORS`] tensors a side, a name over [`MAX_NAME_LEN`] bytes).
    pub fn new(inputs: &[TensorInfo], outputs: &[TensorInfo], max_bytes: usize) -> Result<Self, String> {
        Self::build(inputs, outputs, None, max_bytes)
    }

    /// The signature of a batched model: `inputs` and `outputs` are one
    /// sample's (each of rank ≥ 1, first dimension 1), and a request
    /// carries 1 to `max_batch` samples, the same number in every input;
    /// its response has that many in every output.
    pub fn batched(inputs: &[TensorInfo], outputs: &[TensorInfo], max_batch: usize, max_bytes: usize) -> Result<Self, String> {
        if max_batch == 0 {
            return Err("a batched signature needs max_batch ≥ 1".into());
        }
        if let Some(t) = inputs.iter().chain(outputs).find(|t| t.shape.first() != Some(&1)) {
            return Err(format!("tensor `{}` is {:?}: a batched signature takes one sample's shapes (first dimension 1)", t.name, t.shape));
        }
        Self::build(inputs, outputs, Some(max_batch), max_bytes)
    }

    fn build(inputs: &[TensorInfo], outputs: &[TensorInfo], max_batch: Option<usize>, max_bytes: usize) -> Result<Self, String> {
        // Laid out with `n` samples (batched), else as they are.
        let side = |what: &str, ts: &[TensorInfo], n: usize| {
            let shapes: Vec<([i64; MAX_RANK], usize)> = ts.iter().map(|t| if max_batch.is_some() { shape_with_batch(&t.shape, n) } else { shape_with_batch(&t.shape, t.shape.first().map_or(0, |&d| d as usize)) }).collect();
            layout(ts.iter().zip(&shapes).map(|(t, (s, rank))| (t.name.as_str(), t.dtype, &s[..*rank]))).map_err(|e| format!("the model's {what} ({}): {e}", ts.len()))
        };
        let largest = max_batch.unwrap_or(1);
        let expected = side("inputs", inputs, 1)?;
        let max_request_len = side("inputs", inputs, largest)?.len;
        let response = side("outputs", outputs, largest)?;
        Ok(Self { inputs: inputs.to_vec(), expected: expected.used().to_vec(), outputs: outputs.to_vec(), response, max_request_len, max_batch, max_bytes })
    }

    /// The inputs (batched: one sample's).
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    /// The outputs (batched: one sample's).
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// The most samples a request may carry, for a batched signature.
    pub fn max_batch(&self) -> Option<usize> {
        self.max_batch
    }

    /// The table of the response to a request placed as `placement`: the
    /// outputs in the model's order, each at its offset (batched: with the
    /// request's samples first). Allocates nothing.
    pub fn response(&self, placement: &Placement) -> Table {
        match placement.samples {
            Some(n) if Some(n) != self.max_batch => {
                let shapes: [([i64; MAX_RANK], usize); MAX_TENSORS] = std::array::from_fn(|i| self.outputs.get(i).map_or(([0; MAX_RANK], 0), |t| shape_with_batch(&t.shape, n)));
                // Fewer samples than max_batch, which `build` laid out: this cannot fail.
                layout(self.outputs.iter().zip(&shapes).map(|(t, (s, rank))| (t.name.as_str(), t.dtype, &s[..*rank]))).unwrap_or(self.response)
            }
            _ => self.response,
        }
    }

    /// Bytes of the largest response's payload (batched: of `max_batch` samples).
    pub fn max_response_len(&self) -> usize {
        self.response.len
    }

    /// Bytes of the largest request's payload (batched: of `max_batch` samples).
    pub fn max_request_len(&self) -> usize {
        self.max_request_len
    }

    /// `a: i64 [1, 32], b: f32 [1]`: the inputs, for messages.
    fn input_list(&self) -> String {
        crate::session::tensor_ref::list(&self.inputs)
    }

    /// Checks a request's table against the model and the payload of
    /// `payload_len` bytes it came with, before any of the payload is read:
    /// magic, version, kind, entry count; each entry's name (known, not
    /// repeated), dtype, rank and shape (the model's), length (the shape's
    /// bytes), offset (aligned, inside the payload, computed without
    /// overflow); no two entries overlapping; every input present; the
    /// payload within `--max-bytes`; the response within the client's
    /// `max_response_bytes`. Pure and allocation-free unless it fails: the
    /// fuzz test drives it.
    pub fn check_request(&self, h: &RequestHeaderV2, payload_len: usize) -> Result<Placement, String> {
        if h.magic != MAGIC {
            return Err(format!("bad magic 0x{:08x}: not a uminfer request", h.magic));
        }
        if h.version != PROTOCOL_V2 {
            return Err(format!("protocol version {} is not supported on this service; it speaks {PROTOCOL_V2}", h.version));
        }
        if h.kind != KIND_INFER {
            return Err(format!("request kind {} is not one of {KIND_INFER} (infer) and {KIND_DESCRIBE} (describe)", h.kind));
        }
        if payload_len > self.max_bytes {
            return Err(format!("the payload has {payload_len} bytes, above this server's limit of {} (--max-bytes)", self.max_bytes));
        }
        let count = h.count as usize;
        if count > MAX_TENSORS {
            return Err(format!("the table has {count} entries; protocol v2 carries at most {MAX_TENSORS}"));
        }
        let mut placement = Placement { spans: [(0, 0); MAX_TENSORS], samples: None };
        let mut seen: u32 = 0;
        for e in &h.tensors[..count] {
            if e.name_len as usize > MAX_NAME_LEN {
                return Err(format!("an entry's name_len is {}, above {MAX_NAME_LEN}", e.name_len));
            }
            let Some(i) = self.expected.iter().position(|x| x.name_bytes() == e.name_bytes()) else {
                return Err(format!("the model has no input `{}`; it takes {}", e.name_lossy(), self.input_list()));
            };
            let want = &self.expected[i];
            let info = &self.inputs[i];
            if seen & (1 << i) != 0 {
                return Err(format!("input `{}` is given twice", info.name));
            }
            seen |= 1 << i;
            if e.dtype != want.dtype {
                return Err(format!("input `{}` is {} {:?}; dtype {} given", info.name, info.dtype, info.shape, describe_code(e.dtype)));
            }
            if e.rank as usize > MAX_RANK {
                return Err(format!("input `{}`: rank {} is above {MAX_RANK}", info.name, e.rank));
            }
            if e.shape[e.rank as usize..].iter().any(|&d| d != 0) {
                return Err(format!("input `{}`: shape entries past rank {} must be 0; the entry has {:?}", info.name, e.rank, e.shape));
            }
            let samples = match self.max_batch {
                None => {
                    if e.dims() != want.dims() {
                        return Err(format!("input `{}` is {} {:?}; shape {:?} given", info.name, info.dtype, info.shape, e.dims()));
                    }
                    1
                }
                Some(max) => {
                    let (dims, per_sample) = (e.dims(), &want.dims()[1..]);
                    if dims.len() != want.dims().len() || &dims[1..] != per_sample {
                        return Err(format!("input `{}` is {} [{}] (N samples, 1 to {max}); shape {dims:?} given", info.name, info.dtype, batched_shape(per_sample)));
                    }
                    let n = dims[0];
                    if n == 0 || n > max as u64 {
                        return Err(format!("input `{}`: {n} samples given; this server takes 1 to {max} per request (--max-batch)", info.name));
                    }
                    match placement.samples {
                        Some(m) if m as u64 != n => {
                            return Err(format!("the inputs disagree on the samples: input `{}` has {n}, an earlier one {m}; every input's first dimension is the request's samples", info.name));
                        }
                        _ => placement.samples = Some(n as usize),
                    }
                    n
                }
            };
            // Both factors are bounded (a checked one-sample size, and max_batch or 1).
            let want_len = want.len.saturating_mul(samples);
            if e.len != want_len {
                return Err(format!("input `{}`: {} bytes given, its shape {:?} of {} takes {want_len}", info.name, e.len, e.dims(), info.dtype));
            }
            if e.offset % TENSOR_ALIGN as u64 != 0 {
                return Err(format!("input `{}`: offset {} is not a multiple of {TENSOR_ALIGN}", info.name, e.offset));
            }
            let end = e.offset.checked_add(e.len).filter(|&end| end <= payload_len as u64);
            let Some(end) = end else {
                return Err(format!("input `{}`: bytes {}..{} run past the payload of {payload_len} bytes", info.name, e.offset, e.offset as u128 + e.len as u128));
            };
            placement.spans[i] = (e.offset as usize, (end - e.offset) as usize);
        }
        let entries = &h.tensors[..count];
        for (a, ea) in entries.iter().enumerate() {
            for eb in &entries[a + 1..] {
                // Both lie inside the payload (checked above): no overflow.
                if ea.len > 0 && eb.len > 0 && ea.offset < eb.offset + eb.len && eb.offset < ea.offset + ea.len {
                    return Err(format!(
                        "inputs `{}` (bytes {}..{}) and `{}` (bytes {}..{}) overlap",
                        ea.name_lossy(),
                        ea.offset,
                        ea.offset + ea.len,
                        eb.name_lossy(),
                        eb.offset,
                        eb.offset + eb.len
                    ));
                }
            }
        }
        if seen.count_ones() as usize != self.inputs.len() {
            let missing: Vec<String> = self.inputs.iter().enumerate().filter(|(i, _)| seen & (1 << i) == 0).map(|(_, t)| format!("`{}`", t.name)).collect();
            return Err(format!("input {} not given; the model takes {}", missing.join(", "), self.input_list()));
        }
        let response_len = self.response(&placement).len;
        if h.max_response_bytes != 0 && response_len as u64 > h.max_response_bytes {
            return Err(format!(
                "the response takes {response_len} bytes ({}{}), more than the {} the request allows (max_response_bytes)",
                crate::session::tensor_ref::list(&self.outputs),
                placement.samples.map(|n| format!(" per sample, {n} samples")).unwrap_or_default(),
                h.max_response_bytes
            ));
        }
        Ok(placement)
    }

    /// The signature as a describe response's JSON: `protocol`, `inputs`
    /// and `outputs` (`name`, `dtype` as PyTorch names it, `shape`; inputs
    /// also `range`, `[low, high)` or null), `max_bytes`.
    pub fn describe(&self, ranges: &[Option<(i64, i64)>]) -> String {
        let tensor = |t: &TensorInfo| {
            let mut shape = t.shape.clone();
            if let (Some(_), Some(first)) = (self.max_batch, shape.first_mut()) {
                *first = -1;
            }
            serde_json::json!({"name": t.name, "dtype": t.dtype.torch_name(), "shape": shape})
        };
        let inputs: Vec<serde_json::Value> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut v = tensor(t);
                v["range"] = serde_json::json!(ranges.get(i).copied().flatten());
                v
            })
            .collect();
        let outputs: Vec<serde_json::Value> = self.outputs.iter().map(tensor).collect();
        let mut doc = serde_json::json!({"protocol": PROTOCOL_V2, "inputs": inputs, "outputs": outputs, "max_bytes": self.max_bytes});
        if let Some(n) = self.max_batch {
            doc["max_batch"] = serde_json::json!(n);
        }
        doc.to_string()
    }
}

/// A batching server's counters since it started, as its describe
/// response gives them (`"batch_counts"`): a client can take two and read
/// the batches formed between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchCounts {
    /// Requests answered with outputs.
    pub requests: u64,
    /// Requests refused (queue full, timeout, shutdown) or failed.
    pub refused: u64,
    /// Batches run.
    pub batches: u64,
    /// Samples run.
    pub samples: u64,
    /// Padding samples run (batches filled up to their bucket).
    pub padded: u64,
}

impl BatchCounts {
    /// The counters of a batcher's summary.
    pub fn of(s: &crate::batch::BatchSummary) -> Self {
        Self { requests: s.requests, refused: s.refused, batches: s.batches, samples: s.samples, padded: s.padded }
    }

    /// `describe` (a [`Signature::describe`] document) with these counters added.
    pub fn add_to(&self, describe: &str) -> String {
        match serde_json::from_str::<serde_json::Value>(describe) {
            Ok(mut doc) => {
                doc["batch_counts"] = serde_json::json!(self);
                doc.to_string()
            }
            Err(_) => describe.to_string(),
        }
    }

    /// What happened between `before` and `self` (counters only grow).
    pub fn since(&self, before: &Self) -> Self {
        Self {
            requests: self.requests.saturating_sub(before.requests),
            refused: self.refused.saturating_sub(before.refused),
            batches: self.batches.saturating_sub(before.batches),
            samples: self.samples.saturating_sub(before.samples),
            padded: self.padded.saturating_sub(before.padded),
        }
    }
}

/// A model's signature as a describe response gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    pub inputs: Vec<TensorInfo>,
    /// Each input's valid values, `[low, high)`, where the model records them.
    pub ranges: Vec<Option<(i64, i64)>>,
    pub outputs: Vec<TensorInfo>,
    /// The server's largest request payload.
    pub max_bytes: usize,
    /// A batched server's most samples per request: every tensor's first
    /// dimension is then the request's samples (`-1` in the shapes above).
    pub max_batch: Option<usize>,
    /// A batching server's counters as of the describe.
    pub batch_counts: Option<BatchCounts>,
}

impl Described {
    /// Parses [`Signature::describe`]'s JSON.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("unreadable signature: {e}"))?;
        type Tensors = Vec<(TensorInfo, Option<(i64, i64)>)>;
        let tensors = |key: &str| -> Result<Tensors, String> {
            v[key]
                .as_array()
                .ok_or_else(|| format!("the signature has no `{key}`"))?
                .iter()
                .map(|t| {
                    let name = t["name"].as_str().ok_or("a tensor without a name")?.to_string();
                    let dtype: DType = t["dtype"].as_str().ok_or("a tensor without a dtype")?.parse()?;
                    let shape = t["shape"].as_array().ok_or("a tensor without a shape")?.iter().map(|d| d.as_i64().ok_or("a dimension that is not an integer")).collect::<Result<Vec<_>, _>>()?;
                    let range = t["range"].as_array().and_then(|r| Some((r.first()?.as_i64()?, r.get(1)?.as_i64()?)));
                    Ok((TensorInfo { name, dtype, shape }, range))
                })
                .collect()
        };
        let (inputs, ranges) = tensors("inputs")?.into_iter().unzip();
        let outputs = tensors("outputs")?.into_iter().map(|(t, _)| t).collect();
        let max_bytes = v["max_bytes"].as_u64().and_then(|m| usize::try_from(m).ok()).ok_or("the signature has no `max_bytes`")?;
        let max_batch = match &v["max_batch"] {
            serde_json::Value::Null => None,
            n => Some(n.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|&n| n > 0).ok_or("`max_batch` is not a positive integer")?),
        };
        let batch_counts = match &v["batch_counts"] {
            serde_json::Value::Null => None,
            c => Some(serde_json::from_value(c.clone()).map_err(|e| format!("`batch_counts`: {e}"))?),
        };
        Ok(Self { inputs, ranges, outputs, max_bytes, max_batch, batch_counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_have_the_documented_layout() {
        assert_eq!((std::mem::size_of::<TensorEntry>(), std::mem::align_of::<TensorEntry>()), (152, 8));
        assert_eq!((std::mem::size_of::<RequestHeaderV2>(), std::mem::align_of::<RequestHeaderV2>()), (2456, 8));
        assert_eq!((std::mem::size_of::<ResponseHeaderV2>(), std::mem::align_of::<ResponseHeaderV2>()), (2712, 8));
        assert_eq!(std::mem::offset_of!(TensorEntry, shape), 72);
        assert_eq!(std::mem::offset_of!(TensorEntry, offset), 136);
        assert_eq!(std::mem::offset_of!(RequestHeaderV2, tensors), 24);
        assert_eq!(std::mem::offset_of!(ResponseHeaderV2, tensors), 24);
        assert_eq!(std::mem::offset_of!(ResponseHeaderV2, error), 2456);
    }

    #[test]
    fn every_dtype_has_a_code_and_back() {
        for d in DType::ALL {
            assert_eq!(dtype_of_code(dtype_code(d)), Some(d));
        }
        assert_eq!(dtype_of_code(0), None);
        assert_eq!(dtype_of_code(11), None);
    }

    #[test]
    fn tensors_are_laid_out_on_64_byte_boundaries() {
        let t = layout([("a", DType::F32, &[1, 3][..]), ("b", DType::I64, &[2][..]), ("c", DType::Bool, &[][..])]).unwrap();
        assert_eq!(t.used().iter().map(|e| (e.offset, e.len)).collect::<Vec<_>>(), [(0, 12), (64, 16), (128, 1)]);
        assert_eq!(t.len, 129);
        let long = "n".repeat(MAX_NAME_LEN + 1);
        assert!(layout([(long.as_str(), DType::F32, &[1][..])]).unwrap_err().contains("at most 64"));
        let many: Vec<String> = (0..=MAX_TENSORS).map(|i| format!("t{i}")).collect();
        assert!(layout(many.iter().map(|n| (n.as_str(), DType::F32, &[1][..]))).unwrap_err().contains("at most 16 tensors"));
    }

    #[test]
    fn a_batched_signature_takes_1_to_max_batch_samples_the_same_in_every_input() {
        let info = |name: &str, dtype, shape: &[i64]| TensorInfo { name: name.into(), dtype, shape: shape.to_vec() };
        let ins = [info("ids", DType::I64, &[1, 4]), info("mask", DType::I64, &[1, 4])];
        let outs = [info("y", DType::F32, &[1, 3]), info("pooled", DType::F32, &[1])];
        let s = Signature::batched(&ins, &outs, 4, 1 << 20).unwrap();
        assert_eq!((s.max_batch(), s.max_request_len(), s.max_response_len()), (Some(4), 128 + 128, 64 + 16));
        let request = |a: i64, b: i64| {
            let t = layout([("ids", DType::I64, &[a, 4][..]), ("mask", DType::I64, &[b, 4][..])]).unwrap();
            let mut h = t.request();
            h.magic = MAGIC;
            h.version = PROTOCOL_V2;
            (h, t.len)
        };
        let (h, len) = request(2, 2);
        let p = s.check_request(&h, len).unwrap();
        assert_eq!(p.samples, Some(2));
        let r = s.response(&p);
        assert_eq!(r.used().iter().map(|e| (e.dims().to_vec(), e.offset, e.len)).collect::<Vec<_>>(), [(vec![2, 3], 0, 24), (vec![2], 64, 8)]);
        assert_eq!(r.len, 72);
        let (h, len) = request(4, 4);
        assert_eq!(s.response(&s.check_request(&h, len).unwrap()).len, s.max_response_len());
        for (a, b, want) in [(5, 5, "5 samples given; this server takes 1 to 4"), (0, 0, "0 samples given"), (2, 3, "the inputs disagree on the samples: input `mask` has 3, an earlier one 2")] {
            let (h, len) = request(a, b);
            let e = s.check_request(&h, len).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let t = layout([("ids", DType::I64, &[2, 5][..]), ("mask", DType::I64, &[2, 4][..])]).unwrap();
        let mut h = t.request();
        (h.magic, h.version) = (MAGIC, PROTOCOL_V2);
        assert!(s.check_request(&h, t.len).unwrap_err().contains("input `ids` is i64 [N, 4] (N samples, 1 to 4); shape [2, 5] given"));
        let (mut h, len) = request(2, 2);
        h.tensors[1].len -= 8;
        assert!(s.check_request(&h, len).unwrap_err().contains("input `mask`: 56 bytes given, its shape [2, 4] of i64 takes 64"));
        let (mut h, len) = request(3, 3);
        h.max_response_bytes = 64;
        assert!(s.check_request(&h, len).unwrap_err().contains("per sample, 3 samples"));
        let described = Described::parse(s.describe(&[None, None]).as_bytes()).unwrap();
        assert_eq!((described.max_batch, described.batch_counts), (Some(4), None));
        assert!(described.inputs.iter().chain(&described.outputs).all(|t| t.shape[0] == -1), "{described:?}");
        // A batching server's describe carries its counters.
        let counts = BatchCounts { requests: 7, refused: 1, batches: 3, samples: 9, padded: 3 };
        let with = Described::parse(counts.add_to(&s.describe(&[None, None])).as_bytes()).unwrap();
        assert_eq!((with.max_batch, with.batch_counts), (Some(4), Some(counts)));
        let later = BatchCounts { requests: 10, batches: 4, samples: 13, ..counts };
        assert_eq!(later.since(&counts), BatchCounts { requests: 3, refused: 0, batches: 1, samples: 4, padded: 0 });
        assert!(Described::parse(br#"{"inputs":[],"outputs":[],"max_bytes":1,"batch_counts":{"requests":-1}}"#).unwrap_err().contains("batch_counts"));
        assert!(Signature::batched(&[info("x", DType::F32, &[2, 4])], &outs, 4, 1 << 20).unwrap_err().contains("one sample's shapes"));
        assert!(Signature::batched(&[info("x", DType::F32, &[])], &outs, 4, 1 << 20).is_err());
    }

    #[test]
    fn the_description_round_trips() {
        let i = [TensorInfo { name: "ids".into(), dtype: DType::I64, shape: vec![1, 4] }, TensorInfo { name: "x".into(), dtype: DType::Bf16, shape: vec![] }];
        let o = [TensorInfo { name: "output__1.0".into(), dtype: DType::Bool, shape: vec![2] }];
        let s = Signature::new(&i, &o, 1 << 20).unwrap();
        let d = Described::parse(s.describe(&[Some((0, 100)), None]).as_bytes()).unwrap();
        assert_eq!(d, Described { inputs: i.to_vec(), ranges: vec![Some((0, 100)), None], outputs: o.to_vec(), max_bytes: 1 << 20, max_batch: None, batch_counts: None });
    }
}
