// uminfer_shim.h — the C ABI between Rust and the parts of libtorch that tch
// does not expose (CUDA stream switching, CUDA graphs, build/runtime facts).
//
// Conventions (tch's PROTECT pattern): every function that can fail returns a
// heap-allocated error string (NULL on success) that the caller releases with
// uminfer_free_error(). No C++ exception ever crosses this boundary.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  char torch_version[32];      // TORCH_VERSION the shim was compiled against
  int32_t has_cudart;          // 1 when libtorch_cuda's hooks are registered (CUDA build loaded)
  int32_t has_cuda;            // 1 when libtorch sees at least one usable GPU
  int32_t device_count;        // GPUs libtorch sees (0 when none or no CUDA build)
  int64_t cudart_version;      // CUDA runtime version libtorch was built with (e.g. 13000), -1 unknown
  int64_t cudnn_version;       // cuDNN version libtorch was compiled against, -1 unknown
  int64_t cudnn_runtime_version; // cuDNN version loaded at run time, -1 unknown
  int32_t cxx11_abi;           // _GLIBCXX_USE_CXX11_ABI of this shim
} UminferTorchInfo;

void uminfer_free_error(char* err);

// Fills `out`. Individual facts that cannot be read stay -1/0; the returned
// error (if any) says why the first of them failed.
char* uminfer_torch_info(UminferTorchInfo* out);

// Opaque handles.
typedef struct UminferStreamSwap UminferStreamSwap;
typedef struct UminferGraph UminferGraph;

// Make the external CUDA stream `stream` (a cudaStream_t/CUstream created by
// the caller on device `device`) libtorch's current stream on this thread.
// `*out` remembers the previous current stream; uminfer_stream_restore puts it
// back and frees the handle.
char* uminfer_stream_set_current(void* stream, int32_t device, UminferStreamSwap** out);
char* uminfer_stream_restore(UminferStreamSwap* swap);

// A pool id shared by the graphs of one session (at::cuda::graph_pool_handle()).
char* uminfer_graph_pool_handle(uint64_t* first, uint64_t* second);

// at::cuda::CUDAGraph lifecycle. Capture uses libtorch's *current* stream,
// which must not be the default stream (set one with uminfer_stream_set_current).
// pool_first == pool_second == 0 requests a private pool.
char* uminfer_graph_new(UminferGraph** out);
char* uminfer_graph_capture_begin(UminferGraph* g, uint64_t pool_first, uint64_t pool_second);
char* uminfer_graph_capture_end(UminferGraph* g);
char* uminfer_graph_replay(UminferGraph* g);
// The instantiated executable graph (cudaGraphExec_t, the same handle as the
// driver's CUgraphExec), owned by `g`: valid until `g` is deleted or reset.
// Launching it directly skips replay()'s RNG bookkeeping (two fill kernels).
char* uminfer_graph_exec(UminferGraph* g, void** exec);
char* uminfer_graph_pool(UminferGraph* g, uint64_t* first, uint64_t* second);
char* uminfer_graph_delete(UminferGraph* g);

// ---- TorchScript modules -------------------------------------------------
// Tensors cross this boundary as `torch::Tensor*` (tch's C_tensor pointers).
typedef struct UminferModule UminferModule;

// Loads a TorchScript file onto `device` (-1 = CPU, else CUDA ordinal), in
// eval mode. Errors name the path and say whether it is missing or not TorchScript.
char* uminfer_module_load(const char* path, int32_t device, UminferModule** out);
void uminfer_module_free(UminferModule* m);

// Runs forward(input) under InferenceMode and returns the result as a new
// torch::Tensor* (released by the caller, e.g. through tch). The model must
// return a single tensor.
char* uminfer_module_forward(UminferModule* m, void* input, void** out_tensor);

// Runs forward(input) under InferenceMode and copies the result into
// `output` (non-blocking on libtorch's current stream). Fails, without
// writing, when the result's shape or dtype differs from `output`'s.
char* uminfer_module_forward_into(UminferModule* m, void* input, void* output);

// dst.copy_(src, non_blocking) on libtorch's current stream.
char* uminfer_tensor_copy(void* dst, void* src, int32_t non_blocking);

#ifdef __cplusplus
}
#endif
