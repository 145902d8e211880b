// Test-only CPU entry points that run the CUDA kernels' per-thread code (pixel.h) serially over
// every thread index, so the device path's indexing is checked against the reference on
// machines with no GPU. Not part of the public API; the underscore keeps them out of sight.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "dynconv.h"

namespace ddet_ops {
namespace {

at::Tensor pixelwise_forward(const at::Tensor& x, at::TensorList kernels, at::IntArrayRef sizes, int64_t groups,
                             int64_t dilation) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  at::Tensor y = at::empty(p.x.sizes(), p.x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixelwise_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto bank = make_bank<const scalar_t>(p, p.kernels);
    const int64_t threads = forward_threads(p.geo);
    for (int64_t index = 0; index < threads; ++index) {
      forward_thread<scalar_t, acc_t>(p.geo, bank, p.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                      index);
    }
  });
  return y;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> pixelwise_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                                   at::TensorList kernels, at::IntArrayRef sizes,
                                                                   int64_t groups, int64_t dilation, bool need_x,
                                                                   bool need_kernels) {
  Backward b = prepare_backward(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels);
  if (b.ready) return {b.grad_x, b.grad_kernels};
  const Problem& p = b.p;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixelwise_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto bank = make_bank<const scalar_t>(p, p.kernels);
    const auto grad_bank = need_kernels ? make_bank<scalar_t>(p, b.grad_kernels) : KernelBank<scalar_t>{};
    const int64_t threads = backward_threads(p.geo);
    for (int64_t index = 0; index < threads; ++index) {
      backward_thread<scalar_t, acc_t>(p.geo, bank, grad_bank, need_kernels, p.x.const_data_ptr<scalar_t>(),
                                       b.grad_y.const_data_ptr<scalar_t>(),
                                       need_x ? b.grad_x.mutable_data_ptr<scalar_t>() : nullptr, index);
    }
  });
  return {b.grad_x, b.grad_kernels};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ddet_ops, m) {
  m.def("_pixelwise_multi_dynconv(Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation) -> Tensor");
  m.def(
      "_pixelwise_multi_dynconv_backward(Tensor grad_y, Tensor x, Tensor[] kernels, int[] sizes, int groups, "
      "int dilation, bool need_x, bool need_kernels) -> (Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(ddet_ops, CPU, m) {
  m.impl("_pixelwise_multi_dynconv", &pixelwise_forward);
  m.impl("_pixelwise_multi_dynconv_backward", &pixelwise_backward);
}

}  // namespace ddet_ops
