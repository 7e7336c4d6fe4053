//! The execution modes uminfer offers, with their stable ids.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a request reaches the model. The ids are stable (CLI, JSON, docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// In-process libtorch over caller-owned host memory (`from_blob`), CPU.
    #[serde(rename = "cpu")]
    Cpu,
    /// Another process hands the tensor over through POSIX shared memory.
    #[serde(rename = "shm-ipc")]
    ShmIpc,
    /// GPU with pinned host buffers and explicit asynchronous copies.
    #[serde(rename = "gpu-copy")]
    GpuCopy,
    /// GPU reading pinned, device-mapped host memory directly (no copy).
    #[serde(rename = "gpu-pinned")]
    GpuPinned,
    /// GPU over CUDA managed (unified) memory with prefetch.
    #[serde(rename = "gpu-managed")]
    GpuManaged,
    /// Managed memory plus a captured CUDA graph replayed per request.
    #[serde(rename = "gpu-managed-graph")]
    GpuManagedGraph,
}

impl Mode {
    /// Every mode, in the order reports list them.
    pub const ALL: [Mode; 6] =
        [Mode::Cpu, Mode::ShmIpc, Mode::GpuCopy, Mode::GpuPinned, Mode::GpuManaged, Mode::GpuManagedGraph];

    /// The stable id (`cpu`, `shm-ipc`, `gpu-copy`, ...).
    pub fn id(self) -> &'static str {
        match self {
            Mode::Cpu => "cpu",
            Mode::ShmIpc => "shm-ipc",
            Mode::GpuCopy => "gpu-copy",
            Mode::GpuPinned => "gpu-pinned",
            Mode::GpuManaged => "gpu-managed",
            Mode::GpuManagedGraph => "gpu-managed-graph",
        }
    }

    /// Whether the mode needs a GPU.
    pub fn needs_gpu(self) -> bool {
        !matches!(self, Mode::Cpu | Mode::ShmIpc)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL.into_iter().find(|m| m.id() == s).ok_or_else(|| {
            format!("unknown mode `{s}`; expected one of: {}", Mode::ALL.map(Mode::id).join(", "))
        })
    }
}

/// Which execution modes may run on this machine: what sessions are built
/// against. The doctor's [`Report`](crate::doctor::Report) is one (a
/// [`Runtime`](crate::Runtime) holds it); a session refuses a mode the gate
/// refuses, quoting its reason.
pub trait ModeGate: Send + Sync {
    /// `Ok` when `mode` is usable here, else why not.
    fn check_mode(&self, mode: Mode) -> Result<(), String>;

    /// The session modes usable here, in the order of preference (fastest first).
    fn usable_modes(&self) -> Vec<Mode> {
        [Mode::GpuManagedGraph, Mode::GpuManaged, Mode::GpuPinned, Mode::GpuCopy, Mode::Cpu]
            .into_iter()
            .filter(|m| self.check_mode(*m).is_ok())
            .collect()
    }
}
