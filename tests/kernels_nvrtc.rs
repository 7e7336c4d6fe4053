//! Every kernel in `kernels/` compiles through NVRTC (no GPU needed).

use uminfer::cuda::nvrtc;
use uminfer::kernels::KERNELS;

#[test]
fn every_kernel_compiles_to_ptx() {
    assert!(!KERNELS.is_empty(), "build.rs embedded no kernel");
    let info = nvrtc::load().expect("NVRTC loads through the binary's RUNPATH");
    assert_eq!(info.version.0, 13, "NVRTC major version");
    for (name, r) in nvrtc::compile_all() {
        let ptx = r.unwrap_or_else(|e| panic!("kernels/{name}.cu: {e}")).to_src();
        assert!(ptx.contains(".target sm_75"), "{name}: PTX not for compute_75:\n{ptx}");
        assert!(ptx.contains(".entry uminfer_"), "{name}: no uminfer_ entry point in PTX");
    }
}

#[test]
fn a_broken_kernel_is_a_typed_error_with_the_compiler_log() {
    let bad = uminfer::kernels::KernelSource {
        name: "broken",
        source: "extern \"C\" __global__ void f() { undefined_thing(); }",
        prebuilt_ptx: None,
    };
    let err = nvrtc::compile(&bad).unwrap_err().to_string();
    assert!(err.contains("broken") && err.contains("undefined_thing"), "{err}");
}

#[test]
fn unknown_kernel_names_the_known_ones() {
    let err = uminfer::kernels::by_name("nope").unwrap_err().to_string();
    assert!(err.contains("smoke"), "{err}");
}

#[test]
fn ptx_is_cached_per_process() {
    let k = uminfer::kernels::by_name("smoke").unwrap();
    let (a, origin) = nvrtc::ptx(k).unwrap();
    let (b, _) = nvrtc::ptx(k).unwrap();
    if origin == nvrtc::PtxOrigin::Nvrtc {
        assert!(std::sync::Arc::ptr_eq(&a, &b), "second request recompiled");
    }
    assert_eq!(a.to_src(), b.to_src());
}
