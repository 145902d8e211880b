// What each softmax pass reads and writes, set up once for the CUDA launches (cuda/v2_softmax_*.cu)
// and the CPU harness (testing/pixel_harness.cpp), so that the harness runs what the device runs.
#pragma once

#include <type_traits>

#include "dynconv.h"
#include "softmax_strip.h"

namespace ddet_ops {

// A pass of the gather strips: the kernels, source and output, the weighing policy, and whether
// every tensor it touches can move as aligned vectors.
template <typename scalar_t, typename kernel_t, typename Norm>
struct GatherPass {
  KernelBank<const kernel_t> kernels;
  const scalar_t* src;
  scalar_t* out;
  Norm norm;
  bool vector;
};

// Calls f(std::bool_constant<per_size>{}): the forward's policy is compiled for either mode.
template <typename F>
void dispatch_per_size(bool per_size, const F& f) {
  if (per_size) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// The forward: y from x, lse written.
template <typename scalar_t, typename kernel_t, bool kPerSize>
GatherPass<scalar_t, kernel_t, OnlineSoftmaxFor<scalar_t, kPerSize>> softmax_forward_pass(const Problem& p, Tensor& y,
                                                                                         Tensor& lse) {
  using acc_t = opmath_t<scalar_t>;
  const auto kernels = make_bank<const kernel_t>(p, p.kernels);
  acc_t* log_normalisers = lse.mutable_data_ptr<acc_t>();
  const scalar_t* x = p.x.const_data_ptr<scalar_t>();
  scalar_t* out = y.mutable_data_ptr<scalar_t>();
  const bool vector = strips_can_use_vectors<scalar_t>(p.geo, kernels, x, out) && aligned_16(log_normalisers);
  return {kernels, x, out, OnlineSoftmaxFor<scalar_t, kPerSize>(log_normalisers), vector};
}

// grad_x from grad_y, lse read.
template <typename scalar_t, typename kernel_t>
GatherPass<scalar_t, kernel_t, StoredSoftmax<opmath_t<scalar_t>>> softmax_grad_x_pass(const Problem& p,
                                                                                     const Tensor& grad_y,
                                                                                     const Tensor& lse, bool per_size,
                                                                                     Tensor& grad_x) {
  using acc_t = opmath_t<scalar_t>;
  const auto kernels = make_bank<const kernel_t>(p, p.kernels);
  const SoftmaxPlanes<const acc_t> planes{lse.const_data_ptr<acc_t>(), per_size};
  const scalar_t* gy = grad_y.const_data_ptr<scalar_t>();
  scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
  const bool vector = strips_can_use_vectors<scalar_t>(p.geo, kernels, gy, gx) && aligned_16(planes.data);
  return {kernels, gy, gx, StoredSoftmax<acc_t>{planes}, vector};
}

// The kernel gradients: the dot products into `dots` (shaped as lse), then the gradient strips.
template <typename scalar_t, typename kernel_t>
struct SoftmaxKernelGradientPass {
  using acc_t = opmath_t<scalar_t>;
  KernelBank<const kernel_t> kernels;
  KernelBank<kernel_t> grad_kernels;
  SoftmaxPlanes<const acc_t> lse;
  SoftmaxPlanes<acc_t> dots;
  const scalar_t* x;
  const scalar_t* grad_y;
  bool vector;

  SoftmaxGradients<kernel_t, acc_t> gradients() const { return {kernels, lse, {dots.data, dots.per_size}}; }
};

template <typename scalar_t, typename kernel_t>
SoftmaxKernelGradientPass<scalar_t, kernel_t> softmax_kernel_gradient_pass(const Problem& p, const Tensor& grad_y,
                                                                           const Tensor& lse, bool per_size,
                                                                           std::vector<Tensor>& grad_kernels,
                                                                           Tensor& dots) {
  using acc_t = opmath_t<scalar_t>;
  SoftmaxKernelGradientPass<scalar_t, kernel_t> pass{make_bank<const kernel_t>(p, p.kernels),
                                                     make_bank<kernel_t>(p, grad_kernels),
                                                     {lse.const_data_ptr<acc_t>(), per_size},
                                                     {dots.mutable_data_ptr<acc_t>(), per_size},
                                                     p.x.const_data_ptr<scalar_t>(),
                                                     grad_y.const_data_ptr<scalar_t>(),
                                                     false};
  pass.vector = strips_can_use_vectors<scalar_t>(p.geo, pass.kernels, pass.x, pass.grad_y) &&
                strips_can_use_vectors<scalar_t>(p.geo, pass.grad_kernels, pass.x, pass.grad_y) &&
                aligned_16(pass.lse.data) && aligned_16(pass.dots.data);
  return pass;
}

}  // namespace ddet_ops
