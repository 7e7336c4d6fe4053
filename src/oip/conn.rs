//! The connections of every listener (gRPC, REST, `/metrics`): a bound on
//! those open at once ([`Gate`]), an idle timeout, TCP keep-alive, TLS when
//! configured, and an accept loop that backs off when the process runs out
//! of file descriptors.
//!
//! - **Bound.** Beyond [`Limits::max_connections`] open connections across
//!   all listeners, a new connection is accepted and closed at once (so it
//!   leaves the kernel's queue), logged at most once a second.
//! - **Idle timeout.** A connection that has no request or stream in
//!   progress for [`Limits::idle`] is closed: its reads end ([`Conn`]). What
//!   is in progress is counted by [`Activity`]: a request from the moment it
//!   is dispatched until its response body is dropped (a gRPC stream: until
//!   it ends). HTTP/2 PINGs and half-sent HTTP/1 headers are not requests.
//! - **Descriptors.** When `accept` fails for want of a descriptor
//!   (`EMFILE`, `ENFILE`) or of kernel memory, the pending connection stays in
//!   the queue and the listener stays readable: retrying at once would spin
//!   on a core. The loop sleeps [`BACKOFF`] instead and logs it at most once
//!   a second.
//! - **TLS.** With an acceptor ([`tls`](super::tls)), each admitted
//!   connection's handshake runs in a task of its own, so a slow one holds up
//!   no other; it holds its place under the bound and must finish within
//!   [`Limits::header`], else the connection is closed. A failed handshake (a
//!   plain-text client, a certificate the client refuses) closes it and is
//!   logged at debug level. Only finished handshakes reach the servers.

use parking_lot::Mutex;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The default of [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// The default of [`Limits::idle`], in seconds.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 60;
/// The default of [`Limits::header`], in seconds.
pub const DEFAULT_HEADER_TIMEOUT_S: u64 = 10;
/// The default of [`Limits::body`], in seconds.
pub const DEFAULT_BODY_TIMEOUT_S: u64 = 30;
/// HTTP/2 PING interval on a connection that sent nothing meanwhile.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long an HTTP/2 PING may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keep-alive: the first probe after this much silence (dead peers).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// How long the accept loop sleeps after running out of descriptors.
pub const BACKOFF: Duration = Duration::from_millis(50);
/// Descriptors the process needs besides its connections (models, logs,
/// listeners, libtorch): the margin [`Limits::check_descriptors`] keeps.
const RESERVED_FDS: u64 = 64;

/// The bounds and timeouts of connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once across all listeners (`--max-connections`).
    pub max_connections: usize,
    /// Close a connection with no request in progress for this long
    /// (`--idle-timeout-s`); `None`: never.
    pub idle: Option<Duration>,
    /// HTTP/1: the whole request head must arrive within this; TLS: the
    /// handshake must finish within this (`--header-timeout-s`).
    pub header: Duration,
    /// REST: the whole request body must arrive within this (`--body-timeout-s`).
    pub body: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle: Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT_S)),
            header: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_S),
            body: Duration::from_secs(DEFAULT_BODY_TIMEOUT_S),
        }
    }
}

impl Limits {
    /// Warns when the process's descriptor limit (`RLIMIT_NOFILE`) is below
    /// what `max_connections` open connections need: the accept loop would
    /// then back off on `EMFILE` before the bound is reached.
    pub fn check_descriptors(&self) {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit(2) writes one rlimit into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return;
        }
        let need = self.max_connections as u64 + RESERVED_FDS;
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < need {
            tracing::warn!(
                "--max-connections {} needs about {need} file descriptors, over this process's limit of {} (RLIMIT_NOFILE): \
                 beyond about {} connections, new ones wait in the kernel's queue; raise the limit (ulimit -n, systemd LimitNOFILE=) or lower --max-connections",
                self.max_connections,
                lim.rlim_cur,
                lim.rlim_cur.saturating_sub(RESERVED_FDS)
            );
        }
    }
}

/// Logs at most once per second, counting what it held back.
struct Throttled {
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl Throttled {
    fn new() -> Self {
        Self { last: Mutex::new(None), held: AtomicU64::new(0) }
    }

    /// `Some(n)` when a line may be logged now, `n` the lines held back since the last.
    fn ready(&self) -> Option<u64> {
        let mut last = self.last.lock();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

/// The bound on open connections shared by every listener.
pub struct Gate {
    open: AtomicUsize,
    limits: Limits,
    refused: Throttled,
    exhausted: Throttled,
}

impl Gate {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { open: AtomicUsize::new(0), limits, refused: Throttled::new(), exhausted: Throttled::new() })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn take(self: &Arc<Self>) -> Option<Slot> {
        let max = self.limits.max_connections;
        self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok().map(|_| Slot(self.clone()))
    }

    /// Accepts connections from `listener` ([`Incoming`]), over TLS when
    /// given an acceptor.
    pub fn incoming(self: &Arc<Self>, listener: TcpListener, what: &'static str, tls: Option<TlsAcceptor>) -> Incoming {
        let tls = tls.map(|acceptor| Handshakes { acceptor, pending: tokio::task::JoinSet::new() });
        Incoming { listener, gate: self.clone(), what, backoff: None, tls }
    }
}

/// One open connection's place under the bound, given back on drop.
struct Slot(Arc<Gate>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Requests in progress on one connection, and when the last one began or ended.
pub struct Activity {
    active: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self { active: AtomicUsize::new(0), last: Mutex::new(Instant::now()) })
    }

    /// A request begins; it is in progress until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        *self.last.lock() = Instant::now();
        Active(self.clone())
    }

    /// When the connection falls idle: `None` while a request is in progress.
    fn idle_since(&self) -> Option<Instant> {
        let last = *self.last.lock();
        (self.active.load(Ordering::Acquire) == 0).then_some(last)
    }
}

/// A request in progress ([`Activity::begin`]).
pub struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        *self.0.last.lock() = Instant::now();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a request can learn of its connection: the peer's address (the
/// loopback rule of shared memory) and the connection's [`Activity`]. gRPC
/// requests carry it as an extension (tonic's `Connected`), REST requests too.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub activity: Arc<Activity>,
}

/// The byte stream of a connection: plain TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Calls `$method` on whichever stream `$io` (a `&mut Io`) holds, pinned.
macro_rules! on_io {
    ($io:expr, $method:ident($($arg:expr),*)) => {
        match $io {
            Io::Plain(s) => Pin::new(s).$method($($arg),*),
            Io::Tls(s) => Pin::new(s.as_mut()).$method($($arg),*),
        }
    };
}

/// An accepted connection under the bound (its TLS handshake, if any,
/// finished): its reads end (EOF) once it has been idle for the idle
/// timeout, which closes it.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    expired: bool,
    _slot: Slot,
}

impl Conn {
    /// `io` from `peer`, holding `slot`; idle from now on.
    fn new(io: Io, peer: SocketAddr, idle: Option<Duration>, slot: Slot) -> Self {
        let idle = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
        Conn { io, info: ConnInfo { peer, activity: Activity::new() }, idle, expired: false, _slot: slot }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Whether the idle timeout has passed (registers a wake-up for when it would).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((idle, timer)) = &mut self.idle else { return false };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            let deadline = match self.info.activity.idle_since() {
                None => now + *idle,
                Some(since) => since + *idle,
            };
            if deadline <= now {
                return true;
            }
            timer.as_mut().reset(deadline.into());
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(r) = on_io!(&mut this.io, poll_read(cx, buf)) {
            return Poll::Ready(r);
        }
        if this.idle_expired(cx) {
            this.expired = true;
            tracing::debug!("closing the connection from {}: idle for the idle timeout", this.info.peer);
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        on_io!(&mut self.io, poll_write(cx, buf))
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        on_io!(&mut self.io, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_io!(&mut self.io, poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_io!(&mut self.io, poll_shutdown(cx))
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Whether an `accept` error means the process or system is out of
/// descriptors or memory (retrying at once would fail again).
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The TLS handshakes of a listener's admitted connections: each a task
/// that yields its [`Conn`], or `None` when it failed or timed out.
struct Handshakes {
    acceptor: TlsAcceptor,
    pending: tokio::task::JoinSet<Option<Conn>>,
}

/// A listener's accepted connections under the [`Gate`]: a stream for
/// tonic's `serve_with_incoming`, or [`next`](Self::next). Dropping it stops
/// listening and abandons the handshakes in progress.
pub struct Incoming {
    listener: TcpListener,
    gate: Arc<Gate>,
    what: &'static str,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    tls: Option<Handshakes>,
}

impl Incoming {
    /// The next connection admitted.
    pub async fn next(&mut self) -> Conn {
        std::future::poll_fn(|cx| self.poll_conn(cx)).await
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<Conn> {
        loop {
            // Finished handshakes first; polling them registers this task for the next.
            if let Some(tls) = &mut self.tls {
                while let Poll::Ready(Some(done)) = tls.pending.poll_join_next(cx) {
                    match done {
                        Ok(Some(c)) => return Poll::Ready(c),
                        Ok(None) => {}
                        Err(e) => tracing::debug!("{}: a TLS handshake's task: {e}", self.what),
                    }
                }
            }
            if let Some(b) = &mut self.backoff {
                ready!(b.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((io, peer)) => {
                    let Some(slot) = self.admit(&io, peer) else { continue }; // dropping `io` closes it
                    let idle = self.gate.limits.idle;
                    match &mut self.tls {
                        None => return Poll::Ready(Conn::new(Io::Plain(io), peer, idle, slot)),
                        Some(tls) => {
                            let (accept, timeout, what) = (tls.acceptor.accept(io), self.gate.limits.header, self.what);
                            tls.pending.spawn(async move {
                                match tokio::time::timeout(timeout, accept).await {
                                    Ok(Ok(io)) => Some(Conn::new(Io::Tls(Box::new(io)), peer, idle, slot)),
                                    Ok(Err(e)) => {
                                        tracing::debug!("{what}: closing the connection from {peer}: its TLS handshake failed: {e}");
                                        None
                                    }
                                    Err(_) => {
                                        tracing::debug!(
                                            "{what}: closing the connection from {peer}: its TLS handshake did not finish within {} s (--header-timeout-s)",
                                            timeout.as_secs_f64()
                                        );
                                        None
                                    }
                                }
                            });
                        }
                    }
                }
                Err(e) if out_of_resources(&e) => {
                    if let Some(held) = self.gate.exhausted.ready() {
                        tracing::warn!(
                            "{}: cannot accept connections: {e} ({} open; {held} more such failures in the last second); retrying every {} ms. Raise the descriptor limit (ulimit -n, systemd LimitNOFILE=) or lower --max-connections",
                            self.what,
                            self.gate.open(),
                            BACKOFF.as_millis()
                        );
                    }
                    self.backoff = Some(Box::pin(tokio::time::sleep(BACKOFF)));
                }
                // A connection that failed before we took it (ECONNABORTED, ...): the next one.
                Err(e) => tracing::debug!("{}: accepting a connection: {e}", self.what),
            }
        }
    }

    /// A place under the bound for `io` (else `None`: the caller drops it,
    /// which closes it), with its socket options set.
    fn admit(&self, io: &TcpStream, peer: SocketAddr) -> Option<Slot> {
        let Some(slot) = self.gate.take() else {
            if let Some(held) = self.gate.refused.ready() {
                tracing::warn!(
                    "{}: closing a new connection from {peer}: {} connections are open, the bound (--max-connections); {held} more refused in the last second",
                    self.what,
                    self.gate.limits.max_connections
                );
            }
            return None;
        };
        // TCP_NODELAY: without it Nagle's algorithm holds small responses back.
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!("{}: TCP_NODELAY on the connection from {peer}: {e}", self.what);
        }
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        if let Err(e) = socket2::SockRef::from(io).set_tcp_keepalive(&keepalive) {
            tracing::debug!("{}: TCP keep-alive on the connection from {peer}: {e}", self.what);
        }
        Some(slot)
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = Result<Conn, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_conn(cx).map(|c| Some(Ok(c)))
    }
}

/// A response body that holds its request's [`Active`] guard until it is
/// dropped (sent, or the stream ended).
pub struct Guarded<B> {
    body: B,
    _active: Option<Active>,
}

impl<B> Guarded<B> {
    pub fn new(body: B, active: Option<Active>) -> Self {
        Self { body, _active: active }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A tower layer for tonic's server: each request counts as [`Activity`] of
/// its connection (found in the request's [`ConnInfo`] extension) until its
/// response body is dropped.
#[derive(Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track(inner)
    }
}

/// The service of [`TrackLayer`].
#[derive(Clone)]
pub struct Track<S>(S);

/// The HTTP request and response of tonic's server, as its layers see them.
pub(super) type GrpcRequest = tonic::codegen::http::Request<tonic::body::Body>;
pub(super) type GrpcResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tower::Service<GrpcRequest> for Track<S>
where
    S: tower::Service<GrpcRequest, Response = GrpcResponse>,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<GrpcResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        let active = req.extensions().get::<ConnInfo>().map(|i| i.activity.begin());
        let answer = self.0.call(req);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|b| tonic::body::Body::new(Guarded::new(b, active))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_logs_once_a_second_and_counts_what_it_held_back() {
        let t = Throttled::new();
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        *t.last.lock() = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(t.ready(), Some(2));
    }

    #[test]
    fn the_gate_admits_up_to_its_bound_and_frees_a_place_when_a_connection_closes() {
        let gate = Gate::new(Limits { max_connections: 2, ..Limits::default() });
        let a = gate.take().expect("first");
        let _b = gate.take().expect("second");
        assert!(gate.take().is_none(), "over the bound");
        drop(a);
        assert!(gate.take().is_some(), "a place freed");
    }

    #[test]
    fn activity_is_idle_only_with_no_request_in_progress() {
        let a = Activity::new();
        assert!(a.idle_since().is_some());
        let r = a.begin();
        assert!(a.idle_since().is_none());
        drop(r);
        assert!(a.idle_since().is_some());
    }

    #[test]
    fn descriptor_exhaustion_is_told_apart_from_a_failed_connection() {
        assert!(out_of_resources(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(out_of_resources(&std::io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!out_of_resources(&std::io::Error::from_raw_os_error(libc::ECONNABORTED)));
    }
}
