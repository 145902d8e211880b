// The v2 forward launch (v2_kernels.cuh).
#include "v2_kernels.cuh"

namespace ddet_ops {

void forward_v2(const Problem& p, at::Tensor& y) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "forward_v2", [&] {
    v2::launch_gather<false, scalar_t>(p, p.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace ddet_ops
