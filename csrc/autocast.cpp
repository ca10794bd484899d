// The one libtorch call eqco needs that tch does not wrap: choosing the
// reduced-precision type of CUDA autocast (tch's `autocast` uses libtorch's
// default, float16; the paper-scale runs use bfloat16).
#include <ATen/autocast_mode.h>

extern "C" void eqco_set_cuda_autocast_bf16(int bf16) {
  at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
}

extern "C" int eqco_cuda_autocast_is_bf16() {
  return at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16;
}
