//! [`Client`]: sends named tensors of any dtype to a `uminfer serve`
//! endpoint through shared memory (protocol v2).
//!
//! The request is written straight into the loaned shared-memory sample (in
//! one pass by [`Client::infer_with`], or ahead of time into a
//! [`LoanedRequest`] from [`Client::loan`]); the response is read in place
//! ([`Response`]). At connect the client asks the server for the model's
//! signature ([`Client::inputs`], [`Client::outputs`]). Waiting: a short
//! poll, then the response-event listener (named after this client's id, so
//! the server wakes only this client). A server that died is noticed by
//! cleaning up dead nodes on the waiting path: [`Error::ServerGone`] within
//! the timeout, never a hang.

use super::header::{Status, MAGIC, MAX_RANK};
use super::service::{self, Ipc, Names, ServiceV2};
use super::table::{dtype_code, dtype_of_code, layout, Described, RequestHeaderV2, ResponseHeaderV2, Table, TensorEntry, KIND_DESCRIBE, PROTOCOL_V2};
use crate::dtype::DType;
use crate::error::{Error, IpcErrorKind, Result};
use crate::host_tensor::HostTensor;
use crate::memory::Element;
use crate::model::TensorInfo;
use iceoryx2::prelude::*;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

pub use crate::tuning::{CLIENT_SPIN, MAX_CLIENT_SPIN};

type RequestSample = iceoryx2::request_mut::RequestMut<Ipc, [u8], RequestHeaderV2, [u8], ResponseHeaderV2>;
type ResponseSample = iceoryx2::response::Response<Ipc, [u8], ResponseHeaderV2>;

/// A named tensor's bytes in memory the caller (or a response) owns: what
/// [`Client::infer_with`] sends and what a [`Response`] holds.
#[derive(Debug, Clone, Copy)]
pub struct NamedTensor<'a> {
    name: &'a str,
    dtype: DType,
    rank: u8,
    shape: [i64; MAX_RANK],
    bytes: &'a [u8],
}

impl<'a> NamedTensor<'a> {
    /// Tensor `name` of `shape` over `values`.
    pub fn new<T: Element>(name: &'a str, shape: &[i64], values: &'a [T]) -> Result<Self> {
        // SAFETY: `values` is a slice of plain elements without padding
        // (Element); its bytes are initialised and live for 'a.
        let bytes = unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) };
        Self::from_bytes(name, T::DTYPE, shape, bytes)
    }

    /// Tensor `name` of `dtype` and `shape` over `bytes` (exactly the
    /// shape's elements; a bool tensor's bytes 0 or 1).
    pub fn from_bytes(name: &'a str, dtype: DType, shape: &[i64], bytes: &'a [u8]) -> Result<Self> {
        let bad = |what: String| Error::Argument(format!("tensor `{name}`: {what}"));
        if shape.len() > MAX_RANK || shape.iter().any(|&d| d < 0) {
            return Err(bad(format!("shape {shape:?} cannot be sent (rank 0..={MAX_RANK}, no negative dimension)")));
        }
        let want = crate::host_tensor::numel(shape)?.checked_mul(dtype.size()).ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        if bytes.len() != want {
            return Err(bad(format!("{} bytes for {dtype} {shape:?}, which takes {want}", bytes.len())));
        }
        if dtype == DType::Bool {
            if let Some(b) = bytes.iter().find(|&&b| b > 1) {
                return Err(bad(format!("bool elements are 0 or 1, found the byte {b}")));
            }
        }
        let mut s = [0; MAX_RANK];
        s[..shape.len()].copy_from_slice(shape);
        Ok(Self { name, dtype, rank: shape.len() as u8, shape: s, bytes })
    }

    /// A view of `t`.
    pub fn of(t: &'a HostTensor) -> Result<Self> {
        Self::from_bytes(&t.name, t.dtype, &t.shape, t.bytes())
    }

    pub fn name(&self) -> &'a str {
        self.name
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape[..self.rank as usize]
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The elements as `T` (in place), checking the dtype; fails when the
    /// bytes are not aligned for `T` (never in a response: every tensor
    /// there starts on a 64-byte boundary).
    pub fn values<T: Element>(&self) -> Result<&'a [T]> {
        if T::DTYPE != self.dtype {
            return Err(Error::DType { tensor: self.name.to_string(), expected: self.dtype, given: T::DTYPE });
        }
        if !(self.bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(Error::Argument(format!("tensor `{}`: its bytes are not aligned for {}", self.name, T::NAME)));
        }
        // SAFETY: the bytes hold exactly `len / size_of::<T>()` elements of
        // T's dtype (checked at construction), aligned (checked above), any
        // bit pattern valid (Element), borrowed for 'a.
        Ok(unsafe { std::slice::from_raw_parts(self.bytes.as_ptr().cast::<T>(), self.bytes.len() / std::mem::size_of::<T>()) })
    }

    /// An owned copy.
    pub fn to_host(&self) -> Result<HostTensor> {
        HostTensor::new(self.name, self.dtype, self.shape(), self.bytes.to_vec())
    }
}

/// A response read in place from shared memory: the model's outputs, in its
/// order, each where the response's table says (checked on arrival).
pub struct Response<'a> {
    header: &'a ResponseHeaderV2,
    payload: &'a [u8],
}

impl<'a> Response<'a> {
    /// Checks the table of an `Ok` response against its payload: every
    /// entry a valid name, dtype and shape whose bytes lie inside the payload.
    fn checked(header: &'a ResponseHeaderV2, payload: &'a [u8]) -> Result<Self> {
        let bad = |what: String| Error::ipc(IpcErrorKind::Protocol, format!("malformed response: {what}"));
        if header.count as usize > header.tensors.len() {
            return Err(bad(format!("{} table entries", header.count)));
        }
        for e in header.entries() {
            std::str::from_utf8(e.name_bytes()).map_err(|_| bad("a tensor name that is not UTF-8".into()))?;
            let dtype = dtype_of_code(e.dtype).ok_or_else(|| bad(format!("dtype code {}", e.dtype)))?;
            if e.rank as usize > MAX_RANK {
                return Err(bad(format!("rank {}", e.rank)));
            }
            let len = e.dims().iter().try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d));
            let end = e.offset.checked_add(e.len);
            if len != Some(e.len) || end.is_none_or(|end| end > payload.len() as u64) || !e.offset.is_multiple_of(super::table::TENSOR_ALIGN as u64) {
                return Err(bad(format!("entry {:?} does not fit the payload of {} bytes", String::from_utf8_lossy(e.name_bytes()), payload.len())));
            }
            if dtype == DType::Bool && payload[e.offset as usize..end.unwrap_or(0) as usize].iter().any(|&b| b > 1) {
                return Err(bad("a bool output with bytes other than 0 and 1".into()));
            }
        }
        Ok(Self { header, payload })
    }

    /// Number of outputs.
    pub fn len(&self) -> usize {
        self.header.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Output `i` (in the model's order).
    pub fn tensor(&self, i: usize) -> Option<NamedTensor<'a>> {
        let e: &'a TensorEntry = self.header.entries().get(i)?;
        let mut shape = [0; MAX_RANK];
        for (s, &d) in shape.iter_mut().zip(e.dims()) {
            *s = d as i64;
        }
        let (start, end) = (e.offset as usize, (e.offset + e.len) as usize);
        Some(NamedTensor {
            // Checked on arrival (`checked`): UTF-8, a dtype, bytes inside the payload.
            name: std::str::from_utf8(e.name_bytes()).unwrap_or_default(),
            dtype: dtype_of_code(e.dtype).unwrap_or(DType::U8),
            rank: e.rank,
            shape,
            bytes: &self.payload[start..end],
        })
    }

    /// The output named `name`.
    pub fn get(&self, name: &str) -> Option<NamedTensor<'a>> {
        (0..self.len()).find(|&i| self.header.tensors[i].name_bytes() == name.as_bytes()).and_then(|i| self.tensor(i))
    }

    /// The outputs in order.
    pub fn tensors(&self) -> impl Iterator<Item = NamedTensor<'a>> + '_ {
        (0..self.len()).filter_map(|i| self.tensor(i))
    }

    /// Owned copies of the outputs, in order.
    pub fn to_host(&self) -> Result<Vec<HostTensor>> {
        self.tensors().map(|t| t.to_host()).collect()
    }
}

/// A request loaned ahead of sending ([`Client::loan`],
/// [`Client::loan_tensors`]): its tensors live in shared memory, where the
/// caller writes them ([`bytes_mut`](Self::bytes_mut),
/// [`values_mut`](Self::values_mut), [`write`](Self::write)) whenever it
/// likes; [`Client::send`] then sends it with no copy. Dropping it unsent
/// returns the sample.
pub struct LoanedRequest {
    sample: RequestSample,
    /// The client that loaned it (a sample belongs to that client's port).
    owner: iceoryx2::identifiers::UniqueClientId,
}

impl LoanedRequest {
    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.sample.user_header().count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of tensor `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.sample.user_header().entries().iter().position(|e| e.name_bytes() == name.as_bytes())
    }

    /// Tensor `i`'s entry (name, dtype, shape, offset, length).
    pub fn entry(&self, i: usize) -> Option<&TensorEntry> {
        self.sample.user_header().entries().get(i)
    }

    fn span(&self, i: usize) -> Result<(DType, usize, usize)> {
        let e = self.entry(i).ok_or_else(|| Error::Argument(format!("the request has {} tensors, no number {i}", self.len())))?;
        // Entries were laid out by the client (`layout`): a known dtype, inside the payload.
        Ok((dtype_of_code(e.dtype).unwrap_or(DType::U8), e.offset as usize, (e.offset + e.len) as usize))
    }

    /// Tensor `i`'s bytes, in shared memory (zeroed when loaned). A bool
    /// tensor's bytes must be 0 or 1, or the server refuses the request.
    pub fn bytes_mut(&mut self, i: usize) -> Result<&mut [u8]> {
        let (_, start, end) = self.span(i)?;
        Ok(&mut self.sample.payload_mut()[start..end])
    }

    /// Tensor `i`'s elements as `T`, checking the dtype.
    pub fn values_mut<T: Element>(&mut self, i: usize) -> Result<&mut [T]> {
        let (dtype, start, end) = self.span(i)?;
        if dtype != T::DTYPE {
            let name = String::from_utf8_lossy(self.entry(i).map_or(&[][..], |e| e.name_bytes())).into_owned();
            return Err(Error::DType { tensor: name, expected: dtype, given: T::DTYPE });
        }
        let bytes = &mut self.sample.payload_mut()[start..end];
        // SAFETY: the payload starts on a 64-byte boundary and the tensor at
        // a multiple of 64 from it (the service's alignment, `layout`), so
        // the bytes are aligned for T; they hold `len / size_of::<T>()`
        // elements of T's dtype, initialised (zeroed or written), any bit
        // pattern valid (Element); the borrow of `self` is exclusive.
        Ok(unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / std::mem::size_of::<T>()) })
    }

    /// Copies `t` into the tensor of its name, checking dtype and shape.
    pub fn write(&mut self, t: &NamedTensor<'_>) -> Result<()> {
        let i = self.index(t.name()).ok_or_else(|| Error::Argument(format!("the request has no tensor `{}`", t.name())))?;
        let e = self.entry(i).copied().unwrap_or(TensorEntry::EMPTY);
        let dims_match = e.dims().len() == t.shape().len() && e.dims().iter().zip(t.shape()).all(|(&a, &b)| a as i64 == b);
        if e.dtype != dtype_code(t.dtype()) || !dims_match {
            return Err(Error::Argument(format!("tensor `{}` of the request is {:?} {:?}; {} {:?} given", t.name(), dtype_of_code(e.dtype), e.dims(), t.dtype(), t.shape())));
        }
        self.bytes_mut(i)?.copy_from_slice(t.bytes());
        Ok(())
    }
}

/// A connection to one endpoint (protocol v2).
///
/// ```no_run
/// // Beside `uminfer serve --model models/encoder.pt --name encoder`:
/// use std::time::Duration;
/// use uminfer::ipc::{Client, NamedTensor};
///
/// let mut c = Client::connect("encoder", Duration::from_secs(5))?;
/// let (ids, mask) = (vec![7i64; 32], vec![1i64; 32]);
/// let outputs = c.infer_tensors(&[
///     NamedTensor::new("input_ids", &[1, 32], &ids)?,
///     NamedTensor::new("attention_mask", &[1, 32], &mask)?,
/// ])?;
/// println!("{}: {:?}", outputs[0].name, outputs[0].shape);
/// # Ok::<(), uminfer::Error>(())
/// ```
pub struct Client {
    names: Names,
    timeout: Duration,
    next_id: u64,
    /// Smoothed response time of recent requests.
    typical: Duration,
    /// The model's signature, as the server described it at connect.
    described: Described,
    // Field order is drop order: ports before the service and node.
    port: iceoryx2::port::client::Client<Ipc, [u8], RequestHeaderV2, [u8], ResponseHeaderV2>,
    notifier: iceoryx2::port::notifier::Notifier<Ipc>,
    listener: iceoryx2::port::listener::Listener<Ipc>,
    service: ServiceV2,
    node: Node<Ipc>,
}

impl Client {
    /// Connects to endpoint `name`, waiting up to `timeout` for a server to
    /// appear, and asks it for the model's signature. `timeout` also bounds
    /// every request.
    pub fn connect(name: &str, timeout: Duration) -> Result<Self> {
        let names = service::names(name)?;
        let node = service::node(&format!("uminfer-client-{}", std::process::id()))?;
        let deadline = Instant::now() + timeout;
        let service = loop {
            match service::service_v2(&node, &names, false) {
                Ok(s) if s.dynamic_config().number_of_servers() > 0 => break s,
                Ok(_) | Err(Error::ServerGone(_)) if Instant::now() < deadline => {
                    service::cleanup_dead_nodes(&node);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(_) | Err(Error::ServerGone(_)) => return Err(no_v2_server(&node, &names, timeout)),
                Err(e) => return Err(e),
            }
        };
        let port = service
            .client_builder()
            .initial_max_slice_len(1)
            .allocation_strategy(AllocationStrategy::PowerOfTwo)
            .create()
            .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("client port: {e}")))?;
        let notifier = service::request_events(&node, &names)?
            .notifier_builder()
            .create()
            .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("request notifier: {e}")))?;
        let listener_name = PortName::new(&format!("{}", port.id())).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("listener name: {e:?}")))?;
        let listener = service::response_events(&node, &names)?
            .listener_builder()
            .name(&listener_name)
            .create()
            .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("response listener: {e}")))?;
        let empty = Described { inputs: Vec::new(), ranges: Vec::new(), outputs: Vec::new(), max_bytes: 0, max_batch: None, batch_counts: None };
        let mut c = Self { names, timeout, next_id: 1, typical: Duration::ZERO, described: empty, port, notifier, listener, service, node };
        c.described = c.describe()?;
        Ok(c)
    }

    /// The model's inputs, in its order (as the server described them at
    /// connect; a batching server's with `-1` as the first dimension).
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.described.inputs
    }

    /// Each input's valid values, `[low, high)`, where the model records them.
    pub fn input_ranges(&self) -> &[Option<(i64, i64)>] {
        &self.described.ranges
    }

    /// The model's outputs, in its order.
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.described.outputs
    }

    /// A batching server's most samples per request (`uminfer serve
    /// --max-batch`): every input's first dimension is then the request's
    /// samples, 1 to this, the same in every input.
    pub fn max_batch(&self) -> Option<usize> {
        self.described.max_batch
    }

    /// Asks the server for the model's signature again.
    pub fn describe(&mut self) -> Result<Described> {
        let h = RequestHeaderV2 { kind: KIND_DESCRIBE, ..RequestHeaderV2::default() };
        let req = self.loan_sample(&h, 0, |_| {})?;
        self.send_sample(req, |_: &ResponseHeaderV2, payload: &[u8]| Described::parse(payload).map_err(|e| Error::ipc(IpcErrorKind::Protocol, format!("the server's signature: {e}"))))?
    }

    /// Sends `inputs` (one per model input, by name, in any order; a lone
    /// tensor with an empty name goes to a one-input model's input) and
    /// returns copies of the outputs, in the model's order.
    pub fn infer_tensors(&mut self, inputs: &[NamedTensor<'_>]) -> Result<Vec<HostTensor>> {
        self.infer_with(inputs, |r| r.to_host())?
    }

    /// Like [`infer_tensors`](Self::infer_tensors) but reads the response
    /// in place with `read`. Each input is copied into the shared-memory
    /// sample in one pass.
    pub fn infer_with<R>(&mut self, inputs: &[NamedTensor<'_>], read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
        let only = match (inputs, self.described.inputs.as_slice()) {
            ([t], [m]) if t.name().is_empty() => Some(m.name.as_str()),
            _ => None,
        };
        let table = layout(inputs.iter().map(|t| (only.unwrap_or(t.name()), t.dtype(), t.shape()))).map_err(Error::Argument)?;
        let req = self.loan_sample(&table.request(), table.len, |payload| {
            let mut pos = 0;
            for (e, t) in table.used().iter().zip(inputs) {
                let start = e.offset as usize;
                payload[pos..start].fill(MaybeUninit::new(0));
                write_bytes(&mut payload[start..start + t.bytes().len()], t.bytes());
                pos = start + t.bytes().len();
            }
        })?;
        self.send_sample(req, |h, payload| Response::checked(h, payload).map(read))?
    }

    /// Loans a request for the model's own inputs (as described at
    /// connect; from a batching server, one sample), zeroed: the caller
    /// fills it in shared memory, at leisure, and sends it with
    /// [`send`](Self::send). At most two may be loaned at a time.
    pub fn loan(&mut self) -> Result<LoanedRequest> {
        let one_sample = |t: &TensorInfo| -> Vec<i64> { t.shape.iter().enumerate().map(|(i, &d)| if i == 0 && self.described.max_batch.is_some() { 1 } else { d }).collect() };
        let shapes: Vec<Vec<i64>> = self.described.inputs.iter().map(one_sample).collect();
        let table = layout(self.described.inputs.iter().zip(&shapes).map(|(t, s)| (t.name.as_str(), t.dtype, s.as_slice()))).map_err(Error::Argument)?;
        self.loan_table(&table)
    }

    /// Loans a request of the tensors `(name, dtype, shape)`, zeroed (see [`loan`](Self::loan)).
    pub fn loan_tensors(&mut self, tensors: &[(&str, DType, &[i64])]) -> Result<LoanedRequest> {
        self.loan_table(&layout(tensors.iter().copied()).map_err(Error::Argument)?)
    }

    fn loan_table(&mut self, table: &Table) -> Result<LoanedRequest> {
        let sample = self.loan_sample(&table.request(), table.len, |payload| payload.fill(MaybeUninit::new(0)))?;
        Ok(LoanedRequest { sample, owner: self.port.id() })
    }

    /// Sends a request [`loan`](Self::loan)ed from this client and reads the
    /// response in place with `read`.
    pub fn send<R>(&mut self, request: LoanedRequest, read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
        if request.owner != self.port.id() {
            return Err(Error::ipc(IpcErrorKind::Invalid, "this request was loaned from another client: send it with the client that loaned it"));
        }
        let mut sample = request.sample;
        // Each send is a request of its own: a fresh id.
        sample.user_header_mut().request_id = self.take_id();
        self.send_sample(sample, |h, payload| Response::checked(h, payload).map(read))?
    }

    /// Sends `payload` under a header the caller built (any field, any
    /// table): for protocol tests. `request_id` is set by the client; the
    /// response's outputs are copied out.
    pub fn send_raw(&mut self, header: RequestHeaderV2, payload: &[u8]) -> Result<Vec<HostTensor>> {
        let req = self.loan_sample(&header, payload.len(), |dst| {
            write_bytes(dst, payload);
        })?;
        self.send_sample(req, |h, p| Response::checked(h, p).and_then(|r| r.to_host()))?
    }

    /// Tracks the typical response time (a quarter of the way to each new
    /// one: one outlier does not swing it).
    fn learn(&mut self, took: Duration) {
        self.typical = (self.typical * 3 + took) / 4;
    }

    /// How long to poll before sleeping: 1.5 × the typical response (at least
    /// [`CLIENT_SPIN`]) when that fits in [`MAX_CLIENT_SPIN`], so a response
    /// that comes that fast is caught without a wake-up; else none.
    fn spin(&self) -> Duration {
        let want = (self.typical * 3 / 2).max(CLIENT_SPIN);
        if want <= MAX_CLIENT_SPIN {
            want
        } else {
            Duration::ZERO
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Loans a sample of `len` bytes under `header` (with the next request
    /// id); `fill` must initialise every byte of the payload.
    fn loan_sample(&mut self, header: &RequestHeaderV2, len: usize, fill: impl FnOnce(&mut [MaybeUninit<u8>])) -> Result<RequestSample> {
        let mut req = self.port.loan_slice_uninit(len).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("loaning {len} bytes of shared memory: {e}")))?;
        *req.user_header_mut() = RequestHeaderV2 { request_id: self.take_id(), ..*header };
        fill(req.payload_mut());
        // SAFETY: `fill` initialised every byte of the payload (each caller
        // above writes the whole slice: tensors, and zeros between them).
        Ok(unsafe { req.assume_init() })
    }

    /// Sends a filled sample and waits for its response; `read` gets an
    /// `Ok` response's header and payload, an error status is [`Error::Remote`].
    fn send_sample<R>(&mut self, req: RequestSample, read: impl FnOnce(&ResponseHeaderV2, &[u8]) -> R) -> Result<R> {
        let id = req.user_header().request_id;
        if self.service.dynamic_config().number_of_servers() == 0 {
            service::cleanup_dead_nodes(&self.node);
            return Err(Error::ServerGone(format!("no server serves {}", self.names.service_v2)));
        }
        let pending = req.send().map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("sending: {e}")))?;
        self.notifier.notify().map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("notifying the server: {e}")))?;
        let start = Instant::now();
        let deadline = start + self.timeout;
        let spin = self.spin();
        let mut last_check = start;
        loop {
            if let Some(resp) = pending.receive().map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("receiving: {e}")))? {
                self.learn(start.elapsed());
                return answer(&resp, id, read);
            }
            if !pending.is_connected() {
                // The server may have sent the response and dropped the request
                // between the receive above and this check: look once more.
                if let Some(resp) = pending.receive().map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("receiving: {e}")))? {
                    return answer(&resp, id, read);
                }
                return Err(Error::ServerGone(format!("{} dropped the request without answering", self.names.service_v2)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(self.timeout));
            }
            if now - start < spin {
                // Yield rather than burn: on small machines the server's model
                // threads need this core more than we do.
                std::thread::yield_now();
                continue;
            }
            if now - last_check > Duration::from_millis(200) {
                last_check = now;
                service::cleanup_dead_nodes(&self.node);
                if self.service.dynamic_config().number_of_servers() == 0 {
                    return Err(Error::ServerGone(format!("the server of {} died", self.names.service_v2)));
                }
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            self.listener.timed_wait(|_| {}, wait).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("waiting for the response: {e:?}")))?;
        }
    }
}

/// Copies `src` into `dst`, of the same length (what `write_copy_of_slice`
/// does from Rust 1.93, above this crate's minimum).
fn write_bytes(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copying into a slice of another length");
    // SAFETY: both slices hold `src.len()` bytes (asserted); `dst` is
    // exclusively borrowed, so they do not overlap; MaybeUninit<u8> has u8's
    // layout, and writing initialised bytes into it is always valid.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<u8>(), src.len()) };
}

/// Why no v2 server was found: none at all, or one that speaks protocol v1 only.
fn no_v2_server(node: &Node<Ipc>, names: &Names, waited: Duration) -> Error {
    let v1_only = service::service_v1(node, names, false).is_ok_and(|s| s.dynamic_config().number_of_servers() > 0);
    if v1_only {
        Error::ServerGone(format!(
            "{} is served with protocol v1 only (a `uminfer serve` from before protocol v2): this client speaks protocol v2 ({}); upgrade the server",
            names.service, names.service_v2
        ))
    } else {
        Error::ServerGone(format!("no live server serves {} (waited {waited:?})", names.service_v2))
    }
}

/// Reads a response: checks it answers request `id`, maps error statuses.
fn answer<R>(resp: &ResponseSample, id: u64, read: impl FnOnce(&ResponseHeaderV2, &[u8]) -> R) -> Result<R> {
    let h = resp.user_header();
    if h.magic != MAGIC || h.version != PROTOCOL_V2 {
        return Err(Error::ipc(IpcErrorKind::Protocol, format!("the server answered with magic 0x{:08x} version {}", h.magic, h.version)));
    }
    if h.request_id != id {
        return Err(Error::ipc(IpcErrorKind::Protocol, format!("response to request {} arrived for request {id}", h.request_id)));
    }
    match h.status {
        s if s == Status::Ok as u16 => Ok(read(h, resp.payload())),
        s => Err(Error::Remote { status: Status::describe(s), message: h.error_text() }),
    }
}
