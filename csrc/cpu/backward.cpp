// The fused CPU backward (rows.h): grad_x gathers over the inverse window, then the kernel
// gradients row by row, with a softmax's correction when there is one.
#include "rows.h"

namespace ddet_ops::cpu {

// The raw gradient of tap (i, j) of size index k along row h: g[w] = sum_c grad_y[c, h, w] *
// x[c, h + di, w + dj], zero where the tap leaves the image.
template <typename scalar_t, typename acc_t = opmath_t<scalar_t>>
DDET_INLINE void raw_tap_gradient(const Geometry& geo, const SourceRows<acc_t>& gy, const SourceRows<acc_t>& x,
                                  int64_t h, int k, int i, int j, acc_t* __restrict__ g) {
  const int64_t half = geo.size[k] / 2;
  const int64_t hh = h + (i - half) * geo.dilation;
  if (hh < 0 || hh >= geo.H) {
    for (int64_t w = 0; w < geo.W; ++w) g[w] = 0;
    return;
  }
  grad_weight_row<scalar_t>(geo, gy.row(geo, h), gy.channel_stride, x.row(geo, hh), x.channel_stride,
                            (j - half) * geo.dilation, g);
}

// Per-thread buffers of the backward, in acc_t: the grad_x accumulators (RowBlocks), a block of
// rows for kernel gradients and, with a softmax, p_t and p_t * g_t for every tap of the largest set
// over a block of rows, and their dot product sum_t p_t g_t.
template <typename acc_t>
struct BackwardBuffers {
  std::vector<acc_t> acc, out, probabilities, weighted, dot;
  BackwardBuffers(const Geometry& geo, const RowBlocks& blocks, bool softmax, bool per_size)
      : acc(blocks.accumulators(geo)), out(blocks.rows * geo.W) {
    if (!softmax) return;
    const int64_t values = largest_softmax_set(geo, per_size) * blocks.rows * geo.W;
    probabilities.resize(values);
    weighted.resize(values);
    dot.resize(blocks.rows * geo.W);
  }
};

// The kernel gradients of rows [h0, h1) under a softmax. With p_t = exp(k_t - lse) and g_t the
// raw gradient of tap t, dL/dk_t = p_t * g_t - p_t * sum_u p_u g_u, u over the taps of t's set: a
// first pass keeps p_t and p_t * g_t of the set's taps and sums the dot product, a second writes
// the gradients. The rows are one run of (h1 - h0) * W values in every plane, so the s planes of a
// kernel row stream through together.
template <typename scalar_t, typename kernel_t, typename acc_t = opmath_t<scalar_t>>
DDET_INLINE void softmax_gradients(const BackwardArgs<scalar_t, kernel_t>& a, const SourceRows<acc_t>& gy,
                                   const SourceRows<acc_t>& x, int64_t n, int64_t group, int64_t h0, int64_t h1,
                                   BackwardBuffers<acc_t>& buffers) {
  const Geometry& geo = a.geo;
  const int64_t count = (h1 - h0) * geo.W;
  acc_t* __restrict__ dot = buffers.dot.data();
  acc_t* __restrict__ out = buffers.out.data();
  for_each_softmax_set(geo, a.norm.per_size, [&](int first, int last) DDET_INLINE_LAMBDA {
    const acc_t* __restrict__ lse = a.norm.plane_of(geo, n, group, first) + h0 * geo.W;
    for (int64_t w = 0; w < count; ++w) dot[w] = 0;
    acc_t* __restrict__ p = buffers.probabilities.data();
    acc_t* __restrict__ pg = buffers.weighted.data();
    // Kernel row by kernel row, so that its s weight planes stream through together.
    for_each_kernel_row(geo, first, last, [&](int k, int i) DDET_INLINE_LAMBDA {
      const int s = geo.size[k];
      for (int j = 0; j < s; ++j) {
        for (int64_t h = h0; h < h1; ++h) {
          raw_tap_gradient<scalar_t>(geo, gy, x, h, k, i, j, pg + j * count + (h - h0) * geo.W);
        }
      }
      const kernel_t* taps = tap_row(geo, a.kernels, n, group, k, i, 0, h0);
      for_columns<kernel_t>(count, [&](auto lanes, int64_t w) DDET_INLINE_LAMBDA {
        using L = decltype(lanes);
        const auto lse_w = L::load_acc(lse + w);
        auto sum = L::load_acc(dot + w);
        for (int j = 0; j < s; ++j) {
          __builtin_prefetch(taps + j * plane(geo) + w + kPrefetchBytes / sizeof(kernel_t));
          const auto probability = L::exp(L::load(taps + j * plane(geo) + w) - lse_w);
          const auto weighted = probability * L::load_acc(pg + j * count + w);
          L::store(p + j * count + w, probability);
          L::store(pg + j * count + w, weighted);
          sum += weighted;
        }
        L::store(dot + w, sum);
      });
      p += s * count;
      pg += s * count;
    });
    p = buffers.probabilities.data();
    pg = buffers.weighted.data();
    for_each_tap(geo, first, last, [&](int k, int i, int j) DDET_INLINE_LAMBDA {
      for_columns<kernel_t>(count, [&](auto lanes, int64_t w) DDET_INLINE_LAMBDA {
        using L = decltype(lanes);
        L::store(out + w, L::load_acc(pg + w) - L::load_acc(p + w) * L::load_acc(dot + w));
      });
      store_row(tap_row(geo, a.grad_kernels, n, group, k, i, j, h0), out, count);
      p += count;
      pg += count;
    });
  });
}

template <typename scalar_t, typename kernel_t>
DDET_CPU_CLONES void backward_rows(const BackwardArgs<scalar_t, kernel_t>& a, const RowBlocks& blocks, int64_t begin,
                                   int64_t end, BackwardBuffers<opmath_t<scalar_t>>& buffers) {
  const Geometry& geo = a.geo;
  std::vector<opmath_t<scalar_t>> gy_scratch, x_scratch;
  for (int64_t item = begin; item < end; ++item) {
    blocks.visit(geo, item, [&](int64_t n, int64_t group, int64_t h0, int64_t h1) DDET_INLINE_LAMBDA {
      const auto gy = source_rows(geo, a.grad_y, n, group, h0 - geo.reach, h1 + geo.reach, gy_scratch);
      if (a.grad_x != nullptr) {
        sum_kernel_rows<true>(geo, a.kernels, a.norm, gy, n, group, h0, h1, buffers.acc.data(), a.grad_x);
      }
      if (!a.need_kernels) return;
      const auto x = source_rows(geo, a.x, n, group, h0 - geo.reach, h1 + geo.reach, x_scratch);
      if (a.norm.lse != nullptr) return softmax_gradients(a, gy, x, n, group, h0, h1, buffers);
      // Raw kernel gradients row by row: the row's grad_y and the few x rows it meets stay in L1
      // while all the taps' gradient rows are written.
      for (int64_t h = h0; h < h1; ++h) {
        for_each_tap(geo, 0, geo.num_sizes, [&](int k, int i, int j) DDET_INLINE_LAMBDA {
          raw_tap_gradient<scalar_t>(geo, gy, x, h, k, i, j, buffers.out.data());
          store_row(tap_row(geo, a.grad_kernels, n, group, k, i, j, h), buffers.out.data(), geo.W);
        });
      }
    });
  }
  finish_streaming();
}

void backward(Backward& b, const Tensor* lse, bool per_size, bool need_x, bool need_kernels) {
  const Problem& p = b.p;
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    using acc_t = opmath_t<scalar_t>;
    const BackwardArgs<scalar_t, kernel_t> args{
        p.geo,
        make_bank<const kernel_t>(p, p.kernels),
        {lse ? lse->const_data_ptr<acc_t>() : nullptr, per_size},
        need_kernels ? make_bank<kernel_t>(p, b.grad_kernels) : KernelBank<kernel_t>{},
        need_kernels,
        p.x.const_data_ptr<scalar_t>(),
        b.grad_y.const_data_ptr<scalar_t>(),
        need_x ? b.grad_x.mutable_data_ptr<scalar_t>() : nullptr};
    const RowBlocks blocks(p.geo, lse == nullptr ? 0 : largest_softmax_set(p.geo, per_size));
    torch::stable::parallel_for(0, blocks.count(p.geo), 1, [&](int64_t begin, int64_t end) {
      BackwardBuffers<acc_t> buffers(p.geo, blocks, lse != nullptr, per_size);
      backward_rows<scalar_t, kernel_t>(args, blocks, begin, end, buffers);
    });
  });
}

}  // namespace ddet_ops::cpu
