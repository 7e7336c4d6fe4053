//! Turns [`Facts`] into the doctor's list of checks (pure).

use super::facts::Facts;
use super::{Check, Section};
use crate::build_info::{build_info, MIN_COMPUTE_CAPABILITY};
use crate::cuda::driver::format_version;

const DRIVER_HINT: &str = "install an NVIDIA driver of branch 580 or newer (CUDA 13.0), or run the cpu / shm-ipc modes";

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Every check, grouped by section, in report order.
pub fn evaluate(f: &Facts) -> Vec<Check> {
    let mut c = Vec::new();
    build(&mut c);
    libtorch(f, &mut c);
    driver(f, &mut c);
    devices(f, &mut c);
    kernels(f, &mut c);
    shm(f, &mut c);
    env(f, &mut c);
    c
}

fn build(c: &mut Vec<Check>) {
    let b = build_info();
    c.push(Check::pass("build.crate", Section::Build, format!("uminfer {} (commit {})", b.crate_version, b.git_commit)));
    c.push(Check::pass(
        "build.libtorch",
        Section::Build,
        format!("compiled against libtorch {} (C++11 ABI = {}) at {}", b.libtorch_version, b.cxx11_abi, b.libtorch_lib),
    ));
    c.push(Check::pass(
        "build.cuda_target",
        Section::Build,
        format!(
            "kernels and driver bindings target CUDA {}, compute capability {}.{} and newer",
            b.cuda_target, b.min_compute_capability.0, b.min_compute_capability.1
        ),
    ));
}

fn libtorch(f: &Facts, c: &mut Vec<Check>) {
    let t = &f.torch;
    let s = Section::Libtorch;
    match (&t.runtime_version, &t.info.error) {
        (_, Some(e)) => c.push(Check::fail("libtorch.version", s, format!("libtorch did not answer: {e}"), "rerun `bash ci/setup` and rebuild").required()),
        (Some(v), None) if v.split('+').next() != t.build_version.split('+').next() => c.push(
            Check::fail("libtorch.version", s, format!("loaded libtorch {v}, built against {}", t.build_version), "rebuild (`cargo build`) against the libtorch you run with, or point the loader at torch 2.11.0")
                .required(),
        ),
        (Some(v), None) => c.push(Check::pass("libtorch.version", s, format!("libtorch {v} loaded (headers {})", t.info.compiled_version))),
        (None, None) => c.push(Check::warn(
            "libtorch.version",
            s,
            format!("libtorch {} answers, but no version.py was found next to the loaded library", t.info.compiled_version),
            "use the torch wheel's own lib directory (ci/setup does)",
        )),
    }
    if t.info.cuda_build_loaded {
        c.push(Check::pass(
            "libtorch.cuda_build",
            s,
            format!(
                "CUDA build loaded: CUDA runtime {}, cuDNN {} (compiled){}",
                t.info.cudart_version.map(format_version).unwrap_or_else(|| "?".into()),
                t.info.cudnn_version.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                t.info.cudnn_runtime_version.map(|v| format!(", {v} (loaded)")).unwrap_or_default()
            ),
        ));
    } else if t.cuda_library_on_disk {
        c.push(Check::fail(
            "libtorch.cuda_build",
            s,
            "libtorch_cuda.so is on disk but not loaded: CUDA will always report unavailable",
            "link with -Wl,--no-as-needed -ltorch_cuda (build.rs does this for uminfer's own binaries)",
        ));
    } else {
        c.push(Check::warn("libtorch.cuda_build", s, "libtorch is a CPU-only build: GPU modes unavailable", "install the CUDA build: pip install torch==2.11.0 (cu130)"));
    }
    let driver_gpus = f.driver.device_count.unwrap_or(0);
    if t.info.cuda_available {
        c.push(Check::pass("libtorch.cuda_available", s, format!("torch::cuda::is_available() = true, {} GPU(s)", t.info.device_count)));
    } else if driver_gpus > 0 && t.info.cuda_build_loaded {
        c.push(Check::fail(
            "libtorch.cuda_available",
            s,
            format!("the driver sees {driver_gpus} GPU(s) but libtorch sees none"),
            "compare the driver's CUDA version with libtorch's (driver section); check CUDA_VISIBLE_DEVICES and that libcudart.so.13 loads",
        ));
    } else if driver_gpus > 0 {
        c.push(Check::fail(
            "libtorch.cuda_available",
            s,
            format!("the driver sees {driver_gpus} GPU(s) but libtorch's CUDA part is not loaded"),
            "see libtorch.cuda_build",
        ));
    } else {
        c.push(Check::skip("libtorch.cuda_available", s, "torch::cuda::is_available() = false: no GPU on this machine"));
    }
    let libs: Vec<String> = t.libraries.iter().map(|p| p.display().to_string()).collect();
    c.push(Check::pass("libtorch.libraries", s, format!("loaded: {}", if libs.is_empty() { "(none found)".into() } else { libs.join(", ") })));
}

fn driver(f: &Facts, c: &mut Vec<Check>) {
    let s = Section::Driver;
    let d = &f.driver;
    if let Some(e) = &d.load_error {
        c.push(Check::warn("driver.present", s, format!("no CUDA driver: {e}; GPU modes unavailable"), DRIVER_HINT));
        c.push(Check::skip("driver.version", s, "no driver"));
        return;
    }
    c.push(Check::pass("driver.present", s, format!("libcuda loaded, {} device(s)", d.device_count.unwrap_or(0))));
    let need = f.torch.info.cudart_version.unwrap_or(crate::build_info::CUDA_TARGET_VERSION as i64);
    match d.version {
        None => c.push(Check::warn("driver.version", s, "the driver did not report its version", DRIVER_HINT)),
        Some(v) if (v as i64) / 1000 < need / 1000 => c.push(Check::fail(
            "driver.version",
            s,
            format!("driver supports up to CUDA {}; libtorch and the kernels need CUDA {}", format_version(v as i64), format_version(need)),
            DRIVER_HINT,
        )),
        Some(v) => c.push(Check::pass(
            "driver.version",
            s,
            format!("driver supports up to CUDA {} (libtorch and kernels need {})", format_version(v as i64), format_version(need)),
        )),
    }
}

fn devices(f: &Facts, c: &mut Vec<Check>) {
    let s = Section::Devices;
    if f.devices.is_empty() {
        c.push(Check::skip("device", s, "no CUDA device to inspect"));
        return;
    }
    for d in &f.devices {
        let id = |k: &str| format!("device.{}.{k}", d.ordinal);
        let cc_ok = d.compute_capability >= MIN_COMPUTE_CAPABILITY;
        let summary = format!(
            "{} {} cc {}.{}, {} total, {} free, compute mode {}, MIG {}",
            d.name,
            d.uuid,
            d.compute_capability.0,
            d.compute_capability.1,
            gib(d.total_memory as u64),
            d.free_memory.map(|b| gib(b as u64)).unwrap_or_else(|| "?".into()),
            match d.compute_mode {
                0 => "Default",
                2 => "Prohibited",
                3 => "Exclusive-Process",
                _ => "other",
            },
            if d.mig { "yes" } else { "no" }
        );
        c.push(if !cc_ok {
            Check::fail(id("info"), s, summary, format!("kernels and libtorch need compute capability {}.{} or newer", MIN_COMPUTE_CAPABILITY.0, MIN_COMPUTE_CAPABILITY.1))
        } else if d.compute_mode == 2 {
            Check::fail(id("info"), s, summary, "the device is in compute mode Prohibited; an administrator must change it")
        } else if !d.errors.is_empty() {
            Check::warn(id("info"), s, format!("{summary}; unread: {}", d.errors.join("; ")), "check the driver installation")
        } else {
            Check::pass(id("info"), s, summary)
        });
        let um = format!(
            "managedMemory={} concurrentManagedAccess={} pageableMemoryAccess={} directManagedMemAccessFromHost={} unifiedAddressing={} canMapHostMemory={} memoryPools={} streamCapture=yes",
            d.managed_memory as u8,
            d.concurrent_managed_access as u8,
            d.pageable_memory_access as u8,
            d.direct_managed_mem_access_from_host as u8,
            d.unified_addressing as u8,
            d.can_map_host_memory as u8,
            d.memory_pools_supported as u8,
        );
        c.push(if !d.managed_memory {
            Check::warn(id("unified_memory"), s, um, "this GPU has no managed memory: use gpu-copy or gpu-pinned")
        } else if !d.concurrent_managed_access {
            Check::warn(id("unified_memory"), s, um, "without concurrentManagedAccess the host may not touch managed memory while the GPU runs: uminfer synchronises before host views (slower)")
        } else {
            Check::pass(id("unified_memory"), s, um)
        });
        c.push(match &d.smoke {
            None => Check::skip(id("smoke_managed"), s, "managed-memory round trip not run"),
            Some(Ok(())) => Check::pass(id("smoke_managed"), s, "managed-memory round trip: host wrote, kernel added, host read 4096 correct values"),
            Some(Err(e)) => Check::fail(id("smoke_managed"), s, format!("managed-memory round trip failed: {e}"), "see the driver section; try `compute-sanitizer uminfer doctor`"),
        });
    }
}

fn kernels(f: &Facts, c: &mut Vec<Check>) {
    let s = Section::Kernels;
    match &f.nvrtc.loaded {
        Ok(info) => c.push(Check::pass(
            "kernels.nvrtc",
            s,
            format!(
                "NVRTC {}.{} from {} (builtins {})",
                info.version.0,
                info.version.1,
                info.library.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "?".into()),
                info.builtins.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "resolved by NVRTC itself".into())
            ),
        )),
        Err(e) => c.push(Check::warn("kernels.nvrtc", s, format!("NVRTC unavailable: {e}"), "GPU kernels cannot be compiled; run `bash ci/setup`")),
    }
    for (name, r) in &f.nvrtc.kernels {
        c.push(match r {
            Ok(bytes) => Check::pass(
                format!("kernels.{name}"),
                s,
                format!(
                    "kernels/{name}.cu compiles through NVRTC ({bytes} bytes of PTX); runtime uses {}",
                    if f.nvrtc.prebuilt_by_nvcc { "the PTX nvcc built with the crate" } else { "NVRTC at first use (no nvcc at build time)" }
                ),
            ),
            Err(e) if f.nvrtc.loaded.is_err() => Check::skip(format!("kernels.{name}"), s, format!("not compiled: {e}")),
            Err(e) => Check::fail(format!("kernels.{name}"), s, format!("kernels/{name}.cu does not compile: {e}"), "fix the kernel source"),
        });
    }
}

fn shm(f: &Facts, c: &mut Vec<Check>) {
    let s = Section::SharedMemory;
    let free = f.shm.free_bytes.map(gib).unwrap_or_else(|| "?".into());
    c.push(match (&f.shm.present, &f.shm.write_error) {
        (false, _) => Check::fail("shm.dev_shm", s, "/dev/shm is missing", "mount a tmpfs on /dev/shm (docker: --shm-size)").required(),
        (true, Some(e)) => Check::fail("shm.dev_shm", s, format!("/dev/shm is not writable: {e}"), "make /dev/shm writable for this user").required(),
        (true, None) => Check::pass("shm.dev_shm", s, format!("/dev/shm present and writable, {free} free")),
    });
}

fn env(f: &Facts, c: &mut Vec<Check>) {
    let s = Section::Environment;
    let vars: Vec<String> =
        f.env.vars.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("(unset)"))).collect();
    c.push(Check::pass("env.vars", s, vars.join(" ")));
    c.push(Check::pass("env.platform", s, format!("{}, glibc {}", f.env.os, f.env.glibc)));
}
