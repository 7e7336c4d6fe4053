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

/// Opaque `UminferModule`.
#[repr(C)]
pub struct UminferModule {
    _private: [u8; 0],
}

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
    pub fn uminfer_module_load(path: *const c_char, device: i32, out: *mut *mut UminferModule) -> *mut c_char;
    pub fn uminfer_module_free(m: *mut UminferModule);
    pub fn uminfer_module_forward(m: *mut UminferModule, input: *mut c_void, out: *mut *mut c_void) -> *mut c_char;
    pub fn uminfer_module_forward_into(m: *mut UminferModule, input: *mut c_void, output: *mut c_void) -> *mut c_char;
    pub fn uminfer_tensor_copy(dst: *mut c_void, src: *mut c_void, non_blocking: i32) -> *mut c_char;
}
