//! Gathers [`Facts`] from the machine. Never panics: each probe step is
//! guarded, cudarc is never called before the driver is known to load, and the
//! GPU smoke test runs on its own thread with a deadline.

use super::facts::*;
use crate::cuda::{driver, nvrtc, smoke};
use crate::{build_info, kernels, loaded_libs, shim};
use cudarc::driver::sys::CUdevice_attribute as A;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// How long the managed-memory smoke test may take on one device.
pub const SMOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables the doctor reports.
pub const ENV_VARS: [&str; 5] =
    ["CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "PYTORCH_CUDA_ALLOC_CONF", "CUDA_MODULE_LOADING", "OMP_NUM_THREADS"];

/// Options of a probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// Run the GPU smoke tests (allocates a few KB of managed memory per device).
    pub smoke_tests: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self { smoke_tests: true }
    }
}

/// Collects every fact. Order matters: the driver is loaded before the list of
/// loaded libraries is read, so that `libcuda` shows up in it.
pub fn collect(opts: ProbeOptions) -> Facts {
    let driver = probe_driver();
    let devices = match driver.device_count {
        Some(n) if n > 0 => (0..n).map(|i| probe_device(i, opts.smoke_tests)).collect(),
        _ => Vec::new(),
    };
    let nvrtc = probe_nvrtc();
    let torch = probe_torch();
    Facts { torch, driver, devices, nvrtc, shm: probe_shm(), env: probe_env() }
}

fn probe_torch() -> TorchFacts {
    let info = shim::torch_info();
    let libraries = loaded_libs::matching(&["libtorch", "libc10", "libcudart", "libcudnn", "libcuda.so", "libnvrtc"]);
    let cpu_lib = libraries.iter().find(|p| p.file_name().is_some_and(|n| n == "libtorch_cpu.so"));
    let lib_dir = cpu_lib.and_then(|p| p.parent());
    let runtime_version = lib_dir.and_then(|d| torch_version_py(&d.join("../version.py")));
    let cuda_library_on_disk = lib_dir.is_some_and(|d| d.join("libtorch_cuda.so").exists());
    TorchFacts {
        info,
        runtime_version,
        build_version: build_info::build_info().libtorch_version.to_string(),
        cuda_library_on_disk,
        libraries,
    }
}

/// `__version__` from a torch `version.py`.
fn torch_version_py(path: &Path) -> Option<String> {
    crate::torch_version::parse_version_py(&std::fs::read_to_string(path).ok()?)
}

fn probe_driver() -> DriverFacts {
    if let Err(e) = driver::ensure_driver() {
        let detail = match e {
            crate::Error::NoDriver { detail } => detail,
            other => other.to_string(),
        };
        return DriverFacts { load_error: Some(detail), version: None, device_count: None };
    }
    DriverFacts {
        load_error: None,
        version: driver::driver_version().ok(),
        device_count: Some(driver::device_count().unwrap_or(0)),
    }
}

fn probe_device(ordinal: i32, smoke_tests: bool) -> DeviceFacts {
    let mut f = DeviceFacts { ordinal, ..Default::default() };
    let dev = match driver::device(ordinal) {
        Ok(d) => d,
        Err(e) => {
            f.errors.push(e.to_string());
            return f;
        }
    };
    let attr = |a: A, errors: &mut Vec<String>| match driver::attribute(dev, a) {
        Ok(v) => v,
        Err(e) => {
            errors.push(format!("{a:?}: {e}"));
            0
        }
    };
    let mut errors = Vec::new();
    f.compute_capability = (
        attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &mut errors),
        attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, &mut errors),
    );
    f.compute_mode = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, &mut errors);
    f.managed_memory = attr(A::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, &mut errors) != 0;
    f.concurrent_managed_access = attr(A::CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, &mut errors) != 0;
    f.pageable_memory_access = attr(A::CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS, &mut errors) != 0;
    f.direct_managed_mem_access_from_host =
        attr(A::CU_DEVICE_ATTRIBUTE_DIRECT_MANAGED_MEM_ACCESS_FROM_HOST, &mut errors) != 0;
    f.unified_addressing = attr(A::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, &mut errors) != 0;
    f.can_map_host_memory = attr(A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, &mut errors) != 0;
    f.memory_pools_supported = attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, &mut errors) != 0;
    f.errors = errors;
    match driver::name(dev) {
        Ok(n) => f.name = n,
        Err(e) => f.errors.push(e.to_string()),
    }
    match driver::uuid(dev) {
        Ok(u) => f.uuid = u,
        Err(e) => f.errors.push(e.to_string()),
    }
    f.mig = f.uuid.starts_with("MIG-")
        || std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| v.contains("MIG-"));
    match driver::total_memory(dev) {
        Ok(t) => f.total_memory = t,
        Err(e) => f.errors.push(e.to_string()),
    }
    let prohibited = f.compute_mode == 2;
    if !prohibited {
        match driver::memory_info(ordinal as usize) {
            Ok((free, _)) => f.free_memory = Some(free),
            Err(e) => f.errors.push(e.to_string()),
        }
    }
    if smoke_tests && f.managed_memory && !prohibited {
        f.smoke = Some(run_with_deadline(ordinal as usize));
    }
    f
}

/// Runs the managed round trip on a helper thread; gives up after [`SMOKE_TIMEOUT`].
fn run_with_deadline(ordinal: usize) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name(format!("uminfer-smoke-{ordinal}")).spawn(move || {
        let outcome = std::panic::catch_unwind(|| smoke::managed_round_trip(ordinal))
            .map_err(|_| "the smoke test panicked inside the CUDA bindings".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let _ = tx.send(outcome);
    });
    if let Err(e) = spawned {
        return Err(format!("could not start the smoke-test thread: {e}"));
    }
    rx.recv_timeout(SMOKE_TIMEOUT)
        .unwrap_or_else(|_| Err(format!("no answer within {} s (GPU hung or busy)", SMOKE_TIMEOUT.as_secs())))
}

fn probe_nvrtc() -> NvrtcFacts {
    let loaded = nvrtc::load().map_err(|e| e.to_string());
    let kernels = if loaded.is_ok() {
        nvrtc::compile_all()
            .into_iter()
            .map(|(name, r)| (name.to_string(), r.map(|ptx| ptx.to_src().len()).map_err(|e| e.to_string())))
            .collect()
    } else {
        kernels::KERNELS.iter().map(|k| (k.name.to_string(), Err("NVRTC not loaded".to_string()))).collect()
    };
    NvrtcFacts { loaded, kernels, prebuilt_by_nvcc: kernels::KERNELS.iter().all(|k| k.prebuilt_ptx.is_some()) }
}

fn probe_shm() -> ShmFacts {
    let dir = Path::new("/dev/shm");
    if !dir.is_dir() {
        return ShmFacts { present: false, write_error: Some("/dev/shm does not exist".into()), free_bytes: None };
    }
    let probe = dir.join(format!("uminfer-doctor-{}", std::process::id()));
    let write_error = std::fs::write(&probe, b"uminfer").err().map(|e| e.to_string());
    let _ = std::fs::remove_file(&probe);
    ShmFacts { present: true, write_error, free_bytes: statvfs_free(dir) }
}

fn statvfs_free(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable
    // storage for one statvfs struct.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // The fields are 32-bit on some targets and 64-bit on x86-64.
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn probe_env() -> EnvFacts {
    let vars = ENV_VARS.iter().map(|v| (v.to_string(), std::env::var(v).ok())).collect();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|s| s.trim_matches('"').to_string()))
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
    let glibc = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }.to_string_lossy().into_owned();
    EnvFacts { vars, os, glibc }
}
