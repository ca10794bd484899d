// SGD with momentum and weight decay over every parameter in a few
// multi-tensor (`_foreach_*`) calls instead of ~5 kernels per parameter.
// The arithmetic is the same, operation by operation, as the per-parameter
// loop it replaces (torch.optim.SGD without dampening or Nesterov):
//   d = g + λ·θ;  b = μ·b + d (b = d at the first step);  θ = θ − lr·b.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <vector>

#include "shim.h"

namespace {

std::vector<at::Tensor> list(at::Tensor** ts, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(*ts[i]);
  }
  return out;
}

}  // namespace

// One step over `n` parameters, their gradients and momentum buffers.
// With `first` set the buffers are overwritten with d (they must exist).
extern "C" char* eqco_sgd_step(at::Tensor** params, at::Tensor** grads, at::Tensor** buffers,
                               int64_t n, double lr, double momentum, double weight_decay,
                               int first) {
  EQCO_TRY({
    c10::NoGradGuard no_grad;
    auto p = list(params, n);
    auto g = list(grads, n);
    auto b = list(buffers, n);
    std::vector<at::Tensor> d;
    if (weight_decay != 0.0) {
      // g + θ·λ, in that order of operands (as `&g + &*p * weight_decay`).
      d = at::_foreach_mul(p, weight_decay);
      at::_foreach_add_(d, g);
    } else {
      d = g;
    }
    if (first) {
      at::_foreach_copy_(b, d);
    } else {
      at::_foreach_mul_(b, momentum);
      at::_foreach_add_(b, d);
    }
    at::_foreach_sub_(p, at::_foreach_mul(b, lr));
  })
}

// The key encoder's moving average, θ_k ← θ_k + w·(θ_q − θ_k) with
// w = 1 − m, over `n` pairs in one multi-tensor call (as `lerp_` per pair).
extern "C" char* eqco_lerp(at::Tensor** keys, at::Tensor** queries, int64_t n, double weight) {
  EQCO_TRY({
    c10::NoGradGuard no_grad;
    at::_foreach_lerp_(list(keys, n), list(queries, n), weight);
  })
}

// Zeroes the gradients of `n` parameters in one multi-tensor call.
extern "C" char* eqco_zero(at::Tensor** ts, int64_t n) {
  EQCO_TRY(at::_foreach_zero_(list(ts, n)))
}

// *out = a new one-element float tensor on the tensors' device: 1 when any
// element of the `n` tensors is a NaN or an infinity, else 0, read from
// each tensor's L1 norm (one fused multi-tensor pass that writes nothing:
// a NaN or an infinity makes its sum non-finite, as does a tensor whose
// absolute values sum past its type's range, which no trained network
// nears). Nothing is read back to the host.
extern "C" char* eqco_nonfinite(at::Tensor** ts, int64_t n, at::Tensor** out) {
  EQCO_TRY({
    c10::NoGradGuard no_grad;
    auto tensors = list(ts, n);
    auto device = n > 0 ? tensors[0].device() : at::Device(at::kCPU);
    auto found = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
    if (n > 0) {
      // One stack of the norms (promoted to the widest of their types).
      found = at::stack(at::_foreach_norm(tensors, 1)).isfinite().all().logical_not().to(at::kFloat);
    }
    *out = new at::Tensor(found);
  })
}
