//! Raw declarations of `uminfer_shim.h` (the `sys` layer). Use the safe
//! wrappers in the parent module instead.

use std::ffi::{c_char, c_void};

/// Mirrors `UminferTorchInfo` in `uminfer_shim.h`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UminferTorchInfo {
    pub torch_version: [c_char; 32],
    pub has_cudart: i32,
    pub has_cuda: i32,
    pub device_count: i32,
    pub cudart_version: i64,
    pub cudnn_version: i64,
    pub cudnn_runtime_version: i64,
    pub cxx11_abi: i32,
}

/// Opaque `UminferStreamSwap`.
#[repr(C)]
pub struct UminferStreamSwap {
    _private: [u8; 0],
}

/// Opaque `UminferGraph`.
#[repr(C)]
pub struct UminferGraph {
    _private: [u8; 0],
}

/// Opaque `UminferModel`.
#[repr(C)]
pub struct UminferModel {
    _private: [u8; 0],
}

/// Opaque `UminferTensorList`.
#[repr(C)]
pub struct UminferTensorList {
    _private: [u8; 0],
}

/// Opaque `UminferTraceScope`.
#[repr(C)]
pub struct UminferTraceScope {
    _private: [u8; 0],
}

/// `UMINFER_FORMAT_TORCHSCRIPT`.
pub const FORMAT_TORCHSCRIPT: i32 = 0;
/// `UMINFER_FORMAT_AOTI`.
pub const FORMAT_AOTI: i32 = 1;

extern "C" {
    pub fn uminfer_free_error(err: *mut c_char);
    pub fn uminfer_torch_info(out: *mut UminferTorchInfo) -> *mut c_char;
    pub fn uminfer_stream_set_current(
        stream: *mut c_void,
        device: i32,
        out: *mut *mut UminferStreamSwap,
    ) -> *mut c_char;
    pub fn uminfer_stream_restore(swap: *mut UminferStreamSwap) -> *mut c_char;
    pub fn uminfer_graph_pool_handle(first: *mut u64, second: *mut u64) -> *mut c_char;
    pub fn uminfer_graph_new(out: *mut *mut UminferGraph) -> *mut c_char;
    pub fn uminfer_graph_capture_begin(g: *mut UminferGraph, first: u64, second: u64) -> *mut c_char;
    pub fn uminfer_graph_capture_end(g: *mut UminferGraph) -> *mut c_char;
    pub fn uminfer_graph_replay(g: *mut UminferGraph) -> *mut c_char;
    pub fn uminfer_graph_exec(g: *mut UminferGraph, exec: *mut *mut c_void) -> *mut c_char;
    pub fn uminfer_graph_pool(g: *mut UminferGraph, first: *mut u64, second: *mut u64) -> *mut c_char;
    pub fn uminfer_graph_delete(g: *mut UminferGraph) -> *mut c_char;
    pub fn uminfer_archive_records(path: *const c_char, out: *mut *mut c_char) -> *mut c_char;
    pub fn uminfer_package_metadata(path: *const c_char, out_json: *mut *mut c_char) -> *mut c_char;
    pub fn uminfer_model_load(path: *const c_char, format: i32, device: i32, single_threaded: i32, out: *mut *mut UminferModel) -> *mut c_char;
    pub fn uminfer_model_free(m: *mut UminferModel);
    pub fn uminfer_model_describe(m: *mut UminferModel, out_json: *mut *mut c_char) -> *mut c_char;
    pub fn uminfer_model_run(m: *mut UminferModel, inputs: *const *mut c_void, n_in: usize, want_spec: i32, out: *mut *mut UminferTensorList) -> *mut c_char;
    pub fn uminfer_tensor_list_len(l: *const UminferTensorList) -> usize;
    pub fn uminfer_tensor_list_spec(l: *const UminferTensorList) -> *const c_char;
    pub fn uminfer_tensor_list_take(l: *mut UminferTensorList, i: usize, out_tensor: *mut *mut c_void) -> *mut c_char;
    pub fn uminfer_tensor_list_free(l: *mut UminferTensorList);
    pub fn uminfer_model_run_into(m: *mut UminferModel, inputs: *const *mut c_void, n_in: usize, outputs: *const *mut c_void, n_out: usize) -> *mut c_char;
    pub fn uminfer_tensor_copy(dst: *mut c_void, src: *mut c_void, non_blocking: i32) -> *mut c_char;
    pub fn uminfer_trace_start(with_cuda: i32) -> *mut c_char;
    pub fn uminfer_trace_stop(path: *const c_char) -> *mut c_char;
    pub fn uminfer_trace_scope_begin(name: *const c_char, out: *mut *mut UminferTraceScope) -> *mut c_char;
    pub fn uminfer_trace_scope_end(scope: *mut UminferTraceScope) -> *mut c_char;
}
