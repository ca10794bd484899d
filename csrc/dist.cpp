// torch's distributed engine, c10d, for data parallelism: a TCPStore for the
// rendezvous, a Gloo (CPU) or NCCL (GPU) process group, the collectives the
// trainer calls, and the two collectives that must carry gradients as C++
// autograd functions (tch cannot define one): a gather whose backward sums
// the gradient over ranks, and synchronised batch normalisation.
#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shim.h"

namespace eqco {

// Time spent in the group's collectives. Gloo's run on the calling thread,
// so the wall clock around each call measures them. NCCL's run on NCCL's
// own stream, and `Work::wait()` only makes the compute stream wait for
// them, so the host returns at once; they are measured on the device
// instead, as torch's own NCCL timing does: an event recorded on the
// compute stream before the collective is enqueued, and another after the
// compute stream was made to wait for it, so that the interval is how long
// the compute stream is held up by the collective (waiting for the peers
// included). Reading an interval needs both events complete: finished ones
// are read after each collective without waiting, the rest when the total
// is asked for. Events whose interval was read are kept and recorded again
// (about 60 collectives a step would otherwise create and destroy 120).
struct CommClock {
  bool on_device = false;
  c10::Device device{c10::DeviceType::CPU};
  double seconds = 0.0;
  std::deque<std::pair<std::unique_ptr<c10::Event>, std::unique_ptr<c10::Event>>> pending;
  std::vector<std::unique_ptr<c10::Event>> spare;
  std::mutex mutex;

  // An event for timing, reused when one is spare (caller holds `mutex`).
  std::unique_ptr<c10::Event> take() {
    if (spare.empty()) {
      return std::make_unique<c10::Event>(device.type(), c10::EventFlag::BACKEND_DEFAULT);
    }
    auto event = std::move(spare.back());
    spare.pop_back();
    return event;
  }

  // Adds the intervals whose end has completed, oldest first, and keeps
  // their events (caller holds `mutex`).
  void add_finished() {
    while (!pending.empty() && pending.front().second->query()) {
      auto& [start, end] = pending.front();
      seconds += start->elapsedTime(*end) / 1000.0;
      spare.push_back(std::move(start));
      spare.push_back(std::move(end));
      pending.pop_front();
    }
  }
};

// The thread that watches the store for another rank's failure (see
// `watch`), and how it is told to stop.
struct Watcher {
  std::thread thread;
  std::mutex mutex;
  std::condition_variable wake;
  bool stop = false;
};

struct Group {
  // This attempt's keys (a prefix of the job's store, which torchrun's
  // agent may keep across restarts).
  c10::intrusive_ptr<c10d::Store> store;
  // The gradients' communicator (their all-reduce, overlapped with
  // backward), the figures', and the barriers and broadcasts.
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int size;
  // Whether this process serves the store (rank 0 without torchrun's agent).
  bool serves_store;
  CommClock clock;
  Watcher watcher;
  // Set once, when the communicators were aborted: why (another rank's
  // failure, or the store gone). Guarded by `cause_mutex`.
  std::atomic<bool> aborted{false};
  std::mutex cause_mutex;
  std::string cause;
  // A second communicator for SyncBN's statistics and the gathers (and
  // their gradients' reduce-scatter), so that those do not queue behind
  // the gradient buckets on one stream (NCCL) or one work queue (Gloo).
  // Each rank issues the collectives of each communicator in the same
  // order: the training thread's program order, and inside backward the
  // autograd engine's, which runs a graph's nodes in the same order on
  // every rank. (Under NCCL the two may run at once on the GPU.)
  c10::intrusive_ptr<c10d::Backend> side;
};

#ifdef EQCO_WITH_NCCL
// In dist_nccl.cpp, compiled only against a CUDA build of torch: the NCCL
// group bound to GPU `cuda_index` (made the current device first).
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                            int size, std::chrono::milliseconds timeout,
                                            int cuda_index);
#endif

// The keys of the failure protocol (under the attempt's prefix): the first
// failing rank's message, and how many non-serving ranks have left.
constexpr const char* kFailedKey = "eqco/failed";
constexpr const char* kLeftKey = "eqco/left";

namespace {

// How long a wait on Gloo blocks before it looks whether the watcher
// aborted the group.
constexpr auto kWaitSlice = std::chrono::milliseconds(200);

// The error of a group the watcher aborted (see `abort_group`).
[[noreturn]] void throw_aborted(Group* g) {
  std::lock_guard<std::mutex> lock(g->cause_mutex);
  throw std::runtime_error("the communicators were aborted: " + g->cause);
}

// Waits for `work`. NCCL's wait returns at once (it only makes the compute
// stream wait; an abort releases the stream). Gloo's blocks this thread,
// and Gloo's `abort()` is a no-op, so it waits in slices and ends as soon
// as the watcher has aborted the group.
void wait(Group* g, const c10::intrusive_ptr<c10d::Work>& work) {
  if (g->clock.on_device) {
    work->wait();
    return;
  }
  while (true) {
    try {
      work->wait(kWaitSlice);
      return;
    } catch (...) {
      if (work->isCompleted()) {
        throw;  // The collective's own error, not the slice's end.
      }
    }
    if (g->aborted.load()) {
      throw_aborted(g);
    }
  }
}

// The device's current (compute) stream.
c10::Stream compute_stream(const c10::Device& device) {
  return c10::impl::getDeviceGuardImpl(device.type())->getStream(device);
}

// Adds the collective made during its lifetime to the group's clock (see
// CommClock); construct it before the collective is enqueued and let it go
// after its wait. Timing never fails the collective.
class Timed {
 public:
  explicit Timed(Group* g) : clock_(g->clock), t0_(std::chrono::steady_clock::now()) {
    if (!clock_.on_device) {
      return;
    }
    try {
      {
        std::lock_guard<std::mutex> lock(clock_.mutex);
        start_ = clock_.take();
      }
      start_->record(compute_stream(clock_.device));
    } catch (...) {
      start_.reset();
    }
  }

  ~Timed() {
    try {
      if (!clock_.on_device) {
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
        std::lock_guard<std::mutex> lock(clock_.mutex);
        clock_.seconds += s;
        return;
      }
      if (!start_) {
        return;
      }
      std::lock_guard<std::mutex> lock(clock_.mutex);
      auto end = clock_.take();
      end->record(compute_stream(clock_.device));
      clock_.pending.emplace_back(std::move(start_), std::move(end));
      clock_.add_finished();
    } catch (...) {
    }
  }

  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  CommClock& clock_;
  std::chrono::steady_clock::time_point t0_;
  std::unique_ptr<c10::Event> start_;
};

// Which of the group's communicators a collective goes to.
enum class Lane { Main, Side };

// The group's communicator for `lane`; an error once the group was left
// after a failure, or once the watcher aborted it (naming why).
c10d::Backend* live(Group* g, Lane lane = Lane::Main) {
  if (g->aborted.load()) {
    throw_aborted(g);
  }
  auto& backend = lane == Lane::Side ? g->side : g->backend;
  if (!backend) {
    throw std::runtime_error("this rank left the group after a failure");
  }
  return backend.get();
}

void allreduce_sum(Group* g, at::Tensor& t, Lane lane = Lane::Main) {
  std::vector<at::Tensor> ts{t};
  Timed timed(g);
  wait(g, live(g, lane)->allreduce(ts));
}

// The inputs of all ranks stacked along dimension 0, in rank order:
// gathered straight into one buffer (all_gather_into_tensor, c10d's
// `_allgather_base`), which NCCL fills in place and Gloo implements too
// (allgather_into_tensor_coalesced), rather than into a list of views of
// it, which NCCL gathers into a buffer of its own and copies out W times.
at::Tensor allgather(Group* g, const at::Tensor& input) {
  auto x = input.contiguous();
  auto sizes = x.sizes().vec();
  std::vector<int64_t> out_sizes = sizes;
  out_sizes[0] = sizes[0] * g->size;
  auto out = at::empty(out_sizes, x.options());
  Timed timed(g);
  wait(g, live(g, Lane::Side)->_allgather_base(out, x));
  return out;
}

// Rank r's rows [r·n, (r + 1)·n) of the sum over ranks of `input` (W·n
// rows): reduce_scatter_tensor, c10d's `_reduce_scatter_base`, which moves
// half the bytes of an all-reduce followed by a slice under NCCL. Gloo
// implements it too (on a copy of `input`, which it leaves unchanged).
at::Tensor reduce_scatter_sum(Group* g, const at::Tensor& input) {
  auto x = input.contiguous();
  auto sizes = x.sizes().vec();
  sizes[0] /= g->size;
  auto out = at::empty(sizes, x.options());
  c10d::ReduceScatterOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  Timed timed(g);
  wait(g, live(g, Lane::Side)->_reduce_scatter_base(out, x, opts));
  return out;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// y = [x_0; …; x_{W−1}] (each rank's x); ∂L/∂x_r = Σ_s ∂L_s/∂y, rank r's rows.
struct GatherWithGrad : public torch::autograd::Function<GatherWithGrad> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    auto* g = reinterpret_cast<Group*>(group);
    ctx->saved_data["group"] = group;
    return allgather(g, x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    return {reduce_scatter_sum(g, grads[0]), at::Tensor()};
  }
};

std::vector<int64_t> reduced_dims(const at::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) {
    dims.push_back(d);
  }
  return dims;
}

std::vector<int64_t> channel_shape(const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return shape;
}

// Batch normalisation with the statistics of the whole batch across ranks.
// Forward: each rank's per-channel mean and sum of squared deviations,
// gathered and combined (Chan et al.'s pairwise update), the biased
// variance normalising (in ATen's fused kernel, given those statistics) and
// the unbiased one entering the running variance, as torch does. Backward:
// ATen's fused reduction gives this rank's Σ dy and Σ dy·x̂, which are
// all-reduced; then dx = γ·σ⁻¹·(dy − Σdy/N − x̂·Σdy·x̂/N) over the global
// N. γ's and β's gradients stay local (the gradient all-reduce averages
// them like every other parameter). Nothing here reads a value back to the
// host, so nothing waits for a GPU.
//
// That is the CPU's path. On CUDA it runs through the fused kernels torch's
// own SyncBatchNorm uses (torch/nn/modules/_functions.py), which read a
// bfloat16 activation as it is, accumulate in float32, and write the
// output and the input gradient in the activation's type, with no float32
// copy of the activation: batch_norm_stats (this rank's mean and inverse
// std), an all-gather of [mean, invstd, count] into one buffer,
// batch_norm_gather_stats_with_counts (the global statistics, and the
// running ones updated with the unbiased variance), batch_norm_elemt;
// backward batch_norm_backward_reduce (Σdy, Σdy·(x − μ), γ's and β's
// gradients), an all-reduce of the first two, batch_norm_backward_elemt.
// torch drops the statistics of ranks with an empty batch first, which
// reads the counts back to the host; every rank here has the same
// positive share of the batch, so there are none to drop.
struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& bias, at::Tensor running_mean, at::Tensor running_var,
                            double momentum, double eps, int64_t group) {
    ctx->saved_data["fused"] = input.is_cuda();
    if (input.is_cuda()) {
      return forward_fused(ctx, input, weight, bias, running_mean, running_var, momentum, eps,
                           group);
    }
    auto* g = reinterpret_cast<Group*>(group);
    auto dims = reduced_dims(input);
    int64_t channels = input.size(1);
    double count = static_cast<double>(input.numel() / channels);  // Host sizes only.
    auto [var, mean] = at::var_mean(input.to(at::kFloat), dims, /*correction=*/0, /*keepdim=*/false);
    auto local = at::cat({mean, var * count, at::full({1}, count, mean.options())});
    auto all = allgather(g, local.unsqueeze(0)).view({g->size, 2 * channels + 1});
    auto counts = all.narrow(1, 2 * channels, 1);  // [W, 1]
    auto means = all.narrow(1, 0, channels);
    auto m2s = all.narrow(1, channels, channels);
    auto total = counts.sum();
    auto global_mean = (means * counts).sum(0) / total;
    auto global_var = (m2s + counts * (means - global_mean).pow(2)).sum(0) / total;
    {
      c10::NoGradGuard no_grad;
      running_mean.mul_(1.0 - momentum).add_(global_mean.to(running_mean.dtype()), momentum);
      auto unbiased = global_var * total / (total - 1.0).clamp_min(1.0);
      running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype()), momentum);
    }
    auto invstd = (global_var + eps).rsqrt();
    // Normalising with given statistics is batch norm in inference mode.
    auto y = at::batch_norm(input, weight, bias, global_mean, global_var, /*training=*/false, 0.0,
                            eps, /*cudnn_enabled=*/true);
    ctx->save_for_backward({input, weight, global_mean, invstd, total});
    ctx->saved_data["group"] = group;
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (ctx->saved_data["fused"].toBool()) {
      return backward_fused(ctx, grads);
    }
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    auto saved = ctx->get_saved_variables();
    auto input = saved[0];
    auto weight = saved[1];
    auto mean = saved[2];
    auto invstd = saved[3];
    auto n = saved[4];
    double eps = ctx->saved_data["eps"].toDouble();
    auto dy = grads[0].contiguous(input.suggest_memory_format());
    // This rank's Σ dy·x̂ and Σ dy (γ's and β's gradients), in one pass.
    auto [unused, sum_dy_xhat, sum_dy] = at::native_batch_norm_backward(
        dy, input, weight, std::nullopt, std::nullopt, mean, invstd, /*train=*/true, eps,
        {false, true, true});
    int64_t channels = sum_dy.size(0);
    auto totals = at::cat({sum_dy.to(at::kFloat), sum_dy_xhat.to(at::kFloat)});
    allreduce_sum(g, totals, Lane::Side);
    auto total_dy = totals.narrow(0, 0, channels);
    auto total_dy_xhat = totals.narrow(0, channels, channels);
    // dx = a·dy + b·x + c per channel, with x̂ = (x − μ)·σ⁻¹:
    //   a = γσ⁻¹,  b = −a·σ⁻¹·Σdy·x̂/N,  c = −a·Σdy/N − b·μ.
    auto a = weight.to(at::kFloat) * invstd;
    auto b = -a * invstd * total_dy_xhat / n;
    auto c = -a * total_dy / n - b * mean;
    auto shape = channel_shape(input);
    auto dx = at::addcmul(c.view(shape), input, b.view(shape));
    dx.addcmul_(dy, a.view(shape));
    return {dx.to(input.scalar_type()),
            sum_dy_xhat.to(weight.scalar_type()),
            sum_dy.to(weight.scalar_type()),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }

  // Channels-last memory stays as it is (the kernels read it); any other
  // layout is made contiguous, as torch does.
  static at::Tensor kernel_layout(const at::Tensor& t) {
    if (t.is_contiguous(at::MemoryFormat::ChannelsLast) ||
        t.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
      return t;
    }
    return t.contiguous();
  }

  static at::Tensor forward_fused(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                                  const at::Tensor& bias, at::Tensor& running_mean,
                                  at::Tensor& running_var, double momentum, double eps,
                                  int64_t group) {
    auto* g = reinterpret_cast<Group*>(group);
    auto input = kernel_layout(x);
    auto weight = w.contiguous();
    int64_t channels = input.size(1);
    // This rank's statistics, in float32 for a bfloat16 input.
    auto [mean, invstd] = at::batch_norm_stats(input, eps);
    auto count = at::full({1}, static_cast<double>(input.numel() / channels), mean.options());
    auto combined = at::cat({mean, invstd, count}, 0);
    // [W, 2C + 1]: every rank's, gathered into one buffer.
    auto all = allgather(g, combined.unsqueeze(0));
    auto mean_all = all.narrow(1, 0, channels);
    auto invstd_all = all.narrow(1, channels, channels);
    auto count_all = all.narrow(1, 2 * channels, 1);
    auto counts = count_all.reshape({-1});
    if (counts.scalar_type() != running_mean.scalar_type()) {
      counts = counts.to(running_mean.scalar_type());
    }
    at::Tensor global_mean, global_invstd;
    {
      c10::NoGradGuard no_grad;
      std::tie(global_mean, global_invstd) = at::batch_norm_gather_stats_with_counts(
          input, mean_all, invstd_all, running_mean, running_var, momentum, eps, counts);
    }
    ctx->save_for_backward({input, weight, global_mean, global_invstd, count_all.to(at::kInt)});
    ctx->saved_data["group"] = group;
    return at::batch_norm_elemt(input, weight, bias, global_mean, global_invstd, eps);
  }

  static variable_list backward_fused(AutogradContext* ctx, variable_list grads) {
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    auto saved = ctx->get_saved_variables();
    auto input = saved[0];
    auto weight = saved[1];
    auto mean = saved[2];
    auto invstd = saved[3];
    auto counts = saved[4];
    auto dy = kernel_layout(grads[0]);
    // This rank's Σdy and Σdy·(x − μ), and γ's and β's gradients.
    auto [sum_dy, sum_dy_xmu, grad_weight, grad_bias] = at::batch_norm_backward_reduce(
        dy, input, mean, invstd, weight, /*input_g=*/true, /*weight_g=*/true, /*bias_g=*/true);
    int64_t channels = sum_dy.size(0);
    auto combined = at::cat({sum_dy, sum_dy_xmu}, 0);
    allreduce_sum(g, combined, Lane::Side);
    auto total_dy = combined.narrow(0, 0, channels);
    auto total_dy_xmu = combined.narrow(0, channels, channels);
    auto w = weight.scalar_type() != mean.scalar_type() ? weight.to(mean.scalar_type()) : weight;
    auto dx = at::batch_norm_backward_elemt(dy, input, mean, invstd, w, total_dy, total_dy_xmu,
                                            counts);
    return {dx,           grad_weight,  grad_bias,    at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Gloo's devices: one per interface of `ifaces` (comma-separated) when not
// empty, else one bound to the address `addr`.
std::vector<std::shared_ptr<::gloo::transport::Device>> gloo_devices(const std::string& ifaces,
                                                                     const std::string& addr) {
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
  if (ifaces.empty()) {
    devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
    return devices;
  }
  std::stringstream list(ifaces);
  std::string iface;
  while (std::getline(list, iface, ',')) {
    if (!iface.empty()) {
      devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    }
  }
  return devices;
}

// The key of the job's identity in the store, outside every attempt's prefix.
constexpr const char* kJobKey = "eqco/job";

// Rank 0 claims the store for its job; every other process checks that the
// store serves its own job before it writes anything there. A mismatch is
// thrown as `EQCO_OTHER_JOB[<their identity>]`, which the Rust side turns
// into an error naming both jobs.
void check_job(const c10::intrusive_ptr<c10d::Store>& store, int rank, const std::string& identity) {
  std::vector<uint8_t> mine(identity.begin(), identity.end());
  std::vector<uint8_t> theirs =
      rank == 0 ? store->compareSet(kJobKey, std::vector<uint8_t>(), mine) : store->get(kJobKey);
  if (theirs != mine) {
    throw std::runtime_error("EQCO_OTHER_JOB[" + std::string(theirs.begin(), theirs.end()) + "]");
  }
}

}  // namespace

// Records `message` as the job's failure in the store, unless a failure is
// there already (the first one wins); a store that cannot be reached is
// passed over (the caller is failing anyway).
void record_first_failure(const c10::intrusive_ptr<c10d::Store>& store, const std::string& message) {
  try {
    store->compareSet(kFailedKey, std::vector<uint8_t>(),
                      std::vector<uint8_t>(message.begin(), message.end()));
  } catch (...) {
  }
}

namespace {

// Tells the other ranks that this one cannot join, and why (first failure wins).
void record_failure(const c10::intrusive_ptr<c10d::Store>& store, int rank, const std::string& why) {
  record_first_failure(store, "rank " + std::to_string(rank) + " could not join: " + why);
}

// Counts this rank in and waits until all `size` are, or one recorded a
// failure (which is thrown here), or `timeout` passes (the error names the
// ranks that did not join).
void wait_for_ranks(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                    std::chrono::milliseconds timeout) {
  const std::string ready = "eqco/ready/";
  store->set(ready + std::to_string(rank), std::vector<uint8_t>{'1'});
  store->add("eqco/joined", 1);
  auto start = std::chrono::steady_clock::now();
  while (true) {
    if (store->check({std::string(kFailedKey)})) {
      auto v = store->get(kFailedKey);
      throw std::runtime_error(std::string(v.begin(), v.end()));
    }
    if (store->add("eqco/joined", 0) >= size) {
      return;
    }
    auto waited = std::chrono::steady_clock::now() - start;
    if (waited > timeout) {
      std::string missing;
      for (int r = 0; r < size; ++r) {
        if (!store->check({ready + std::to_string(r)})) {
          missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        }
      }
      throw std::runtime_error(
          "rank(s) " + missing + " did not join within " +
          std::to_string(std::chrono::duration_cast<std::chrono::seconds>(waited).count()) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// How often the watcher asks the store, how long one question may take, and
// how many unanswered ones in a row mean that the store is gone.
constexpr auto kWatchPeriod = std::chrono::milliseconds(500);
constexpr auto kWatchTimeout = std::chrono::milliseconds(2000);
constexpr int kWatchLost = 3;

}  // namespace

// Why the communicators were aborted, for a fatal error that follows (set
// once, never freed).
std::atomic<const char*> abort_cause{nullptr};

// Aborts the group's communicators (NCCL's ncclCommAbort: pending and
// future collectives return at once instead of waiting for a peer that is
// gone) and remembers `why`; later collectives fail naming it. Once only.
void abort_group(Group* g, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(g->cause_mutex);
    if (g->aborted.load()) {
      return;
    }
    g->cause = why;
    g->aborted.store(true);
  }
  const char* expected = nullptr;
  abort_cause.compare_exchange_strong(expected, strdup(why.c_str()));
  for (auto* backend : {g->backend.get(), g->side.get()}) {
    try {
      if (backend != nullptr) {
        backend->abort();
      }
    } catch (...) {
    }
  }
}

// The failure another rank recorded (empty when none), asked on `store`.
std::string recorded_failure(const c10::intrusive_ptr<c10d::Store>& store) {
  if (!store->check({std::string(kFailedKey)})) {
    return "";
  }
  auto v = store->get(kFailedKey);
  return std::string(v.begin(), v.end());
}

// The watcher's loop: every kWatchPeriod, asks the store (on a connection of
// its own) whether a rank recorded a failure. A failure, or a store that
// stopped answering (the process serving it has gone), aborts the group:
// under NCCL a surviving rank's collectives do not fail by themselves (a
// wait only makes the stream wait), so without this they would block until
// dist_timeout. Stops when told (`stop_watching`). Runs on the group's GPU.
void watch(Group* g, c10::intrusive_ptr<c10d::Store> store) {
  if (g->clock.on_device) {
    // Aborting touches the communicators' GPU: make it current here first.
    try {
      c10::impl::getDeviceGuardImpl(g->clock.device.type())->setDevice(g->clock.device);
    } catch (...) {
    }
  }
  int unanswered = 0;
  std::unique_lock<std::mutex> lock(g->watcher.mutex);
  while (!g->watcher.wake.wait_for(lock, kWatchPeriod, [g] { return g->watcher.stop; })) {
    lock.unlock();
    std::string why;
    try {
      why = recorded_failure(store);
      unanswered = 0;
    } catch (const std::exception& e) {
      if (++unanswered >= kWatchLost) {
        why = std::string("the rendezvous store stopped answering (the process serving it, rank 0 "
                          "or torchrun's agent, has gone): ") +
              e.what();
      }
    }
    if (!why.empty()) {
      abort_group(g, why);
      return;
    }
    lock.lock();
  }
}

// Starts the watcher of `g` (a no-op where the store cannot be cloned: the
// group then relies on its backend's own errors, as before).
void start_watching(Group* g) {
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = g->store->clone();
    store->setTimeout(kWatchTimeout);
  } catch (...) {
    return;
  }
  g->watcher.thread = std::thread(watch, g, store);
}

// Stops the watcher and waits for it (at most one store question).
void stop_watching(Group* g) {
  {
    std::lock_guard<std::mutex> lock(g->watcher.mutex);
    g->watcher.stop = true;
  }
  g->watcher.wake.notify_all();
  if (g->watcher.thread.joinable()) {
    g->watcher.thread.join();
  }
}

// A communicator of `size` ranks whose keys live in `keys`: NCCL on GPU
// `cuda_index`, or Gloo on `devices`.
c10::intrusive_ptr<c10d::Backend> make_backend(
    bool nccl, const c10::intrusive_ptr<c10d::Store>& keys, int rank, int size,
    std::chrono::milliseconds timeout,
    const std::vector<std::shared_ptr<::gloo::transport::Device>>& devices, int cuda_index) {
  if (nccl) {
#ifdef EQCO_WITH_NCCL
    return make_nccl(keys, rank, size, timeout, cuda_index);
#else
    (void)cuda_index;
    throw std::runtime_error("this eqco was built against a torch without NCCL");
#endif
  }
  auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
  gloo->devices = devices;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(keys, rank, size, gloo);
}

}  // namespace eqco

using eqco::Group;

// Joins the group of `size` processes. The rendezvous store is a TCPStore
// at host:port, served by this process when `serve` (rank 0 without
// torchrun's agent) and joined as a client otherwise; a server listens on
// the socket `listen_fd` when it is ≥ 0 (bound by the caller, e.g. to
// loopback; the store takes it over), else on every interface. Before
// anything else, the store is checked to serve the job `identity` (see
// check_job); the group's keys live under `prefix`. Gloo binds to the interfaces `gloo_ifaces` (comma-separated,
// GLOO_SOCKET_IFNAME's form) when not empty, else to the address
// `gloo_addr`. NCCL (nccl = 1) is bound to GPU `cuda_index`. Reaching the
// store and waiting for every rank to join is bounded by `join_timeout_s`,
// every later wait by `timeout_s`.
extern "C" char* eqco_group_new(int nccl, const char* host, int port, int rank, int size,
                                double timeout_s, double join_timeout_s, int serve,
                                int listen_fd, const char* identity, const char* prefix,
                                const char* gloo_ifaces, const char* gloo_addr, int cuda_index,
                                Group** out) {
  EQCO_TRY({
    auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000.0));
    auto join_timeout = std::chrono::milliseconds(static_cast<int64_t>(join_timeout_s * 1000.0));
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = serve != 0;
    // The ranks count themselves in below (naming the missing ones on a
    // timeout), not in the store's own wait.
    opts.waitWorkers = false;
    opts.timeout = join_timeout;
    if (serve != 0 && listen_fd >= 0) {
      opts.masterListenFd = listen_fd;
    }
    c10::intrusive_ptr<c10d::Store> tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    eqco::check_job(tcp, rank, std::string(identity));
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
    if (!nccl) {
      try {
        devices = eqco::gloo_devices(gloo_ifaces, gloo_addr);
      } catch (const c10::Error& e) {
        eqco::record_failure(store, rank, e.what_without_backtrace());
        throw;
      } catch (const std::exception& e) {
        eqco::record_failure(store, rank, e.what());
        throw;
      }
    }
    eqco::wait_for_ranks(store, rank, size, join_timeout);
    tcp->setTimeout(timeout);
    store->setTimeout(timeout);
    auto make = [&](const c10::intrusive_ptr<c10d::Store>& keys) {
      return eqco::make_backend(nccl != 0, keys, rank, size, timeout, devices, cuda_index);
    };
    auto backend = make(store);
    auto side = make(c10::make_intrusive<c10d::PrefixStore>("side", store));
    auto* g = new Group{store, backend, rank, size, serve != 0};
    g->side = side;
    if (nccl) {
      g->clock.on_device = true;
      g->clock.device = c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(cuda_index));
    }
    eqco::start_watching(g);
    *out = g;
  })
}

// Seconds spent in the group's collectives so far (see CommClock); waits
// for the device to finish those still running.
extern "C" char* eqco_group_comm_seconds(Group* g, double* out) {
  EQCO_TRY({
    std::lock_guard<std::mutex> lock(g->clock.mutex);
    for (auto& interval : g->clock.pending) {
      interval.second->synchronize();
    }
    g->clock.add_finished();
    *out = g->clock.seconds;
  })
}

namespace {

using FatalReport = void (*)(const char*);
std::atomic<FatalReport> fatal_report{nullptr};

// What std::terminate runs once `eqco_report_fatal_with` installed it: the
// exception that ends the process (a c10d thread's: NCCL's watchdog
// rethrows a timed-out or failed collective on its own thread, which ends
// in std::terminate and SIGABRT) is handed to the report, then the process
// aborts as it would have.
[[noreturn]] void on_terminate() {
  std::string what = "std::terminate was called without an active exception";
  if (auto e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const c10::Error& x) {
      what = x.what_without_backtrace();
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
      what = "an unknown C++ exception";
    }
  }
  if (const char* cause = eqco::abort_cause.load()) {
    what = std::string(cause) + " (then: " + what + ")";
  }
  if (auto report = fatal_report.load()) {
    report(what.c_str());
  }
  std::abort();
}

}  // namespace

// Makes a C++ exception that would end the process (std::terminate, e.g.
// from NCCL's watchdog thread) reach `report` with its message first.
extern "C" void eqco_report_fatal_with(FatalReport report) {
  fatal_report.store(report);
  std::set_terminate(on_terminate);
}

// A thread that throws `what` and does not catch it, as NCCL's watchdog does
// with a collective that timed out: the process ends through std::terminate
// (for the test of `eqco_report_fatal_with`; never called otherwise).
extern "C" void eqco_terminate_from_thread(const char* what) {
  try {
    std::string message(what);
    std::thread([message] { throw std::runtime_error(message); }).join();
  } catch (...) {
    // The thread could not start: nothing was thrown, the caller goes on.
  }
}

// This rank failed with `message`: records it for the others (the first
// failure wins; their watchers abort their communicators within about a
// second), aborts its own communicators, and, when this process serves the
// store, keeps it up until the other ranks have left or `linger_s` has passed.
extern "C" void eqco_group_fail(Group* g, const char* message, double linger_s) {
  eqco::stop_watching(g);
  std::string m(message);
  eqco::record_first_failure(g->store, m);
  if (g->backend) {
    eqco::abort_group(g, m);
  }
  try {
    g->backend.reset();
    g->side.reset();
  } catch (...) {
  }
  if (g->serves_store) {
    auto end = std::chrono::steady_clock::now() +
               std::chrono::milliseconds(static_cast<int64_t>(linger_s * 1000.0));
    try {
      while (g->store->add(eqco::kLeftKey, 0) < g->size - 1 && std::chrono::steady_clock::now() < end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    } catch (...) {
    }
  } else {
    try {
      g->store->add(eqco::kLeftKey, 1);
    } catch (...) {
    }
  }
}

// Records `message` as this rank's failure in the store and nothing else:
// the rank stays in the group, so only the peers' watchers can end their
// waits (for the test of the watcher; eqco_group_fail is the real path).
extern "C" void eqco_group_record_failure(Group* g, const char* message) {
  eqco::stop_watching(g);
  eqco::record_first_failure(g->store, message);
}

// The failure another rank recorded with `eqco_group_fail` (a new C string
// in *out), or null in *out when none is recorded or the store is gone;
// waits at most `wait_s` for the store.
extern "C" void eqco_group_cause(Group* g, double wait_s, char** out) {
  *out = nullptr;
  try {
    g->store->setTimeout(std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000.0)));
    std::string failure = eqco::recorded_failure(g->store);
    if (!failure.empty()) {
      *out = eqco::c_string(failure.c_str());
      return;
    }
  } catch (...) {
  }
  try {
    std::lock_guard<std::mutex> lock(g->cause_mutex);
    if (g->aborted.load() && !g->cause.empty()) {
      *out = eqco::c_string(g->cause.c_str());
    }
  } catch (...) {
  }
}

// Leaves the group (its threads end before this returns): a normal
// shutdown, or none where the communicators were aborted.
extern "C" void eqco_group_free(Group* g) {
  eqco::stop_watching(g);
  if (g->aborted.load()) {
    // A collective with the failed rank may still be running on the
    // backend's threads, which its destructor would join: they are left to
    // the process's exit instead.
    g->backend.release();
    g->side.release();
  }
  for (auto* backend : {g->backend.get(), g->side.get()}) {
    try {
      if (backend != nullptr) {
        backend->shutdown();
      }
    } catch (...) {
    }
  }
  try {
    delete g;
  } catch (...) {
  }
}

// Sums `t` over ranks, in place.
extern "C" char* eqco_all_reduce_sum(Group* g, at::Tensor* t) { EQCO_TRY(eqco::allreduce_sum(g, *t)) }

// Every rank's `input` stacked along dimension 0, in rank order (no gradient).
extern "C" char* eqco_all_gather(Group* g, const at::Tensor* input, at::Tensor** out) {
  EQCO_TRY({
    c10::NoGradGuard no_grad;
    *out = new at::Tensor(eqco::allgather(g, *input));
  })
}

// As `eqco_all_gather`, with a gradient: each rank's slice receives the sum
// over ranks of the gradients flowing into the gathered tensor.
extern "C" char* eqco_all_gather_with_grad(Group* g, const at::Tensor* input, at::Tensor** out) {
  EQCO_TRY({
    *out = new at::Tensor(eqco::GatherWithGrad::apply(*input, reinterpret_cast<int64_t>(g)));
  })
}

// Copies rank `root`'s `t` into every rank's `t`.
extern "C" char* eqco_broadcast(Group* g, at::Tensor* t, int root) {
  EQCO_TRY({
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    eqco::Timed timed(g);
    eqco::wait(g, eqco::live(g)->broadcast(ts, opts));
  })
}

// Waits until every rank has called it.
extern "C" char* eqco_barrier(Group* g) {
  EQCO_TRY({
    eqco::Timed timed(g);
    eqco::wait(g, eqco::live(g)->barrier());
  })
}

// Synchronised batch normalisation of `input` [N, C, …] in training mode
// (updates the running statistics in place).
extern "C" char* eqco_sync_batch_norm(Group* g, const at::Tensor* input, const at::Tensor* weight,
                                      const at::Tensor* bias, at::Tensor* running_mean,
                                      at::Tensor* running_var, double momentum, double eps,
                                      at::Tensor** out) {
  EQCO_TRY({
    *out = new at::Tensor(eqco::SyncBatchNorm::apply(*input, *weight, *bias, *running_mean,
                                                     *running_var, momentum, eps,
                                                     reinterpret_cast<int64_t>(g)));
  })
}

namespace eqco {

c10d::Backend* backend_of(Group* g) { return live(g); }

int group_size(Group* g) { return g->size; }

void timed_wait(Group* g, const std::vector<c10::intrusive_ptr<c10d::Work>>& works) {
  Timed timed(g);
  for (const auto& w : works) {
    wait(g, w);
  }
}

}  // namespace eqco
