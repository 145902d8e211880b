// The v2 CUDA kernels (the default): each thread runs the strip functions of strip.h, the code
// the CPU harness checks against the reference, for its index; threads are numbered with the
// strip fastest (in bands of 32), so a warp's weight loads cover 32 neighbouring strips of a plane.
// forward and grad_x are one kernel template (a gather over the window or its inverse); the
// kernel gradients are a second kernel, so either backward half runs alone. Indices are 64-bit.
// Each pass is compiled in its own file (v2_*.cu), so that the build runs them in parallel.
#pragma once

#include "../strip.h"
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

template <bool kGather, typename scalar_t, typename kernel_t>
__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSM)
    gather_strips(const __grid_constant__ Geometry geo, const __grid_constant__ KernelBank<const kernel_t> kernels,
                  const scalar_t* __restrict__ src, scalar_t* __restrict__ out, int64_t threads, bool vector) {
  using acc_t = opmath_t<scalar_t>;
  NoTrace trace;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < threads;
       index += stride) {
    gather_strip<kGather, scalar_t, kernel_t, acc_t>(geo, kernels, src, out, index, vector, trace);
  }
}

template <typename scalar_t, typename kernel_t>
__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSM)
    grad_kernel_strips(const __grid_constant__ Geometry geo,
                       const __grid_constant__ KernelBank<kernel_t> grad_kernels, const scalar_t* __restrict__ x,
                       const scalar_t* __restrict__ grad_y, int64_t threads, bool vector) {
  using acc_t = opmath_t<scalar_t>;
  NoTrace trace;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < threads;
       index += stride) {
    grad_kernel_strip<scalar_t, kernel_t, acc_t>(geo, grad_kernels, x, grad_y, index, vector, trace);
  }
}

template <bool kGather, typename kernel_t, typename scalar_t>
void launch_gather(const Problem& p, const scalar_t* src, scalar_t* out) {
  const auto bank = make_bank<const kernel_t>(p, p.kernels);
  const int64_t threads = gather_strip_threads<scalar_t, kernel_t>(p.geo);
  gather_strips<kGather, scalar_t, kernel_t><<<blocks_for(threads, kThreadsPerBlock), kThreadsPerBlock, 0, current_stream(p.x)>>>(
      p.geo, bank, src, out, threads, strips_can_use_vectors<scalar_t>(p.geo, bank, src, out));
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace v2

}  // namespace ddet_ops
