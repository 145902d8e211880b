// The v2 softmax grad_x launch (v2_kernels.cuh): the gather strips with the stored softmax.
#include "../softmax_passes.h"
#include "v2_kernels.cuh"

namespace ddet_ops {

void softmax_grad_x_v2(const Problem& p, const Tensor& grad_y, const Tensor& lse, bool per_size, Tensor& grad_x) {
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    const auto pass = softmax_grad_x_pass<scalar_t, kernel_t>(p, grad_y, lse, per_size, grad_x);
    v2::launch_gather_strips<true>(p, pass.kernels, pass.src, pass.out, pass.vector, pass.norm);
  });
}

}  // namespace ddet_ops
