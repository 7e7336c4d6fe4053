//! The doctor's verdict and checks over synthetic machines (pure logic, no GPU needed).

mod common;

use uminfer::doctor::facts::*;
use uminfer::doctor::{Report, Status};
use uminfer::Mode;

/// An H100 host where everything works.
fn healthy_gpu_host() -> Facts {
    common::gpu_host((9, 0), "NVIDIA H100 80GB HBM3")
}

fn usable(r: &Report, m: Mode) -> bool {
    r.modes[&m].usable
}

fn reason(r: &Report, m: Mode) -> &str {
    &r.modes[&m].reason
}

fn status(r: &Report, id: &str) -> Status {
    r.checks.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no check {id}")).status
}

const GPU_MODES: [Mode; 4] = [Mode::GpuCopy, Mode::GpuPinned, Mode::GpuManaged, Mode::GpuManagedGraph];

#[test]
fn healthy_host_runs_every_mode_and_exits_zero() {
    let r = Report::from_facts(healthy_gpu_host());
    for m in Mode::ALL {
        assert!(usable(&r, m), "{m} should be usable: {}", reason(&r, m));
    }
    assert_eq!(r.exit_code(), 0, "{:#?}", r.checks.iter().filter(|c| c.status != Status::Pass).collect::<Vec<_>>());
}

#[test]
fn no_driver_leaves_cpu_modes_and_warns() {
    let mut f = healthy_gpu_host();
    f.driver = DriverFacts { load_error: Some("libcuda.so not found".into()), version: None, device_count: None };
    f.devices.clear();
    f.torch.info.cuda_available = false;
    f.torch.info.device_count = 0;
    let r = Report::from_facts(f);
    assert!(usable(&r, Mode::Cpu) && usable(&r, Mode::ShmIpc));
    for m in GPU_MODES {
        assert!(!usable(&r, m));
        assert!(reason(&r, m).contains("no CUDA driver"), "{m}: {}", reason(&r, m));
    }
    assert_eq!(status(&r, "driver.present"), Status::Warn);
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn driver_too_old_for_libtorch_cuda() {
    let mut f = healthy_gpu_host();
    f.driver.version = Some(12080);
    f.torch.info.cuda_available = false;
    let r = Report::from_facts(f);
    for m in GPU_MODES {
        assert!(!usable(&r, m));
        assert!(reason(&r, m).contains("driver supports CUDA 12.8") && reason(&r, m).contains("need CUDA 13.0"), "{}", reason(&r, m));
    }
    assert_eq!(status(&r, "driver.version"), Status::Fail);
    assert_eq!(r.exit_code(), 1, "a GPU-only failure must not fail the CPU modes");
}

#[test]
fn newer_minor_driver_is_fine() {
    let mut f = healthy_gpu_host();
    f.driver.version = Some(13020);
    let r = Report::from_facts(f);
    assert!(usable(&r, Mode::GpuManagedGraph));
}

#[test]
fn gpu_without_managed_memory() {
    let mut f = healthy_gpu_host();
    f.devices[0].managed_memory = false;
    f.devices[0].smoke = None;
    let r = Report::from_facts(f);
    assert!(usable(&r, Mode::GpuCopy) && usable(&r, Mode::GpuPinned));
    assert!(!usable(&r, Mode::GpuManaged) && !usable(&r, Mode::GpuManagedGraph));
    assert!(reason(&r, Mode::GpuManaged).contains("does not support managed memory"));
    assert!(reason(&r, Mode::GpuManagedGraph).contains("needs gpu-managed"));
}

#[test]
fn no_concurrent_managed_access_is_usable_with_synchronisation_and_warns() {
    let mut f = healthy_gpu_host();
    f.devices[0].concurrent_managed_access = false;
    let r = Report::from_facts(f);
    assert!(usable(&r, Mode::GpuManaged));
    assert!(reason(&r, Mode::GpuManaged).contains("synchronise"), "{}", reason(&r, Mode::GpuManaged));
    assert_eq!(status(&r, "device.0.unified_memory"), Status::Warn);
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn compute_capability_below_kernels() {
    let mut f = healthy_gpu_host();
    f.devices[0].compute_capability = (7, 0);
    f.devices[0].name = "Tesla V100".into();
    let r = Report::from_facts(f);
    for m in GPU_MODES {
        assert!(!usable(&r, m));
        assert!(reason(&r, m).contains("compute capability 7.0"), "{}", reason(&r, m));
    }
    assert_eq!(status(&r, "device.0.info"), Status::Fail);
}

#[test]
fn cpu_only_libtorch_with_a_driver() {
    let mut f = healthy_gpu_host();
    f.torch.info.cuda_build_loaded = false;
    f.torch.info.cuda_available = false;
    f.torch.cuda_library_on_disk = false;
    let r = Report::from_facts(f);
    for m in GPU_MODES {
        assert_eq!(reason(&r, m), "libtorch is a CPU-only build");
    }
    assert!(usable(&r, Mode::Cpu));
}

#[test]
fn libtorch_cuda_dropped_by_as_needed_is_diagnosed() {
    let mut f = healthy_gpu_host();
    f.torch.info.cuda_build_loaded = false;
    f.torch.info.cuda_available = false;
    let r = Report::from_facts(f);
    assert!(reason(&r, Mode::GpuCopy).contains("--as-needed"), "{}", reason(&r, Mode::GpuCopy));
    assert_eq!(status(&r, "libtorch.cuda_build"), Status::Fail);
    assert_eq!(status(&r, "libtorch.cuda_available"), Status::Fail);
}

#[test]
fn failed_smoke_test_blocks_managed_modes() {
    let mut f = healthy_gpu_host();
    f.devices[0].smoke = Some(Err("element 3 is 3, expected 4.5".into()));
    let r = Report::from_facts(f);
    assert!(usable(&r, Mode::GpuCopy));
    assert!(!usable(&r, Mode::GpuManaged));
    assert_eq!(status(&r, "device.0.smoke_managed"), Status::Fail);
}

#[test]
fn broken_dev_shm_fails_required_check_with_exit_two() {
    let mut f = healthy_gpu_host();
    f.shm = ShmFacts { present: true, write_error: Some("Read-only file system".into()), free_bytes: None };
    let r = Report::from_facts(f);
    assert!(!usable(&r, Mode::ShmIpc) && usable(&r, Mode::Cpu));
    assert_eq!(r.exit_code(), 2);
}

#[test]
fn mismatched_libtorch_version_makes_everything_unusable() {
    let mut f = healthy_gpu_host();
    f.torch.runtime_version = Some("2.10.0+cu128".into());
    let r = Report::from_facts(f);
    for m in Mode::ALL {
        assert!(!usable(&r, m), "{m} should be unusable");
    }
    assert_eq!(r.exit_code(), 2);
}

#[test]
fn prohibited_compute_mode_blocks_gpu() {
    let mut f = healthy_gpu_host();
    f.devices[0].compute_mode = 2;
    let r = Report::from_facts(f);
    assert!(reason(&r, Mode::GpuCopy).contains("Prohibited"));
}

#[test]
fn check_mode_quotes_the_reason() {
    let mut f = healthy_gpu_host();
    f.devices[0].managed_memory = false;
    let r = Report::from_facts(f);
    assert!(r.check_mode(Mode::GpuCopy).is_ok());
    assert!(r.check_mode(Mode::GpuManaged).unwrap_err().contains("managed memory"));
}
