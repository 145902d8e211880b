// The fused CPU forward (rows.h), block by block of output rows: the sums of every kernel row,
// or, with a softmax over the taps, the same sums in one pass over the weights ("online
// softmax": a running maximum per pixel, whose increases rescale what was summed before).
#include <algorithm>
#include <limits>
#include <optional>

#include "rows.h"

namespace ddet_ops::cpu {

// Rows [first, end) of the channels of one image and group of x, as acc_t, with zero columns on
// both sides wide enough for every tap that can meet the image (|shift| < W), and rows outside the
// image read as a row of zeros (one after each channel's rows, so that channel strides stay valid):
// the softmax pass reads every tap of a row without bounds checks.
template <typename acc_t>
struct PaddedSource {
  const acc_t* first_row;  // column 0 of row `first`, channel 0
  const acc_t* zeros;      // column 0 of the row of zeros
  int64_t first, end, row_stride, channel_stride;
  DDET_INLINE const acc_t* row(int64_t r) const {
    return r < first || r >= end ? zeros : first_row + (r - first) * row_stride;
  }
};

template <typename scalar_t, typename acc_t = opmath_t<scalar_t>>
PaddedSource<acc_t> padded_source(const Geometry& geo, const scalar_t* x, int64_t n, int64_t group, int64_t first,
                                  int64_t end, std::vector<acc_t>& scratch) {
  first = std::max<int64_t>(first, 0);
  end = std::max(std::min(end, geo.H), first);
  const int64_t pad = std::min(geo.reach, geo.W - 1), row_stride = geo.W + 2 * pad;
  const int64_t zero_row = (end - first) * row_stride, channel_stride = zero_row + row_stride;
  scratch.assign(geo.channels_per_group * channel_stride, acc_t(0));
  for (int64_t c = 0; c < geo.channels_per_group; ++c) {
    for (int64_t r = first; r < end; ++r) {
      const scalar_t* from = x + ((n * geo.C + group * geo.channels_per_group + c) * geo.H + r) * geo.W;
      acc_t* to = scratch.data() + c * channel_stride + (r - first) * row_stride + pad;
      for (int64_t w = 0; w < geo.W; ++w) to[w] = static_cast<acc_t>(from[w]);
    }
  }
  return {scratch.data() + pad, scratch.data() + zero_row + pad, first, end, row_stride, channel_stride};
}

// The running state of a block of output rows while the taps of one softmax set go by: per pixel
// the largest weight m so far, z = sum exp(k - m) and, per channel, sum exp(k - m) * x; `e` holds
// the exponentials of one kernel row of one strip.
template <typename acc_t>
struct OnlineSoftmax {
  std::vector<acc_t> largest, total, sums, e;
  OnlineSoftmax(const Geometry& geo, const RowBlocks& blocks)
      : largest(blocks.rows * geo.W),
        total(blocks.rows * geo.W),
        sums(blocks.accumulators(geo)),
        e(*std::max_element(geo.size, geo.size + geo.num_sizes) * kVecs * Lanes<acc_t>::kWidth) {}
};

// Adds kernel row `weights` (tap j at weights + j * H * W) of output row h to the running state
// (its rows at m, z and sums, channel c's at sums + c * sums_stride); `source` is x's row that
// the kernel row reads. Where the row's largest tap exceeds m, m rises to it and z and the sums
// are scaled by exp(m_old - m_new) first, so each weight is exponentiated once. Taps that
// cannot meet the image (|shift| >= W) count in z only.
template <typename kernel_t, typename acc_t = opmath_t<kernel_t>>
DDET_INLINE void add_softmax_row(const Geometry& geo, int s, const kernel_t* __restrict__ weights,
                                 const acc_t* __restrict__ source, int64_t channel_stride, acc_t* __restrict__ m,
                                 acc_t* __restrict__ z, acc_t* __restrict__ sums, int64_t sums_stride,
                                 acc_t* __restrict__ e) {
  const int64_t hw = plane(geo), half = s / 2;
  const int64_t near = std::min<int64_t>(half, (geo.W - 1) / geo.dilation);
  walk_strips<kernel_t>(0, geo.W, [&](auto lanes, auto vecs, int64_t w) DDET_INLINE_LAMBDA {
    using L = decltype(lanes);
    using Vec = typename L::Vec;
    constexpr int kN = decltype(vecs)::value, kW = L::kWidth;
    Vec old_max[kN], new_max[kN], scale[kN], total[kN];
    DDET_UNROLL
    for (int u = 0; u < kN; ++u) old_max[u] = new_max[u] = L::load_acc(m + w + u * kW);
    for (int j = 0; j < s; ++j) {
      __builtin_prefetch(weights + j * hw + w + kPrefetchBytes / sizeof(kernel_t));
      DDET_UNROLL
      for (int u = 0; u < kN; ++u) new_max[u] = L::max(new_max[u], L::load(weights + j * hw + w + u * kW));
    }
    DDET_UNROLL
    for (int u = 0; u < kN; ++u) {
      // A maximum still at -inf (every tap so far masked) is taken as 0: no inf - inf.
      new_max[u] = new_max[u] == -std::numeric_limits<acc_t>::infinity() ? Vec{} : new_max[u];
      scale[u] = L::exp(old_max[u] - new_max[u]);
      total[u] = L::load_acc(z + w + u * kW) * scale[u];
    }
    for (int j = 0; j < s; ++j) {
      DDET_UNROLL
      for (int u = 0; u < kN; ++u) {
        const Vec p = L::exp(L::load(weights + j * hw + w + u * kW) - new_max[u]);
        total[u] += p;
        L::store(e + (j * kN + u) * kW, p);
      }
    }
    DDET_UNROLL
    for (int u = 0; u < kN; ++u) {
      L::store(m + w + u * kW, new_max[u]);
      L::store(z + w + u * kW, total[u]);
    }
    for_channel_blocks(geo.channels_per_group, [&](int64_t c0, auto channels) DDET_INLINE_LAMBDA {
      constexpr int kC = decltype(channels)::value;
      Vec acc[kC][kN];
      DDET_UNROLL
      for (int c = 0; c < kC; ++c)
        DDET_UNROLL
        for (int u = 0; u < kN; ++u) acc[c][u] = L::load_acc(sums + (c0 + c) * sums_stride + w + u * kW) * scale[u];
      for (int j = half - near; j <= half + near; ++j) {
        const acc_t* sp = source + c0 * channel_stride + w + (j - half) * geo.dilation;
        DDET_UNROLL
        for (int c = 0; c < kC; ++c)
          DDET_UNROLL
          for (int u = 0; u < kN; ++u)
            acc[c][u] += L::load_acc(e + (j * kN + u) * kW) * L::load_acc(sp + c * channel_stride + u * kW);
      }
      DDET_UNROLL
      for (int c = 0; c < kC; ++c)
        DDET_UNROLL
        for (int u = 0; u < kN; ++u) L::store(sums + (c0 + c) * sums_stride + w + u * kW, acc[c][u]);
    });
  });
}

// One block of output rows under a softmax: for each set of sizes sharing one, its running state
// over the set's kernel rows, then lse = m + log z and acc += sums / z.
template <typename scalar_t, typename kernel_t, typename acc_t = opmath_t<scalar_t>>
DDET_INLINE void softmax_block(const ForwardArgs<scalar_t, kernel_t>& a, int64_t n, int64_t group, int64_t h0,
                               int64_t h1, std::vector<acc_t>& scratch, OnlineSoftmax<acc_t>& state, acc_t* acc) {
  const Geometry& geo = a.geo;
  const int64_t count = (h1 - h0) * geo.W, cpg = geo.channels_per_group;
  const auto x = padded_source(geo, a.x, n, group, h0 - geo.reach, h1 + geo.reach, scratch);
  std::fill(acc, acc + cpg * count, acc_t(0));
  for_each_softmax_set(geo, a.norm.per_size, [&](int first, int last) DDET_INLINE_LAMBDA {
    std::fill(state.largest.begin(), state.largest.begin() + count, -std::numeric_limits<acc_t>::infinity());
    std::fill(state.total.begin(), state.total.begin() + count, acc_t(0));
    std::fill(state.sums.begin(), state.sums.begin() + cpg * count, acc_t(0));
    for_each_kernel_row(geo, first, last, [&](int k, int i) DDET_INLINE_LAMBDA {
      const int64_t shift = (i - geo.size[k] / 2) * geo.dilation;
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t at = (h - h0) * geo.W;
        add_softmax_row(geo, geo.size[k], tap_row(geo, a.kernels, n, group, k, i, 0, h), x.row(h + shift),
                        x.channel_stride, state.largest.data() + at, state.total.data() + at,
                        state.sums.data() + at, count, state.e.data());
      }
    });
    acc_t* lse = a.norm.plane_of(geo, n, group, first) + h0 * geo.W;
    for (int64_t p = 0; p < count; ++p) {
      const acc_t inverse = acc_t(1) / state.total[p];
      lse[p] = state.largest[p] + std::log(state.total[p]);
      for (int64_t c = 0; c < cpg; ++c) acc[c * count + p] += state.sums[c * count + p] * inverse;
    }
  });
  store_rows(geo, acc, n, group, h0, h1, a.y);
}

// Row blocks [begin, end) (see RowBlocks); acc holds RowBlocks::accumulators values.
template <typename scalar_t, typename kernel_t>
DDET_CPU_CLONES void forward_rows(const ForwardArgs<scalar_t, kernel_t>& a, const RowBlocks& blocks, int64_t begin,
                                  int64_t end, opmath_t<scalar_t>* acc) {
  using acc_t = opmath_t<scalar_t>;
  std::vector<acc_t> scratch;
  std::optional<OnlineSoftmax<acc_t>> state;
  if (a.norm.lse != nullptr) state.emplace(a.geo, blocks);
  for (int64_t item = begin; item < end; ++item) {
    blocks.visit(a.geo, item, [&](int64_t n, int64_t group, int64_t h0, int64_t h1) DDET_INLINE_LAMBDA {
      if (state) return softmax_block(a, n, group, h0, h1, scratch, *state, acc);
      const auto x = source_rows(a.geo, a.x, n, group, h0 - a.geo.reach, h1 + a.geo.reach, scratch);
      sum_kernel_rows<false>(a.geo, a.kernels, a.norm, x, n, group, h0, h1, acc, a.y);
    });
  }
  finish_streaming();
}

void forward(const Problem& p, Tensor& y, Tensor* lse, bool per_size) {
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    using acc_t = opmath_t<scalar_t>;
    const ForwardArgs<scalar_t, kernel_t> args{p.geo, make_bank<const kernel_t>(p, p.kernels),
                                               {lse ? lse->mutable_data_ptr<acc_t>() : nullptr, per_size},
                                               p.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>()};
    const RowBlocks blocks(p.geo, 0);
    torch::stable::parallel_for(0, blocks.count(p.geo), 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(blocks.accumulators(p.geo));
      forward_rows<scalar_t, kernel_t>(args, blocks, begin, end, acc.data());
    });
  });
}

}  // namespace ddet_ops::cpu
