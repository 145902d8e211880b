// The v2 forward launch (v2_kernels.cuh).
#include "v2_kernels.cuh"

namespace ddet_ops {

void forward_v2(const Problem& p, Tensor& y) {
  dispatch_floating(p.x.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    v2::launch_gather<false, scalar_t>(p, p.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace ddet_ops
