// The v2 kernel-gradient launch (v2_kernels.cuh).
#include "v2_kernels.cuh"

namespace ddet_ops {

void grad_kernels_v2(const Problem& p, const Tensor& grad_y, std::vector<Tensor>& grad_kernels) {
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    const auto bank = make_bank<kernel_t>(p, grad_kernels);
    const int64_t threads = grad_kernel_strip_threads<scalar_t>(p.geo);
    v2::grad_kernel_strips<scalar_t, kernel_t><<<blocks_for(threads, v2::kThreadsPerBlock), v2::kThreadsPerBlock, 0,
                                       current_stream(p.x)>>>(
        p.geo, bank, p.x.const_data_ptr<scalar_t>(), grad_y.const_data_ptr<scalar_t>(), threads,
        strips_can_use_vectors<scalar_t>(p.geo, bank, p.x.const_data_ptr(), grad_y.const_data_ptr()));
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ddet_ops
