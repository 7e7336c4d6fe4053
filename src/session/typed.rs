//! [`TypedSession`]: a [`Session`] of one input and one output whose element
//! types are known at compile time, with infallible slice access.

use super::{RunTiming, Session, SessionSpec, TensorMut, TensorRef, Timing};
use crate::error::{Error, Result, SessionErrorKind};
use crate::memory::{Element, RawRegion};
use crate::mode::Mode;
use crate::model::Model;
use crate::mode::ModeGate;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// A session over a model of one input of `I` and one output of `O` (an
/// image classifier: `f32` in, `f32` out). An input dtype the model does not
/// record is taken to be `I`.
pub struct TypedSession<I: Element = f32, O: Element = f32> {
    session: Session,
    _types: PhantomData<fn(I) -> O>,
}

impl<I: Element, O: Element> TypedSession<I, O> {
    /// Builds the session; see [`Runtime::typed_session`](crate::Runtime::typed_session).
    pub(crate) fn build(gate: &dyn ModeGate, model: &Model, spec: SessionSpec) -> Result<Self> {
        let session = Session::build(gate, model, spec, Some(I::DTYPE))?;
        let fits = |infos: &[super::TensorInfo], dtype| matches!(infos, [only] if only.dtype == dtype);
        if !fits(session.inputs(), I::DTYPE) || !fits(session.outputs(), O::DTYPE) {
            return Err(Error::session(SessionErrorKind::Unsupported, format!(
                "a typed session takes one {} input and returns one {} output; model {} takes {} and returns {}: use Runtime::session, which takes any signature",
                I::NAME,
                O::NAME,
                model.path().display(),
                super::tensor_ref::list(session.inputs()),
                super::tensor_ref::list(session.outputs())
            )));
        }
        Ok(Self { session, _types: PhantomData })
    }

    /// The session underneath (names, regions, `run_on` with tensor lists).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session underneath, mutably.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The session underneath, owned.
    pub fn into_session(self) -> Session {
        self.session
    }

    /// The input region as a slice: write the request here (no copy follows).
    pub fn input_mut(&mut self) -> &mut [I] {
        // SAFETY: input 0 holds Is (checked at build); between runs no GPU
        // work is pending, and `&mut self` excludes a concurrent run.
        unsafe { self.session.inputs.slice_mut(0) }
    }

    /// The input region, read-only.
    pub fn input(&self) -> &[I] {
        // SAFETY: as for `input_mut`.
        unsafe { self.session.inputs.slice(0) }
    }

    /// The output region: the result of the last `run()`.
    pub fn output(&self) -> &[O] {
        // SAFETY: output 0 holds Os (checked at build); as for `input_mut`.
        unsafe { self.session.outputs.slice(0) }
    }

    /// The output region, writable (e.g. to poison it before a run in tests).
    pub fn output_mut(&mut self) -> &mut [O] {
        // SAFETY: as for `output`.
        unsafe { self.session.outputs.slice_mut(0) }
    }

    /// The output's shape.
    pub fn output_shape(&self) -> &[i64] {
        &self.session.outputs()[0].shape
    }

    /// The raw u8 image region of a preprocessing session ([`Session::raw_input_mut`]).
    pub fn raw_input_mut(&mut self) -> Result<&mut [u8]> {
        self.session.raw_input_mut()
    }

    /// The input region (hidden from the documentation: for the test suite).
    #[doc(hidden)]
    pub fn input_region(&self) -> &RawRegion {
        &self.session.inputs.regions[0]
    }

    /// The output region (hidden from the documentation: for the test suite).
    #[doc(hidden)]
    pub fn output_region(&self) -> &RawRegion {
        &self.session.outputs.regions[0]
    }

    /// `data_ptr()` of the tensor the model reads and of the one its result
    /// is copied into (hidden from the documentation: for the test suite's
    /// zero-copy checks).
    #[doc(hidden)]
    pub fn tensor_addresses(&self) -> (usize, usize) {
        let (i, o) = self.session.tensor_addresses();
        (i[0], o[0])
    }

    /// Runs one request ([`Session::run`]).
    pub fn run(&mut self) -> Result<RunTiming> {
        self.session.run()
    }

    /// Runs one request over caller memory ([`Session::run_on`]).
    pub fn run_on(&mut self, input: &[I], output: &mut [MaybeUninit<O>]) -> Result<RunTiming> {
        self.session.run_on(&[TensorRef::new(input)], &mut [TensorMut::uninit(output)])
    }

    /// The mode this session runs in.
    pub fn mode(&self) -> Mode {
        self.session.mode()
    }

    /// What was done at build ([`Session::note`]).
    pub fn note(&self) -> &str {
        self.session.note()
    }

    /// Timing summaries ([`Session::timing`]).
    pub fn timing(&self) -> Option<Timing> {
        self.session.timing()
    }

    /// Forgets recorded timings.
    pub fn reset_timing(&mut self) {
        self.session.reset_timing();
    }
}
