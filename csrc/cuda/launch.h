// The CUDA kernel versions behind the ops (cuda/dynconv_cuda.cu picks one per process, see
// cuda_kernels() in dynconv.h): each launches on the current stream into outputs allocated by
// the caller, for a non-empty problem.
#pragma once

#include <algorithm>

#include "../dynconv.h"

namespace ddet_ops {

// v1: one thread per pixel and 4 channels (pixel.h).
void forward_v1(const Problem& p, at::Tensor& y);
void backward_v1(Backward& b, bool need_x, bool need_kernels);

// v2: one thread per strip of pixels, specialised sizes, split backward (strip.h, v2_*.cu).
void forward_v2(const Problem& p, at::Tensor& y);
void grad_x_v2(const Problem& p, const at::Tensor& grad_y, at::Tensor& grad_x);
void grad_kernels_v2(const Problem& p, const at::Tensor& grad_y, std::vector<at::Tensor>& grad_kernels);

// Grid-stride loops cover any remainder, so grids are capped.
inline int64_t blocks_for(int64_t threads, int per_block) {
  constexpr int64_t kMaxBlocks = int64_t(1) << 30;
  return std::min<int64_t>((threads + per_block - 1) / per_block, kMaxBlocks);
}

}  // namespace ddet_ops
