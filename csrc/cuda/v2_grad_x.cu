// The v2 grad_x launch (v2_kernels.cuh).
#include "v2_kernels.cuh"

namespace ddet_ops {

void grad_x_v2(const Problem& p, const Tensor& grad_y, Tensor& grad_x) {
  dispatch_floating(p.x.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    v2::launch_gather<true, scalar_t>(p, grad_y.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace ddet_ops
