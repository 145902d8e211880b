// Channels-last CPU inputs made plane-contiguous by a cache-blocked transpose. The kernels
// read planes; a channels_last model hands them (N, H, W, C) in memory, and the generic
// contiguous() moved DDet's 83 kernel planes at about a third of copy speed (a tenth of the
// network's forward on this project's CPU).
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../dynconv.h"

namespace ddet_ops {
namespace {

// Pixels per block: the block's source bytes (all channels) stay in the core's L2 while each
// channel's run of the block is written out.
constexpr int64_t kBlockPixels = 256;

bool is_channels_last(const Tensor& t) {
  if (t.dim() != 4) return false;
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  return t.stride(1) == 1 && t.stride(3) == C && t.stride(2) == W * C && (t.size(0) == 1 || t.stride(0) == H * W * C);
}

// dst (N, C, HW) from src (N, HW, C); Word has the element's size (the bits are moved, not the values).
template <typename Word>
void transpose_planes(const Word* src, Word* dst, int64_t N, int64_t C, int64_t HW) {
  const int64_t blocks_per_image = (HW + kBlockPixels - 1) / kBlockPixels;
  torch::stable::parallel_for(0, N * blocks_per_image, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = b / blocks_per_image, p0 = b % blocks_per_image * kBlockPixels;
      const int64_t p1 = std::min(p0 + kBlockPixels, HW);
      const Word* in = src + n * HW * C;
      Word* out = dst + n * HW * C;
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t p = p0; p < p1; ++p) out[c * HW + p] = in[p * C + c];
      }
    }
  });
}

}  // namespace

Tensor plane_contiguous(const Tensor& t) {
  if (t.is_contiguous() || !t.device().is_cpu() || !is_channels_last(t)) return torch::stable::contiguous(t);
  // Not from the cache of output blocks: a transient copy, which in inference would keep a block of
  // every tile size alive.
  Tensor out = torch::stable::empty(t.sizes(), t.scalar_type());
  const int64_t N = t.size(0), C = t.size(1), HW = t.size(2) * t.size(3);
  dispatch_floating(t.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    using Word = std::conditional_t<sizeof(scalar_t) == 2, uint16_t,
                                    std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>;
    transpose_planes(static_cast<const Word*>(t.data_ptr()), static_cast<Word*>(out.data_ptr()), N, C, HW);
  });
  return out;
}

}  // namespace ddet_ops
