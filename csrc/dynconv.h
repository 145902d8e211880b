// PyTorch glue shared by the CPU and CUDA implementations (dynconv.cpp): the argument checks,
// layout normalisation and the description of where each kernel size lives.
#pragma once

#include <string>
#include <vector>

#include "geometry.h"
#include "stable_glue.h"

namespace ddet_ops {

// A validated call. `kernels` holds the same structure as the user passed (one packed tensor,
// or one tensor per size), each with its channels and planes laid out as in a contiguous tensor
// (copied if they were not; any batch stride); size k lives in kernels[tensor_of[k]] starting at
// channel channel_offset[k].
struct Problem {
  Geometry geo;
  Tensor x;
  std::vector<Tensor> kernels;
  std::vector<int64_t> tensor_of;
  std::vector<int64_t> channel_offset;
};

// Whether the kernels read kernels of dtype `kernels` with x of dtype `x` as they are: the same
// type, or float32 with a half type (either way round). Both then accumulate in the same type.
inline bool native_pair(ScalarType x, ScalarType kernels) {
  const auto half = [](ScalarType t) { return t == ScalarType::Half || t == ScalarType::BFloat16; };
  return x == kernels || (x == ScalarType::Float && half(kernels)) || (half(x) && kernels == ScalarType::Float);
}

// Calls f(TypeTag<x's type>{}, TypeTag<the kernels' type>{}) for a validated problem.
template <typename F>
void dispatch_pair(const Problem& p, const F& f) {
  const ScalarType kernels = p.kernels[0].scalar_type();
  dispatch_floating(p.x.scalar_type(), [&](auto x_type) {
    using scalar_t = typename decltype(x_type)::type;
    if constexpr (std::is_same_v<scalar_t, float>) {
      dispatch_floating(kernels, [&](auto kernel_type) {
        if constexpr (!std::is_same_v<typename decltype(kernel_type)::type, double>) f(x_type, kernel_type);
      });
    } else if constexpr (std::is_same_v<scalar_t, double>) {
      f(x_type, x_type);
    } else if (kernels == ScalarType::Float) {
      f(x_type, TypeTag<float>{});
    } else {
      f(x_type, x_type);
    }
  });
}

// Checks every argument (RuntimeError naming the bad one) and makes the layouts the kernels
// expect. Copies only inputs the kernels cannot read as they are (see Problem).
Problem prepare(const Tensor& x, const std::vector<Tensor>& kernels, IntList sizes, int64_t groups,
                int64_t dilation);

// A validated backward call with its outputs allocated: grad_x (empty when not needed) and the
// kernel gradients in the structure of the kernels (none when not needed). For an empty problem
// the kernel gradients are already zero and `ready` is true: nothing is left to compute.
struct Backward {
  Problem p;
  Tensor grad_y;
  Tensor grad_x;
  std::vector<Tensor> grad_kernels;
  bool ready;
};

Backward prepare_backward(const Tensor& grad_y, const Tensor& x, const std::vector<Tensor>& kernels,
                          IntList sizes, int64_t groups, int64_t dilation, bool need_x, bool need_kernels);

// Softmax over the taps (the *_softmax ops): the log-normalisers have one plane per image, group
// and set of taps sharing a softmax: every size together (1 set) or each size alone.
inline int64_t softmax_sets(const Geometry& geo, bool per_size) { return per_size ? geo.num_sizes : 1; }

// The dtype sums and log-normalisers are kept in: float64 for float64 x, float32 otherwise.
inline ScalarType accumulation_type(const Problem& p) {
  return p.x.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// An uninitialised (N, groups * sets, H, W) tensor for the log-normalisers of `p`.
Tensor empty_log_normalisers(const Problem& p, bool per_size);

// `lse` checked against what empty_log_normalisers makes for `p` (RuntimeError naming what
// differs), contiguous.
Tensor checked_log_normalisers(const Problem& p, const Tensor& lse, bool per_size);

// The CUDA kernel version this process runs: "v2" (the default) or "v1", from the environment
// variable DDET_OPS_CUDA_KERNELS, read at the first call; any other value is refused.
const std::string& cuda_kernels();

inline bool is_empty(const Geometry& geo) { return geo.N * geo.C * geo.H * geo.W == 0; }

// A contiguous uninitialised output tensor; on the CPU from the cache of freed blocks
// (cpu/cpu_cache.cpp).
Tensor empty_output(IntList sizes, ScalarType dtype, const Device& device);

// A contiguous uninitialised CPU tensor; large ones reuse freed blocks (cpu/cpu_cache.cpp).
Tensor empty_cpu_output(IntList sizes, ScalarType dtype);

// `t` as a contiguous tensor; channels_last CPU tensors by a blocked transpose (cpu/layout.cpp).
Tensor plane_contiguous(const Tensor& t);

// Outputs shaped like `like` (one per entry), contiguous, for the kernel gradients.
std::vector<Tensor> empty_like_all(const std::vector<Tensor>& like);

template <typename T>
KernelBank<T> make_bank(const Problem& p, const std::vector<Tensor>& tensors) {
  KernelBank<T> bank{};
  const int64_t hw = p.geo.H * p.geo.W;
  for (int k = 0; k < p.geo.num_sizes; ++k) {
    const Tensor& t = tensors[p.tensor_of[k]];
    bank.data[k] = static_cast<T*>(t.data_ptr()) + p.channel_offset[k] * hw;
    bank.batch_stride[k] = t.stride(0);
  }
  return bank;
}

}  // namespace ddet_ops
