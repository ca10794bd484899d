// Host memory for batches bound for a GPU: page-locked (pinned) buffers, and
// events that tell when an asynchronous copy out of one has finished, so
// that the buffer can be written again. Only c10's device-generic API is
// used, so this compiles against the CPU headers too; on a machine without
// CUDA each call returns an error.
#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "shim.h"

// A new uninitialised page-locked host tensor of `numel` elements, float32
// or (int64 = 1) int64. (tch's `pin_memory(device)` passes a device, which
// libtorch 2.11 warns about on every call.)
extern "C" char* eqco_pinned_empty(int64_t numel, int int64, at::Tensor** out) {
  EQCO_TRY({
    auto dtype = int64 ? at::kLong : at::kFloat;
    auto t = at::empty({numel}, at::TensorOptions().dtype(dtype).pinned_memory(true));
    *out = new at::Tensor(std::move(t));
  })
}

// Whether a tensor lives in page-locked memory.
extern "C" int eqco_is_pinned(const at::Tensor* t) {
  try {
    return t->is_pinned() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// An event recorded on the current stream of CUDA device `index`: it
// completes when the work queued there so far (an asynchronous copy) has.
extern "C" char* eqco_event_record(int index, c10::Event** out) {
  EQCO_TRY({
    c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
    auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    auto* event = new c10::Event(c10::DeviceType::CUDA);
    try {
      event->record(impl->getStream(device));
    } catch (...) {
      delete event;
      throw;
    }
    *out = event;
  })
}

// Blocks the calling thread until `event` has completed.
extern "C" char* eqco_event_synchronize(c10::Event* event) {
  EQCO_TRY(event->synchronize())
}

// Frees an event made by `eqco_event_record`.
extern "C" void eqco_event_free(c10::Event* event) { delete event; }
