// trace.cpp — libtorch's Kineto profiler for one thread: start, mark a
// region (a request) as a user scope, stop and write the Chrome trace.
#include "protect.h"
#include "uminfer_shim.h"

#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <memory>
#include <set>
#include <string>

namespace prof = torch::autograd::profiler;
namespace impl = torch::profiler::impl;

// The scope's name outlives its RecordFunction, which keeps a view of it
// (members are destroyed in reverse order).
struct UminferTraceScope {
  std::string name;
  at::RecordFunction rf{at::RecordScope::USER_SCOPE};
};

extern "C" {

char* uminfer_trace_start(int32_t with_cuda) {
  PROTECT(
      impl::ProfilerConfig config(impl::ProfilerState::KINETO, /*report_input_shapes=*/true);
      std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
      if (with_cuda) activities.insert(impl::ActivityType::CUDA);
      prof::prepareProfiler(config, activities);
      prof::enableProfiler(config, activities));
}

char* uminfer_trace_stop(const char* path) {
  PROTECT(
      std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
      if (path != nullptr) {
        TORCH_CHECK(result != nullptr, "the profiler returned no result");
        result->save(path);
      });
}

char* uminfer_trace_scope_begin(const char* name, UminferTraceScope** out) {
  PROTECT(
      auto scope = std::make_unique<UminferTraceScope>();
      scope->name = name;
      if (scope->rf.isActive()) scope->rf.before(std::string_view(scope->name));
      *out = scope.release());
}

char* uminfer_trace_scope_end(UminferTraceScope* scope) {
  PROTECT(
      std::unique_ptr<UminferTraceScope> owned(scope);
      owned->rf.end());
}

}  // extern "C"
