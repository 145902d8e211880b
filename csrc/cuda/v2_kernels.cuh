// The v2 CUDA kernels (the default): each thread runs the strip functions of strip.h, the code
// the CPU harness checks against the reference, for its index; threads are numbered with the
// strip fastest (in bands of 32), so a warp's weight loads cover 32 neighbouring strips of a plane.
// forward and grad_x are one kernel template (a gather over the window or its inverse); the
// kernel gradients are a second kernel, so either backward half runs alone. Indices are 64-bit.
// forward and grad_x of one group of many channels run the channel tiles of channel_tile.h instead;
// the softmax passes (softmax_strip.h) are the same kernels with other weights, and the dot products.
// Each pass is compiled in its own file (v2_*.cu), so that the build runs them in parallel.
#pragma once

#include "../channel_tile.h"
#include "../softmax_strip.h"
#include "launch.h"

namespace ddet_ops {
namespace v2 {

constexpr int kThreadsPerBlock = 256;
// Resident blocks of 256 threads per SM the register budget must allow (2: at most 128 registers
// a thread, 3: 80, 4: 64). The kernels are memory-bound, so more resident warps keep more loads in
// flight, as long as the cap causes no spills (tools/ptxas_report.py fails the build check then).
// A build can override it (-DDDET_V2_MIN_BLOCKS_PER_SM=N) to time the alternatives on a GPU.
#ifndef DDET_V2_MIN_BLOCKS_PER_SM
#define DDET_V2_MIN_BLOCKS_PER_SM 2
#endif
constexpr int kMinBlocksPerSM = DDET_V2_MIN_BLOCKS_PER_SM;

// Calls f(index) for every index below `threads` this thread owns (a grid-stride loop).
template <typename F>
__device__ __forceinline__ void for_each_thread(int64_t threads, const F& f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < threads;
       index += stride) {
    f(index);
  }
}

// The softmax passes' threads hold exponentials and a running state beside the sums, and in 128
// registers some spilled (sm_80, sm_90). They run blocks of 128 threads, 3 resident per SM (up to
// 168 registers a thread, 12 warps per SM), 2 in double (up to 255; double is there for gradcheck).
constexpr int kSoftmaxThreadsPerBlock = 128;

template <bool kSoftmax>
constexpr int threads_per_block() {
  return kSoftmax ? kSoftmaxThreadsPerBlock : kThreadsPerBlock;
}

template <typename scalar_t, bool kSoftmax>
constexpr int min_blocks_per_sm() {
  if constexpr (!kSoftmax) return kMinBlocksPerSM;
  return sizeof(scalar_t) == 8 ? 2 : 3;
}

// norm: how the weights are weighed (RawWeights, or a softmax policy of softmax_strip.h), each
// thread starting from this state.
template <bool kGather, typename scalar_t, typename kernel_t, typename Norm>
__global__ void __launch_bounds__(threads_per_block<!std::is_same_v<Norm, RawWeights>>(),
                                  min_blocks_per_sm<scalar_t, !std::is_same_v<Norm, RawWeights>>())
    gather_strips(const __grid_constant__ Geometry geo, const __grid_constant__ KernelBank<const kernel_t> kernels,
                  const scalar_t* __restrict__ src, scalar_t* __restrict__ out, int64_t threads, bool vector,
                  const __grid_constant__ Norm norm) {
  using acc_t = opmath_t<scalar_t>;
  NoTrace trace;
  for_each_thread(threads, [&](int64_t index) {
    gather_strip<kGather, scalar_t, kernel_t, acc_t>(geo, kernels, src, out, index, vector, trace, norm);
  });
}

// gradients: how the sums are written (RawGradients, or SoftmaxGradients).
template <typename scalar_t, typename kernel_t, typename Gradients>
__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSM)
    grad_kernel_strips(const __grid_constant__ Geometry geo,
                       const __grid_constant__ KernelBank<kernel_t> grad_kernels, const scalar_t* __restrict__ x,
                       const scalar_t* __restrict__ grad_y, int64_t threads, bool vector,
                       const __grid_constant__ Gradients gradients) {
  using acc_t = opmath_t<scalar_t>;
  NoTrace trace;
  for_each_thread(threads, [&](int64_t index) {
    grad_kernel_strip<scalar_t, kernel_t, acc_t>(geo, grad_kernels, x, grad_y, index, vector, trace, gradients);
  });
}

template <typename scalar_t, typename kernel_t>
__global__ void __launch_bounds__(threads_per_block<true>(), min_blocks_per_sm<scalar_t, true>())
    softmax_dot_strips(const __grid_constant__ Geometry geo,
                       const __grid_constant__ KernelBank<const kernel_t> kernels,
                       const __grid_constant__ SoftmaxPlanes<const opmath_t<scalar_t>> lse,
                       const __grid_constant__ SoftmaxPlanes<opmath_t<scalar_t>> dots, const scalar_t* __restrict__ x,
                       const scalar_t* __restrict__ grad_y, int64_t threads, bool vector) {
  using acc_t = opmath_t<scalar_t>;
  NoTrace trace;
  for_each_thread(threads, [&](int64_t index) {
    softmax_dot_strip<scalar_t, kernel_t, acc_t>(geo, kernels, lse, dots, x, grad_y, index, vector, trace);
  });
}

// One block per tile (grid-stride over tiles); each chunk of channels is copied into shared
// memory, then summed, with a barrier after each phase. forward or grad_x, as gather_strips.
template <bool kGather, typename scalar_t, typename kernel_t>
__global__ void __launch_bounds__(kTileThreads, kMinBlocksPerSM)
    channel_tiles(const __grid_constant__ Geometry geo, const __grid_constant__ KernelBank<const kernel_t> kernels,
                  const scalar_t* __restrict__ src, scalar_t* __restrict__ out, int64_t tiles) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int kV = strip_width<scalar_t>();
  extern __shared__ __align__(16) unsigned char tile_bytes[];
  acc_t* tile = reinterpret_cast<acc_t*>(tile_bytes);
  NoTrace trace;
  for (int64_t index = blockIdx.x; index < tiles; index += gridDim.x) {
    const TilePlace at = tile_place(geo, kV, index);
    for (int64_t c0 = 0; c0 < geo.C; c0 += tile_channels<acc_t>()) {
      __syncthreads();  // the previous chunk's sums have read the tile
      load_channel_tile<kV>(geo, src, at, c0, threadIdx.x, tile);
      __syncthreads();
      channel_tile_strip<kGather, kV>(geo, kernels, out, at, c0, threadIdx.x, tile, trace);
    }
  }
}

template <typename scalar_t>
constexpr int channel_tile_bytes() {
  using acc_t = opmath_t<scalar_t>;
  return tile_channels<acc_t>() * tile_channel_length<strip_width<scalar_t>()>() * static_cast<int>(sizeof(acc_t));
}

// Whether a block on x's GPU may have the tile's shared memory (sm_80 and later: up to 99 KB or
// more; older GPUs 48 KB, where the strips run instead).
template <typename scalar_t>
bool channel_tiles_fit(const Problem& p) {
  int limit = 0;
  DDET_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.x.get_device_index()) ==
                 cudaSuccess,
             "ddet_ops: cannot read the shared memory limit of device ", p.x.get_device_index());
  return channel_tile_bytes<scalar_t>() <= limit;
}

template <bool kGather, typename kernel_t, typename scalar_t>
void launch_channel_tiles(const Problem& p, const KernelBank<const kernel_t>& bank, const scalar_t* src,
                          scalar_t* out) {
  constexpr int kV = strip_width<scalar_t>(), kBytes = channel_tile_bytes<scalar_t>();
  const auto kernel = channel_tiles<kGather, scalar_t, kernel_t>;
  // Above 48 KB a kernel's dynamic shared memory must be allowed explicitly.
  DDET_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes) == cudaSuccess,
             "ddet_ops: the channel tiles could not be given ", kBytes, " bytes of shared memory");
  const int64_t tiles = channel_tile_count(p.geo, kV);
  kernel<<<blocks_for(tiles, 1), kTileThreads, kBytes, current_stream(p.x)>>>(p.geo, bank, src, out, tiles);
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool kGather, typename kernel_t, typename scalar_t, typename Norm>
void launch_gather_strips(const Problem& p, const KernelBank<const kernel_t>& bank, const scalar_t* src,
                          scalar_t* out, bool vector, const Norm& norm) {
  constexpr int kBlock = threads_per_block<!std::is_same_v<Norm, RawWeights>>();
  const int64_t threads = gather_strip_threads<scalar_t, kernel_t, Norm>(p.geo);
  gather_strips<kGather, scalar_t, kernel_t, Norm>
      <<<blocks_for(threads, kBlock), kBlock, 0, current_stream(p.x)>>>(p.geo, bank, src, out, threads, vector, norm);
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

// forward (kGather = false) or grad_x (kGather = true) of raw kernels; one group of many channels
// by channel tiles.
template <bool kGather, typename kernel_t, typename scalar_t>
void launch_gather(const Problem& p, const scalar_t* src, scalar_t* out) {
  const auto bank = make_bank<const kernel_t>(p, p.kernels);
  const bool vector = strips_can_use_vectors<scalar_t>(p.geo, bank, src, out);
  if (takes_channel_tiles(p.geo, vector) && channel_tiles_fit<scalar_t>(p)) {
    launch_channel_tiles<kGather>(p, bank, src, out);
    return;
  }
  launch_gather_strips<kGather>(p, bank, src, out, vector, RawWeights{});
}

template <typename scalar_t, typename kernel_t, typename Gradients>
void launch_grad_kernel_strips(const Problem& p, const scalar_t* grad_y, const KernelBank<kernel_t>& grad_bank,
                               bool vector, const Gradients& gradients) {
  const int64_t threads = grad_kernel_strip_threads<scalar_t>(p.geo);
  grad_kernel_strips<scalar_t, kernel_t, Gradients>
      <<<blocks_for(threads, kThreadsPerBlock), kThreadsPerBlock, 0, current_stream(p.x)>>>(
          p.geo, grad_bank, p.x.const_data_ptr<scalar_t>(), grad_y, threads, vector, gradients);
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace v2

}  // namespace ddet_ops
