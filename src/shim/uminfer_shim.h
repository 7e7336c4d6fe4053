// uminfer_shim.h — the C ABI between Rust and the parts of libtorch that tch
// does not expose (CUDA stream switching, CUDA graphs, build/runtime facts,
// models of any signature: TorchScript and AOTInductor packages).
//
// Conventions (tch's PROTECT pattern): every function that can fail returns a
// heap-allocated error string (NULL on success) that the caller releases with
// uminfer_free_error(). No C++ exception ever crosses this boundary.
#pragma once
#include <stddef.h>
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

// ---- Models ----------------------------------------------------------------
// Tensors cross this boundary as `torch::Tensor*` (tch's C_tensor pointers).
// Strings the shim returns through out pointers are malloc'd and released
// with uminfer_free_error, like error strings.
typedef struct UminferModel UminferModel;
typedef struct UminferTensorList UminferTensorList;

#define UMINFER_FORMAT_TORCHSCRIPT 0
#define UMINFER_FORMAT_AOTI 1

// The record names of the PyTorch zip archive at `path` (without the
// archive's top folder), one per line. Fails on a file that is not such an archive.
char* uminfer_archive_records(const char* path, char** out);

// The metadata of the AOTInductor package at `path` (model "model") as a
// JSON object of strings, read without loading the package.
char* uminfer_package_metadata(const char* path, char** out_json);

// Loads a TorchScript file (in eval mode; its extra file uminfer.json, if
// any, is kept) or an AOTInductor package onto `device` (-1 = CPU, else a
// CUDA ordinal). `single_threaded` (packages): AOTInductor's
// run_single_threaded, needed to capture a run into a CUDA graph; the shim
// then serialises runs itself.
char* uminfer_model_load(const char* path, int32_t format, int32_t device, int32_t single_threaded, UminferModel** out);
void uminfer_model_free(UminferModel* m);

// What the model says of its signature, as JSON. TorchScript:
// {"arguments": [{"name", "type", "has_default"}...], "hint": <uminfer.json text or null>};
// packages: {"in_spec": <text>, "out_spec": <text>} (the call spec, pytree JSON).
char* uminfer_model_describe(UminferModel* m, char** out_json);

// Runs the model under InferenceMode over `n_in` input tensors (packages: on
// libtorch's current CUDA stream) and returns its output tensors flattened in
// order; with `want_spec`, also the output tree as a pytree spec
// (AOTInductor's call-spec format; TorchScript values that are not tensors,
// tuples, lists or dicts appear as nodes of type "uminfer.unsupported" whose
// context is their kind). Without it, such a value fails the run.
char* uminfer_model_run(UminferModel* m, void* const* inputs, size_t n_in, int32_t want_spec, UminferTensorList** out);
size_t uminfer_tensor_list_len(const UminferTensorList* l);
// The spec, valid until the list is freed.
const char* uminfer_tensor_list_spec(const UminferTensorList* l);
// Moves tensor `i` out as a new torch::Tensor* (released by the caller).
char* uminfer_tensor_list_take(UminferTensorList* l, size_t i, void** out_tensor);
void uminfer_tensor_list_free(UminferTensorList* l);

// Runs the model and copies its flattened outputs into `outputs`
// (non-blocking, on libtorch's current stream). Fails, without writing any,
// when the count, a shape or a dtype differs.
char* uminfer_model_run_into(UminferModel* m, void* const* inputs, size_t n_in, void* const* outputs, size_t n_out);

// dst.copy_(src, non_blocking) on libtorch's current stream.
char* uminfer_tensor_copy(void* dst, void* src, int32_t non_blocking);

// ---- Traces (libtorch's Kineto profiler) ---------------------------------
// One trace at a time, of the calling thread: start, stop and the scopes
// must all be called on it. `with_cuda` adds CUDA kernels and copies (CUPTI).
typedef struct UminferTraceScope UminferTraceScope;
char* uminfer_trace_start(int32_t with_cuda);
// Stops the trace and writes it to `path` as Chrome trace JSON; a NULL
// path discards it.
char* uminfer_trace_stop(const char* path);
// A user scope named `name` on the trace (a request) until ended.
char* uminfer_trace_scope_begin(const char* name, UminferTraceScope** out);
// Ends the scope and frees it (also when ending fails).
char* uminfer_trace_scope_end(UminferTraceScope* scope);

#ifdef __cplusplus
}
#endif
