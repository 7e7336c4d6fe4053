//! Which execution modes this machine can run, decided from [`Facts`] alone
//! (pure: unit-tested over synthetic machines).

use super::facts::Facts;
use crate::build_info::{CUDA_TARGET_VERSION, MIN_COMPUTE_CAPABILITY};
use crate::cuda::driver::format_version;
use crate::mode::Mode;
use serde::Serialize;
use std::collections::BTreeMap;

/// Whether one mode is usable, and why (not).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModeVerdict {
    pub usable: bool,
    pub reason: String,
}

impl ModeVerdict {
    fn yes(reason: impl Into<String>) -> Self {
        Self { usable: true, reason: reason.into() }
    }
    fn no(reason: impl Into<String>) -> Self {
        Self { usable: false, reason: reason.into() }
    }
}

/// The CUDA version libtorch's GPU code needs from the driver (`13000` for cu130).
fn needed_cuda(f: &Facts) -> i64 {
    f.torch.info.cudart_version.unwrap_or(CUDA_TARGET_VERSION as i64)
}

/// Why no GPU mode can run, or the first GPU that can.
pub fn gpu_blocker(f: &Facts) -> Result<&super::facts::DeviceFacts, String> {
    if let Some(e) = &f.driver.load_error {
        return Err(format!("no CUDA driver ({e})"));
    }
    let Some(version) = f.driver.version else {
        return Err("the CUDA driver did not report its version".into());
    };
    let need = needed_cuda(f);
    // CUDA minor-version compatibility: a driver of the same major version runs
    // any runtime of that major version; an older major cannot.
    if (version as i64) / 1000 < need / 1000 {
        return Err(format!(
            "driver supports CUDA {} but libtorch and the kernels need CUDA {}",
            format_version(version as i64),
            format_version(need)
        ));
    }
    if f.driver.device_count.unwrap_or(0) == 0 {
        return Err("the driver loads but exposes no GPU (check CUDA_VISIBLE_DEVICES)".into());
    }
    if !f.torch.info.cuda_build_loaded {
        return Err(if f.torch.cuda_library_on_disk {
            "libtorch_cuda.so is on disk but not loaded: the binary was linked with --as-needed and dropped it".into()
        } else {
            "libtorch is a CPU-only build".into()
        });
    }
    if !f.torch.info.cuda_available {
        return Err("the driver sees GPUs but libtorch does not (torch::cuda::is_available() is false)".into());
    }
    let mut last = String::from("no usable GPU");
    for d in &f.devices {
        if d.compute_capability < MIN_COMPUTE_CAPABILITY {
            last = format!(
                "GPU {} ({}) has compute capability {}.{}, below the {}.{} the kernels and libtorch support",
                d.ordinal, d.name, d.compute_capability.0, d.compute_capability.1, MIN_COMPUTE_CAPABILITY.0, MIN_COMPUTE_CAPABILITY.1
            );
        } else if d.compute_mode == 2 {
            last = format!("GPU {} ({}) is in compute mode Prohibited", d.ordinal, d.name);
        } else {
            return Ok(d);
        }
    }
    Err(last)
}

/// The verdict for every mode, in [`Mode::ALL`] order.
pub fn modes(f: &Facts) -> BTreeMap<Mode, ModeVerdict> {
    let mut out = BTreeMap::new();
    let cpu = match (&f.torch.runtime_version, f.torch.info.error.as_ref()) {
        (_, Some(e)) => ModeVerdict::no(format!("libtorch did not answer: {e}")),
        (Some(rt), None) if !rt.starts_with(f.torch.build_version.split('+').next().unwrap_or("")) => {
            ModeVerdict::no(format!("libtorch {rt} is loaded but this binary was built against {}", f.torch.build_version))
        }
        _ => ModeVerdict::yes("libtorch loads and runs on the CPU"),
    };
    let shm = if !cpu.usable {
        ModeVerdict::no(format!("needs the cpu mode: {}", cpu.reason))
    } else if let Some(e) = &f.shm.write_error {
        ModeVerdict::no(format!("/dev/shm is not usable: {e}"))
    } else {
        ModeVerdict::yes("/dev/shm is writable")
    };
    out.insert(Mode::Cpu, cpu.clone());
    out.insert(Mode::ShmIpc, shm);

    let gpu = gpu_blocker(f).and_then(|d| {
        if cpu.usable {
            Ok(d)
        } else {
            Err(format!("libtorch itself is unusable: {}", cpu.reason))
        }
    });
    match gpu {
        Err(why) => {
            for m in [Mode::GpuCopy, Mode::GpuPinned, Mode::GpuManaged, Mode::GpuManagedGraph] {
                out.insert(m, ModeVerdict::no(why.clone()));
            }
        }
        Ok(d) => {
            let ord = d.ordinal;
            out.insert(Mode::GpuCopy, ModeVerdict::yes(format!("GPU {ord} ({}) with pinned staging buffers", d.name)));
            out.insert(
                Mode::GpuPinned,
                if !d.can_map_host_memory {
                    ModeVerdict::no(format!("GPU {ord} cannot map host memory"))
                } else if !d.unified_addressing {
                    ModeVerdict::no(format!("GPU {ord} has no unified addressing"))
                } else {
                    ModeVerdict::yes(format!("GPU {ord} maps pinned host memory"))
                },
            );
            let managed = if !d.managed_memory {
                ModeVerdict::no(format!("GPU {ord} does not support managed memory"))
            } else if let Some(Err(e)) = &d.smoke {
                ModeVerdict::no(format!("managed-memory smoke test failed on GPU {ord}: {e}"))
            } else if !d.concurrent_managed_access {
                ModeVerdict::yes(format!(
                    "GPU {ord} has managed memory without concurrentManagedAccess: host views synchronise the device first"
                ))
            } else {
                ModeVerdict::yes(format!("GPU {ord} has managed memory with concurrent access"))
            };
            let graph = if managed.usable {
                ModeVerdict::yes(format!("managed memory usable and stream capture supported by driver {}", format_version(f.driver.version.unwrap_or(0) as i64)))
            } else {
                ModeVerdict::no(format!("needs gpu-managed: {}", managed.reason))
            };
            out.insert(Mode::GpuManaged, managed);
            out.insert(Mode::GpuManagedGraph, graph);
        }
    }
    out
}
