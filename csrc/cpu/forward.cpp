// The fused CPU forward (rows.h): the log-normalisers of a softmax, then the sums of every
// kernel row, block by block of output rows.
#include "rows.h"

namespace ddet_ops::cpu {

// Row blocks [begin, end) (see RowBlocks); acc holds RowBlocks::accumulators values.
template <typename scalar_t, typename kernel_t>
DDET_CPU_CLONES void forward_rows(const ForwardArgs<scalar_t, kernel_t>& a, const RowBlocks& blocks, int64_t begin,
                                  int64_t end, opmath_t<scalar_t>* acc) {
  std::vector<opmath_t<scalar_t>> scratch, sums(a.norm.lse == nullptr ? 0 : blocks.rows * a.geo.W);
  for (int64_t item = begin; item < end; ++item) {
    blocks.visit(a.geo, item, [&](int64_t n, int64_t group, int64_t h0, int64_t h1) DDET_INLINE_LAMBDA {
      if (a.norm.lse != nullptr) log_normalisers(a.geo, a.kernels, a.norm, n, group, h0, h1, sums.data());
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
    const RowBlocks blocks(p.geo, lse == nullptr ? 0 : largest_softmax_set(p.geo, per_size));
    torch::stable::parallel_for(0, blocks.count(p.geo), 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(blocks.accumulators(p.geo));
      forward_rows<scalar_t, kernel_t>(args, blocks, begin, end, acc.data());
    });
  });
}

}  // namespace ddet_ops::cpu
