// The shape of one call and where its kernels live: plain structs shared by the host checks, the
// CPU kernels and the CUDA kernels (kernel parameters are passed by value).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DDET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DDET_HOST_DEVICE inline
#endif

namespace ddet_ops {

// More sizes than this in one call is refused with a clear error; the paper uses three.
constexpr int kMaxSizes = 16;

// The largest odd size whose s*s taps index in 32 bits (the kernels hold tap numbers in int).
constexpr int64_t kMaxKernelSize = 46339;

// Shape of one call. x, y, grad_y and grad_x are contiguous (N, C, H, W); every kernel plane
// (H, W) is contiguous, and the planes of one size's block are H*W apart.
struct Geometry {
  int64_t N, C, H, W;
  int64_t groups;
  int64_t channels_per_group;
  int64_t dilation;
  int num_sizes;
  int size[kMaxSizes];
  // Furthest horizontal or vertical offset of any tap: (max size / 2) * dilation.
  int64_t reach;
};

// Where the kernels of each size live: data[k] is channel 0 of size k's block in batch 0.
template <typename T>
struct KernelBank {
  T* data[kMaxSizes];
  int64_t batch_stride[kMaxSizes];
};

DDET_HOST_DEVICE int64_t plane(const Geometry& g) { return g.H * g.W; }

}  // namespace ddet_ops
