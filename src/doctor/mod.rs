//! `uminfer doctor`: what this machine can and cannot run, and why.
//!
//! | module | holds |
//! |---|---|
//! | [`facts`] | the probe's findings as plain data |
//! | [`probe`] | gathering the facts (never panics, bounded in time) |
//! | [`checks`] | facts → `pass/warn/fail/skip` checks with hints (pure) |
//! | [`verdict`] | facts → usable execution modes with reasons (pure) |
//! | [`model`] | one model file: its facts, signature and verdict per mode (`doctor --model`) |
//! | [`render`] | human text and `--json` output |
//!
//! The runtime calls [`diagnose`] once at startup and refuses modes the
//! verdict marks unusable, quoting the reason.

pub mod checks;
pub mod facts;
pub mod model;
pub mod probe;
pub mod render;
pub mod verdict;

use crate::build_info::{build_info, BuildInfo};
use crate::mode::Mode;
use serde::Serialize;
use std::collections::BTreeMap;
pub use verdict::ModeVerdict;

/// Version of the JSON report's schema.
pub const SCHEMA_VERSION: u32 = 1;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

/// Report sections, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Build,
    Libtorch,
    Driver,
    Devices,
    Kernels,
    SharedMemory,
    Environment,
}

impl Section {
    /// Heading used in text output.
    pub fn title(self) -> &'static str {
        match self {
            Section::Build => "Build",
            Section::Libtorch => "libtorch",
            Section::Driver => "CUDA driver",
            Section::Devices => "Devices",
            Section::Kernels => "Kernels (NVRTC)",
            Section::SharedMemory => "Shared memory",
            Section::Environment => "Environment",
        }
    }
}

/// One diagnostic line.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub id: String,
    pub section: Section,
    pub status: Status,
    pub message: String,
    /// What to do about a warning or failure.
    pub hint: Option<String>,
    /// A failure of this check makes the CPU modes unusable (exit code 2).
    #[serde(skip)]
    pub required: bool,
}

impl Check {
    fn new(id: impl Into<String>, section: Section, status: Status, message: impl Into<String>, hint: Option<String>) -> Self {
        Self { id: id.into(), section, status, message: message.into(), hint, required: false }
    }
    pub(crate) fn pass(id: impl Into<String>, section: Section, message: impl Into<String>) -> Self {
        Self::new(id, section, Status::Pass, message, None)
    }
    pub(crate) fn skip(id: impl Into<String>, section: Section, message: impl Into<String>) -> Self {
        Self::new(id, section, Status::Skip, message, None)
    }
    pub(crate) fn warn(id: impl Into<String>, section: Section, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(id, section, Status::Warn, message, Some(hint.into()))
    }
    pub(crate) fn fail(id: impl Into<String>, section: Section, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(id, section, Status::Fail, message, Some(hint.into()))
    }
    pub(crate) fn required(mut self) -> Self {
        self.required = true;
        self
    }
}

/// The doctor's full answer.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub build: BuildInfo,
    pub checks: Vec<Check>,
    pub modes: BTreeMap<Mode, ModeVerdict>,
    /// The raw findings the checks were derived from.
    pub facts: facts::Facts,
}

impl Report {
    /// Builds a report from facts (pure).
    pub fn from_facts(facts: facts::Facts) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            build: build_info(),
            checks: checks::evaluate(&facts),
            modes: verdict::modes(&facts),
            facts,
        }
    }

    /// 0 when every check passed (or was skipped), 1 with warnings or with
    /// failures that only affect GPU modes, 2 when something the CPU modes
    /// need failed.
    pub fn exit_code(&self) -> i32 {
        if self.checks.iter().any(|c| c.status == Status::Fail && c.required) {
            2
        } else if self.checks.iter().any(|c| matches!(c.status, Status::Warn | Status::Fail)) {
            1
        } else {
            0
        }
    }

    /// What decides where a model package can run: libtorch's version and
    /// the GPUs' compute capabilities.
    pub(crate) fn machine_view(&self) -> crate::model::MachineView {
        let torch = &self.facts.torch;
        crate::model::MachineView {
            torch_version: torch.runtime_version.clone().unwrap_or_else(|| torch.build_version.clone()),
            capabilities: self.facts.devices.iter().map(|d| d.compute_capability).collect(),
        }
    }

    /// `Ok` when `mode` is usable here, else the doctor's reason.
    pub fn check_mode(&self, mode: Mode) -> Result<(), String> {
        match self.modes.get(&mode) {
            Some(v) if v.usable => Ok(()),
            Some(v) => Err(v.reason.clone()),
            None => Err(format!("mode {mode} was not assessed")),
        }
    }
}

impl crate::mode::ModeGate for Report {
    fn check_mode(&self, mode: Mode) -> Result<(), String> {
        Report::check_mode(self, mode)
    }
}

/// Probes this machine and builds the report. Never panics.
pub fn diagnose(opts: probe::ProbeOptions) -> Report {
    Report::from_facts(probe::collect(opts))
}
