// The v2 softmax forward launch (v2_kernels.cuh): the gather strips with an online softmax.
#include "../softmax_passes.h"
#include "v2_kernels.cuh"

namespace ddet_ops {

void softmax_forward_v2(const Problem& p, Tensor& y, Tensor& lse, bool per_size) {
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    dispatch_per_size(per_size, [&](auto per_size_tag) {
      const auto pass = softmax_forward_pass<scalar_t, kernel_t, decltype(per_size_tag)::value>(p, y, lse);
      v2::launch_gather_strips<false>(p, pass.kernels, pass.src, pass.out, pass.vector, pass.norm);
    });
  });
}

}  // namespace ddet_ops
