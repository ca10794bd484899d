// Host memory for batches bound for a GPU: page-locked (pinned) buffers,
// the copy of a batch to the device on a side stream beside the compute
// stream, and events that tell when such a copy has finished, so that the
// buffer can be written again. Only c10's device-generic API is used, so
// this compiles against the CPU headers too; on a machine without CUDA each
// call returns an error.
#include <ATen/ATen.h>
#include <ATen/core/CachingHostAllocator.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <memory>

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

// The page-locked bytes the CUDA caching host allocator holds now
// (*current, its blocks in use and cached) and has held at most (*peak):
// each block counted at its rounded size, a power of two. An error where
// no CUDA host allocator is registered (a CPU-only libtorch).
extern "C" char* eqco_pinned_stats(int64_t* current, int64_t* peak) {
  EQCO_TRY({
    auto stats = at::getHostAllocator(at::kCUDA)->get_stats();
    *current = stats.allocated_bytes.current;
    *peak = stats.allocated_bytes.peak;
  })
}

// Hands the CUDA caching host allocator's free blocks back to the driver:
// a freed pinned block is otherwise kept, still page-locked, for a later
// request of its size. A freed block waits for events recorded on the
// streams that copied out of it, so CUDA device `index` is synchronised
// first: then every such event has completed and every free block goes.
// The device is made this thread's current one first: synchronizeDevice
// switches back to the thread's previous device afterwards, and on a thread
// that never chose one that is GPU 0, whose context it would create.
extern "C" char* eqco_pinned_release_cached(int index) {
  EQCO_TRY({
    auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    auto device_index = static_cast<c10::DeviceIndex>(index);
    impl->setDevice(c10::Device(c10::DeviceType::CUDA, device_index));
    impl->synchronizeDevice(device_index);
    at::getHostAllocator(at::kCUDA)->empty_cache();
  })
}

// Makes CUDA device `index` the calling thread's current device. A thread
// that touches CUDA objects without it (destroying an event, say) has
// device 0 current, and c10's switches to the object's device and back
// create device 0's primary context in every process (PyTorch's
// pin-memory thread sets its device first for the same reason).
extern "C" char* eqco_set_device(int index) {
  EQCO_TRY(c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
               ->setDevice(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index))))
}

// Whether a tensor lives in page-locked memory.
extern "C" int eqco_is_pinned(const at::Tensor* t) {
  try {
    return t->is_pinned() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// A stream of CUDA device `index` from c10's high-priority pool (a
// torch.cuda.Stream(priority=-1)), for the copies of batches beside the
// compute stream. Not the low-priority pool: ProcessGroupNCCL takes its
// streams from that one, round-robin, and a copy queued behind an
// all-reduce would lose its overlap.
extern "C" char* eqco_copy_stream_new(int index, c10::Stream** out) {
  EQCO_TRY({
    c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
    auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    *out = new c10::Stream(impl->getStreamFromGlobalPool(device, /*isHighPriority=*/true));
  })
}

// Frees a stream handle made by `eqco_copy_stream_new` (the stream itself
// belongs to c10's pool).
extern "C" void eqco_copy_stream_free(c10::Stream* stream) { delete stream; }

// Copies the host tensor `src` (page-locked) to the device of `side`
// without blocking the host, on `side` rather than the compute stream, so
// that the copy overlaps the compute queued before it. What torch's CUDA
// prefetchers do, step by step:
// - the destination is allocated while `side` is current, so the caching
//   allocator hands out memory that is free for `side`;
// - the copy is queued on `side`, then an event after it (*copied: it
//   completes when the copy has, and the host buffer may be written again);
// - the compute stream (the device's current one) waits for that event
//   before anything queued on it later reads the destination;
// - the destination is recorded on the compute stream (Tensor.record_stream),
//   so that, once freed, its memory is not reused by `side` before the
//   compute stream's work queued until then has run.
extern "C" char* eqco_copy_to_device(const at::Tensor* src, const c10::Stream* side,
                                     at::Tensor** out, c10::Event** copied) {
  EQCO_TRY({
    auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    c10::Stream compute = impl->getStream(side->device());
    auto done = std::make_unique<c10::Event>(c10::DeviceType::CUDA);
    at::Tensor dst;
    {
      c10::StreamGuard on_side(*side);
      dst = src->to(side->device(), src->scalar_type(), /*non_blocking=*/true, /*copy=*/false);
      done->record(*side);
    }
    done->block(compute);
    impl->recordDataPtrOnStream(dst.storage().data_ptr(), compute);
    *out = new at::Tensor(std::move(dst));
    *copied = done.release();
  })
}

// Whether `event` has completed (*done = 1), without waiting.
extern "C" char* eqco_event_query(const c10::Event* event, int* done) {
  EQCO_TRY(*done = event->query() ? 1 : 0)
}

// Blocks the calling thread until `event` has completed.
extern "C" char* eqco_event_synchronize(c10::Event* event) {
  EQCO_TRY(event->synchronize())
}

// Frees an event made by `eqco_event_record`.
extern "C" void eqco_event_free(c10::Event* event) { delete event; }
