// The per-thread arithmetic of the v2 CUDA kernels, written once for the host and the device.
//
// A v2 thread owns a strip of consecutive pixels of one row (4 float, half or bfloat16, 2
// double: 8 or 16 bytes), so the weights of one tap at the strip are one vector load. Kernel
// sizes 1, 3, 5 and 7 at dilation 1 are compile-time specialisations: their taps are unrolled,
// a kernel row's weights are loaded once for all the thread's channels, and the source row
// segment the row touches once for all its taps. Rows whose width is a multiple of the strip,
// with 16-byte aligned tensors, are read as aligned vectors only (each wholly inside or outside
// the image, so border strips run the same instructions); other rows take scalar loads, with
// bounds checks only where the window leaves the image. Any other size or dilation takes the
// generic path.
//
//   forward (kGather = false): y[c, h, w]  = sum_t K_t[h, w] * x[c, h + di, w + dj]
//   grad_x  (kGather = true):  gx[c, h, w] = sum_t K_t[h - di, w - dj] * gy[c, h - di, w - dj]
//   grad_K:                    gK_t[h, w]  = sum_c gy[c, h, w] * x[c, h + di, w + dj]
// grad_x gathers over the inverse window (no atomics, a fixed order); grad_K is its own kernel,
// one thread per strip and kernel row, its sums in registers and written with vector stores.
//
// The CUDA kernels (cuda/v2_kernels.cuh) run the *_strip functions for every thread index; the
// test harness (testing/pixel_harness.cpp) runs them serially on the CPU, recording through
// `trace` which path each strip took, so a test can require that every path was checked.
#pragma once

#include <cstring>

#include "geometry.h"

#if defined(__CUDACC__)
#define DDET_UNROLL _Pragma("unroll")
// A loop kept rolled, so that the scheduler cannot hoist its iterations' loads into registers.
#define DDET_ROLLED _Pragma("unroll 1")
#else
#define DDET_UNROLL
#define DDET_ROLLED
#endif

namespace ddet_ops {

// The sizes with compile-time paths (at dilation 1); the harness must reach every one of them.
constexpr int kSpecialisedSizes[] = {1, 3, 5, 7};

// Pixels per strip: 4 (16 bytes of float, 8 of half or bfloat16), 2 for double. A thread holds
// one kernel row's weights for its strip (7 x 4 values for size 7) while it runs the row's taps
// over its channels; 8 half-type pixels would double that and spill at 128 registers.
template <typename scalar_t>
constexpr int strip_width() {
  return sizeof(scalar_t) == 8 ? 2 : 4;
}

// Channels whose sums one forward / grad_x thread keeps, each weight loaded once for all of them:
// 4 float, 3 (RGB) half types, whose conversions need registers of their own, 2 double.
template <typename scalar_t>
constexpr int strip_channels() {
  return sizeof(scalar_t) == 8 ? 2 : sizeof(scalar_t) == 4 ? 4 : 3;
}

// With kernels of another type than x (float with a half type), the fewer of the two.
template <typename scalar_t, typename kernel_t>
constexpr int strip_channels() {
  return strip_channels<scalar_t>() < strip_channels<kernel_t>() ? strip_channels<scalar_t>()
                                                                 : strip_channels<kernel_t>();
}

// The path names the trace reports: "<pass> s<size>|generic [interior|border] [vector]", and
// "forward_tile s<size>" and "grad_x_tile s<size>" for the channel tiles (channel_tile.h). The
// softmax passes (softmax_strip.h) run the same paths with the probabilities as weights.
enum class Pass {
  kForward,
  kGradX,
  kGradK,
  kForwardTile,
  kGradXTile,
  kSoftmaxForward,
  kSoftmaxGradX,
  kSoftmaxGradK,
  kSoftmaxDot
};

// What the device passes as trace: nothing.
struct NoTrace {
  DDET_HOST_DEVICE void operator()(Pass, int, bool, bool) const {}
};

DDET_HOST_DEVICE int64_t strips_per_row(const Geometry& geo, int width) { return (geo.W + width - 1) / width; }

template <int kC>
DDET_HOST_DEVICE int64_t strip_channel_blocks(const Geometry& geo) {
  return (geo.channels_per_group + kC - 1) / kC;
}

// Threads are numbered in bands of up to kBandStrips strips of a row: the strip within its band
// fastest, then the pass's inner index (which runs over rows h), then the band, then the image
// and group. A block of 256 threads so covers one band over several rows, and the source rows
// its kernel windows share are read from L1 rather than once per row from L2. The last band of a
// row may be padded with strips past its end, whose threads do nothing.
constexpr int64_t kBandStrips = 32;

DDET_HOST_DEVICE int64_t band_strips(int64_t strips) { return strips < kBandStrips ? strips : kBandStrips; }

DDET_HOST_DEVICE int64_t banded_threads(const Geometry& geo, int width, int64_t inner_count) {
  const int64_t strips = strips_per_row(geo, width), band = band_strips(strips);
  return geo.N * geo.groups * ((strips + band - 1) / band) * inner_count * band;
}

// A thread's place: its strip's first column (-1 for a padding strip), its inner index and its
// image and group as n * groups + group.
struct BandedIndex {
  int64_t w0, inner, image_group;
};

DDET_HOST_DEVICE BandedIndex split_banded(const Geometry& geo, int width, int64_t inner_count, int64_t index) {
  const int64_t strips = strips_per_row(geo, width), band = band_strips(strips);
  const int64_t bands = (strips + band - 1) / band;
  const int64_t in_band = index % band;
  index /= band;
  const int64_t inner = index % inner_count;
  index /= inner_count;
  const int64_t strip = index % bands * band + in_band;
  return {strip < strips ? strip * width : -1, inner, index / bands};
}

// grad_K threads: one per (n, group, band, h, kernel row of any size, strip in band), the kernel
// rows inside h, so the rows of one pixel share its grad_y and their source rows in L1.
DDET_HOST_DEVICE int64_t kernel_rows(const Geometry& geo) {
  int64_t rows = 0;
  for (int k = 0; k < geo.num_sizes; ++k) rows += geo.size[k];
  return rows;
}

template <typename scalar_t>
DDET_HOST_DEVICE int64_t grad_kernel_strip_threads(const Geometry& geo) {
  return banded_threads(geo, strip_width<scalar_t>(), geo.H * kernel_rows(geo));
}

// Whether every strip can move its values as aligned 8- or 16-byte vectors: W a multiple of the
// widest strip (so a strip and each strip-aligned chunk of a row is wholly inside or outside the
// row), every size's block and both dense tensors 16-byte aligned.
inline bool aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename scalar_t, typename T>
bool strips_can_use_vectors(const Geometry& geo, const KernelBank<T>& bank, const void* a, const void* b) {
  if (geo.W % strip_width<scalar_t>() != 0 || !aligned_16(a) || !aligned_16(b)) return false;
  for (int k = 0; k < geo.num_sizes; ++k) {
    if (!aligned_16(bank.data[k])) return false;
  }
  return true;
}

// How a thread reads a row: kVector, whole aligned chunks of kV values (each wholly inside or
// outside the row, see strips_can_use_vectors); kChecked, value by value with bounds checks;
// kUnchecked, value by value inside the image.
enum class Access { kVector, kChecked, kUnchecked };

// kV values at p (aligned to their size, 8 or 16 bytes) in one load; kStreaming for values read
// once (evict first), else through the read-only cache.
template <int kV, bool kStreaming, typename scalar_t>
DDET_HOST_DEVICE void load_vector(const scalar_t* p, scalar_t (&out)[kV]) {
  constexpr int kBytes = kV * static_cast<int>(sizeof(scalar_t));
  static_assert(kBytes == 8 || kBytes == 16, "strips are 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
  if constexpr (kBytes == 16) {
    const uint4 v = kStreaming ? __ldcs(reinterpret_cast<const uint4*>(p)) : __ldg(reinterpret_cast<const uint4*>(p));
    memcpy(out, &v, kBytes);
  } else {
    const uint2 v = kStreaming ? __ldcs(reinterpret_cast<const uint2*>(p)) : __ldg(reinterpret_cast<const uint2*>(p));
    memcpy(out, &v, kBytes);
  }
#else
  std::memcpy(out, p, kBytes);
#endif
}

// Stores the first `valid` of kV sums at p: one streaming vector store when all are valid and
// `vector` (outputs are written once and not read back).
template <int kV, typename scalar_t, typename acc_t>
DDET_HOST_DEVICE void store_strip(scalar_t* p, int valid, bool vector, const acc_t* in) {
  constexpr int kBytes = kV * static_cast<int>(sizeof(scalar_t));
  if (vector && valid == kV && (kBytes == 8 || kBytes == 16)) {
    alignas(16) scalar_t v[kV];
    DDET_UNROLL
    for (int u = 0; u < kV; ++u) v[u] = static_cast<scalar_t>(in[u]);
#if defined(__CUDA_ARCH__)
    if constexpr (kBytes == 16) {
      __stcs(reinterpret_cast<uint4*>(p), *reinterpret_cast<const uint4*>(v));
    } else {
      __stcs(reinterpret_cast<uint2*>(p), *reinterpret_cast<const uint2*>(v));
    }
#else
    std::memcpy(p, v, sizeof(v));
#endif
    return;
  }
  DDET_UNROLL
  for (int u = 0; u < kV; ++u) {
    if (u < valid) p[u] = static_cast<scalar_t>(in[u]);
  }
}

// Sets every sum of a thread to 0.
template <int kRows, int kV, typename acc_t>
DDET_HOST_DEVICE void zero_sums(acc_t (&sums)[kRows][kV]) {
  DDET_UNROLL
  for (int r = 0; r < kRows; ++r) {
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) sums[r][v] = acc_t(0);
  }
}

// row[col] as acc_t, or 0 where the column is outside [0, W) (kChecked only).
template <bool kChecked, typename scalar_t, typename acc_t>
DDET_HOST_DEVICE acc_t load_col(const scalar_t* row, int64_t col, int64_t W) {
  if (kChecked && (col < 0 || col >= W)) return acc_t(0);
  return static_cast<acc_t>(row[col]);
}

// out[u] = value at offset first + u from a strip, for u in [0, kCount), taken from the aligned
// chunks of kV values around the strip (chunk q covers offsets [q * kV, q * kV + kV)): one
// load_chunk(q, chunk) each. `first` lies in [-kReach, kReach]; the callers' loops are unrolled,
// so it is a constant there and the chunk selection folds away.
template <int kCount, int kReach, int kV, typename value_t, typename out_t, typename LoadChunk>
DDET_HOST_DEVICE void gather_chunks(int first, out_t (&out)[kCount], const LoadChunk& load_chunk) {
  constexpr int kChunks = (kReach + kV - 1) / kV;
  DDET_UNROLL
  for (int q = -kChunks; q <= kChunks; ++q) {
    if (q * kV >= first + kCount || (q + 1) * kV <= first) continue;
    alignas(16) value_t chunk[kV];
    load_chunk(q, chunk);
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) {
      const int u = q * kV + v - first;
      if (u >= 0 && u < kCount) out[u] = static_cast<out_t>(chunk[v]);
    }
  }
}

// The kCount values of `row` at columns [w0 + first, w0 + first + kCount), 0 outside [0, W).
// kVector: the aligned chunks of kV values (strip-aligned, within kReach of the strip) the
// columns fall in, one load each.
template <int kCount, int kReach, int kV, Access kAccess, bool kStreaming, typename scalar_t, typename out_t>
DDET_HOST_DEVICE void load_columns(const scalar_t* row, int64_t w0, int first, int64_t W, out_t (&out)[kCount]) {
  if constexpr (kAccess == Access::kVector) {
    gather_chunks<kCount, kReach, kV, scalar_t>(first, out, [&](int q, scalar_t (&chunk)[kV]) {
      const int64_t col = w0 + q * kV;
      if (col >= 0 && col < W) {
        load_vector<kV, kStreaming>(row + col, chunk);
      } else {
        DDET_UNROLL
        for (int v = 0; v < kV; ++v) chunk[v] = scalar_t(0);
      }
    });
  } else {
    DDET_UNROLL
    for (int u = 0; u < kCount; ++u) {
      out[u] = load_col<kAccess == Access::kChecked, scalar_t, out_t>(row, w0 + first + u, W);
    }
  }
}

// A forward or grad_x thread's place: image n, group, row h, first column w0, the offset in its
// group of the first of its `count` channels, and how many of its columns lie in the row.
struct StripPlace {
  int64_t n, group, h, w0, first;
  int count, valid;
};

// How a gather thread weighs the kernel values it loads. RawWeights takes them as they are; the
// softmax policies (softmax_strip.h) turn them into probabilities. A policy also hears where each
// size starts and ends (its softmax sets), names the pass the trace records, and says whether
// kernel rows whose source row lies outside the image must still be read (kEveryRow: their
// weights count in a normaliser).
struct RawWeights {
  static constexpr bool kEveryRow = false;
  template <typename scalar_t, typename kernel_t>
  DDET_HOST_DEVICE static constexpr int channels() {
    return strip_channels<scalar_t, kernel_t>();
  }
  DDET_HOST_DEVICE static constexpr Pass pass(bool gather) { return gather ? Pass::kGradX : Pass::kForward; }
  DDET_HOST_DEVICE void start_size(const Geometry&, const StripPlace&, int) {}
  // wt: the kS weight strips of a kernel row, as strip_row_taps loads them for source row `row`;
  // acc: the thread's sums so far.
  template <int kS, Access kAccess, bool kGather, int kC, int kV, typename acc_t>
  DDET_HOST_DEVICE void weigh_row(const Geometry&, const StripPlace&, int64_t, acc_t (&)[kS][kV],
                                  acc_t (&)[kC][kV]) {}
  // wt: one tap's weights of the generic path, for source columns w0 + v + shift of row `row`.
  template <bool kGather, int kC, int kV, typename acc_t>
  DDET_HOST_DEVICE void weigh_tap(const Geometry&, const StripPlace&, int64_t, int64_t, acc_t (&)[1][kV],
                                  acc_t (&)[kC][kV]) {}
  template <int kC, int kV, typename acc_t>
  DDET_HOST_DEVICE void end_size(const Geometry&, const StripPlace&, int, bool, acc_t (&)[kC][kV]) {}
};

// Forward / grad_x threads: one per (n, group, band, h, block of channels, strip in band), the
// channel block inside h, so the blocks of one row re-read its weights from cache; the policy
// says how many channels a thread sums.
template <typename scalar_t, typename kernel_t, typename Norm = RawWeights>
DDET_HOST_DEVICE int64_t gather_strip_threads(const Geometry& geo) {
  constexpr int kC = Norm::template channels<scalar_t, kernel_t>();
  return banded_threads(geo, strip_width<scalar_t>(), geo.H * strip_channel_blocks<kC>(geo));
}

// The kS weight strips of kernel row i of size kS at dilation 1 for a strip at (h, w0): forward,
// at the strip; grad_x (kGather), at the neighbour each tap came from, in source row `row`.
template <int kS, Access kAccess, bool kGather, int kV, typename kernel_t, typename acc_t>
DDET_HOST_DEVICE void load_row_weights(const Geometry& geo, const kernel_t* weights, int i, int64_t row, int64_t h,
                                       int64_t w0, acc_t (&wt)[kS][kV]) {
  constexpr int kR = kS / 2;
  const int64_t hw = plane(geo);
  DDET_UNROLL
  for (int j = 0; j < kS; ++j) {
    const kernel_t* plane_ij = weights + (i * kS + j) * hw;
    if (kGather) {  // the weight of the neighbour the tap came from: shifted by the tap's offset
      load_columns<kV, kR, kV, kAccess, false>(plane_ij + row * geo.W, w0, kR - j, geo.W, wt[j]);
    } else {
      load_columns<kV, kR, kV, kAccess, true>(plane_ij + h * geo.W, w0, 0, geo.W, wt[j]);
    }
  }
}

// The taps of one kernel row i of size kS at dilation 1, for the strip at `at`: the row's kS
// weight strips are loaded once into registers and weighed by the policy, then each channel's
// source segment [w0 - kR, w0 + kV + kR) of source row `row`, once for the row's kS taps. A row
// outside the image (read only for the policy) adds nothing. weights: the size's block of this
// image and group (tap t's plane at t * hw); src: the thread's first channel's plane of x
// (forward) or grad_y (grad_x).
template <int kS, Access kAccess, bool kGather, int kC, int kV, typename kernel_t, typename scalar_t, typename acc_t,
          typename Norm>
DDET_HOST_DEVICE void strip_row_taps(const Geometry& geo, const StripPlace& at, const kernel_t* weights,
                                     const scalar_t* src, int i, int64_t row, Norm& norm, acc_t (&acc)[kC][kV]) {
  constexpr int kR = kS / 2;
  constexpr int kSpan = kV + kS - 1;
  const int64_t hw = plane(geo);
  acc_t wt[kS][kV];
  load_row_weights<kS, kAccess, kGather>(geo, weights, i, row, at.h, at.w0, wt);
  norm.template weigh_row<kS, kAccess, kGather>(geo, at, row, wt, acc);
  if (kAccess != Access::kUnchecked && (row < 0 || row >= geo.H)) return;
  DDET_UNROLL
  for (int c = 0; c < kC; ++c) {
    if (c >= at.count) break;
    acc_t span[kSpan];
    load_columns<kSpan, kR, kV, kAccess, false>(src + c * hw + row * geo.W, at.w0, -kR, geo.W, span);
    DDET_UNROLL
    for (int j = 0; j < kS; ++j) {
      DDET_UNROLL
      for (int v = 0; v < kV; ++v) {
        acc[c][v] += wt[j][v] * span[kGather ? v + kS - 1 - j : v + j];
      }
    }
  }
}

// The taps of one size kS at dilation 1, kernel row by kernel row (rows outside the image add
// nothing, and are skipped unless the policy reads every row); the rows stay a rolled loop, so a
// thread's registers hold one row at a time.
template <int kS, Access kAccess, bool kGather, int kC, int kV, typename kernel_t, typename scalar_t, typename acc_t,
          typename Norm>
DDET_HOST_DEVICE void strip_taps_fixed(const Geometry& geo, const StripPlace& at, const kernel_t* weights,
                                       const scalar_t* src, Norm& norm, acc_t (&acc)[kC][kV]) {
  constexpr int kR = kS / 2;
  DDET_ROLLED
  for (int i = 0; i < kS; ++i) {
    const int64_t row = kGather ? at.h - (i - kR) : at.h + (i - kR);
    if (!Norm::kEveryRow && kAccess != Access::kUnchecked && (row < 0 || row >= geo.H)) continue;
    strip_row_taps<kS, kAccess, kGather>(geo, at, weights, src, i, row, norm, acc);
  }
}

// Any size and dilation, one tap at a time, every load checked.
template <bool kGather, int kC, int kV, typename kernel_t, typename scalar_t, typename acc_t, typename Norm>
DDET_HOST_DEVICE void strip_taps_generic(const Geometry& geo, const StripPlace& at, int s, const kernel_t* weights,
                                         const scalar_t* src, Norm& norm, acc_t (&acc)[kC][kV]) {
  const int64_t hw = plane(geo), h = at.h, w0 = at.w0;
  const int64_t half = s / 2;
  const int64_t step = kGather ? -geo.dilation : geo.dilation;
  for (int i = 0; i < s; ++i) {
    const int64_t row = h + (i - half) * step;
    const bool row_inside = row >= 0 && row < geo.H;
    if (!row_inside && !Norm::kEveryRow) continue;
    for (int j = 0; j < s; ++j) {
      const int64_t shift = (j - half) * step;
      const kernel_t* plane_ij = weights + (static_cast<int64_t>(i) * s + j) * hw;
      acc_t wt[1][kV];
      DDET_UNROLL
      for (int v = 0; v < kV; ++v) {
        const int64_t col = w0 + v + shift;
        const bool reads = w0 + v < geo.W && (!kGather || (row_inside && col >= 0 && col < geo.W));
        wt[0][v] = reads ? static_cast<acc_t>(plane_ij[kGather ? row * geo.W + col : h * geo.W + w0 + v]) : acc_t(0);
      }
      norm.template weigh_tap<kGather>(geo, at, row, shift, wt, acc);
      if (!row_inside) continue;
      DDET_UNROLL
      for (int v = 0; v < kV; ++v) {
        const int64_t col = w0 + v + shift;
        if (w0 + v >= geo.W || col < 0 || col >= geo.W) continue;
        DDET_UNROLL
        for (int c = 0; c < kC; ++c) {
          if (c < at.count) acc[c][v] += wt[0][v] * static_cast<acc_t>(src[c * hw + row * geo.W + col]);
        }
      }
    }
  }
}

// Whether the window of a strip at (h, w0) with reach r lies inside the image, strip included.
DDET_HOST_DEVICE bool strip_inside(const Geometry& geo, int64_t r, int64_t h, int64_t w0, int width) {
  return h - r >= 0 && h + r < geo.H && w0 - r >= 0 && w0 + width - 1 + r < geo.W;
}

// Vector strips read every row the same way, whole chunks inside or outside it, so the threads of
// a warp at a border follow the same instructions as those inside; scalar strips inside the image
// skip the bounds checks.
template <int kS, bool kGather, int kC, int kV, typename kernel_t, typename scalar_t, typename acc_t, typename Norm,
          typename Trace>
DDET_HOST_DEVICE void strip_taps_size(const Geometry& geo, const StripPlace& at, const kernel_t* weights,
                                      const scalar_t* src, bool vector, Norm& norm, acc_t (&acc)[kC][kV],
                                      Trace& trace) {
  const bool inside = strip_inside(geo, kS / 2, at.h, at.w0, kV);
  trace(Norm::pass(kGather), kS, inside, vector);
  if (vector) {
    strip_taps_fixed<kS, Access::kVector, kGather>(geo, at, weights, src, norm, acc);
  } else if (inside) {
    strip_taps_fixed<kS, Access::kUnchecked, kGather>(geo, at, weights, src, norm, acc);
  } else {
    strip_taps_fixed<kS, Access::kChecked, kGather>(geo, at, weights, src, norm, acc);
  }
}

// The taps of size s (the specialised path for it, or the generic one) added to acc.
template <bool kGather, int kC, int kV, typename kernel_t, typename scalar_t, typename acc_t, typename Norm,
          typename Trace>
DDET_HOST_DEVICE void strip_taps(const Geometry& geo, const StripPlace& at, int s, const kernel_t* weights,
                                 const scalar_t* src, bool vector, Norm& norm, acc_t (&acc)[kC][kV], Trace& trace) {
  switch (geo.dilation == 1 ? s : 0) {
    case 1: strip_taps_size<1, kGather>(geo, at, weights, src, vector, norm, acc, trace); break;
    case 3: strip_taps_size<3, kGather>(geo, at, weights, src, vector, norm, acc, trace); break;
    case 5: strip_taps_size<5, kGather>(geo, at, weights, src, vector, norm, acc, trace); break;
    case 7: strip_taps_size<7, kGather>(geo, at, weights, src, vector, norm, acc, trace); break;
    default:
      trace(Norm::pass(kGather), 0, false, false);
      strip_taps_generic<kGather>(geo, at, s, weights, src, norm, acc);
  }
}

// Size k's block of kernels for the image and group of `at` (tap t's plane at t * hw).
template <typename kernel_t>
DDET_HOST_DEVICE const kernel_t* size_block(const Geometry& geo, const KernelBank<const kernel_t>& kernels,
                                            const StripPlace& at, int k) {
  const int64_t s = geo.size[k];
  return kernels.data[k] + at.n * kernels.batch_stride[k] + at.group * s * s * plane(geo);
}

// The first `valid` of kV values at p as acc_t, 0 past them; one aligned vector load when `vector`.
template <int kV, typename scalar_t, typename acc_t>
DDET_HOST_DEVICE void load_strip(const scalar_t* p, int valid, bool vector, acc_t (&out)[kV]) {
  if (vector) {
    scalar_t raw[kV];
    load_vector<kV, false>(p, raw);
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) out[v] = static_cast<acc_t>(raw[v]);
    return;
  }
  DDET_UNROLL
  for (int v = 0; v < kV; ++v) out[v] = v < valid ? static_cast<acc_t>(p[v]) : acc_t(0);
}

// One forward (kGather = false) or grad_x (kGather = true) thread: the sums of every size for a
// strip of up to Norm::channels() channels, weighed by `norm`, written to out. `vector`: every row
// can be read as aligned vectors (strips_can_use_vectors).
template <bool kGather, typename scalar_t, typename kernel_t, typename acc_t, typename Trace,
          typename Norm = RawWeights>
DDET_HOST_DEVICE void gather_strip(const Geometry& geo, const KernelBank<const kernel_t>& kernels,
                                   const scalar_t* __restrict__ src, scalar_t* __restrict__ out, int64_t index,
                                   bool vector, Trace& trace, Norm norm = {}) {
  constexpr int kV = strip_width<scalar_t>();
  static_assert(kV == strip_width<kernel_t>(), "x and the kernels move in strips of the same width");
  constexpr int kC = Norm::template channels<scalar_t, kernel_t>();
  const int64_t blocks = strip_channel_blocks<kC>(geo), hw = plane(geo);
  const BandedIndex place = split_banded(geo, kV, geo.H * blocks, index);
  if (place.w0 < 0) return;
  StripPlace at{place.image_group / geo.groups, place.image_group % geo.groups, place.inner / blocks, place.w0,
                place.inner % blocks * kC, 0, 0};
  at.count = static_cast<int>(geo.channels_per_group - at.first < kC ? geo.channels_per_group - at.first : kC);
  at.valid = static_cast<int>(geo.W - at.w0 < kV ? geo.W - at.w0 : kV);
  const int64_t c_begin = at.group * geo.channels_per_group + at.first;
  const scalar_t* src_c = src + (at.n * geo.C + c_begin) * hw;
  acc_t acc[kC][kV];
  zero_sums(acc);
  for (int k = 0; k < geo.num_sizes; ++k) {
    norm.start_size(geo, at, k);
    strip_taps<kGather>(geo, at, geo.size[k], size_block(geo, kernels, at, k), src_c, vector, norm, acc, trace);
    norm.end_size(geo, at, k, vector, acc);
  }
  scalar_t* out_c = out + (at.n * geo.C + c_begin) * hw + at.h * geo.W + at.w0;
  DDET_UNROLL
  for (int c = 0; c < kC; ++c) {
    if (c < at.count) store_strip<kV>(out_c + c * hw, at.valid, vector, acc[c]);
  }
}

// Channel c's grad_y strip at (h, w0) (gy points at channel 0's) and its source segment
// [w0 - kR, w0 + kV + kR) of x's row `row`, for the kernel gradients; zeros for a channel past
// the group's last.
template <int kS, Access kAccess, int kV, typename scalar_t, typename acc_t>
DDET_HOST_DEVICE void grad_kernel_channel(const Geometry& geo, const scalar_t* gy, const scalar_t* x, int64_t c,
                                          int64_t row, int64_t w0, int valid, acc_t (&g)[kV],
                                          acc_t (&span)[kV + kS - 1]) {
  const int64_t hw = plane(geo);
  if (c >= geo.channels_per_group) {  // past the group's last channel: adds nothing
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) g[v] = acc_t(0);
    DDET_UNROLL
    for (int u = 0; u < kV + kS - 1; ++u) span[u] = acc_t(0);
    return;
  }
  load_strip<kV>(gy + c * hw, valid, kAccess == Access::kVector, g);
  load_columns<kV + kS - 1, kS / 2, kV, kAccess, false>(x + c * hw + row * geo.W, w0, -(kS / 2), geo.W, span);
}

// How a grad_K thread writes the sums it made for one kernel row: RawGradients, as they are; the
// softmax's (softmax_strip.h) through the softmax's own gradient. at(...) gives the writer of
// kernel row i of size k for the strip at (h, w0) of image n and group `group`.
struct RawGradients {
  static constexpr Pass kPass = Pass::kGradK;
  DDET_HOST_DEVICE RawGradients at(const Geometry&, int, int64_t, int64_t, int64_t, int64_t, int64_t) const {
    return *this;
  }
  // Tap j's sums g written at out.
  template <int kV, typename kernel_t, typename acc_t>
  DDET_HOST_DEVICE void store(int, const acc_t (&g)[kV], kernel_t* out, int valid, bool vector) const {
    store_strip<kV>(out, valid, vector, g);
  }
};

// The kernel-gradient strip of one kernel row of size kS at dilation 1: for each tap j of the
// row, gk_j[h, w0 + v] = sum_c gy[c, h, w0 + v] * x[c, row, w0 + v + j - kR], written by `row_out`.
// gy: channel 0 of the group at (h, w0); x: channel 0 of the group's plane; gk: tap (i, 0)'s plane
// at (h, w0).
template <int kS, Access kAccess, int kV, typename scalar_t, typename kernel_t, typename acc_t, typename RowOut>
DDET_HOST_DEVICE void grad_kernel_row_fixed(const Geometry& geo, const scalar_t* gy, const scalar_t* x, kernel_t* gk,
                                            int64_t row, int64_t w0, int valid, bool vector, const RowOut& row_out) {
  const int64_t hw = plane(geo);
  acc_t acc[kS][kV];
  zero_sums(acc);
  if (kAccess == Access::kUnchecked || (row >= 0 && row < geo.H)) {
    // Two channels at a time, so that their loads are in flight together.
    constexpr int kCB = 2;
    for (int64_t c0 = 0; c0 < geo.channels_per_group; c0 += kCB) {
      acc_t g[kCB][kV], span[kCB][kV + kS - 1];
      DDET_UNROLL
      for (int cb = 0; cb < kCB; ++cb) {
        grad_kernel_channel<kS, kAccess>(geo, gy, x, c0 + cb, row, w0, valid, g[cb], span[cb]);
      }
      DDET_UNROLL
      for (int cb = 0; cb < kCB; ++cb) {
        DDET_UNROLL
        for (int j = 0; j < kS; ++j) {
          DDET_UNROLL
          for (int v = 0; v < kV; ++v) acc[j][v] += g[cb][v] * span[cb][v + j];
        }
      }
    }
  }
  DDET_UNROLL
  for (int j = 0; j < kS; ++j) row_out.store(j, acc[j], gk + j * hw, valid, vector);
}

// Any size and dilation: one tap at a time, every load checked.
template <int kV, typename scalar_t, typename kernel_t, typename acc_t, typename RowOut>
DDET_HOST_DEVICE void grad_kernel_row_generic(const Geometry& geo, int s, const scalar_t* gy, const scalar_t* x,
                                              kernel_t* gk, int64_t row, int64_t w0, int valid,
                                              const RowOut& row_out) {
  const int64_t hw = plane(geo);
  const int64_t half = s / 2;
  for (int j = 0; j < s; ++j) {
    acc_t acc[kV];
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) acc[v] = acc_t(0);
    if (row >= 0 && row < geo.H) {
      for (int64_t c = 0; c < geo.channels_per_group; ++c) {
        DDET_UNROLL
        for (int v = 0; v < kV; ++v) {
          if (v < valid) {
            acc[v] += static_cast<acc_t>(gy[c * hw + v]) *
                      load_col<true, scalar_t, acc_t>(x + c * hw + row * geo.W, w0 + v + (j - half) * geo.dilation,
                                                      geo.W);
          }
        }
      }
    }
    row_out.store(j, acc, gk + j * hw, valid, false);
  }
}

template <int kS, int kV, typename scalar_t, typename kernel_t, typename acc_t, typename RowOut, typename Trace>
DDET_HOST_DEVICE void grad_kernel_row_size(const Geometry& geo, const scalar_t* gy, const scalar_t* x, kernel_t* gk,
                                           int64_t h, int64_t row, int64_t w0, int valid, bool vector,
                                           const RowOut& row_out, Pass pass, Trace& trace) {
  const bool inside = strip_inside(geo, kS / 2, h, w0, kV) && row >= 0 && row < geo.H;
  trace(pass, kS, inside, vector);
  if (vector) {
    grad_kernel_row_fixed<kS, Access::kVector, kV, scalar_t, kernel_t, acc_t>(geo, gy, x, gk, row, w0, valid, vector,
                                                                               row_out);
  } else if (inside) {
    grad_kernel_row_fixed<kS, Access::kUnchecked, kV, scalar_t, kernel_t, acc_t>(geo, gy, x, gk, row, w0, valid,
                                                                                  vector, row_out);
  } else {
    grad_kernel_row_fixed<kS, Access::kChecked, kV, scalar_t, kernel_t, acc_t>(geo, gy, x, gk, row, w0, valid,
                                                                                vector, row_out);
  }
}

// One grad_K thread: the gradients of the s taps of one kernel row at a strip, written by
// `gradients`.
template <typename scalar_t, typename kernel_t, typename acc_t, typename Trace, typename Gradients = RawGradients>
DDET_HOST_DEVICE void grad_kernel_strip(const Geometry& geo, const KernelBank<kernel_t>& grad_kernels,
                                        const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad_y,
                                        int64_t index, bool vector, Trace& trace, const Gradients& gradients = {}) {
  constexpr int kV = strip_width<scalar_t>();
  static_assert(kV == strip_width<kernel_t>(), "x and the kernels move in strips of the same width");
  const int64_t rows = kernel_rows(geo), hw = plane(geo);
  const BandedIndex at = split_banded(geo, kV, geo.H * rows, index);
  if (at.w0 < 0) return;
  const int64_t w0 = at.w0, h = at.inner / rows;
  int64_t i = at.inner % rows;
  const int64_t group = at.image_group % geo.groups, n = at.image_group / geo.groups;
  int k = 0;
  while (i >= geo.size[k]) i -= geo.size[k++];
  const int s = geo.size[k];
  const int64_t row = h + (i - s / 2) * geo.dilation;
  const int valid = static_cast<int>(geo.W - w0 < kV ? geo.W - w0 : kV);
  const int64_t first = (n * geo.C + group * geo.channels_per_group) * hw;
  const scalar_t* gy = grad_y + first + h * geo.W + w0;
  const scalar_t* xs = x + first;
  kernel_t* gk =
      grad_kernels.data[k] + n * grad_kernels.batch_stride[k] + (group * s * s + i * s) * hw + h * geo.W + w0;
  const auto row_out = gradients.at(geo, k, i, n, group, h, w0);
  constexpr Pass kPass = Gradients::kPass;
  switch (geo.dilation == 1 ? s : 0) {
    case 1: grad_kernel_row_size<1, kV, scalar_t, kernel_t, acc_t>(geo, gy, xs, gk, h, row, w0, valid, vector, row_out, kPass, trace); break;
    case 3: grad_kernel_row_size<3, kV, scalar_t, kernel_t, acc_t>(geo, gy, xs, gk, h, row, w0, valid, vector, row_out, kPass, trace); break;
    case 5: grad_kernel_row_size<5, kV, scalar_t, kernel_t, acc_t>(geo, gy, xs, gk, h, row, w0, valid, vector, row_out, kPass, trace); break;
    case 7: grad_kernel_row_size<7, kV, scalar_t, kernel_t, acc_t>(geo, gy, xs, gk, h, row, w0, valid, vector, row_out, kPass, trace); break;
    default:
      trace(kPass, 0, false, false);
      grad_kernel_row_generic<kV, scalar_t, kernel_t, acc_t>(geo, s, gy, xs, gk, row, w0, valid, row_out);
  }
}

}  // namespace ddet_ops
