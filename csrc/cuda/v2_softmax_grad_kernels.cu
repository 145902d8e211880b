// The v2 softmax kernel-gradient launches (v2_kernels.cuh): the dot products d into a scratch
// tensor, then the kernel-gradient strips finishing each sum as p (g - d).
#include "v2_kernels.cuh"

namespace ddet_ops {

void softmax_grad_kernels_v2(const Problem& p, const Tensor& grad_y, const Tensor& lse, bool per_size,
                             std::vector<Tensor>& grad_kernels) {
  Tensor dots = empty_log_normalisers(p, per_size);
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    using acc_t = opmath_t<scalar_t>;
    const auto bank = make_bank<const kernel_t>(p, p.kernels);
    const auto grad_bank = make_bank<kernel_t>(p, grad_kernels);
    const SoftmaxPlanes<const acc_t> planes{lse.const_data_ptr<acc_t>(), per_size};
    const SoftmaxPlanes<acc_t> dot_planes{dots.mutable_data_ptr<acc_t>(), per_size};
    const scalar_t* x = p.x.const_data_ptr<scalar_t>();
    const scalar_t* gy = grad_y.const_data_ptr<scalar_t>();
    const bool vector =
        softmax_backward_can_use_vectors(p.geo, bank, grad_bank, x, gy, planes.data, dot_planes.data);
    const int64_t threads = softmax_dot_strip_threads<scalar_t>(p.geo);
    v2::softmax_dot_strips<scalar_t, kernel_t>
        <<<blocks_for(threads, v2::kThreadsPerBlock), v2::kThreadsPerBlock, 0, current_stream(p.x)>>>(
            p.geo, bank, planes, dot_planes, x, gy, threads, vector);
    STD_CUDA_KERNEL_LAUNCH_CHECK();
    const SoftmaxGradients<kernel_t, acc_t> gradients{bank, planes, {dot_planes.data, per_size}};
    v2::launch_grad_kernel_strips<scalar_t>(p, gy, grad_bank, vector, gradients);
  });
}

}  // namespace ddet_ops
