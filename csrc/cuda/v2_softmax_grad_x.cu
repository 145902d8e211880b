// The v2 softmax grad_x launch (v2_kernels.cuh): the gather strips with the stored softmax.
#include "v2_kernels.cuh"

namespace ddet_ops {

void softmax_grad_x_v2(const Problem& p, const Tensor& grad_y, const Tensor& lse, bool per_size, Tensor& grad_x) {
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    using acc_t = opmath_t<scalar_t>;
    const auto bank = make_bank<const kernel_t>(p, p.kernels);
    const SoftmaxPlanes<const acc_t> planes{lse.const_data_ptr<acc_t>(), per_size};
    const scalar_t* gy = grad_y.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
    const bool vector = strips_can_use_vectors<scalar_t>(p.geo, bank, gy, gx) && aligned_16(planes.data);
    v2::launch_gather_strips<true>(p, bank, gy, gx, vector, StoredSoftmax<acc_t>{planes});
  });
}

}  // namespace ddet_ops
