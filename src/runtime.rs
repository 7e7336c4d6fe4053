//! [`Runtime`]: the entry point a service embeds.
//!
//! The runtime runs the doctor's probe once and refuses execution modes it
//! found unusable, quoting its reason; a model file is opened once per
//! runtime ([`Model`]) and loaded per device on demand.

use crate::doctor::{self, probe::ProbeOptions, Report};
use crate::error::{Error, Result};
use crate::memory::Element;
use crate::mode::Mode;
use crate::model::Model;
use crate::mode::ModeGate;
use crate::session::{Session, SessionPool, SessionSpec, TypedSession};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The process-wide runtime: the startup diagnosis, and the door to models and sessions.
#[derive(Clone)]
pub struct Runtime {
    report: Arc<Report>,
    /// Models opened so far, by canonical path (clones share them).
    models: Arc<Mutex<HashMap<PathBuf, Model>>>,
}

/// How a [`Runtime`] starts: [`Runtime::with_options`].
#[derive(Debug, Clone, Copy)]
pub struct RuntimeOptions {
    /// The doctor's probe (its GPU smoke tests allocate a few KB of managed
    /// memory per device).
    pub probe: ProbeOptions,
    /// Set glibc's malloc thresholds so that freed tensor memory stays in the
    /// process for the next request ([`crate::malloc_tuning`]): process-wide,
    /// once. `false` leaves malloc as it is (a process that tunes malloc
    /// itself or uses another allocator).
    pub keep_freed_memory: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self { probe: ProbeOptions::default(), keep_freed_memory: true }
    }
}

impl Runtime {
    /// Probes the machine (the doctor, smoke tests included) once.
    ///
    /// **Process-wide effect**: sets glibc's malloc thresholds
    /// (`M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD`, [`crate::malloc_tuning`]) once
    /// per process, unless the environment has `UMINFER_KEEP_FREED_MEMORY=0`;
    /// [`Runtime::with_options`] with `keep_freed_memory: false` does not.
    ///
    /// ```
    /// let rt = uminfer::Runtime::new();
    /// assert!(rt.usable_modes().contains(&uminfer::Mode::Cpu));
    /// ```
    pub fn new() -> Self {
        Self::with_options(RuntimeOptions::default())
    }

    /// [`Runtime::new`] with a say in the probe and in the malloc tuning.
    ///
    /// ```no_run
    /// use uminfer::runtime::{Runtime, RuntimeOptions};
    /// let rt = Runtime::with_options(RuntimeOptions { keep_freed_memory: false, ..Default::default() });
    /// ```
    pub fn with_options(options: RuntimeOptions) -> Self {
        Self::build(doctor::diagnose(options.probe), options.keep_freed_memory)
    }

    /// A runtime over an existing report (tests, or a probe made elsewhere);
    /// it sets the malloc thresholds as [`Runtime::new`] does.
    pub fn from_report(report: Report) -> Self {
        Self::build(report, true)
    }

    fn build(report: Report, keep_freed_memory: bool) -> Self {
        if keep_freed_memory {
            crate::malloc_tuning::apply_once();
        }
        Self { report: Arc::new(report), models: Arc::default() }
    }

    /// The startup diagnosis.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// `Ok` if `mode` is usable here, else [`Error::ModeUnusable`] with the doctor's reason.
    pub fn check_mode(&self, mode: Mode) -> Result<()> {
        self.report.check_mode(mode).map_err(|reason| Error::ModeUnusable { mode, reason })
    }

    /// Modes usable here, fastest-first in the usual order of preference.
    pub fn usable_modes(&self) -> Vec<Mode> {
        self.report.usable_modes()
    }

    /// Opens a model: a TorchScript file or an AOTInductor package (see
    /// [`Model`]; loaded onto each device when a session first needs it). A
    /// file this runtime (or a clone of it) has opened before is not read
    /// again: the same [`Model`], with its loaded copies, comes back. A file
    /// that failed to open is tried again.
    pub fn model(&self, path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(m) = self.models.lock().get(&key) {
            return Ok(m.clone());
        }
        let model = Model::open(path, self.report.machine_view())?;
        Ok(self.models.lock().entry(key).or_insert(model).clone())
    }

    /// Builds a session over any signature (see [`Session`]): its input and
    /// output regions, in the mode the spec asks for (or the fastest here).
    ///
    /// ```
    /// use uminfer::session::ModeChoice;
    /// use uminfer::{Runtime, SessionSpec};
    ///
    /// let rt = Runtime::new();
    /// let model = rt.model("models/tiny.pt")?; // made by `bash ci/setup`
    /// let mut s = rt.session(&model, SessionSpec::new().mode_choice(ModeChoice::Auto))?;
    /// s.input_mut::<f32>("x")?.fill(0.5); // the memory the model reads
    /// s.run()?;
    /// let y: &[f32] = s.output(0)?; // the memory the model wrote
    /// assert_eq!(y.len(), 10);
    /// # Ok::<(), uminfer::Error>(())
    /// ```
    pub fn session(&self, model: &Model, spec: SessionSpec) -> Result<Session> {
        Session::build(&*self.report, model, spec, None)
    }

    /// Builds `size` sessions of `spec`, shared by many threads (see
    /// [`SessionPool`]).
    pub fn session_pool(&self, model: &Model, spec: SessionSpec, size: usize) -> Result<SessionPool> {
        SessionPool::build(&*self.report, model, spec, size)
    }

    /// Builds a dynamic batcher: a session of `spec` per bucket of `batch`
    /// (see [`Batcher`](crate::batch::Batcher)).
    pub fn batcher(&self, model: &Model, spec: SessionSpec, batch: crate::batch::BatchSpec) -> Result<crate::batch::Batcher> {
        crate::batch::Batcher::build(self.report.clone(), model, spec, batch)
    }

    /// Builds a session of one input of `I` and one output of `O` (see [`TypedSession`]).
    pub fn typed_session<I: Element, O: Element>(&self, model: &Model, spec: SessionSpec) -> Result<TypedSession<I, O>> {
        TypedSession::build(&*self.report, model, spec)
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}
