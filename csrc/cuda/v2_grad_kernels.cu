// The v2 kernel-gradient launch (v2_kernels.cuh).
#include "v2_kernels.cuh"

namespace ddet_ops {

void grad_kernels_v2(const Problem& p, const Tensor& grad_y, std::vector<Tensor>& grad_kernels) {
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    const auto bank = make_bank<kernel_t>(p, grad_kernels);
    const bool vector = strips_can_use_vectors<scalar_t>(p.geo, bank, p.x.const_data_ptr(), grad_y.const_data_ptr());
    v2::launch_grad_kernel_strips<scalar_t>(p, grad_y.const_data_ptr<scalar_t>(), bank, vector, RawGradients{});
  });
}

}  // namespace ddet_ops
