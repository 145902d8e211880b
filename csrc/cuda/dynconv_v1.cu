// The v1 CUDA kernels, kept selectable (DDET_OPS_CUDA_KERNELS=v1) to time against v2.
//
// Each thread runs the per-pixel functions of pixel.h (the code the CPU harness tests against
// the reference): threads are numbered with w fastest, so a warp reads 32 neighbouring weights
// of one kernel plane (coalesced) and x/grad_y neighbourhoods that overlap between threads
// (served by L1). Half types accumulate in float. Indices are 64-bit throughout.
//
// Forward: one thread per (n, group, block of 4 channels, h, w), all kernel sizes in one launch.
// Backward: one thread per (n, group, h, w) computing grad_x for the group's channels by
// gathering over the inverse window (no atomics: deterministic) and the gradients of every tap
// of every size at that pixel, in one launch.
#include "../pixel.h"
#include "launch.h"

namespace ddet_ops {
namespace {

constexpr int kThreadsPerBlock = 256;

template <typename scalar_t, typename kernel_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const Geometry geo, const KernelBank<const kernel_t> kernels, const scalar_t* __restrict__ x,
                   scalar_t* __restrict__ y, int64_t threads) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < threads;
       index += stride) {
    forward_thread<scalar_t, kernel_t, acc_t>(geo, kernels, x, y, index);
  }
}

template <typename scalar_t, typename kernel_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const Geometry geo, const KernelBank<const kernel_t> kernels,
                    const KernelBank<kernel_t> grad_kernels, bool need_kernels, const scalar_t* __restrict__ x,
                    const scalar_t* __restrict__ grad_y, scalar_t* __restrict__ grad_x, int64_t threads) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < threads;
       index += stride) {
    backward_thread<scalar_t, kernel_t, acc_t>(geo, kernels, grad_kernels, need_kernels, x, grad_y, grad_x, index);
  }
}

}  // namespace

void forward_v1(const Problem& p, Tensor& y) {
  const int64_t threads = forward_threads(p.geo);
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    forward_kernel<scalar_t, kernel_t><<<blocks_for(threads, kThreadsPerBlock), kThreadsPerBlock, 0, current_stream(p.x)>>>(
        p.geo, make_bank<const kernel_t>(p, p.kernels), p.x.const_data_ptr<scalar_t>(),
        y.mutable_data_ptr<scalar_t>(), threads);
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_v1(Backward& b, bool need_x, bool need_kernels) {
  const Problem& p = b.p;
  const int64_t threads = backward_threads(p.geo);
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    backward_kernel<scalar_t, kernel_t><<<blocks_for(threads, kThreadsPerBlock), kThreadsPerBlock, 0, current_stream(p.x)>>>(
        p.geo, make_bank<const kernel_t>(p, p.kernels),
        need_kernels ? make_bank<kernel_t>(p, b.grad_kernels) : KernelBank<kernel_t>{}, need_kernels,
        p.x.const_data_ptr<scalar_t>(), b.grad_y.const_data_ptr<scalar_t>(),
        need_x ? b.grad_x.mutable_data_ptr<scalar_t>() : nullptr, threads);
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ddet_ops
