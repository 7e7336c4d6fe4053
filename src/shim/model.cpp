// model.cpp — models behind one handle: TorchScript modules (torch::jit) and
// AOTInductor packages (torch::inductor::AOTIModelPackageLoader), with their
// outputs flattened in order. Every body runs inside PROTECT.
#include "uminfer_shim.h"
#include "protect.h"

#include <ATen/core/ivalue.h>
#include <c10/cuda/CUDAStream.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

struct UminferModel {
  int32_t format = 0;  // UMINFER_FORMAT_*
  int32_t device = -1;  // -1 CPU, else CUDA ordinal
  // TorchScript
  std::unique_ptr<torch::jit::Module> module;
  std::string hint;  // extra file uminfer.json, empty when absent
  // AOTInductor
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package;
  // A package loaded with run_single_threaded has no lock of its own: runs
  // of it (from the sessions that share it) take this one.
  bool single_threaded = false;
  std::mutex run_lock;
};

struct UminferTensorList {
  std::vector<at::Tensor> tensors;
  std::string spec;
};

namespace {

std::string json_string(const std::string& s) {
  std::string r = "\"";
  for (char c : s) {
    switch (c) {
      case '"': r += "\\\""; break;
      case '\\': r += "\\\\"; break;
      case '\n': r += "\\n"; break;
      case '\r': r += "\\r"; break;
      case '\t': r += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          r += buf;
        } else {
          r += c;
        }
    }
  }
  return r + "\"";
}

char* dup_string(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p == nullptr) throw std::bad_alloc();
  std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

// A node of a pytree spec in the format AOTInductor's call spec uses
// (torch.utils._pytree's JSON): leaves are {"type": null, ...}.
std::string node(const char* type, const std::string& context_json, const std::vector<std::string>& children) {
  std::string r = std::string("{\"type\": \"") + type + "\", \"context\": " + json_string(context_json) + ", \"children_spec\": [";
  for (size_t i = 0; i < children.size(); ++i) r += (i ? ", " : "") + children[i];
  return r + "]}";
}

const char* LEAF = "{\"type\": null, \"context\": null, \"children_spec\": []}";

// Appends the tensors of `v` in order to `out` and returns its spec. A
// value that is neither a tensor nor a tuple, list or dict becomes a node of
// type "uminfer.unsupported" whose context names its kind (the Rust side
// refuses it with the output's name).
std::string flatten_spec(const c10::IValue& v, std::vector<at::Tensor>& out) {
  if (v.isTensor()) {
    out.push_back(v.toTensor());
    return LEAF;
  }
  std::vector<std::string> children;
  if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) children.push_back(flatten_spec(e, out));
    return node("builtins.tuple", "null", children);
  }
  if (v.isList()) {
    for (const auto& e : v.toListRef()) children.push_back(flatten_spec(e, out));
    return node("builtins.list", "null", children);
  }
  if (v.isGenericDict()) {
    std::string keys = "[";
    bool first = true;
    for (const auto& kv : v.toGenericDict()) {
      const auto& k = kv.key();
      std::string key;
      if (k.isString()) {
        key = json_string(k.toStringRef());
      } else if (k.isInt()) {
        key = std::to_string(k.toInt());
      } else {
        key = json_string("<" + k.tagKind() + " key>");
      }
      keys += (first ? "" : ", ") + key;
      first = false;
      children.push_back(flatten_spec(kv.value(), out));
    }
    return node("builtins.dict", keys + "]", children);
  }
  return node("uminfer.unsupported", v.tagKind(), {});
}

// The hot path's flattening: tensors only (the spec was checked at build).
void flatten(const c10::IValue& v, std::vector<at::Tensor>& out) {
  if (v.isTensor()) {
    out.push_back(v.toTensor());
  } else if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) flatten(e, out);
  } else if (v.isList()) {
    for (const auto& e : v.toListRef()) flatten(e, out);
  } else if (v.isGenericDict()) {
    for (const auto& kv : v.toGenericDict()) flatten(kv.value(), out);
  } else {
    throw std::runtime_error("the model returned a " + v.tagKind() + " among its outputs; uminfer outputs are tensors");
  }
}

std::vector<at::Tensor> inputs_of(void* const* inputs, size_t n) {
  if (n > 0 && inputs == nullptr) throw std::invalid_argument("NULL input array");
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (inputs[i] == nullptr) throw std::invalid_argument("NULL input tensor");
    v.push_back(*static_cast<at::Tensor*>(inputs[i]));
  }
  return v;
}

// Runs the model over `inputs`; with `spec`, also describes the output tree.
std::vector<at::Tensor> run(UminferModel* m, void* const* inputs, size_t n_in, std::string* spec) {
  if (m == nullptr) throw std::invalid_argument("NULL model");
  c10::InferenceMode guard;
  std::vector<at::Tensor> out;
  if (m->format == UMINFER_FORMAT_TORCHSCRIPT) {
    std::vector<c10::IValue> args;
    args.reserve(n_in);
    for (auto& t : inputs_of(inputs, n_in)) args.emplace_back(std::move(t));
    c10::IValue result = m->module->forward(std::move(args));
    if (spec != nullptr) {
      *spec = "[1, " + flatten_spec(result, out) + "]";
    } else {
      flatten(result, out);
    }
    return out;
  }
  void* stream = nullptr;
  if (m->device >= 0) stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(m->device)).stream();
  std::unique_lock<std::mutex> lock(m->run_lock, std::defer_lock);
  if (m->single_threaded) lock.lock();
  out = m->package->run(inputs_of(inputs, n_in), stream);
  if (spec != nullptr) {
    auto cs = m->package->get_call_spec();
    if (cs.size() != 2) throw std::runtime_error("the package's call spec does not have an input and an output part");
    *spec = cs[1];
  }
  return out;
}

std::string shape_str(c10::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

extern "C" {

char* uminfer_archive_records(const char* path, char** out) {
  PROTECT({
    if (path == nullptr || out == nullptr) throw std::invalid_argument("uminfer_archive_records: NULL argument");
    caffe2::serialize::PyTorchStreamReader reader{std::string(path)};
    std::string names;
    for (const auto& r : reader.getAllRecords()) names += r + "\n";
    *out = dup_string(names);
  })
}

// libtorch extracts a package's files into temporary paths of its own
// choosing while it reads its metadata or loads it. A test that opens
// packages from parallel threads once failed inside that read with a JSON
// type error ("type must be string, but is null") that reruns did not
// reproduce; whether threads share those paths is not established, so
// package reads and loads go one at a time in this process (they happen at
// model load, never per request).
static std::mutex package_io_lock;

char* uminfer_package_metadata(const char* path, char** out_json) {
  PROTECT({
    if (path == nullptr || out_json == nullptr) throw std::invalid_argument("uminfer_package_metadata: NULL argument");
    std::lock_guard<std::mutex> lock(package_io_lock);
    auto meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
    std::string j = "{";
    bool first = true;
    for (const auto& kv : meta) {
      j += (first ? "" : ", ") + json_string(kv.first) + ": " + json_string(kv.second);
      first = false;
    }
    *out_json = dup_string(j + "}");
  })
}

char* uminfer_model_load(const char* path, int32_t format, int32_t device, int32_t single_threaded, UminferModel** out) {
  PROTECT({
    if (path == nullptr || out == nullptr) throw std::invalid_argument("uminfer_model_load: NULL argument");
    auto m = std::make_unique<UminferModel>();
    m->format = format;
    m->device = device;
    if (format == UMINFER_FORMAT_TORCHSCRIPT) {
      c10::Device dev = device < 0 ? c10::Device(c10::kCPU) : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
      torch::jit::ExtraFilesMap extra{{"uminfer.json", ""}};
      m->module = std::make_unique<torch::jit::Module>(torch::jit::load(std::string(path), dev, extra));
      m->module->eval();
      m->hint = extra["uminfer.json"];
    } else if (format == UMINFER_FORMAT_AOTI) {
      m->single_threaded = single_threaded != 0;
      std::lock_guard<std::mutex> lock(package_io_lock);
      m->package = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          std::string(path), "model", m->single_threaded, 1, static_cast<c10::DeviceIndex>(device));
    } else {
      throw std::invalid_argument("uminfer_model_load: unknown format " + std::to_string(format));
    }
    *out = m.release();
  })
}

void uminfer_model_free(UminferModel* m) { delete m; }

char* uminfer_model_describe(UminferModel* m, char** out_json) {
  PROTECT({
    if (m == nullptr || out_json == nullptr) throw std::invalid_argument("uminfer_model_describe: NULL argument");
    std::string j;
    if (m->format == UMINFER_FORMAT_TORCHSCRIPT) {
      const auto& schema = m->module->get_method("forward").function().getSchema();
      j = "{\"arguments\": [";
      bool first = true;
      for (const auto& a : schema.arguments()) {
        if (a.name() == "self") continue;
        j += std::string(first ? "" : ", ") + "{\"name\": " + json_string(a.name()) + ", \"type\": " + json_string(a.type()->str()) +
             ", \"has_default\": " + (a.default_value().has_value() ? "true" : "false") + "}";
        first = false;
      }
      j += "], \"hint\": " + (m->hint.empty() ? std::string("null") : json_string(m->hint)) + "}";
    } else {
      auto cs = m->package->get_call_spec();
      if (cs.size() != 2) throw std::runtime_error("the package's call spec does not have an input and an output part");
      j = "{\"in_spec\": " + json_string(cs[0]) + ", \"out_spec\": " + json_string(cs[1]) + "}";
    }
    *out_json = dup_string(j);
  })
}

char* uminfer_model_run(UminferModel* m, void* const* inputs, size_t n_in, int32_t want_spec, UminferTensorList** out) {
  PROTECT({
    if (out == nullptr) throw std::invalid_argument("uminfer_model_run: NULL out");
    auto list = std::make_unique<UminferTensorList>();
    list->tensors = run(m, inputs, n_in, want_spec != 0 ? &list->spec : nullptr);
    *out = list.release();
  })
}

size_t uminfer_tensor_list_len(const UminferTensorList* l) { return l == nullptr ? 0 : l->tensors.size(); }

const char* uminfer_tensor_list_spec(const UminferTensorList* l) { return l == nullptr ? "" : l->spec.c_str(); }

char* uminfer_tensor_list_take(UminferTensorList* l, size_t i, void** out_tensor) {
  PROTECT({
    if (l == nullptr || out_tensor == nullptr || i >= l->tensors.size())
      throw std::invalid_argument("uminfer_tensor_list_take: NULL argument or index out of range");
    *out_tensor = new at::Tensor(std::move(l->tensors[i]));
  })
}

void uminfer_tensor_list_free(UminferTensorList* l) { delete l; }

char* uminfer_model_run_into(UminferModel* m, void* const* inputs, size_t n_in, void* const* outputs, size_t n_out) {
  PROTECT({
    if (n_out > 0 && outputs == nullptr) throw std::invalid_argument("uminfer_model_run_into: NULL outputs");
    std::vector<at::Tensor> result = run(m, inputs, n_in, nullptr);
    if (result.size() != n_out)
      throw std::runtime_error("the model returned " + std::to_string(result.size()) + " output tensors, the session has " +
                               std::to_string(n_out));
    for (size_t i = 0; i < n_out; ++i) {
      if (outputs[i] == nullptr) throw std::invalid_argument("NULL output tensor");
      auto& dst = *static_cast<at::Tensor*>(outputs[i]);
      if (result[i].sizes() != dst.sizes())
        throw std::runtime_error("output " + std::to_string(i) + ": the model's shape " + shape_str(result[i].sizes()) +
                                 " differs from the session's " + shape_str(dst.sizes()));
      if (result[i].scalar_type() != dst.scalar_type())
        throw std::runtime_error("output " + std::to_string(i) + ": the model's dtype " +
                                 std::string(c10::toString(result[i].scalar_type())) + " differs from the session's " +
                                 std::string(c10::toString(dst.scalar_type())));
    }
    c10::InferenceMode guard;
    for (size_t i = 0; i < n_out; ++i) static_cast<at::Tensor*>(outputs[i])->copy_(result[i], /*non_blocking=*/true);
  })
}

}  // extern "C"
