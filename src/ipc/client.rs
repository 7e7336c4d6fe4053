//! [`Client`]: sends tensors to a `uminfer serve` endpoint through shared memory.
//!
//! The request is written straight into the loaned shared-memory sample (in
//! place with [`Client::infer_in_place`], or ahead of time into a
//! [`LoanedRequest`] from [`Client::loan`]); the response is read in place.
//! Waiting: a short poll, then the response-event listener (named after this
//! client's id, so the server wakes only this client). A server that died is
//! noticed by cleaning up dead nodes on the waiting path: [`Error::ServerGone`]
//! within the timeout, never a hang.

use super::header::{RequestHeader, ResponseHeader, Status};
use super::service::{self, Ipc, Names, TensorService};
use crate::error::{Error, Result};
use iceoryx2::prelude::*;
use std::time::{Duration, Instant};

/// Least time a client polls for its response (yielding the CPU between
/// polls) before sleeping on its listener, while responses are short.
pub const CLIENT_SPIN: Duration = Duration::from_micros(200);
/// Most time a client polls before sleeping. When its typical response takes
/// longer than two thirds of this, the client sleeps at once: a wake-up
/// (25–150 µs) is small beside such a request, and the core is the server's.
pub const MAX_CLIENT_SPIN: Duration = Duration::from_millis(2);

/// A loaned, filled request sample.
type RequestSample = iceoryx2::request_mut::RequestMut<Ipc, [f32], RequestHeader, [f32], ResponseHeader>;

/// A request loaned ahead of sending ([`Client::loan`]): its elements live in
/// shared memory, where the caller writes them ([`data_mut`](Self::data_mut))
/// whenever it likes; [`Client::send`] then sends it with no copy. Dropping
/// it unsent returns the sample.
pub struct LoanedRequest {
    sample: RequestSample,
    /// The client that loaned it (a sample belongs to that client's port).
    owner: iceoryx2::identifiers::UniqueClientId,
}

impl LoanedRequest {
    /// The request's elements, in shared memory (zeroed when loaned).
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.sample.payload_mut()
    }

    /// The request's elements.
    pub fn data(&self) -> &[f32] {
        self.sample.payload()
    }
}

/// A connection to one endpoint.
pub struct Client {
    names: Names,
    timeout: Duration,
    next_id: u64,
    /// Smoothed response time of recent requests.
    typical: Duration,
    // Field order is drop order: ports before the service and node.
    port: iceoryx2::port::client::Client<Ipc, [f32], RequestHeader, [f32], ResponseHeader>,
    notifier: iceoryx2::port::notifier::Notifier<Ipc>,
    listener: iceoryx2::port::listener::Listener<Ipc>,
    service: TensorService,
    node: Node<Ipc>,
}

/// A response read in place from shared memory.
pub struct Response<'a> {
    /// Output shape.
    pub shape: Vec<i64>,
    /// Output elements (in the shared-memory sample).
    pub data: &'a [f32],
}

impl Client {
    /// Connects to endpoint `name`, waiting up to `timeout` for a server to
    /// appear. `timeout` also bounds every request.
    pub fn connect(name: &str, timeout: Duration) -> Result<Self> {
        let names = service::names(name)?;
        let node = service::node(&format!("uminfer-client-{}", std::process::id()))?;
        let deadline = Instant::now() + timeout;
        let service = loop {
            match service::tensor_service(&node, &names, false) {
                Ok(s) if s.dynamic_config().number_of_servers() > 0 => break s,
                Ok(_) | Err(Error::ServerGone(_)) if Instant::now() < deadline => {
                    service::cleanup_dead_nodes(&node);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(_) => return Err(Error::ServerGone(format!("no live server serves {} (waited {timeout:?})", names.service))),
                Err(e) => return Err(e),
            }
        };
        let port = service
            .client_builder()
            .initial_max_slice_len(1)
            .allocation_strategy(AllocationStrategy::PowerOfTwo)
            .create()
            .map_err(|e| Error::Ipc(format!("client port: {e}")))?;
        let notifier = service::request_events(&node, &names)?
            .notifier_builder()
            .create()
            .map_err(|e| Error::Ipc(format!("request notifier: {e}")))?;
        let listener_name = PortName::new(&format!("{}", port.id())).map_err(|e| Error::Ipc(format!("listener name: {e:?}")))?;
        let listener = service::response_events(&node, &names)?
            .listener_builder()
            .name(&listener_name)
            .create()
            .map_err(|e| Error::Ipc(format!("response listener: {e}")))?;
        Ok(Self { names, timeout, next_id: 1, typical: Duration::ZERO, port, notifier, listener, service, node })
    }

    /// Sends `input` (shape `shape`) and returns the output shape and a copy of the output.
    pub fn infer(&mut self, shape: &[i64], input: &[f32]) -> Result<(Vec<i64>, Vec<f32>)> {
        self.request(shape, Fill::<fn(&mut [f32])>::From(input), |r| (r.shape, r.data.to_vec()))
    }

    /// Like [`infer`](Self::infer) but reads the response in place with `read`
    /// (the input is copied into the shared-memory sample in one pass).
    pub fn infer_with<R>(&mut self, shape: &[i64], input: &[f32], read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
        self.request(shape, Fill::<fn(&mut [f32])>::From(input), read)
    }

    /// The zero-copy form: `fill` writes the request directly into the
    /// shared-memory sample, `read` reads the response where it lies.
    pub fn infer_in_place<R>(&mut self, shape: &[i64], fill: impl FnOnce(&mut [f32]), read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
        self.request(shape, Fill::InPlace(fill), read)
    }

    /// Loans a request of `shape` ahead of sending: the caller fills it in
    /// shared memory ([`LoanedRequest::data_mut`]), at leisure, and sends it
    /// with [`send`](Self::send). At most two may be loaned at a time.
    pub fn loan(&mut self, shape: &[i64]) -> Result<LoanedRequest> {
        let (header, n) = self.header_for(shape)?;
        let sample = self.loan_filled(header, n, Fill::InPlace(|_: &mut [f32]| {}))?;
        Ok(LoanedRequest { sample, owner: self.port.id() })
    }

    /// Sends a request [`loan`](Self::loan)ed from this client and reads the
    /// response in place with `read`.
    pub fn send<R>(&mut self, request: LoanedRequest, read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
        if request.owner != self.port.id() {
            return Err(Error::Ipc("this request was loaned from another client: send it with the client that loaned it".into()));
        }
        self.send_request(request.sample, read)
    }

    /// Sends `payload` under a header the caller built (any field, any
    /// version): for protocol tests and for clients of other versions.
    /// `request_id` is set by the client.
    pub fn infer_with_header(&mut self, mut header: RequestHeader, payload: &[f32]) -> Result<(Vec<i64>, Vec<f32>)> {
        header.request_id = self.take_id();
        self.send_and_wait(header, payload.len(), Fill::<fn(&mut [f32])>::From(payload), |r| (r.shape, r.data.to_vec()))
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

    /// The header of the next request of `shape`, and its element count.
    fn header_for(&mut self, shape: &[i64]) -> Result<(RequestHeader, usize)> {
        let header = RequestHeader::new(self.take_id(), shape)
            .ok_or_else(|| Error::Ipc(format!("shape {shape:?} cannot be sent (rank 1..=8, no negative dimension)")))?;
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d as usize)).ok_or_else(|| Error::Ipc(format!("shape {shape:?} overflows")))?;
        Ok((header, n))
    }

    fn request<R>(&mut self, shape: &[i64], fill: Fill<'_, impl FnOnce(&mut [f32])>, read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
        let (header, n) = self.header_for(shape)?;
        if let Fill::From(input) = &fill {
            if input.len() != n {
                return Err(Error::Ipc(format!("shape {shape:?} does not describe the {} input elements given", input.len())));
            }
        }
        self.send_and_wait(header, n, fill, read)
    }

    fn send_and_wait<R>(&mut self, header: RequestHeader, n: usize, fill: Fill<'_, impl FnOnce(&mut [f32])>, read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
        let req = self.loan_filled(header, n, fill)?;
        self.send_request(req, read)
    }

    /// Loans a sample of `n` elements under `header` and fills it.
    fn loan_filled(&mut self, header: RequestHeader, n: usize, fill: Fill<'_, impl FnOnce(&mut [f32])>) -> Result<RequestSample> {
        let loan_err = |e: &dyn std::fmt::Display| Error::Ipc(format!("loaning {n} floats of shared memory: {e}"));
        Ok(match fill {
            // One pass over the sample: copied in, never zeroed first.
            Fill::From(input) => {
                let mut req = self.port.loan_slice_uninit(n).map_err(|e| loan_err(&e))?;
                *req.user_header_mut() = header;
                req.write_from_slice(input)
            }
            Fill::InPlace(f) => {
                let mut req = self.port.loan_slice(n).map_err(|e| loan_err(&e))?;
                *req.user_header_mut() = header;
                f(req.payload_mut());
                req
            }
        })
    }

    /// Sends a filled sample and waits for its response.
    fn send_request<R>(&mut self, req: RequestSample, read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
        let id = req.user_header().request_id;
        if self.service.dynamic_config().number_of_servers() == 0 {
            service::cleanup_dead_nodes(&self.node);
            return Err(Error::ServerGone(format!("no server serves {}", self.names.service)));
        }
        let pending = req.send().map_err(|e| Error::Ipc(format!("sending: {e}")))?;
        self.notifier.notify().map_err(|e| Error::Ipc(format!("notifying the server: {e}")))?;
        let start = Instant::now();
        let deadline = start + self.timeout;
        let spin = self.spin();
        let mut last_check = start;
        loop {
            if let Some(resp) = pending.receive().map_err(|e| Error::Ipc(format!("receiving: {e}")))? {
                self.learn(start.elapsed());
                return answer(&resp, id, read);
            }
            if !pending.is_connected() {
                // The server may have sent the response and dropped the request
                // between the receive above and this check: look once more.
                if let Some(resp) = pending.receive().map_err(|e| Error::Ipc(format!("receiving: {e}")))? {
                    return answer(&resp, id, read);
                }
                return Err(Error::ServerGone(format!("{} dropped the request without answering", self.names.service)));
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
                    return Err(Error::ServerGone(format!("the server of {} died", self.names.service)));
                }
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            self.listener.timed_wait(|_| {}, wait).map_err(|e| Error::Ipc(format!("waiting for the response: {e:?}")))?;
        }
    }
}

/// How the request sample gets its elements.
enum Fill<'a, F: FnOnce(&mut [f32])> {
    /// Copied from a slice of the right length.
    From(&'a [f32]),
    /// Written by the caller into the (zeroed) sample.
    InPlace(F),
}

/// Reads a response: checks it answers request `id`, maps error statuses.
fn answer<R>(resp: &iceoryx2::response::Response<Ipc, [f32], ResponseHeader>, id: u64, read: impl FnOnce(Response<'_>) -> R) -> Result<R> {
    let h = *resp.user_header();
    if h.request_id != id {
        return Err(Error::Ipc(format!("response to request {} arrived for request {id}", h.request_id)));
    }
    match h.status {
        s if s == Status::Ok as u16 => Ok(read(Response { shape: h.shape(), data: resp.payload() })),
        s => Err(Error::Remote { status: status_name(s), message: h.error_text() }),
    }
}

fn status_name(s: u16) -> &'static str {
    match s {
        x if x == Status::BadRequest as u16 => "bad request",
        x if x == Status::ModelError as u16 => "model error",
        _ => "unknown status",
    }
}
