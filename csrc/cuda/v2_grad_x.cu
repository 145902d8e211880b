// The v2 grad_x launch (v2_kernels.cuh).
#include "v2_kernels.cuh"

namespace ddet_ops {

void grad_x_v2(const Problem& p, const Tensor& grad_y, Tensor& grad_x) {
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    v2::launch_gather<true, kernel_t>(p, grad_y.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace ddet_ops
