// Shared by the shim's translation units: how a C++ exception crosses into
// Rust. Every exported function that can throw returns `char*`: null on
// success, else a malloc'ed message that the Rust side reads and frees.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace c10d {
class Backend;
class Work;
}  // namespace c10d

namespace eqco {

inline char* c_string(const char* what) {
  char* out = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (out != nullptr) {
    std::strcpy(out, what);
  }
  return out;
}

// The process group of csrc/dist.cpp, for the other translation units
// (csrc/dist_overlap.cpp).
struct Group;

// `g`'s backend; throws once the group was left after a failure.
c10d::Backend* backend_of(Group* g);

// The number of processes in `g`.
int group_size(Group* g);

// Waits for `works`, the time counted on `g`'s clock of time in collectives
// (the wall clock on Gloo; on NCCL, CUDA events around the compute
// stream's wait).
void timed_wait(Group* g, const std::vector<c10::intrusive_ptr<c10d::Work>>& works);

}  // namespace eqco

// Runs the body; any exception becomes the returned message. (Variadic, so
// that commas in the body do not split it into macro arguments.)
#define EQCO_TRY(...)                                       \
  try {                                                     \
    __VA_ARGS__;                                            \
    return nullptr;                                         \
  } catch (const c10::Error& e) {                           \
    return eqco::c_string(e.what_without_backtrace());    \
  } catch (const std::exception& e) {                       \
    return eqco::c_string(e.what());                      \
  } catch (...) {                                           \
    return eqco::c_string("unknown C++ exception");       \
  }
