// The softmax over the taps in the v2 strips (strip.h), written once for the host and the device.
// With p_t = exp(k_t - lse) over each set of taps sharing a softmax (every size of a group
// together, or each size alone) and g_t the tap's raw kernel gradient:
//
//   forward: y = sum_t p_t x_t, in one pass over the kernels (OnlineSoftmax: a running maximum
//            per pixel whose increases rescale what was summed before); lse = m + log z is kept
//   grad_x:  the raw grad_x with p_t, each read from k_t and lse where the tap came from
//   dot:     d = sum_{t in set} p_t g_t = sum_c gy_c sum_{t in set} p_t x_{c,t}, a forward over
//            the set's taps with p_t folded into a channel sum (softmax_dot_strip)
//   grad_K:  p_t (g_t - d), the raw kernel-gradient sums finished where they are stored
//
// No pass writes the probabilities: the backward keeps lse and, while it runs, d (one plane per
// image, group and set each).
#pragma once

#include <math.h>

#include <type_traits>

#include "strip.h"

namespace ddet_ops {

DDET_HOST_DEVICE float exp_of(float v) { return expf(v); }
DDET_HOST_DEVICE double exp_of(double v) { return exp(v); }
DDET_HOST_DEVICE float log_of(float v) { return logf(v); }
DDET_HOST_DEVICE double log_of(double v) { return log(v); }

// Per-pixel planes (N, groups * sets, H, W) of one value per set of taps sharing a softmax:
// the log-normalisers, or the backward's dot products.
template <typename acc_t>
struct SoftmaxPlanes {
  acc_t* data;
  bool per_size;
  DDET_HOST_DEVICE int sets(const Geometry& geo) const { return per_size ? geo.num_sizes : 1; }
  DDET_HOST_DEVICE int set_of(int k) const { return per_size ? k : 0; }
  // Row h of the plane of image n, group `group` and set `set`.
  DDET_HOST_DEVICE acc_t* row(const Geometry& geo, int64_t n, int64_t group, int set, int64_t h) const {
    return data + ((n * geo.groups + group) * sets(geo) + set) * plane(geo) + h * geo.W;
  }
};

// The forward's weights: for each pixel of the strip, the largest weight m so far of the current
// set and z = sum exp(k - m). With a softmax per size (kPerSize), `done` holds the finished sets'
// sums, each divided by its z; with one over every size, the one set ends with the last size.
template <int kC, int kV, typename acc_t, bool kPerSize>
struct OnlineSoftmax {
  static constexpr bool kEveryRow = true;
  template <typename, typename>
  DDET_HOST_DEVICE static constexpr int channels() {
    return kC;
  }
  DDET_HOST_DEVICE static constexpr Pass pass(bool) { return Pass::kSoftmaxForward; }
  SoftmaxPlanes<acc_t> lse;
  acc_t largest[kV], total[kV], done[kPerSize ? kC : 1][kV];

  DDET_HOST_DEVICE explicit OnlineSoftmax(acc_t* log_normalisers) : lse{log_normalisers, kPerSize} {
    restart();
    zero_sums(done);
  }

  DDET_HOST_DEVICE void restart() {
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) {
      largest[v] = acc_t(-INFINITY);
      total[v] = acc_t(0);
    }
  }

  // Raises each pixel's m to the largest of the kN weights, scaling z and acc by exp(m_old - m)
  // first, and turns the weights into exp(k - m), counted in z: each weight is exponentiated once.
  template <int kN>
  DDET_HOST_DEVICE void take(acc_t (&wt)[kN][kV], acc_t (&acc)[kC][kV]) {
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) {
      acc_t m = largest[v];
      DDET_UNROLL
      for (int j = 0; j < kN; ++j) m = wt[j][v] > m ? wt[j][v] : m;
      // A maximum still at -inf (every tap so far masked) is taken as 0: no inf - inf.
      if (m == acc_t(-INFINITY)) m = acc_t(0);
      const acc_t scale = exp_of(largest[v] - m);
      acc_t z = total[v] * scale;
      DDET_UNROLL
      for (int c = 0; c < kC; ++c) acc[c][v] *= scale;
      DDET_UNROLL
      for (int j = 0; j < kN; ++j) {
        wt[j][v] = exp_of(wt[j][v] - m);
        z += wt[j][v];
      }
      largest[v] = m;
      total[v] = z;
    }
  }

  DDET_HOST_DEVICE void start_size(const Geometry&, const StripPlace&, int) {}

  template <int kS, Access, bool>
  DDET_HOST_DEVICE void weigh_row(const Geometry&, const StripPlace&, int64_t, acc_t (&wt)[kS][kV],
                                  acc_t (&acc)[kC][kV]) {
    take(wt, acc);
  }

  template <bool>
  DDET_HOST_DEVICE void weigh_tap(const Geometry&, const StripPlace&, int64_t, int64_t, acc_t (&wt)[1][kV],
                                  acc_t (&acc)[kC][kV]) {
    take(wt, acc);
  }

  // At the end of a set: its sums are divided by z (per size: they join `done`), its lse is
  // written (by the thread of the group's first channels); after the last size, acc holds the
  // result.
  DDET_HOST_DEVICE void end_size(const Geometry& geo, const StripPlace& at, int k, bool vector,
                                 acc_t (&acc)[kC][kV]) {
    const bool last = k == geo.num_sizes - 1;
    if (!kPerSize && !last) return;
    acc_t log_normaliser[kV];
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) {
      const acc_t inverse = acc_t(1) / total[v];
      DDET_UNROLL
      for (int c = 0; c < kC; ++c) {
        if constexpr (kPerSize) {
          done[c][v] += acc[c][v] * inverse;
          acc[c][v] = last ? done[c][v] : acc_t(0);
        } else {
          acc[c][v] *= inverse;
        }
      }
      log_normaliser[v] = largest[v] + log_of(total[v]);
    }
    if (at.first == 0) {
      store_strip<kV>(lse.row(geo, at.n, at.group, lse.set_of(k), at.h) + at.w0, at.valid, vector, log_normaliser);
    }
    restart();
  }
};

// Channels of an online-softmax strip, fewer than the raw strips' because its running state and
// exponentials need registers too (see v2_kernels.cuh for the register budget): 3, 2 for float32
// x per size (the finished sums take as many registers as the running ones), 1 in double.
template <typename scalar_t, bool kPerSize>
constexpr int online_softmax_channels() {
  if constexpr (sizeof(scalar_t) == 8) return 1;
  if constexpr (sizeof(scalar_t) == 4 && kPerSize) return 2;
  return 3;
}

// The online softmax of x of scalar_t, summing in float (double for double x).
template <typename scalar_t, bool kPerSize>
using OnlineSoftmaxFor = OnlineSoftmax<online_softmax_channels<scalar_t, kPerSize>(), strip_width<scalar_t>(),
                                       std::conditional_t<sizeof(scalar_t) == 8, double, float>, kPerSize>;

// The weights of a pass after the forward: p = exp(k - lse), lse read where each weight was:
// at the neighbour a tap came from (grad_x, kGather) or at the strip (the dot products). Where
// the neighbour lies outside the image, k and lse read as 0 and p meets a source of 0.
template <typename acc_t>
struct StoredSoftmax {
  static constexpr bool kEveryRow = false;
  template <typename scalar_t, typename kernel_t>
  DDET_HOST_DEVICE static constexpr int channels() {
    return strip_channels<scalar_t, kernel_t>();
  }
  DDET_HOST_DEVICE static constexpr Pass pass(bool gather) {
    return gather ? Pass::kSoftmaxGradX : Pass::kSoftmaxDot;
  }
  SoftmaxPlanes<const acc_t> lse;
  const acc_t* set_plane = nullptr;  // row 0 of the current size's set for the strip's image and group

  DDET_HOST_DEVICE void start_size(const Geometry& geo, const StripPlace& at, int k) {
    set_plane = lse.row(geo, at.n, at.group, lse.set_of(k), 0);
  }

  template <int kS, Access kAccess, bool kGather, int kC, int kV>
  DDET_HOST_DEVICE void weigh_row(const Geometry& geo, const StripPlace& at, int64_t row, acc_t (&wt)[kS][kV],
                                  acc_t (&)[kC][kV]) {
    constexpr int kR = kS / 2;
    if constexpr (kGather) {
      acc_t span[kV + kS - 1];
      load_columns<kV + kS - 1, kR, kV, kAccess, false>(set_plane + row * geo.W, at.w0, -kR, geo.W, span);
      DDET_UNROLL
      for (int j = 0; j < kS; ++j) {
        DDET_UNROLL
        for (int v = 0; v < kV; ++v) wt[j][v] = exp_of(wt[j][v] - span[v + kS - 1 - j]);
      }
    } else {
      acc_t here[kV];
      load_columns<kV, 0, kV, kAccess, false>(set_plane + at.h * geo.W, at.w0, 0, geo.W, here);
      DDET_UNROLL
      for (int j = 0; j < kS; ++j) {
        DDET_UNROLL
        for (int v = 0; v < kV; ++v) wt[j][v] = exp_of(wt[j][v] - here[v]);
      }
    }
  }

  template <bool kGather, int kC, int kV>
  DDET_HOST_DEVICE void weigh_tap(const Geometry& geo, const StripPlace& at, int64_t row, int64_t shift,
                                  acc_t (&wt)[1][kV], acc_t (&)[kC][kV]) {
    const int64_t r = kGather ? row : at.h;
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) {
      const int64_t col = at.w0 + v + (kGather ? shift : 0);
      const bool reads = at.w0 + v < geo.W && r >= 0 && r < geo.H && col >= 0 && col < geo.W;
      wt[0][v] = reads ? exp_of(wt[0][v] - set_plane[r * geo.W + col]) : acc_t(0);
    }
  }

  template <int kC, int kV>
  DDET_HOST_DEVICE void end_size(const Geometry&, const StripPlace&, int, bool, acc_t (&)[kC][kV]) {}
};

// The dot-product threads: one per (n, group, band, h, strip in band), all channels of the group.
template <typename scalar_t>
DDET_HOST_DEVICE int64_t softmax_dot_strip_threads(const Geometry& geo) {
  return banded_threads(geo, strip_width<scalar_t>(), geo.H);
}

// One dot-product thread: for each set, d = sum_c gy_c * (sum over the set's taps of p_t x_{c,t})
// over the group's channels, strip_channels() at a time, written to `dots`.
template <typename scalar_t, typename kernel_t, typename acc_t, typename Trace>
DDET_HOST_DEVICE void softmax_dot_strip(const Geometry& geo, const KernelBank<const kernel_t>& kernels,
                                        SoftmaxPlanes<const acc_t> lse, SoftmaxPlanes<acc_t> dots,
                                        const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad_y,
                                        int64_t index, bool vector, Trace& trace) {
  constexpr int kV = strip_width<scalar_t>();
  constexpr int kC = strip_channels<scalar_t, kernel_t>();
  const BandedIndex place = split_banded(geo, kV, geo.H, index);
  if (place.w0 < 0) return;
  const int64_t hw = plane(geo);
  StripPlace at{place.image_group / geo.groups, place.image_group % geo.groups, place.inner, place.w0, 0, 0, 0};
  at.valid = static_cast<int>(geo.W - at.w0 < kV ? geo.W - at.w0 : kV);
  StoredSoftmax<acc_t> norm{lse};
  for (int set = 0; set < lse.sets(geo); ++set) {
    acc_t dot[kV];
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) dot[v] = acc_t(0);
    for (at.first = 0; at.first < geo.channels_per_group; at.first += kC) {
      at.count = static_cast<int>(geo.channels_per_group - at.first < kC ? geo.channels_per_group - at.first : kC);
      const int64_t channel = (at.n * geo.C + at.group * geo.channels_per_group + at.first) * hw;
      acc_t acc[kC][kV];
      zero_sums(acc);
      for (int k = 0; k < geo.num_sizes; ++k) {
        if (lse.set_of(k) != set) continue;
        norm.start_size(geo, at, k);
        strip_taps<false>(geo, at, geo.size[k], size_block(geo, kernels, at, k), x + channel, vector, norm, acc,
                          trace);
      }
      DDET_UNROLL
      for (int c = 0; c < kC; ++c) {
        if (c >= at.count) break;
        acc_t g[kV];
        load_strip<kV>(grad_y + channel + c * hw + at.h * geo.W + at.w0, at.valid, vector, g);
        DDET_UNROLL
        for (int v = 0; v < kV; ++v) dot[v] += g[v] * acc[c][v];
      }
    }
    store_strip<kV>(dots.row(geo, at.n, at.group, set, at.h) + at.w0, at.valid, vector, dot);
  }
}

// The kernel gradients under a softmax: each raw sum g_t becomes p_t (g_t - d), with k_t, lse
// and d read at the strip.
template <typename kernel_t, typename acc_t>
struct SoftmaxRowGradients {
  const kernel_t* weights;  // tap (i, 0)'s plane of the row at the strip
  const acc_t* lse;
  const acc_t* dot;
  int64_t hw;

  template <int kV>
  DDET_HOST_DEVICE void store(int j, const acc_t (&g)[kV], kernel_t* out, int valid, bool vector) const {
    acc_t k[kV], l[kV], d[kV], result[kV];
    load_strip<kV>(weights + j * hw, valid, vector, k);
    load_strip<kV>(lse, valid, vector, l);
    load_strip<kV>(dot, valid, vector, d);
    DDET_UNROLL
    for (int v = 0; v < kV; ++v) result[v] = exp_of(k[v] - l[v]) * (g[v] - d[v]);
    store_strip<kV>(out, valid, vector, result);
  }
};

template <typename kernel_t, typename acc_t>
struct SoftmaxGradients {
  static constexpr Pass kPass = Pass::kSoftmaxGradK;
  KernelBank<const kernel_t> kernels;
  SoftmaxPlanes<const acc_t> lse, dots;

  DDET_HOST_DEVICE SoftmaxRowGradients<kernel_t, acc_t> at(const Geometry& geo, int k, int64_t i, int64_t n,
                                                           int64_t group, int64_t h, int64_t w0) const {
    const int64_t s = geo.size[k], hw = plane(geo);
    const kernel_t* weights =
        kernels.data[k] + n * kernels.batch_stride[k] + (group * s * s + i * s) * hw + h * geo.W + w0;
    const int set = lse.set_of(k);
    return {weights, lse.row(geo, n, group, set, h) + w0, dots.row(geo, n, group, set, h) + w0, hw};
  }
};

}  // namespace ddet_ops
