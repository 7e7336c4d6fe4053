//! What the probe found, as plain data: the input of the pure check and
//! verdict logic, so that both can be tested over synthetic machines.

use crate::shim::TorchInfo;
use serde::Serialize;
use std::path::PathBuf;

/// Everything the doctor knows about this machine.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    pub torch: TorchFacts,
    pub driver: DriverFacts,
    pub devices: Vec<DeviceFacts>,
    pub nvrtc: NvrtcFacts,
    pub shm: ShmFacts,
    pub env: EnvFacts,
}

/// libtorch as loaded in this process.
#[derive(Debug, Clone, Serialize)]
pub struct TorchFacts {
    /// libtorch's own answers (through the shim).
    pub info: TorchInfo,
    /// `torch.__version__` next to the loaded `libtorch_cpu.so`, if found.
    pub runtime_version: Option<String>,
    /// The version this binary was linked against.
    pub build_version: String,
    /// `libtorch_cuda.so` exists beside the loaded `libtorch_cpu.so`.
    pub cuda_library_on_disk: bool,
    /// Real paths of the loaded `libtorch*`, `libc10*`, `libcudart`, `libcudnn`, `libcuda`.
    pub libraries: Vec<PathBuf>,
}

/// The CUDA driver.
#[derive(Debug, Clone, Serialize)]
pub struct DriverFacts {
    /// Why `libcuda` could not be loaded or initialised, `None` when it was.
    pub load_error: Option<String>,
    /// `cuDriverGetVersion` (`13000` = CUDA 13.0).
    pub version: Option<i32>,
    /// Devices the driver exposes.
    pub device_count: Option<i32>,
}

/// One CUDA device as the driver reports it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DeviceFacts {
    pub ordinal: i32,
    pub name: String,
    pub uuid: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub free_memory: Option<usize>,
    /// `CU_DEVICE_ATTRIBUTE_COMPUTE_MODE` (0 default, 2 prohibited, 3 exclusive process).
    pub compute_mode: i32,
    /// The device is a MIG instance (its UUID starts with `MIG-`).
    pub mig: bool,
    pub managed_memory: bool,
    pub concurrent_managed_access: bool,
    pub pageable_memory_access: bool,
    pub direct_managed_mem_access_from_host: bool,
    pub unified_addressing: bool,
    pub can_map_host_memory: bool,
    pub memory_pools_supported: bool,
    /// Outcome of the managed-memory round trip; `None` when not run.
    pub smoke: Option<Result<(), String>>,
    /// Attributes that could not be read.
    pub errors: Vec<String>,
}

/// NVRTC and the kernels.
#[derive(Debug, Clone, Serialize)]
pub struct NvrtcFacts {
    /// NVRTC version and paths, or why it could not be loaded.
    pub loaded: Result<crate::cuda::nvrtc::NvrtcInfo, String>,
    /// Each kernel in `kernels/`: PTX size from an NVRTC compile, or the error.
    pub kernels: Vec<(String, Result<usize, String>)>,
    /// nvcc compiled the kernels at build time (the runtime uses that PTX);
    /// otherwise the runtime compiles them with NVRTC at first use.
    pub prebuilt_by_nvcc: bool,
}

/// `/dev/shm`, where the shared-memory transport lives.
#[derive(Debug, Clone, Serialize)]
pub struct ShmFacts {
    pub present: bool,
    /// `None` when writable, else why not.
    pub write_error: Option<String>,
    pub free_bytes: Option<u64>,
}

/// Environment variables and platform.
#[derive(Debug, Clone, Serialize)]
pub struct EnvFacts {
    pub vars: Vec<(String, Option<String>)>,
    pub os: String,
    pub glibc: String,
}
