// The per-pixel arithmetic of the operator, written once for the host and the device.
//
// The CUDA kernels call these functions for every pixel; the CPU kernels call them for the
// border columns (where taps fall outside the image) and vectorise the interior themselves.
// A test-only CPU entry point (pixel_harness.cpp) runs them over every pixel so that the
// indexing of the device path is checked against the reference on machines with no GPU.
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

// Forward for `count` (<= kBlock) consecutive channels of one group at pixel (n, h, w):
// out[i] = y[n, c_begin + i, h, w]. Each weight is loaded once for all the channels.
template <int kBlock, typename scalar_t, typename acc_t>
DDET_HOST_DEVICE void forward_pixel(const Geometry& geo, const KernelBank<const scalar_t>& kernels,
                                    const scalar_t* __restrict__ x, int64_t n, int64_t c_begin,
                                    int count, int64_t h, int64_t w, acc_t* out) {
  const int64_t hw = plane(geo);
  const int64_t group = c_begin / geo.channels_per_group;
  const scalar_t* x_pixel = x + (n * geo.C + c_begin) * hw;
  for (int i = 0; i < kBlock; ++i) out[i] = acc_t(0);
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int s = geo.size[k];
    const int64_t half = s / 2;
    const scalar_t* weights = kernels.data[k] + n * kernels.batch_stride[k] + group * s * s * hw + h * geo.W + w;
    for (int i = 0; i < s; ++i) {
      const int64_t hh = h + (i - half) * geo.dilation;
      if (hh < 0 || hh >= geo.H) continue;
      for (int j = 0; j < s; ++j) {
        const int64_t ww = w + (j - half) * geo.dilation;
        if (ww < 0 || ww >= geo.W) continue;
        const acc_t weight = static_cast<acc_t>(weights[(i * s + j) * hw]);
        const scalar_t* source = x_pixel + hh * geo.W + ww;
#if defined(__CUDACC__)
#pragma unroll
#endif
        for (int c = 0; c < kBlock; ++c) {
          if (c < count) out[c] += weight * static_cast<acc_t>(source[c * hw]);
        }
      }
    }
  }
}

// Gradient of x for `count` (<= kBlock) consecutive channels of one group at (n, h, w),
// gathered over the inverse window: the neighbours (h - di, w - dj) whose tap (i, j) reached
// this pixel. out[i] = grad_x[n, c_begin + i, h, w]. No atomics, fixed summation order.
template <int kBlock, typename scalar_t, typename acc_t>
DDET_HOST_DEVICE void grad_x_pixel(const Geometry& geo, const KernelBank<const scalar_t>& kernels,
                                   const scalar_t* __restrict__ grad_y, int64_t n, int64_t c_begin,
                                   int count, int64_t h, int64_t w, acc_t* out) {
  const int64_t hw = plane(geo);
  const int64_t group = c_begin / geo.channels_per_group;
  const scalar_t* gy_pixel = grad_y + (n * geo.C + c_begin) * hw;
  for (int i = 0; i < kBlock; ++i) out[i] = acc_t(0);
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int s = geo.size[k];
    const int64_t half = s / 2;
    const scalar_t* weights = kernels.data[k] + n * kernels.batch_stride[k] + group * s * s * hw;
    for (int i = 0; i < s; ++i) {
      const int64_t hs = h - (i - half) * geo.dilation;
      if (hs < 0 || hs >= geo.H) continue;
      for (int j = 0; j < s; ++j) {
        const int64_t ws = w - (j - half) * geo.dilation;
        if (ws < 0 || ws >= geo.W) continue;
        const int64_t source = hs * geo.W + ws;
        const acc_t weight = static_cast<acc_t>(weights[(i * s + j) * hw + source]);
#if defined(__CUDACC__)
#pragma unroll
#endif
        for (int c = 0; c < kBlock; ++c) {
          if (c < count) out[c] += weight * static_cast<acc_t>(gy_pixel[c * hw + source]);
        }
      }
    }
  }
}

// Gradient of the weight of tap (i, j) of size index k, group `group`, at pixel (n, h, w):
// the sum over the group's channels of grad_y[c, h, w] * x[c, h + di, w + dj].
template <typename scalar_t, typename acc_t>
DDET_HOST_DEVICE acc_t grad_weight_pixel(const Geometry& geo, const scalar_t* __restrict__ x,
                                         const scalar_t* __restrict__ grad_y, int k, int i, int j,
                                         int64_t n, int64_t group, int64_t h, int64_t w) {
  const int64_t half = geo.size[k] / 2;
  const int64_t hh = h + (i - half) * geo.dilation;
  const int64_t ww = w + (j - half) * geo.dilation;
  acc_t sum = acc_t(0);
  if (hh < 0 || hh >= geo.H || ww < 0 || ww >= geo.W) return sum;
  const int64_t hw = plane(geo);
  const int64_t first = (n * geo.C + group * geo.channels_per_group) * hw;
  const scalar_t* gy = grad_y + first + h * geo.W + w;
  const scalar_t* xs = x + first + hh * geo.W + ww;
  for (int64_t c = 0; c < geo.channels_per_group; ++c) {
    sum += static_cast<acc_t>(gy[c * hw]) * static_cast<acc_t>(xs[c * hw]);
  }
  return sum;
}

// One GPU thread's work, also run serially by the CPU harness. Threads are numbered with w
// fastest so that neighbouring threads read neighbouring addresses.
constexpr int kChannelBlock = 4;

DDET_HOST_DEVICE int64_t channel_blocks(const Geometry& geo) {
  return (geo.channels_per_group + kChannelBlock - 1) / kChannelBlock;
}

// Forward threads: one per (n, group, block of kChannelBlock channels, h, w).
DDET_HOST_DEVICE int64_t forward_threads(const Geometry& geo) {
  return geo.N * geo.groups * channel_blocks(geo) * geo.H * geo.W;
}

template <typename scalar_t, typename acc_t>
DDET_HOST_DEVICE void forward_thread(const Geometry& geo, const KernelBank<const scalar_t>& kernels,
                                     const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t index) {
  const int64_t w = index % geo.W;
  index /= geo.W;
  const int64_t h = index % geo.H;
  index /= geo.H;
  const int64_t blocks = channel_blocks(geo);
  const int64_t block = index % blocks;
  index /= blocks;
  const int64_t group = index % geo.groups;
  const int64_t n = index / geo.groups;
  const int64_t first = block * kChannelBlock;
  const int count = static_cast<int>(geo.channels_per_group - first < kChannelBlock ? geo.channels_per_group - first
                                                                                    : kChannelBlock);
  const int64_t c_begin = group * geo.channels_per_group + first;
  acc_t out[kChannelBlock];
  forward_pixel<kChannelBlock>(geo, kernels, x, n, c_begin, count, h, w, out);
  scalar_t* y_pixel = y + (n * geo.C + c_begin) * plane(geo) + h * geo.W + w;
  for (int c = 0; c < kChannelBlock; ++c) {
    if (c < count) y_pixel[c * plane(geo)] = static_cast<scalar_t>(out[c]);
  }
}

// Backward threads: one per (n, group, h, w), computing grad_x for the group's channels and
// the gradients of every tap of every size of the group at that pixel (either may be skipped
// by passing a null grad_x or need_kernels = false).
DDET_HOST_DEVICE int64_t backward_threads(const Geometry& geo) { return geo.N * geo.groups * geo.H * geo.W; }

template <typename scalar_t, typename acc_t>
DDET_HOST_DEVICE void backward_thread(const Geometry& geo, const KernelBank<const scalar_t>& kernels,
                                      const KernelBank<scalar_t>& grad_kernels, bool need_kernels,
                                      const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad_y,
                                      scalar_t* __restrict__ grad_x, int64_t index) {
  const int64_t hw = plane(geo);
  const int64_t w = index % geo.W;
  index /= geo.W;
  const int64_t h = index % geo.H;
  index /= geo.H;
  const int64_t group = index % geo.groups;
  const int64_t n = index / geo.groups;
  if (grad_x != nullptr) {
    for (int64_t first = 0; first < geo.channels_per_group; first += kChannelBlock) {
      const int count = static_cast<int>(geo.channels_per_group - first < kChannelBlock
                                             ? geo.channels_per_group - first
                                             : kChannelBlock);
      const int64_t c_begin = group * geo.channels_per_group + first;
      acc_t out[kChannelBlock];
      grad_x_pixel<kChannelBlock>(geo, kernels, grad_y, n, c_begin, count, h, w, out);
      scalar_t* gx_pixel = grad_x + (n * geo.C + c_begin) * hw + h * geo.W + w;
      for (int c = 0; c < kChannelBlock; ++c) {
        if (c < count) gx_pixel[c * hw] = static_cast<scalar_t>(out[c]);
      }
    }
  }
  if (!need_kernels) return;
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int s = geo.size[k];
    scalar_t* gk_pixel = grad_kernels.data[k] + n * grad_kernels.batch_stride[k] + group * s * s * hw + h * geo.W + w;
    for (int i = 0; i < s; ++i) {
      for (int j = 0; j < s; ++j) {
        gk_pixel[(i * s + j) * hw] =
            static_cast<scalar_t>(grad_weight_pixel<scalar_t, acc_t>(geo, x, grad_y, k, i, j, n, group, h, w));
      }
    }
  }
}

}  // namespace ddet_ops
