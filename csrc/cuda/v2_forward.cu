// The v2 forward launch (v2_kernels.cuh).
#include "v2_kernels.cuh"

namespace ddet_ops {

void forward_v2(const Problem& p, Tensor& y) {
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    v2::launch_gather<false, kernel_t>(p, p.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace ddet_ops
