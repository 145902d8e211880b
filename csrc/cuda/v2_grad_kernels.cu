// The v2 kernel-gradient launch (v2_kernels.cuh).
#include "v2_kernels.cuh"

namespace ddet_ops {

void grad_kernels_v2(const Problem& p, const at::Tensor& grad_y, std::vector<at::Tensor>& grad_kernels) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "grad_kernels_v2", [&] {
    const auto bank = make_bank<scalar_t>(p, grad_kernels);
    const int64_t threads = grad_kernel_strip_threads<scalar_t>(p.geo);
    v2::grad_kernel_strips<scalar_t><<<blocks_for(threads, v2::kThreadsPerBlock), v2::kThreadsPerBlock, 0,
                                       at::cuda::getCurrentCUDAStream()>>>(
        p.geo, bank, p.x.const_data_ptr<scalar_t>(), grad_y.const_data_ptr<scalar_t>(), threads,
        strips_can_use_vectors<scalar_t>(p.geo, bank, p.x.const_data_ptr(), grad_y.const_data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ddet_ops
