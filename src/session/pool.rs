//! [`SessionPool`]: K sessions of one model and spec, shared across threads.
//! Each session has its own regions, stream, thread and graph; a caller
//! checks one out, uses it, and it returns to the pool on drop.

use super::{RunTiming, Session, SessionSpec, TensorInfo, TensorMut, TensorRef};
use crate::error::{Error, Result, SessionErrorKind};
use crate::model::Model;
use crate::mode::ModeGate;
use parking_lot::{Condvar, Mutex};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// A fixed set of sessions shared by many threads.
///
/// ```
/// use uminfer::{Runtime, SessionSpec};
///
/// let rt = Runtime::new();
/// let model = rt.model("models/tiny.pt")?;
/// let pool = rt.session_pool(&model, SessionSpec::new(), 2)?;
/// let request = |t: usize| -> uminfer::Result<usize> {
///     let mut s = pool.checkout(); // waits for a free session; back to the pool on drop
///     s.input_mut::<f32>("x")?.fill(t as f32 / 4.0);
///     s.run()?;
///     Ok(s.output::<f32>(0)?.len())
/// };
/// let lens = std::thread::scope(|sc| {
///     let threads: Vec<_> = (0..4).map(|t| sc.spawn(move || request(t))).collect();
///     threads.into_iter().map(|h| h.join().expect("a request thread panicked")).collect::<uminfer::Result<Vec<_>>>()
/// })?;
/// assert_eq!(lens, [10; 4]);
/// # Ok::<(), uminfer::Error>(())
/// ```
pub struct SessionPool {
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
    size: usize,
    /// The sessions' inputs and outputs (the same for all).
    signature: (Vec<TensorInfo>, Vec<TensorInfo>),
}

impl SessionPool {
    /// Builds `size` sessions one after another (captures never overlap);
    /// see [`Runtime::session_pool`](crate::Runtime::session_pool), the public way.
    /// With `spec.pin_core(c)`, session `i` is pinned to core `(c + i) % cores`.
    pub(crate) fn build(gate: &dyn ModeGate, model: &Model, spec: SessionSpec, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::session(SessionErrorKind::Unsupported, "a session pool needs at least one session"));
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut sessions: Vec<Session> = Vec::with_capacity(size);
        for i in 0..size {
            let mut s = spec.clone();
            if let Some(c) = spec.pin_core {
                s = s.pin_core((c + i) % cores);
            }
            sessions.push(Session::build(gate, model, s, None)?);
        }
        let signature = (sessions[0].inputs().to_vec(), sessions[0].outputs().to_vec());
        Ok(Self { idle: Mutex::new(sessions), returned: Condvar::new(), size, signature })
    }

    /// Number of sessions.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The sessions' inputs.
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.signature.0
    }

    /// The sessions' outputs.
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.signature.1
    }

    /// Waits for a free session.
    pub fn checkout(&self) -> PooledSession<'_> {
        let mut idle = self.idle.lock();
        loop {
            if let Some(s) = idle.pop() {
                return PooledSession { pool: self, session: Some(s) };
            }
            self.returned.wait(&mut idle);
        }
    }

    /// Waits at most `timeout` for a free session.
    pub fn checkout_timeout(&self, timeout: Duration) -> Result<PooledSession<'_>> {
        let deadline = Instant::now() + timeout;
        let mut idle = self.idle.lock();
        loop {
            if let Some(s) = idle.pop() {
                return Ok(PooledSession { pool: self, session: Some(s) });
            }
            if self.returned.wait_until(&mut idle, deadline).timed_out() && idle.is_empty() {
                return Err(Error::session(SessionErrorKind::Busy, format!("no session of {} became free within {timeout:?}", self.size)));
            }
        }
    }

    /// One request on a free session over caller memory ([`Session::run_on`]).
    pub fn infer(&self, inputs: &[TensorRef<'_>], outputs: &mut [TensorMut<'_>]) -> Result<RunTiming> {
        self.checkout().run_on(inputs, outputs)
    }
}

/// A session checked out of a [`SessionPool`]; returns on drop.
pub struct PooledSession<'p> {
    pool: &'p SessionPool,
    session: Option<Session>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("present until drop")
    }
}

impl DerefMut for PooledSession<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("present until drop")
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.idle.lock().push(s);
            self.pool.returned.notify_one();
        }
    }
}
