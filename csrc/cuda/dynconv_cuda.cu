// The CUDA implementations of the ops: checks (dynconv.cpp), outputs, then the kernel version
// this process runs (DDET_OPS_CUDA_KERNELS, read once: v2 by default, v1 to compare).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "launch.h"

namespace ddet_ops {
namespace {

at::Tensor multi_dynconv_cuda(const at::Tensor& x, at::TensorList kernels, at::IntArrayRef sizes, int64_t groups,
                              int64_t dilation) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(p.x.sizes(), p.x.options());
  if (is_empty(p.geo)) return y;
  if (cuda_kernels() == "v1") {
    forward_v1(p, y);
  } else {
    forward_v2(p, y);
  }
  return y;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> multi_dynconv_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, at::TensorList kernels, at::IntArrayRef sizes, int64_t groups,
    int64_t dilation, bool need_x, bool need_kernels) {
  const c10::cuda::CUDAGuard guard(x.device());
  Backward b = prepare_backward(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels);
  if (b.ready) return {b.grad_x, b.grad_kernels};
  if (cuda_kernels() == "v1") {
    backward_v1(b, need_x, need_kernels);
  } else {
    if (need_x) grad_x_v2(b.p, b.grad_y, b.grad_x);
    if (need_kernels) grad_kernels_v2(b.p, b.grad_y, b.grad_kernels);
  }
  return {b.grad_x, b.grad_kernels};
}

}  // namespace

TORCH_LIBRARY_IMPL(ddet_ops, CUDA, m) {
  m.impl("multi_dynconv", &multi_dynconv_cuda);
  m.impl("multi_dynconv_backward", &multi_dynconv_backward_cuda);
}

}  // namespace ddet_ops
