// The CPU implementations of the ddet_ops operators: checks (dynconv.cpp), outputs, then the
// fused kernels (cpu/forward.cpp, cpu/backward.cpp).
#include "rows.h"

namespace ddet_ops {
namespace {

Tensor multi_dynconv_cpu(const Tensor& x, const std::vector<Tensor>& kernels, IntList sizes, int64_t groups,
                         int64_t dilation) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  Tensor y = empty_cpu_output(p.x.sizes(), p.x.scalar_type());
  if (!is_empty(p.geo)) cpu::forward(p, y, nullptr, false);
  return y;
}

std::tuple<Tensor, Tensor> multi_dynconv_softmax_cpu(const Tensor& x, const std::vector<Tensor>& kernels,
                                                     IntList sizes, int64_t groups, int64_t dilation,
                                                     bool per_size) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  Tensor y = empty_cpu_output(p.x.sizes(), p.x.scalar_type());
  Tensor lse = empty_log_normalisers(p, per_size);
  if (!is_empty(p.geo)) cpu::forward(p, y, &lse, per_size);
  return {y, lse};
}

std::tuple<Tensor, std::vector<Tensor>> multi_dynconv_backward_cpu(const Tensor& grad_y, const Tensor& x,
                                                                   const std::vector<Tensor>& kernels, IntList sizes,
                                                                   int64_t groups, int64_t dilation, bool need_x,
                                                                   bool need_kernels) {
  Backward b = prepare_backward(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels);
  if (!b.ready) cpu::backward(b, nullptr, false, need_x, need_kernels);
  return {b.grad_x, b.grad_kernels};
}

std::tuple<Tensor, std::vector<Tensor>> multi_dynconv_softmax_backward_cpu(
    const Tensor& grad_y, const Tensor& x, const std::vector<Tensor>& kernels, const Tensor& lse, IntList sizes,
    int64_t groups, int64_t dilation, bool per_size, bool need_x, bool need_kernels) {
  Backward b = prepare_backward(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels);
  const Tensor normalisers = checked_log_normalisers(b.p, lse, per_size);
  if (!b.ready) cpu::backward(b, &normalisers, per_size, need_x, need_kernels);
  return {b.grad_x, b.grad_kernels};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ddet_ops, CPU, m) {
  m.impl("multi_dynconv", TORCH_BOX(&multi_dynconv_cpu));
  m.impl("multi_dynconv_backward", TORCH_BOX(&multi_dynconv_backward_cpu));
  m.impl("multi_dynconv_softmax", TORCH_BOX(&multi_dynconv_softmax_cpu));
  m.impl("multi_dynconv_softmax_backward", TORCH_BOX(&multi_dynconv_softmax_backward_cpu));
}

}  // namespace ddet_ops
