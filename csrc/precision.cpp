// Mixed precision: autocast on the CPU or a GPU with a chosen reduced type,
// and whether the hardware computes bfloat16 natively. tch's own `autocast`
// only reaches CUDA through deprecated calls and cannot choose the type.
#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>
#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/DeviceGuard.h>

#include "shim.h"

namespace {

at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

}  // namespace

// Enters an autocast region on the CPU (cuda = 0) or CUDA (cuda = 1) with
// bfloat16 (bf16 = 1) or float16 as the reduced type; writes the state to
// restore on exit. Autocast state is per thread.
extern "C" char* eqco_autocast_enter(int cuda, int bf16, int* prev_enabled, int* prev_dtype) {
  EQCO_TRY({
    auto dt = device_type(cuda);
    *prev_enabled = at::autocast::is_autocast_enabled(dt) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dt));
    at::autocast::set_autocast_enabled(dt, true);
    at::autocast::set_autocast_dtype(dt, bf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::increment_nesting();
  })
}

// Leaves the region entered by `eqco_autocast_enter`: clears the cast cache
// when the outermost region ends, as torch.autocast does, and restores the state.
extern "C" char* eqco_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  EQCO_TRY({
    auto dt = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(dt, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(prev_dtype));
  })
}

// Whether autocast is on for the device type, and with bfloat16.
extern "C" int eqco_autocast_state(int cuda) {
  auto dt = device_type(cuda);
  int enabled = at::autocast::is_autocast_enabled(dt) ? 1 : 0;
  int bf16 = at::autocast::get_autocast_dtype(dt) == at::kBFloat16 ? 2 : 0;
  return enabled | bf16;
}

// Whether CUDA device `index` (the one this worker trains on, not whichever
// is current) computes bfloat16 natively: compute capability ≥ 8.0, as
// cuDNN's bfloat16 convolutions require. ATen asks the current device, so
// the device is made current for the question and restored after it. 0
// without CUDA or for an index beyond the visible devices.
extern "C" int eqco_cuda_native_bf16(int index) {
  try {
    const auto& hooks = at::detail::getCUDAHooks();
    if (!hooks.hasCUDA() || index < 0 || index >= hooks.getNumGPUs()) {
      return 0;
    }
    c10::DeviceGuard on(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index)));
    return hooks.supportsBFloat16ConvolutionWithCuDNNv8() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// The CPU's bfloat16 instruction sets as cpuinfo reports them to ATen (the
// true flags whose name contains "bf16", e.g. "avx512_bf16,amx_bf16"),
// comma-separated, into a malloc'ed string; empty when there are none.
extern "C" char* eqco_cpu_bf16_flags(char** out) {
  EQCO_TRY({
    std::string flags;
    for (const auto& [name, value] : at::cpu::get_cpu_capabilities()) {
      if (name.find("bf16") != std::string::npos && value.isBool() && value.toBool()) {
        flags += flags.empty() ? name : "," + name;
      }
    }
    *out = eqco::c_string(flags.c_str());
  })
}
