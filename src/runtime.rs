//! [`Runtime`] and [`Model`]: the entry point a service embeds.
//!
//! The runtime runs the doctor's probe once and refuses execution modes it
//! found unusable, quoting its reason; a model file is opened once per
//! runtime and loaded per device on demand.

use crate::doctor::{self, probe::ProbeOptions, Report};
use crate::error::{Error, Result};
use crate::memory::Element;
use crate::mode::Mode;
use crate::session::{Session, SessionSpec};
use crate::shim::TorchModule;
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

impl Runtime {
    /// Probes the machine (the doctor, smoke tests included) once.
    pub fn new() -> Self {
        Self::from_report(doctor::diagnose(ProbeOptions::default()))
    }

    /// A runtime over an existing report (tests, or a probe made elsewhere).
    /// Either constructor also sets glibc's malloc thresholds once per process
    /// ([`crate::malloc_tuning`]; `UMINFER_KEEP_FREED_MEMORY=0` opts out).
    pub fn from_report(report: Report) -> Self {
        crate::malloc_tuning::apply_once();
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
        [Mode::GpuManagedGraph, Mode::GpuManaged, Mode::GpuPinned, Mode::GpuCopy, Mode::Cpu]
            .into_iter()
            .filter(|m| self.check_mode(*m).is_ok())
            .collect()
    }

    /// Opens a TorchScript model (loaded onto each device when a session
    /// first needs it). A file this runtime (or a clone of it) has opened
    /// before is not read again: the same [`Model`], with the modules already
    /// loaded, comes back. A file that failed to open is tried again.
    pub fn model(&self, path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(m) = self.models.lock().get(&key) {
            return Ok(m.clone());
        }
        let model = Model { path: path.to_path_buf(), modules: Arc::new(Mutex::new(HashMap::new())) };
        model.module(tch::Device::Cpu)?; // fail early on a missing file or one that is not TorchScript
        Ok(self.models.lock().entry(key).or_insert(model).clone())
    }

    /// Builds a session (see [`Session`]).
    pub fn session<I: Element, O: Element>(&self, model: &Model, spec: SessionSpec) -> Result<Session<I, O>> {
        Session::build(self, model, spec)
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

/// A TorchScript model file, loaded at most once per device and shared by sessions.
#[derive(Clone)]
pub struct Model {
    path: PathBuf,
    modules: Arc<Mutex<HashMap<DeviceKey, Arc<TorchModule>>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DeviceKey {
    Cpu,
    Cuda(usize),
}

impl Model {
    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The module on `device`, loading it there on first use.
    pub fn module(&self, device: tch::Device) -> Result<Arc<TorchModule>> {
        let key = match device {
            tch::Device::Cuda(i) => DeviceKey::Cuda(i),
            _ => DeviceKey::Cpu,
        };
        let mut modules = self.modules.lock();
        if let Some(m) = modules.get(&key) {
            return Ok(m.clone());
        }
        let m = Arc::new(TorchModule::load(&self.path, device)?);
        modules.insert(key, m.clone());
        Ok(m)
    }

    /// Runs the model once on the CPU over `input` (a copy, eager): the
    /// reference result, and the way to learn the output shape and dtype.
    pub fn forward_cpu(&self, input: &tch::Tensor) -> Result<tch::Tensor> {
        self.module(tch::Device::Cpu)?.forward(input).map_err(|e| Error::Model { path: self.path.clone(), message: e.to_string() })
    }
}
