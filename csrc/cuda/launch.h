// The CUDA kernel versions behind the ops (cuda/dynconv_cuda.cu picks one per process, see
// cuda_kernels() in dynconv.h): each launches on the current stream into outputs allocated by
// the caller, for a non-empty problem.
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/macros.h>

#include <algorithm>

#include "../dynconv.h"

namespace ddet_ops {

// v1: one thread per pixel and 4 channels (pixel.h).
void forward_v1(const Problem& p, Tensor& y);
void backward_v1(Backward& b, bool need_x, bool need_kernels);

// v2: one thread per strip of pixels, specialised sizes, split backward (strip.h, v2_*.cu).
void forward_v2(const Problem& p, Tensor& y);
void grad_x_v2(const Problem& p, const Tensor& grad_y, Tensor& grad_x);
void grad_kernels_v2(const Problem& p, const Tensor& grad_y, std::vector<Tensor>& grad_kernels);

// The softmax over the taps (v2 only, softmax_strip.h): the forward writes lse (see
// empty_log_normalisers); the kernel gradients use a scratch tensor of dot products like it.
void softmax_forward_v2(const Problem& p, Tensor& y, Tensor& lse, bool per_size);
void softmax_grad_x_v2(const Problem& p, const Tensor& grad_y, const Tensor& lse, bool per_size, Tensor& grad_x);
void softmax_grad_kernels_v2(const Problem& p, const Tensor& grad_y, const Tensor& lse, bool per_size,
                             std::vector<Tensor>& grad_kernels);

// Grid-stride loops cover any remainder, so grids are capped.
inline int64_t blocks_for(int64_t threads, int per_block) {
  constexpr int64_t kMaxBlocks = int64_t(1) << 30;
  return std::min<int64_t>((threads + per_block - 1) / per_block, kMaxBlocks);
}

// The stream torch runs its work on for the device of `on`. The stable ABI's own accessor
// (torch::stable::accelerator::getCurrentStream) needs torch 2.13; this C shim entry is older.
inline cudaStream_t current_stream(const Tensor& on) {
  void* stream = nullptr;
  DDET_CHECK(aoti_torch_get_current_cuda_stream(on.get_device_index(), &stream) == AOTI_TORCH_SUCCESS,
             "ddet_ops: no current CUDA stream for device ", on.get_device_index());
  return static_cast<cudaStream_t>(stream);
}

}  // namespace ddet_ops
