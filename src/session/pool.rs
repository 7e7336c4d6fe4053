//! [`SessionPool`]: K sessions of one model and spec, shared across threads.
//! Each session has its own regions, stream, thread and graph; a caller
//! checks one out, uses it, and it returns to the pool on drop.

use super::{RunTiming, Session, SessionSpec};
use crate::error::{Error, Result};
use crate::memory::Element;
use crate::runtime::{Model, Runtime};
use parking_lot::{Condvar, Mutex};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// A fixed set of sessions shared by many threads.
pub struct SessionPool<I: Element = f32, O: Element = f32> {
    idle: Mutex<Vec<Session<I, O>>>,
    returned: Condvar,
    size: usize,
}

impl<I: Element, O: Element> SessionPool<I, O> {
    /// Builds `size` sessions one after another (captures never overlap).
    /// With `spec.pin_core(c)`, session `i` is pinned to core `(c + i) % cores`.
    pub fn new(rt: &Runtime, model: &Model, spec: SessionSpec, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::Session("a session pool needs at least one session".into()));
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut sessions = Vec::with_capacity(size);
        for i in 0..size {
            let mut s = spec.clone();
            if let Some(c) = spec.pin_core {
                s = s.pin_core((c + i) % cores);
            }
            sessions.push(rt.session(model, s)?);
        }
        Ok(Self { idle: Mutex::new(sessions), returned: Condvar::new(), size })
    }

    /// Number of sessions.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Waits for a free session.
    pub fn checkout(&self) -> PooledSession<'_, I, O> {
        let mut idle = self.idle.lock();
        loop {
            if let Some(s) = idle.pop() {
                return PooledSession { pool: self, session: Some(s) };
            }
            self.returned.wait(&mut idle);
        }
    }

    /// Waits at most `timeout` for a free session.
    pub fn checkout_timeout(&self, timeout: Duration) -> Result<PooledSession<'_, I, O>> {
        let deadline = Instant::now() + timeout;
        let mut idle = self.idle.lock();
        loop {
            if let Some(s) = idle.pop() {
                return Ok(PooledSession { pool: self, session: Some(s) });
            }
            if self.returned.wait_until(&mut idle, deadline).timed_out() && idle.is_empty() {
                return Err(Error::Session(format!("no session of {} became free within {timeout:?}", self.size)));
            }
        }
    }

    /// Convenience: copies `input` into a free session, runs it, copies the output out.
    pub fn infer(&self, input: &[I], output: &mut [O]) -> Result<RunTiming> {
        let mut s = self.checkout();
        if input.len() != s.input().len() || output.len() != s.output().len() {
            return Err(Error::Session(format!(
                "infer: got {} input and {} output elements, the sessions take {} and {}",
                input.len(),
                output.len(),
                s.input().len(),
                s.output().len()
            )));
        }
        s.input_mut().copy_from_slice(input);
        let t = s.run()?;
        output.copy_from_slice(s.output());
        Ok(t)
    }
}

/// A session checked out of a [`SessionPool`]; returns on drop.
pub struct PooledSession<'p, I: Element, O: Element> {
    pool: &'p SessionPool<I, O>,
    session: Option<Session<I, O>>,
}

impl<I: Element, O: Element> Deref for PooledSession<'_, I, O> {
    type Target = Session<I, O>;
    fn deref(&self) -> &Session<I, O> {
        self.session.as_ref().expect("present until drop")
    }
}

impl<I: Element, O: Element> DerefMut for PooledSession<'_, I, O> {
    fn deref_mut(&mut self) -> &mut Session<I, O> {
        self.session.as_mut().expect("present until drop")
    }
}

impl<I: Element, O: Element> Drop for PooledSession<'_, I, O> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.idle.lock().push(s);
            self.pool.returned.notify_one();
        }
    }
}
