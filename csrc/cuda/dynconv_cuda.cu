// The CUDA implementations of the ops: checks (dynconv.cpp), outputs, then the kernel version
// this process runs (DDET_OPS_CUDA_KERNELS, read once: v2 by default, v1 to compare; the softmax
// ops have v2 kernels only).
#include <torch/csrc/stable/accelerator.h>

#include "launch.h"

namespace ddet_ops {
namespace {

Tensor multi_dynconv_cuda(const Tensor& x, const std::vector<Tensor>& kernels, IntList sizes, int64_t groups,
                          int64_t dilation) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  const torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor y = empty_output(p.x.sizes(), p.x.scalar_type(), p.x.device());
  if (is_empty(p.geo)) return y;
  if (cuda_kernels() == "v1") {
    forward_v1(p, y);
  } else {
    forward_v2(p, y);
  }
  return y;
}

std::tuple<Tensor, std::vector<Tensor>> multi_dynconv_backward_cuda(const Tensor& grad_y, const Tensor& x,
                                                                    const std::vector<Tensor>& kernels, IntList sizes,
                                                                    int64_t groups, int64_t dilation, bool need_x,
                                                                    bool need_kernels) {
  const torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
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

std::tuple<Tensor, Tensor> multi_dynconv_softmax_cuda(const Tensor& x, const std::vector<Tensor>& kernels,
                                                      IntList sizes, int64_t groups, int64_t dilation,
                                                      bool per_size) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  const torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor y = empty_output(p.x.sizes(), p.x.scalar_type(), p.x.device());
  Tensor lse = empty_log_normalisers(p, per_size);
  if (!is_empty(p.geo)) softmax_forward_v2(p, y, lse, per_size);
  return {y, lse};
}

std::tuple<Tensor, std::vector<Tensor>> multi_dynconv_softmax_backward_cuda(
    const Tensor& grad_y, const Tensor& x, const std::vector<Tensor>& kernels, const Tensor& lse, IntList sizes,
    int64_t groups, int64_t dilation, bool per_size, bool need_x, bool need_kernels) {
  const torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Backward b = prepare_backward(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels);
  const Tensor normalisers = checked_log_normalisers(b.p, lse, per_size);
  if (b.ready) return {b.grad_x, b.grad_kernels};
  if (need_x) softmax_grad_x_v2(b.p, b.grad_y, normalisers, per_size, b.grad_x);
  if (need_kernels) softmax_grad_kernels_v2(b.p, b.grad_y, normalisers, per_size, b.grad_kernels);
  return {b.grad_x, b.grad_kernels};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ddet_ops, CUDA, m) {
  m.impl("multi_dynconv", TORCH_BOX(&multi_dynconv_cuda));
  m.impl("multi_dynconv_backward", TORCH_BOX(&multi_dynconv_backward_cuda));
  m.impl("multi_dynconv_softmax", TORCH_BOX(&multi_dynconv_softmax_cuda));
  m.impl("multi_dynconv_softmax_backward", TORCH_BOX(&multi_dynconv_softmax_backward_cuda));
}

}  // namespace ddet_ops
