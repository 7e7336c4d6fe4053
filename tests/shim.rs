//! The C++ shim: linked, answering, and failing with errors instead of crashes.

mod common;

use uminfer::shim::{torch_info, CudaGraph, GraphPool};

#[test]
fn torch_info_reports_the_cuda_build_of_2_11() {
    let info = torch_info();
    assert_eq!(info.error, None);
    assert_eq!(info.compiled_version, "2.11.0");
    assert!(info.cuda_build_loaded, "libtorch_cuda must be linked (--no-as-needed)");
    assert_eq!(info.cudart_version, Some(13000));
    assert_eq!(info.cxx11_abi, 1);
    assert_eq!(info.cuda_available, tch::Cuda::is_available());
}

#[test]
fn graph_without_gpu_is_an_error_not_a_crash() {
    if common::gpu_unavailable().is_none() {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: this machine has a GPU; the no-GPU error path needs a machine without one");
        return;
    }
    let err = CudaGraph::new().err().expect("graph creation must fail without GPU").to_string();
    assert!(err.contains("graph_new") && err.contains("GPU"), "{err}");
}

#[test]
fn graph_pool_handles_are_distinct_on_gpu() {
    require_gpu!();
    let a = GraphPool::new_shared().unwrap();
    let b = GraphPool::new_shared().unwrap();
    assert_ne!(a, b);
    let g = CudaGraph::new().unwrap();
    drop(g);
}
