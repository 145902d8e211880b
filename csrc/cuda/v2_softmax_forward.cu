// The v2 softmax forward launch (v2_kernels.cuh): the gather strips with an online softmax.
#include "v2_kernels.cuh"

namespace ddet_ops {

void softmax_forward_v2(const Problem& p, Tensor& y, Tensor& lse, bool per_size) {
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    using acc_t = opmath_t<scalar_t>;
    const auto bank = make_bank<const kernel_t>(p, p.kernels);
    const SoftmaxPlanes<acc_t> planes{lse.mutable_data_ptr<acc_t>(), per_size};
    const scalar_t* x = p.x.const_data_ptr<scalar_t>();
    scalar_t* out = y.mutable_data_ptr<scalar_t>();
    const bool vector = strips_can_use_vectors<scalar_t>(p.geo, bank, x, out) && aligned_16(planes.data);
    const OnlineSoftmaxFor<scalar_t, kernel_t> norm(planes);
    v2::launch_gather_strips<false>(p, bank, x, out, vector, norm);
  });
}

}  // namespace ddet_ops
