// protect.h — tch's PROTECT pattern for the shim: a body that throws returns
// the exception's message as a malloc'd string (freed by uminfer_free_error);
// NULL means success. No C++ exception crosses the C ABI.
#pragma once
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace uminfer_shim {

inline char* dup_error(const char* msg) {
  size_t n = std::strlen(msg);
  char* s = static_cast<char*>(std::malloc(n + 1));
  if (s != nullptr) std::memcpy(s, msg, n + 1);
  return s;
}

}  // namespace uminfer_shim

#define PROTECT(...)                                                      \
  try {                                                                   \
    __VA_ARGS__;                                                              \
    return nullptr;                                                       \
  } catch (const c10::Error& e) {                                         \
    return uminfer_shim::dup_error(e.what_without_backtrace());           \
  } catch (const std::exception& e) {                                     \
    return uminfer_shim::dup_error(e.what());                             \
  } catch (...) {                                                         \
    return uminfer_shim::dup_error("unknown C++ exception in uminfer shim"); \
  }
