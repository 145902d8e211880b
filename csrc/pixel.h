// The per-pixel arithmetic of the v1 CUDA kernels, written once for the host and the device.
//
// The v1 CUDA kernels run forward_thread / backward_thread for every thread index. A test-only
// CPU entry point (testing/pixel_harness.cpp) runs the same functions over every index so that
// the indexing of the device path is checked against the reference on machines with no GPU. The
// CPU kernels (cpu/dynconv_cpu.cpp) are organised by rows instead, to stream memory and vectorise.
#pragma once

#include "geometry.h"

namespace ddet_ops {

// The sum over the taps of every size for `count` (<= kBlock) consecutive channels of one group
// at pixel (n, h, w), each weight loaded once for all the channels:
//   forward (kGather = false): out[c] = y[c, h, w]  = sum_t K_t[h, w] * x[c, h + di, w + dj]
//   grad_x  (kGather = true):  out[c] = gx[c, h, w] = sum_t K_t[h - di, w - dj] * gy[c, h - di, w - dj]
// grad_x gathers over the inverse window (the neighbours whose tap reached this pixel): no
// atomics, a fixed summation order.
template <bool kGather, int kBlock, typename scalar_t, typename kernel_t, typename acc_t>
DDET_HOST_DEVICE void sum_taps_pixel(const Geometry& geo, const KernelBank<const kernel_t>& kernels,
                                     const scalar_t* __restrict__ source, int64_t n, int64_t c_begin, int count,
                                     int64_t h, int64_t w, acc_t* out) {
  const int64_t hw = plane(geo);
  const int64_t group = c_begin / geo.channels_per_group;
  const int64_t step = kGather ? -geo.dilation : geo.dilation;
  const scalar_t* source_pixel = source + (n * geo.C + c_begin) * hw;
  for (int c = 0; c < kBlock; ++c) out[c] = acc_t(0);
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int s = geo.size[k];
    const int64_t half = s / 2;
    // Forward reads every tap's weight at the output pixel, grad_x at the neighbour.
    const kernel_t* weights =
        kernels.data[k] + n * kernels.batch_stride[k] + group * s * s * hw + (kGather ? 0 : h * geo.W + w);
    for (int i = 0; i < s; ++i) {
      const int64_t row = h + (i - half) * step;
      if (row < 0 || row >= geo.H) continue;
      for (int j = 0; j < s; ++j) {
        const int64_t col = w + (j - half) * step;
        if (col < 0 || col >= geo.W) continue;
        const int64_t at = row * geo.W + col;
        const acc_t weight = static_cast<acc_t>(weights[(i * s + j) * hw + (kGather ? at : 0)]);
#if defined(__CUDACC__)
#pragma unroll
#endif
        for (int c = 0; c < kBlock; ++c) {
          if (c < count) out[c] += weight * static_cast<acc_t>(source_pixel[c * hw + at]);
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

template <typename scalar_t, typename kernel_t, typename acc_t>
DDET_HOST_DEVICE void forward_thread(const Geometry& geo, const KernelBank<const kernel_t>& kernels,
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
  sum_taps_pixel<false, kChannelBlock>(geo, kernels, x, n, c_begin, count, h, w, out);
  scalar_t* y_pixel = y + (n * geo.C + c_begin) * plane(geo) + h * geo.W + w;
  for (int c = 0; c < kChannelBlock; ++c) {
    if (c < count) y_pixel[c * plane(geo)] = static_cast<scalar_t>(out[c]);
  }
}

// Backward threads: one per (n, group, h, w), computing grad_x for the group's channels and
// the gradients of every tap of every size of the group at that pixel (either may be skipped
// by passing a null grad_x or need_kernels = false).
DDET_HOST_DEVICE int64_t backward_threads(const Geometry& geo) { return geo.N * geo.groups * geo.H * geo.W; }

template <typename scalar_t, typename kernel_t, typename acc_t>
DDET_HOST_DEVICE void backward_thread(const Geometry& geo, const KernelBank<const kernel_t>& kernels,
                                      const KernelBank<kernel_t>& grad_kernels, bool need_kernels,
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
      sum_taps_pixel<true, kChannelBlock>(geo, kernels, grad_y, n, c_begin, count, h, w, out);
      scalar_t* gx_pixel = grad_x + (n * geo.C + c_begin) * hw + h * geo.W + w;
      for (int c = 0; c < kChannelBlock; ++c) {
        if (c < count) gx_pixel[c * hw] = static_cast<scalar_t>(out[c]);
      }
    }
  }
  if (!need_kernels) return;
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int s = geo.size[k];
    kernel_t* gk_pixel = grad_kernels.data[k] + n * grad_kernels.batch_stride[k] + group * s * s * hw + h * geo.W + w;
    for (int i = 0; i < s; ++i) {
      for (int j = 0; j < s; ++j) {
        gk_pixel[(i * s + j) * hw] =
            static_cast<kernel_t>(grad_weight_pixel<scalar_t, acc_t>(geo, x, grad_y, k, i, j, n, group, h, w));
      }
    }
  }
}

}  // namespace ddet_ops
