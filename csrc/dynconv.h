// PyTorch glue shared by the CPU and CUDA implementations (dynconv.cpp): the argument checks,
// layout normalisation and the description of where each kernel size lives.
#pragma once

#include <string>
#include <vector>

#include "geometry.h"
#include "stable_glue.h"

namespace ddet_ops {

// A validated call. `kernels` holds the same structure as the user passed (one packed tensor,
// or one tensor per size), each made plane-contiguous; size k lives in kernels[tensor_of[k]]
// starting at channel channel_offset[k].
struct Problem {
  Geometry geo;
  Tensor x;
  std::vector<Tensor> kernels;
  std::vector<int64_t> tensor_of;
  std::vector<int64_t> channel_offset;
};

// Checks every argument (RuntimeError naming the bad one) and makes the layouts the kernels
// expect. Copies only inputs that are not already contiguous.
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

// The CUDA kernel version this process runs: "v2" (the default) or "v1", from the environment
// variable DDET_OPS_CUDA_KERNELS, read at the first call; any other value is refused.
const std::string& cuda_kernels();

inline bool is_empty(const Geometry& geo) { return geo.N * geo.C * geo.H * geo.W == 0; }

// A contiguous uninitialised output tensor; on the CPU from the cache of freed blocks
// (cpu/cpu_cache.cpp).
Tensor empty_output(IntList sizes, ScalarType dtype, const Device& device);

// A contiguous uninitialised CPU tensor; large ones reuse freed blocks (cpu/cpu_cache.cpp).
Tensor empty_cpu_output(IntList sizes, ScalarType dtype);

// Outputs shaped like `like` (one per entry), contiguous, for the kernel gradients.
std::vector<Tensor> empty_like_all(const std::vector<Tensor>& like);

template <typename T>
KernelBank<T> make_bank(const Problem& p, const std::vector<Tensor>& tensors) {
  KernelBank<T> bank{};
  const int64_t hw = p.geo.H * p.geo.W;
  for (int k = 0; k < p.geo.num_sizes; ++k) {
    const Tensor& t = tensors[p.tensor_of[k]];
    bank.data[k] = static_cast<T*>(t.data_ptr()) + p.channel_offset[k] * hw;
    bank.batch_stride[k] = t.size(1) * hw;
  }
  return bank;
}

}  // namespace ddet_ops
