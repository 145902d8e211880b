// The v2 softmax kernel-gradient launches (v2_kernels.cuh): the dot products d into a scratch
// tensor, then the kernel-gradient strips finishing each sum as p (g - d).
#include "../softmax_passes.h"
#include "v2_kernels.cuh"

namespace ddet_ops {

void softmax_grad_kernels_v2(const Problem& p, const Tensor& grad_y, const Tensor& lse, bool per_size,
                             std::vector<Tensor>& grad_kernels) {
  Tensor dots = empty_log_normalisers(p, per_size);
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    const auto pass = softmax_kernel_gradient_pass<scalar_t, kernel_t>(p, grad_y, lse, per_size, grad_kernels, dots);
    const int64_t threads = softmax_dot_strip_threads<scalar_t>(p.geo);
    constexpr int kBlock = v2::threads_per_block<true>();
    v2::softmax_dot_strips<scalar_t, kernel_t><<<blocks_for(threads, kBlock), kBlock, 0, current_stream(p.x)>>>(
            p.geo, pass.kernels, pass.lse, pass.dots, pass.x, pass.grad_y, threads, pass.vector);
    STD_CUDA_KERNEL_LAUNCH_CHECK();
    v2::launch_grad_kernel_strips<scalar_t>(p, pass.grad_y, pass.grad_kernels, pass.vector, pass.gradients());
  });
}

}  // namespace ddet_ops
