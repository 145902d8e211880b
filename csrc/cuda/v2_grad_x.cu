// The v2 grad_x launch (v2_kernels.cuh).
#include "v2_kernels.cuh"

namespace ddet_ops {

void grad_x_v2(const Problem& p, const at::Tensor& grad_y, at::Tensor& grad_x) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "grad_x_v2", [&] {
    v2::launch_gather<true, scalar_t>(p, grad_y.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace ddet_ops
