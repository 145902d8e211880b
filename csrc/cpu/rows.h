// The row machinery the fused CPU kernels share (cpu/forward.cpp, cpu/backward.cpp).
//
// Memory is the bottleneck: per pixel the op reads sum(groups*s^2) kernel weights and only a
// few values of x. Both passes work on blocks of output rows of one image and group (parallel
// over blocks): for each kernel row, the s weight planes stream through the block sequentially
// (prefetched) while the block's accumulators and the rows of x / grad_y it touches stay in
// cache; finished rows go out with non-temporal stores. Inside a row, the columns where all taps
// of a kernel row stay inside the image run in vector strips, each weight loaded once for all
// the channels of the group; the border columns run one by one.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "../dynconv.h"

namespace ddet_ops::cpu {

// The CPU row functions are compiled three times, for x86-64-v4 (AVX-512's 32 vector registers),
// x86-64-v3 (AVX2 + FMA) and the baseline, the right one picked when the library loads.
// Everything they call is inlined into them.
#if defined(__x86_64__) && defined(__GNUC__)
#define DDET_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DDET_CPU_CLONES
#endif
#define DDET_INLINE inline __attribute__((always_inline))
#define DDET_INLINE_LAMBDA __attribute__((always_inline))
// Loops over register-resident sums must be unrolled for the sums to stay in registers.
#define DDET_UNROLL _Pragma("GCC unroll 16")

// The lanes below load scalar_t (load) or acc_t (load_acc) and hold acc_t (opmath_t):
// sums, accumulator rows, source rows (SourceRows) and the kernel-gradient row buffer are acc_t,
// converted to scalar_t only when a row is stored.

// One lane per column: the remainder columns.
template <typename scalar_t>
struct ScalarLanes {
  using acc_t = opmath_t<scalar_t>;
  using Vec = acc_t;
  static constexpr int kWidth = 1;
  static DDET_INLINE Vec zero() { return Vec(0); }
  static DDET_INLINE Vec load(const scalar_t* p) { return static_cast<acc_t>(*p); }
  static DDET_INLINE Vec load_acc(const acc_t* p) { return *p; }
  static DDET_INLINE void store(acc_t* p, Vec v) { *p = v; }
  static DDET_INLINE void add_to(acc_t* p, Vec v) { *p += v; }
  static DDET_INLINE Vec max(Vec a, Vec b) { return a > b ? a : b; }
  static DDET_INLINE Vec exp(Vec v) { return std::exp(v); }
};

// 32 bytes of float or double: one AVX register, or two SSE registers in the baseline clone.
// Its functions are always inlined, so the calling-convention change GCC warns about
// (-Wpsabi, AVX vectors passed by value without AVX) never reaches a real call.
#pragma GCC diagnostic ignored "-Wpsabi"
// e^v in eight float lanes, for the tap softmax (arguments are at most about 0 there): v = n ln2 + r
// with n an integer, e^r from Cephes' expf polynomial (about 1 ulp), 2^n from the exponent bits.
// Arguments below -87 (masked taps at -inf among them) give 0, as std::exp's underflow does.
template <typename Vec>
DDET_INLINE Vec exp_float_lanes(const Vec& argument) {
  typedef int32_t Ints __attribute__((vector_size(sizeof(Vec))));
  const Vec lowest = Vec{} - 87.0f;
  const auto underflows = argument < lowest;
  const Vec v = underflows ? lowest : argument;
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer, in the low bits
  const Vec shifted = v * 1.44269504088896341f + kShifter;
  const Vec n = shifted - kShifter;
  Ints exponent;
  __builtin_memcpy(&exponent, &shifted, sizeof(exponent));
  exponent = (exponent - 0x4b400000 + 127) << 23;
  Vec scale;
  __builtin_memcpy(&scale, &exponent, sizeof(scale));
  const Vec r = v - n * 0.693359375f + n * 2.12194440e-4f;
  Vec p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Vec result = (p * r * r + r + 1.0f) * scale;
  return underflows ? Vec{} : result;
}

template <typename scalar_t>
struct VectorLanes {
  typedef scalar_t Vec __attribute__((vector_size(32)));
  static constexpr int kWidth = 32 / sizeof(scalar_t);
  static DDET_INLINE Vec zero() { return Vec{}; }
  static DDET_INLINE Vec load(const scalar_t* p) {
    Vec v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  }
  static DDET_INLINE Vec load_acc(const scalar_t* p) { return load(p); }
  static DDET_INLINE void store(scalar_t* p, const Vec& v) { __builtin_memcpy(p, &v, sizeof(v)); }
  static DDET_INLINE void add_to(scalar_t* p, const Vec& v) { store(p, load(p) + v); }
  static DDET_INLINE Vec max(const Vec& a, const Vec& b) { return a > b ? a : b; }
  static DDET_INLINE Vec exp(const Vec& v) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return exp_float_lanes(v);
    } else {
      Vec out{};
      for (int i = 0; i < kWidth; ++i) out[i] = std::exp(v[i]);
      return out;
    }
  }
};

// float16 <-> float conversions of eight values by F16C (exact widening, round-to-nearest-even
// narrowing, subnormals kept whatever the flush-to-zero modes). Inlined into the clones whose
// target has F16C (x86-64-v3 and up), where the loops test kHasF16C once, outside; called in the
// baseline clone. Through memory, not vector arguments, whose ABI differs without AVX.
#if defined(__x86_64__) && defined(__GNUC__)
inline const bool kHasF16C = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}();

__attribute__((target("avx,f16c"))) inline void widen_f16c(const void* halves, float* floats) {
  _mm256_storeu_ps(floats, _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(halves))));
}

__attribute__((target("avx,f16c"))) inline void narrow_f16c(const float* floats, void* halves) {
  _mm_storeu_si128(static_cast<__m128i*>(halves), _mm256_cvtps_ph(_mm256_loadu_ps(floats), _MM_FROUND_TO_NEAREST_INT));
}
#else
constexpr bool kHasF16C = false;
inline void widen_f16c(const void*, float*) {}
inline void narrow_f16c(const float*, void*) {}
#endif

// Eight bfloat16 or float16 values widened to float in registers: bfloat16 by a shift, float16 by
// F16C where the CPU has it, else by integer and float vector operations (which every clone
// vectorises).
template <typename scalar_t>
struct WideningLanes {
  using Vec = VectorLanes<float>::Vec;
  typedef uint32_t Bits __attribute__((vector_size(32)));
  typedef uint16_t Halves __attribute__((vector_size(16)));
  static constexpr int kWidth = 8;
  static DDET_INLINE Vec zero() { return Vec{}; }
  static DDET_INLINE Vec load(const scalar_t* p) {
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      if (kHasF16C) {
        float floats[kWidth];
        widen_f16c(p, floats);
        return VectorLanes<float>::load(floats);
      }
    }
    Halves halves;
    __builtin_memcpy(&halves, p, sizeof(halves));
    const Bits bits = __builtin_convertvector(halves, Bits);
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      return as_float(bits << 16);
    } else {
      // As c10's fp16_ieee_to_fp32_value, with no arithmetic on subnormal floats (which
      // flush-to-zero modes would zero): normal halves, infinities and NaNs are rebiased by a
      // multiplication of normal floats; subnormal halves become 0.5 + m * 2^-24, minus 0.5.
      const Bits twice = bits << 17;  // the half without its sign, at the top of 32 bits
      const Vec normal = as_float((twice >> 4) + (0xe0u << 23)) * 0x1p-112f;
      const Vec subnormal = as_float((twice >> 17) | (126u << 23)) - 0.5f;
      const Bits is_subnormal = twice < (1u << 27);  // lanes of all ones where true
      const Bits magnitude = (is_subnormal & as_bits(subnormal)) | (~is_subnormal & as_bits(normal));
      return as_float(magnitude | ((bits & 0x8000u) << 16));
    }
  }
  static DDET_INLINE Vec load_acc(const float* p) { return VectorLanes<float>::load(p); }
  static DDET_INLINE void store(float* p, const Vec& v) { VectorLanes<float>::store(p, v); }
  static DDET_INLINE void add_to(float* p, const Vec& v) { VectorLanes<float>::add_to(p, v); }
  static DDET_INLINE Vec max(const Vec& a, const Vec& b) { return VectorLanes<float>::max(a, b); }
  static DDET_INLINE Vec exp(const Vec& v) { return exp_float_lanes(v); }

  // Eight floats rounded to nearest-even scalar_t, as c10's conversions round (NaN stays NaN).
  static DDET_INLINE Halves narrow(const Vec& v) {
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      if (kHasF16C) {
        float floats[kWidth];
        Halves halves;
        VectorLanes<float>::store(floats, v);
        narrow_f16c(floats, &halves);
        return halves;
      }
    }
    const Bits bits = as_bits(v);
    Bits out;
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      const Bits is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
      out = ((bits + (((bits >> 16) & 1u) + 0x7fffu)) >> 16 & ~is_nan) | (is_nan & 0x7fc0u);
    } else {
      const Bits sign = bits & 0x80000000u;
      const Bits magnitude = bits ^ sign;
      constexpr uint32_t kInfinity = 255u << 23, kOverflow = (127u + 16) << 23, kNormal = 113u << 23;
      constexpr uint32_t kSubnormalMagic = ((127u - 15) + (23 - 10) + 1) << 23;
      // Halves too small to be normal: adding the magic float lets the FPU round the mantissa.
      const Bits subnormal = as_bits(as_float(magnitude) + as_float(Bits{} + kSubnormalMagic)) - kSubnormalMagic;
      // Normal halves: rebias the exponent and round to nearest-even by hand.
      const Bits normal = (magnitude + ((15u - 127u) << 23) + 0xfffu + ((magnitude >> 13) & 1u)) >> 13;
      const Bits is_special = magnitude >= kOverflow;
      const Bits is_nan = magnitude > kInfinity;
      const Bits special = (is_nan & 0x7e00u) | (~is_nan & 0x7c00u);
      const Bits is_small = magnitude < kNormal;
      out = (is_special & special) | (~is_special & ((is_small & subnormal) | (~is_small & normal)));
      out |= sign >> 16;
    }
    return __builtin_convertvector(out, Halves);
  }

 private:
  static DDET_INLINE Vec as_float(const Bits& b) {
    Vec v;
    __builtin_memcpy(&v, &b, sizeof(v));
    return v;
  }
  static DDET_INLINE Bits as_bits(const Vec& v) {
    Bits b;
    __builtin_memcpy(&b, &v, sizeof(b));
    return b;
  }
};

template <typename scalar_t>
struct Lanes;
template <>
struct Lanes<float> : VectorLanes<float> {};
template <>
struct Lanes<double> : VectorLanes<double> {};
template <>
struct Lanes<c10::BFloat16> : WideningLanes<c10::BFloat16> {};
template <>
struct Lanes<c10::Half> : WideningLanes<c10::Half> {};

// Up to 11 weight rows stream at once, more than the hardware prefetchers follow, so each one is
// asked for 512 bytes ahead.
constexpr int64_t kPrefetchBytes = 512;

// Strips of kVecs vectors keep their sums in registers across the taps of one kernel row.
constexpr int kVecs = 2;

// Calls strip(lanes, vector count, w) over columns [begin, end) in wide strips, then single
// vectors, then single columns.
template <typename scalar_t, typename Strip>
DDET_INLINE void walk_strips(int64_t begin, int64_t end, const Strip& strip) {
  using L = Lanes<scalar_t>;
  int64_t w = begin;
  for (; w + kVecs * L::kWidth <= end; w += kVecs * L::kWidth) strip(L{}, std::integral_constant<int, kVecs>{}, w);
  for (; w + L::kWidth <= end; w += L::kWidth) strip(L{}, std::integral_constant<int, 1>{}, w);
  for (; w < end; ++w) strip(ScalarLanes<scalar_t>{}, std::integral_constant<int, 1>{}, w);
}

// Calls f(c, channel count as a compile-time constant) over the channels [0, cpg) in blocks of
// up to four, so a block's sums fit in registers.
template <typename F>
DDET_INLINE void for_channel_blocks(int64_t cpg, const F& f) {
  int64_t c = 0;
  for (; c + 4 <= cpg; c += 4) f(c, std::integral_constant<int, 4>{});
  switch (cpg - c) {
    case 3: f(c, std::integral_constant<int, 3>{}); break;
    case 2: f(c, std::integral_constant<int, 2>{}); break;
    case 1: f(c, std::integral_constant<int, 1>{}); break;
    default: break;
  }
}

// Adds the s taps of one kernel row to the accumulator rows of every channel of a group
// (channel c's row at acc + c * acc_stride, its source row at source + c * source_stride):
//   acc[c][w] += sum_j weights[j*hw + w + weight_shift_j] * source[c][w + shift_j],
// shift_j = sign*(j - s/2)*d, weight_shift_j = shift_j if kGather else 0. The forward pass reads
// the weights at the output pixel and x at the tap (kGather = false, sign = +1); grad_x gathers
// both the weights and grad_y from the neighbour that the tap came from (kGather = true,
// sign = -1). Each weight is loaded once for all the channels; taps that leave the image are
// skipped. The s weight rows stream through once; the sources stay in cache. kSoftmax: the
// weights are exp(weight - lse), with `lse` the row of log-normalisers of the weights' row (same
// columns), one exponential per weight.
template <bool kGather, bool kSoftmax, typename kernel_t>
DDET_INLINE void add_kernel_row_taps(const Geometry& geo, int s, const kernel_t* __restrict__ weights,
                                     const opmath_t<kernel_t>* __restrict__ lse,
                                     const opmath_t<kernel_t>* __restrict__ source, int64_t source_stride,
                                     opmath_t<kernel_t>* __restrict__ acc, int64_t acc_stride) {
  using acc_t = opmath_t<kernel_t>;
  const int64_t hw = plane(geo);
  const int64_t half = s / 2;
  const int64_t step = kGather ? -geo.dilation : geo.dilation;
  const int64_t reach = half * geo.dilation;
  const int64_t begin = std::min(reach, geo.W);
  const int64_t end = std::max(geo.W - reach, begin);
  // Channel blocks outside the strips: one block's source and accumulator rows and the s weight
  // rows fit in L1 together, and the blocks after the first find the weight rows in cache.
  for_channel_blocks(geo.channels_per_group, [&](int64_t c0, auto channels) DDET_INLINE_LAMBDA {
    constexpr int kC = decltype(channels)::value;
    walk_strips<kernel_t>(begin, end, [&](auto lanes, auto vecs, int64_t w) DDET_INLINE_LAMBDA {
      using L = decltype(lanes);
      constexpr int kN = decltype(vecs)::value;
      typename L::Vec sums[kC][kN];
      DDET_UNROLL
      for (int c = 0; c < kC; ++c)
        DDET_UNROLL
        for (int u = 0; u < kN; ++u) sums[c][u] = L::zero();
      for (int j = 0; j < s; ++j) {
        const int64_t shift = (j - half) * step;
        const kernel_t* wp = weights + j * hw + w + (kGather ? shift : 0);
        const acc_t* sp = source + c0 * source_stride + w + shift;
        if (c0 == 0) __builtin_prefetch(wp + kPrefetchBytes / sizeof(kernel_t));
        typename L::Vec weight[kN];
        DDET_UNROLL
        for (int u = 0; u < kN; ++u) weight[u] = L::load(wp + u * L::kWidth);
        if constexpr (kSoftmax) {
          const acc_t* lp = lse + w + (kGather ? shift : 0);
          DDET_UNROLL
          for (int u = 0; u < kN; ++u) weight[u] = L::exp(weight[u] - L::load_acc(lp + u * L::kWidth));
        }
        DDET_UNROLL
        for (int c = 0; c < kC; ++c)
          DDET_UNROLL
          for (int u = 0; u < kN; ++u) sums[c][u] += weight[u] * L::load_acc(sp + c * source_stride + u * L::kWidth);
      }
      DDET_UNROLL
      for (int c = 0; c < kC; ++c)
        DDET_UNROLL
        for (int u = 0; u < kN; ++u) L::add_to(acc + (c0 + c) * acc_stride + w + u * L::kWidth, sums[c][u]);
    });
  });
  auto border = [&](int64_t w) {
    for (int64_t c = 0; c < geo.channels_per_group; ++c) {
      acc_t sum = 0;
      for (int j = 0; j < s; ++j) {
        const int64_t shift = (j - half) * step;
        if (w + shift < 0 || w + shift >= geo.W) continue;
        const int64_t col = w + (kGather ? shift : 0);
        acc_t weight = static_cast<acc_t>(weights[j * hw + col]);
        if constexpr (kSoftmax) weight = std::exp(weight - lse[col]);
        sum += weight * source[c * source_stride + w + shift];
      }
      acc[c * acc_stride + w] += sum;
    }
  };
  for (int64_t w = 0; w < begin; ++w) border(w);
  for (int64_t w = end; w < geo.W; ++w) border(w);
}

// lse: null for raw weights.
template <bool kGather, typename kernel_t>
DDET_INLINE void add_kernel_row(const Geometry& geo, int s, const kernel_t* __restrict__ weights,
                                const opmath_t<kernel_t>* __restrict__ lse,
                                const opmath_t<kernel_t>* __restrict__ source, int64_t source_stride,
                                opmath_t<kernel_t>* __restrict__ acc, int64_t acc_stride) {
  if (lse == nullptr) {
    add_kernel_row_taps<kGather, false>(geo, s, weights, lse, source, source_stride, acc, acc_stride);
  } else {
    add_kernel_row_taps<kGather, true>(geo, s, weights, lse, source, source_stride, acc, acc_stride);
  }
}

// Copies a finished row to its output tensor. Output rows are written once and not read again
// here, so they bypass the cache (non-temporal stores): no read-for-ownership of the destination,
// which for the large kernel gradients is a third of the traffic. Half types are rounded in
// vectors (WideningLanes::narrow).
template <typename scalar_t, typename acc_t>
DDET_INLINE void store_row(scalar_t* __restrict__ dst, const acc_t* __restrict__ src, int64_t n) {
  int64_t i = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
  } else if constexpr (std::is_same_v<scalar_t, double> && std::is_same_v<acc_t, double>) {
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
    for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
  } else if constexpr (std::is_same_v<acc_t, float> && sizeof(scalar_t) == 2) {
    using L = WideningLanes<scalar_t>;
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = static_cast<scalar_t>(src[i]);
    for (; i + 8 <= n; i += 8) {
      const typename L::Halves halves = L::narrow(VectorLanes<float>::load(src + i));
      __m128i packed;
      __builtin_memcpy(&packed, &halves, sizeof(packed));
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), packed);
    }
  }
#endif
  for (; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// Stores the accumulators of rows [h0, h1) of every channel of `group` (channel c's rows at
// acc + c * (h1 - h0) * W) into `out`, an (N, C, H, W) tensor.
template <typename scalar_t, typename acc_t>
DDET_INLINE void store_rows(const Geometry& geo, const acc_t* __restrict__ acc, int64_t n, int64_t group, int64_t h0,
                            int64_t h1, scalar_t* __restrict__ out) {
  const int64_t cpg = geo.channels_per_group, rows = h1 - h0;
  for (int64_t c = 0; c < cpg; ++c) {
    for (int64_t h = h0; h < h1; ++h) {
      store_row(out + ((n * geo.C + group * cpg + c) * geo.H + h) * geo.W, acc + (c * rows + h - h0) * geo.W, geo.W);
    }
  }
}

// Makes the non-temporal stores of this thread visible before the parallel region ends.
DDET_INLINE void finish_streaming() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// The gradient of one tap's weights along a row: gk[w] = sum_c grad_y[c, w] * x[c, w + shift],
// zero where the tap leaves the image (gk, grad_y and x in acc_t, channel c's row of grad_y / x
// at c * gy_stride / c * x_stride).
template <typename scalar_t, typename acc_t = opmath_t<scalar_t>>
DDET_INLINE void grad_weight_row(const Geometry& geo, const acc_t* __restrict__ gy_row, int64_t gy_stride,
                                 const acc_t* __restrict__ x_row, int64_t x_stride, int64_t shift,
                                 acc_t* __restrict__ gk_row) {
  const int64_t begin = std::min(std::max<int64_t>(0, -shift), geo.W);
  const int64_t end = std::max(std::min(geo.W, geo.W - shift), begin);
  walk_strips<scalar_t>(begin, end, [&](auto lanes, auto vecs, int64_t w) DDET_INLINE_LAMBDA {
    using L = decltype(lanes);
    constexpr int kN = decltype(vecs)::value;
    typename L::Vec acc[kN];
    DDET_UNROLL
    for (int u = 0; u < kN; ++u) acc[u] = L::zero();
    for (int64_t c = 0; c < geo.channels_per_group; ++c) {
      const acc_t* gr = gy_row + c * gy_stride + w;
      const acc_t* xr = x_row + c * x_stride + w + shift;
      DDET_UNROLL
      for (int u = 0; u < kN; ++u) acc[u] += L::load_acc(gr + u * L::kWidth) * L::load_acc(xr + u * L::kWidth);
    }
    DDET_UNROLL
    for (int u = 0; u < kN; ++u) L::store(gk_row + w + u * L::kWidth, acc[u]);
  });
  for (int64_t w = 0; w < begin; ++w) gk_row[w] = 0;
  for (int64_t w = end; w < geo.W; ++w) gk_row[w] = 0;
}

// The log-normalisers of a softmax call, lse = log sum_t exp(k_t) over a set of taps (see
// softmax_sets), in an (N, groups * sets, H, W) tensor; lse null: raw kernels.
template <typename acc_t>
struct Normaliser {
  acc_t* lse;
  bool per_size;
  // The plane of image n, group `group` and the set holding size index k.
  DDET_INLINE acc_t* plane_of(const Geometry& geo, int64_t n, int64_t group, int k) const {
    return lse + ((n * geo.groups + group) * softmax_sets(geo, per_size) + (per_size ? k : 0)) * plane(geo);
  }
};

// scalar_t: the type of x, y, grad_y and grad_x; kernel_t: the type of the kernels and their
// gradients. Both accumulate in the same opmath_t (the dispatch pairs only such types).
template <typename scalar_t, typename kernel_t>
struct ForwardArgs {
  Geometry geo;
  KernelBank<const kernel_t> kernels;
  Normaliser<opmath_t<scalar_t>> norm;  // written by the forward
  const scalar_t* x;
  scalar_t* y;
};

template <typename scalar_t, typename kernel_t>
struct BackwardArgs {
  Geometry geo;
  KernelBank<const kernel_t> kernels;
  Normaliser<const opmath_t<scalar_t>> norm;
  KernelBank<kernel_t> grad_kernels;  // unused when need_kernels is false
  bool need_kernels;
  const scalar_t* x;
  const scalar_t* grad_y;
  scalar_t* grad_x;  // null when not needed
};

// Row h of tap (i, j) of size index k of image n and group `group` in a bank of kernels or of
// their gradients.
template <typename T>
DDET_INLINE T* tap_row(const Geometry& geo, const KernelBank<T>& bank, int64_t n, int64_t group, int k, int i, int j,
                       int64_t h) {
  const int s = geo.size[k];
  return bank.data[k] + n * bank.batch_stride[k] + (group * s * s + i * s + j) * plane(geo) + h * geo.W;
}

// Calls f(k, i, j) for every tap of the sizes [first, last), row-major within each size.
template <typename F>
DDET_INLINE void for_each_tap(const Geometry& geo, int first, int last, const F& f) {
  for (int k = first; k < last; ++k) {
    for (int i = 0; i < geo.size[k]; ++i) {
      for (int j = 0; j < geo.size[k]; ++j) f(k, i, j);
    }
  }
}

// Calls f(first, last) for each set of sizes [first, last) that shares one softmax.
template <typename F>
DDET_INLINE void for_each_softmax_set(const Geometry& geo, bool per_size, const F& f) {
  if (!per_size) return f(0, geo.num_sizes);
  for (int k = 0; k < geo.num_sizes; ++k) f(k, k + 1);
}

// The taps of the largest set of sizes sharing a softmax.
inline int64_t largest_softmax_set(const Geometry& geo, bool per_size) {
  int64_t largest = 0;
  for_each_softmax_set(geo, per_size, [&](int first, int last) {
    int64_t taps = 0;
    for (int k = first; k < last; ++k) taps += int64_t(geo.size[k]) * geo.size[k];
    largest = std::max(largest, taps);
  });
  return largest;
}

// Calls f(lanes, w) over the columns [0, n): vectors of Lanes<T>, then single columns.
template <typename T, typename F>
DDET_INLINE void for_columns(int64_t n, const F& f) {
  int64_t w = 0;
  for (; w + Lanes<T>::kWidth <= n; w += Lanes<T>::kWidth) f(Lanes<T>{}, w);
  for (; w < n; ++w) f(ScalarLanes<T>{}, w);
}

// Calls f(k, i) for every kernel row i of the sizes [first, last).
template <typename F>
DDET_INLINE void for_each_kernel_row(const Geometry& geo, int first, int last, const F& f) {
  for (int k = first; k < last; ++k) {
    for (int i = 0; i < geo.size[k]; ++i) f(k, i);
  }
}

// Output rows are processed in blocks: for each tap, the kernel rows of a block are contiguous
// in memory, so every weight plane streams sequentially through a block, while the block's
// accumulators (about 128 KiB) stay in the L2 cache. Work items are (n, group, block), with
// blocks made smaller when there would be too few items to keep every thread busy.
struct RowBlocks {
  int64_t rows;       // rows per block
  int64_t per_image;  // blocks per image and group

  // softmax_taps: the taps of the largest set sharing a softmax (0: raw kernels), whose values for
  // a block the softmax backward keeps in two buffers of about 256 KiB at most, so that both stay
  // in a core's L2 cache between its passes.
  RowBlocks(const Geometry& geo, int64_t softmax_taps) {
    rows = std::clamp<int64_t>(131072 / std::max<int64_t>(1, geo.channels_per_group * geo.W * 4), 1, 64);
    if (softmax_taps > 0) rows = std::clamp<int64_t>((int64_t(1) << 18) / (softmax_taps * geo.W * 4), 1, rows);
    const int64_t wanted = 4 * static_cast<int64_t>(torch::stable::get_num_threads());
    const int64_t planes = std::max<int64_t>(1, geo.N * geo.groups);
    if (planes * ((geo.H + rows - 1) / rows) < wanted) {
      rows = std::max<int64_t>(1, geo.H / ((wanted + planes - 1) / planes));
    }
    per_image = (geo.H + rows - 1) / rows;
  }
  int64_t count(const Geometry& geo) const { return geo.N * geo.groups * per_image; }
  int64_t accumulators(const Geometry& geo) const { return geo.channels_per_group * rows * geo.W; }

  // Calls f(n, group, h0, h1) for the work item `item`.
  template <typename F>
  DDET_INLINE void visit(const Geometry& geo, int64_t item, const F& f) const {
    const int64_t h0 = item % per_image * rows;
    const int64_t image_group = item / per_image;
    f(image_group / geo.groups, image_group % geo.groups, h0, std::min(h0 + rows, geo.H));
  }
};

// Rows [first, end) of the channels of one image and group of x or grad_y, as acc_t: row r of
// channel c at data + c * channel_stride + (r - first) * W. Float and double rows are the tensor
// itself; half-type rows are widened once per block into `scratch`, since widening them at each
// load would repeat the work for every tap of every size.
template <typename acc_t>
struct SourceRows {
  const acc_t* data;
  int64_t channel_stride;
  int64_t first;
  DDET_INLINE const acc_t* row(const Geometry& geo, int64_t r) const { return data + (r - first) * geo.W; }
};

template <typename scalar_t, typename acc_t = opmath_t<scalar_t>>
DDET_INLINE SourceRows<acc_t> source_rows(const Geometry& geo, const scalar_t* tensor, int64_t n, int64_t group,
                                          int64_t first, int64_t end, std::vector<acc_t>& scratch) {
  const int64_t hw = plane(geo);
  const scalar_t* channels = tensor + (n * geo.C + group * geo.channels_per_group) * hw;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return {channels, hw, 0};
  } else {
    first = std::max<int64_t>(first, 0);
    end = std::max(std::min(end, geo.H), first);
    const int64_t stride = (end - first) * geo.W;
    scratch.resize(geo.channels_per_group * stride);
    for (int64_t c = 0; c < geo.channels_per_group; ++c) {
      const scalar_t* from = channels + c * hw + first * geo.W;
      acc_t* to = scratch.data() + c * stride;
      int64_t i = 0;
      for (; i + Lanes<scalar_t>::kWidth <= stride; i += Lanes<scalar_t>::kWidth) {
        Lanes<scalar_t>::store(to + i, Lanes<scalar_t>::load(from + i));
      }
      for (; i < stride; ++i) to[i] = static_cast<acc_t>(from[i]);
    }
    return {scratch.data(), stride, first};
  }
}

// Sums, for rows [h0, h1) of every channel of `group`, the contributions of all kernel rows of
// all sizes into acc (channels_per_group x (h1 - h0) rows of W), then rounds into out. `source`
// holds rows [h0 - reach, h1 + reach) of x (forward) or grad_y (grad_x); with a softmax the
// weights are exp(k - lse), lse of the weights' own pixel (norm, complete for those rows). The
// forward pass and grad_x differ only in which image row each kernel row reads (see
// add_kernel_row).
template <bool kGather, typename scalar_t, typename kernel_t, typename lse_t>
DDET_INLINE void sum_kernel_rows(const Geometry& geo, const KernelBank<const kernel_t>& kernels,
                                 const Normaliser<lse_t>& norm,
                                 const SourceRows<opmath_t<scalar_t>>& source, int64_t n, int64_t group,
                                 int64_t h0, int64_t h1, opmath_t<scalar_t>* __restrict__ acc,
                                 scalar_t* __restrict__ out) {
  const int64_t hw = plane(geo);
  const int64_t cpg = geo.channels_per_group;
  const int64_t rows = h1 - h0;
  for (int64_t i = 0; i < cpg * rows * geo.W; ++i) acc[i] = 0;
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int s = geo.size[k];
    const int64_t half = s / 2;
    const opmath_t<scalar_t>* lse = norm.lse == nullptr ? nullptr : norm.plane_of(geo, n, group, k);
    for (int i = 0; i < s; ++i) {
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t row = kGather ? h - (i - half) * geo.dilation : h + (i - half) * geo.dilation;
        if (row < 0 || row >= geo.H) continue;
        // Forward reads the weights at the output row; grad_x at the neighbour's row.
        const kernel_t* weights = kernels.data[k] + n * kernels.batch_stride[k] + (group * s * s + i * s) * hw +
                                  (kGather ? row : h) * geo.W;
        const opmath_t<scalar_t>* lse_row = lse == nullptr ? nullptr : lse + (kGather ? row : h) * geo.W;
        add_kernel_row<kGather>(geo, s, weights, lse_row, source.row(geo, row), source.channel_stride,
                                acc + (h - h0) * geo.W, rows * geo.W);
      }
    }
  }
  store_rows(geo, acc, n, group, h0, h1, out);
}

// The forward of a validated, non-empty problem into y; with `lse` defined (a softmax over the
// taps), its log-normalisers are written there first (cpu/forward.cpp).
void forward(const Problem& p, Tensor& y, Tensor* lse, bool per_size);

// The backward of a validated problem that is not `ready`; `lse`: the forward's log-normalisers
// for a softmax over the taps, else null (cpu/backward.cpp).
void backward(Backward& b, const Tensor* lse, bool per_size, bool need_x, bool need_kernels);

}  // namespace ddet_ops::cpu
