// uminfer_shim.cpp — implementation of uminfer_shim.h against libtorch 2.11.
// Every body runs inside PROTECT: exceptions become error strings.
#include "uminfer_shim.h"

#include <ATen/Context.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/script.h>
#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace {

char* dup_error(const char* msg) {
  size_t n = std::strlen(msg);
  char* s = static_cast<char*>(std::malloc(n + 1));
  if (s != nullptr) std::memcpy(s, msg, n + 1);
  return s;
}

}  // namespace

#define PROTECT(body)                                       \
  try {                                                     \
    body;                                                   \
    return nullptr;                                         \
  } catch (const c10::Error& e) {                           \
    return dup_error(e.what_without_backtrace());           \
  } catch (const std::exception& e) {                       \
    return dup_error(e.what());                             \
  } catch (...) {                                           \
    return dup_error("unknown C++ exception in uminfer shim"); \
  }

struct UminferStreamSwap {
  c10::cuda::CUDAStream previous;
};

struct UminferGraph {
  at::cuda::CUDAGraph graph;
};

struct UminferModule {
  torch::jit::Module module;
};

namespace {

torch::Tensor run_forward(UminferModule* m, void* input) {
  if (m == nullptr || input == nullptr) throw std::invalid_argument("forward: NULL module or input");
  c10::InferenceMode guard;
  std::vector<c10::IValue> args;
  args.emplace_back(*static_cast<torch::Tensor*>(input));
  c10::IValue out = m->module.forward(args);
  if (!out.isTensor())
    throw std::runtime_error(std::string("the model returned ") + out.tagKind() +
                             ", uminfer sessions need a model that returns one tensor");
  return out.toTensor();
}

std::string shape_str(c10::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

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

char* uminfer_module_load(const char* path, int32_t device, UminferModule** out) {
  PROTECT({
    if (path == nullptr || out == nullptr) throw std::invalid_argument("uminfer_module_load: NULL argument");
    c10::Device dev = device < 0 ? c10::Device(c10::kCPU) : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
    auto* m = new UminferModule{torch::jit::load(std::string(path), dev)};
    m->module.eval();
    *out = m;
  })
}

void uminfer_module_free(UminferModule* m) { delete m; }

char* uminfer_module_forward(UminferModule* m, void* input, void** out_tensor) {
  PROTECT({
    if (out_tensor == nullptr) throw std::invalid_argument("uminfer_module_forward: NULL out");
    *out_tensor = new torch::Tensor(run_forward(m, input));
  })
}

char* uminfer_module_forward_into(UminferModule* m, void* input, void* output) {
  PROTECT({
    if (output == nullptr) throw std::invalid_argument("uminfer_module_forward_into: NULL output");
    auto& dst = *static_cast<torch::Tensor*>(output);
    torch::Tensor result = run_forward(m, input);
    if (result.sizes() != dst.sizes())
      throw std::runtime_error("the model's output shape " + shape_str(result.sizes()) +
                               " differs from the declared output shape " + shape_str(dst.sizes()));
    if (result.scalar_type() != dst.scalar_type())
      throw std::runtime_error(std::string("the model's output dtype ") + c10::toString(result.scalar_type()) +
                               " differs from the declared output dtype " + c10::toString(dst.scalar_type()));
    c10::InferenceMode guard;
    dst.copy_(result, /*non_blocking=*/true);
  })
}

char* uminfer_tensor_copy(void* dst, void* src, int32_t non_blocking) {
  PROTECT({
    if (dst == nullptr || src == nullptr) throw std::invalid_argument("uminfer_tensor_copy: NULL tensor");
    c10::InferenceMode guard;
    static_cast<torch::Tensor*>(dst)->copy_(*static_cast<torch::Tensor*>(src), non_blocking != 0);
  })
}

}  // extern "C"
