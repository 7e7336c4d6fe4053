// uminfer_shim.cpp — libtorch facts, CUDA streams, CUDA graphs and tensor
// copies of uminfer_shim.h, against libtorch 2.11 (models: model.cpp).
// Every body runs inside PROTECT: exceptions become error strings.
#include "uminfer_shim.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/version.h>

#include <cstring>
#include <string>

#include "protect.h"

struct UminferStreamSwap {
  c10::cuda::CUDAStream previous;
};

struct UminferGraph {
  at::cuda::CUDAGraph graph;
};

extern "C" {

void uminfer_free_error(char* err) { std::free(err); }

char* uminfer_torch_info(UminferTorchInfo* out) {
  PROTECT({
    if (out == nullptr) throw std::invalid_argument("uminfer_torch_info: out is NULL");
    std::memset(out, 0, sizeof(*out));
    std::strncpy(out->torch_version, TORCH_VERSION, sizeof(out->torch_version) - 1);
    out->cxx11_abi = _GLIBCXX_USE_CXX11_ABI;
    out->cudart_version = -1;
    out->cudnn_version = -1;
    out->cudnn_runtime_version = -1;
    const auto& hooks = at::detail::getCUDAHooks();
    out->has_cudart = hooks.hasCUDART() ? 1 : 0;
    if (!out->has_cudart) return nullptr;
    out->cudart_version = hooks.versionCUDART();
    out->cudnn_version = hooks.versionCuDNN();
    out->device_count = hooks.getNumGPUs();
    out->has_cuda = hooks.hasCUDA() ? 1 : 0;
    if (out->has_cuda) out->cudnn_runtime_version = hooks.versionRuntimeCuDNN();
  })
}

char* uminfer_stream_set_current(void* stream, int32_t device, UminferStreamSwap** out) {
  PROTECT({
    if (out == nullptr || stream == nullptr)
      throw std::invalid_argument("uminfer_stream_set_current: NULL stream or out pointer");
    auto dev = static_cast<c10::DeviceIndex>(device);
    auto previous = c10::cuda::getCurrentCUDAStream(dev);
    auto ext = c10::cuda::getStreamFromExternal(static_cast<cudaStream_t>(stream), dev);
    auto* swap = new UminferStreamSwap{previous};
    c10::cuda::setCurrentCUDAStream(ext);
    *out = swap;
  })
}

char* uminfer_stream_restore(UminferStreamSwap* swap) {
  PROTECT({
    if (swap == nullptr) throw std::invalid_argument("uminfer_stream_restore: NULL handle");
    auto previous = swap->previous;
    delete swap;
    c10::cuda::setCurrentCUDAStream(previous);
  })
}

char* uminfer_graph_pool_handle(uint64_t* first, uint64_t* second) {
  PROTECT({
    if (first == nullptr || second == nullptr) throw std::invalid_argument("NULL output pointer");
    auto id = at::cuda::graph_pool_handle();
    *first = id.first;
    *second = id.second;
  })
}

char* uminfer_graph_new(UminferGraph** out) {
  PROTECT({
    if (out == nullptr) throw std::invalid_argument("uminfer_graph_new: out is NULL");
    if (!at::detail::getCUDAHooks().hasCUDA())
      throw std::runtime_error("CUDA graphs need a GPU visible to libtorch (at::hasCUDA() is false)");
    *out = new UminferGraph{};
  })
}

char* uminfer_graph_capture_begin(UminferGraph* g, uint64_t pool_first, uint64_t pool_second) {
  PROTECT({
    if (g == nullptr) throw std::invalid_argument("uminfer_graph_capture_begin: NULL graph");
    // Thread-local capture mode: other sessions on other threads keep working during a capture.
    g->graph.capture_begin(at::cuda::MempoolId_t{pool_first, pool_second}, cudaStreamCaptureModeThreadLocal);
  })
}

char* uminfer_graph_capture_end(UminferGraph* g) {
  PROTECT({
    if (g == nullptr) throw std::invalid_argument("uminfer_graph_capture_end: NULL graph");
    g->graph.capture_end();
  })
}

char* uminfer_graph_replay(UminferGraph* g) {
  PROTECT({
    if (g == nullptr) throw std::invalid_argument("uminfer_graph_replay: NULL graph");
    g->graph.replay();
  })
}

char* uminfer_graph_exec(UminferGraph* g, void** exec) {
  PROTECT({
    if (g == nullptr || exec == nullptr) throw std::invalid_argument("uminfer_graph_exec: NULL argument");
    // Throws (caught above) when no capture has ended successfully.
    *exec = static_cast<void*>(g->graph.raw_cuda_graph_exec());
  })
}

char* uminfer_graph_pool(UminferGraph* g, uint64_t* first, uint64_t* second) {
  PROTECT({
    if (g == nullptr || first == nullptr || second == nullptr)
      throw std::invalid_argument("uminfer_graph_pool: NULL argument");
    auto id = g->graph.pool();
    *first = id.first;
    *second = id.second;
  })
}

char* uminfer_graph_delete(UminferGraph* g) {
  PROTECT({ delete g; })
}

char* uminfer_tensor_copy(void* dst, void* src, int32_t non_blocking) {
  PROTECT({
    if (dst == nullptr || src == nullptr) throw std::invalid_argument("uminfer_tensor_copy: NULL tensor");
    c10::InferenceMode guard;
    static_cast<at::Tensor*>(dst)->copy_(*static_cast<at::Tensor*>(src), non_blocking != 0);
  })
}

}  // extern "C"
