// The gradient all-reduce overlapped with backward, as DDP's reducer does it
// (torch/csrc/distributed/c10d/reducer.cpp): the parameters are split into
// buckets in reverse order, a post-hook on each parameter's AccumulateGrad
// node counts its bucket's gradients as backward accumulates them, and a
// bucket whose gradients are all there is flattened and all-reduced at once
// (an asynchronous c10d Work) while backward goes on. Buckets are launched in
// their index order only, so that every rank issues the same collectives in
// the same order. After backward, `finish` launches the buckets whose hooks
// did not all fire (with the gradients that exist then, as the averaging
// after backward does), waits for every Work, divides by the world size and
// copies the sums back into the gradients. As DDP's reducer, the hooks
// record the order in which backward produced the gradients, and the buckets
// can be rebuilt in that order after the first step (`eqco_overlap_rebuild`).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "shim.h"

namespace eqco {
namespace {

struct Bucket {
  // Indices of its parameters.
  std::vector<size_t> members;
  // How many of them have had their gradient accumulated this step.
  size_t ready = 0;
  bool launched = false;
  // The members that had a gradient when it was launched, in `flat`'s order.
  std::vector<size_t> sent;
  at::Tensor flat;
  c10::intrusive_ptr<c10d::Work> work;
};

}  // namespace

struct Overlap {
  Group* group;
  int size;
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  std::vector<size_t> bucket_of;
  std::vector<bool> fired;
  // The parameters in the order their gradients were first accumulated in
  // the current (or last) step.
  std::vector<size_t> order;
  std::vector<Bucket> buckets;
  // The next bucket to launch.
  size_t next = 0;
  // Whether a step's backward is under way (hooks outside one do nothing).
  bool armed = false;
  // The first failure inside a hook, reported by `finish`.
  std::string error;
  std::mutex mu;
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks;

  ~Overlap() {
    for (auto& [node, key] : hooks) {
      node->del_post_hook(key);
    }
  }

  // Flattens the bucket's gradients that exist and starts their all-reduce.
  void launch(Bucket& b) {
    b.launched = true;
    std::vector<at::Tensor> parts;
    for (size_t i : b.members) {
      auto g = params[i].grad();
      if (g.defined()) {
        parts.push_back(g.reshape(-1).to(at::kFloat));
        b.sent.push_back(i);
      }
    }
    if (parts.empty()) {
      return;
    }
    b.flat = at::cat(parts);
    std::vector<at::Tensor> ts{b.flat};
    b.work = backend_of(group)->allreduce(ts);
  }

  // Parameter `i`'s gradient is accumulated (AccumulateGrad's post-hook).
  void on_grad(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || !error.empty()) {
      return;
    }
    try {
      Bucket& b = buckets[bucket_of[i]];
      if (fired[i]) {
        if (b.launched) {
          error = "the gradient of " + names[i] +
                  " was accumulated again after its bucket's all-reduce began";
        }
        return;
      }
      fired[i] = true;
      order.push_back(i);
      b.ready += 1;
      while (next < buckets.size() && buckets[next].ready == buckets[next].members.size()) {
        launch(buckets[next]);
        next += 1;
      }
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }

  // Puts parameter i in bucket `bucket_of[i]` (numbered in launch order).
  void assign(const int64_t* bucket_of_in) {
    int64_t count = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      TORCH_CHECK(bucket_of_in[i] >= 0, "a negative gradient bucket");
      count = std::max(count, bucket_of_in[i] + 1);
    }
    bucket_of.assign(bucket_of_in, bucket_of_in + params.size());
    buckets.clear();
    buckets.resize(count);
    for (size_t i = 0; i < params.size(); ++i) {
      buckets[bucket_of[i]].members.push_back(i);
    }
    for (const auto& b : buckets) {
      TORCH_CHECK(!b.members.empty(), "a gradient bucket without parameters");
    }
  }

  void prepare() {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& b : buckets) {
      b.ready = 0;
      b.launched = false;
      b.sent.clear();
      b.flat = at::Tensor();
      b.work.reset();
    }
    fired.assign(params.size(), false);
    order.clear();
    next = 0;
    error.clear();
    armed = true;
  }

  // Returns how many buckets were launched during backward.
  int64_t finish() {
    std::lock_guard<std::mutex> lock(mu);
    armed = false;
    if (!error.empty()) {
      // The buckets already sent are let go (c10d keeps what it still
      // needs); the step fails, and the group with it.
      for (auto& b : buckets) {
        b.work.reset();
        b.flat = at::Tensor();
      }
      throw std::runtime_error(error);
    }
    c10::NoGradGuard no_grad;
    auto early = static_cast<int64_t>(next);
    for (; next < buckets.size(); ++next) {
      launch(buckets[next]);
    }
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& b : buckets) {
      if (b.work) {
        works.push_back(b.work);
      }
    }
    timed_wait(group, works);
    for (auto& b : buckets) {
      if (!b.work) {
        continue;
      }
      b.flat.div_(static_cast<double>(size));
      int64_t offset = 0;
      for (size_t i : b.sent) {
        auto g = params[i].grad();
        int64_t n = g.numel();
        g.copy_(b.flat.narrow(0, offset, n).view(g.sizes()));
        offset += n;
      }
      b.flat = at::Tensor();
      b.work.reset();
    }
    return early;
  }
};

}  // namespace eqco

using eqco::Group;
using eqco::Overlap;

// Registers the hooks over `n` parameters (leaf tensors that require a
// gradient) named `names`, parameter i in bucket `bucket_of[i]` (buckets
// numbered 0, 1, … in the order they should fill during backward).
extern "C" char* eqco_overlap_new(Group* g, at::Tensor** params, const char** names,
                                  const int64_t* bucket_of, int64_t n, Overlap** out) {
  EQCO_TRY({
    auto o = std::make_unique<Overlap>();
    o->group = g;
    o->size = eqco::group_size(g);
    for (int64_t i = 0; i < n; ++i) {
      o->params.push_back(*params[i]);
      o->names.emplace_back(names[i]);
    }
    o->assign(bucket_of);
    o->fired.assign(n, false);
    Overlap* raw = o.get();
    for (int64_t i = 0; i < n; ++i) {
      auto node = torch::autograd::impl::grad_accumulator(o->params[i]);
      TORCH_CHECK(node, o->names[i], " has no gradient accumulator (not a leaf that requires grad)");
      size_t index = static_cast<size_t>(i);
      auto key = node->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [raw, index](const torch::autograd::variable_list& outputs,
                       const torch::autograd::variable_list& /*inputs*/) {
            raw->on_grad(index);
            return outputs;
          }));
      o->hooks.emplace_back(std::move(node), key);
    }
    *out = o.release();
  })
}

// Arms the hooks for the next backward.
extern "C" char* eqco_overlap_prepare(Overlap* o) { EQCO_TRY(o->prepare()) }

// After backward: the remaining buckets launched, every all-reduce waited
// for, the gradients set to the sums ÷ world size; *early = the number of
// buckets launched during backward.
extern "C" char* eqco_overlap_finish(Overlap* o, int64_t* early) {
  EQCO_TRY(*early = o->finish())
}

// The parameters in the order backward first accumulated their gradients in
// the last step: out[0..*n] (at most `cap`), the ones without a gradient left out.
extern "C" char* eqco_overlap_ready_order(Overlap* o, int64_t* out, int64_t cap, int64_t* n) {
  EQCO_TRY({
    std::lock_guard<std::mutex> lock(o->mu);
    TORCH_CHECK(!o->armed, "the gradient order read during backward");
    *n = 0;
    for (size_t i : o->order) {
      TORCH_CHECK(*n < cap, "more gradients than parameters");
      out[(*n)++] = static_cast<int64_t>(i);
    }
  })
}

// New buckets between steps: parameter i in bucket `bucket_of[i]`.
extern "C" char* eqco_overlap_rebuild(Overlap* o, const int64_t* bucket_of) {
  EQCO_TRY({
    std::lock_guard<std::mutex> lock(o->mu);
    TORCH_CHECK(!o->armed, "gradient buckets rebuilt during backward");
    o->assign(bucket_of);
  })
}

// Removes the hooks and frees `o`.
extern "C" void eqco_overlap_free(Overlap* o) {
  try {
    delete o;
  } catch (...) {
  }
}
