// The NCCL process group (GPU), compiled only when torch has CUDA and the
// NCCL and CUDA headers are in the venv (see build.rs).
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

namespace eqco {

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                            int size, std::chrono::milliseconds timeout,
                                            int cuda_index) {
  // The current device first: NCCL's communicator and every stream it makes
  // belong to it.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_index));
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
  pg->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_index)));
  return pg;
}

}  // namespace eqco
