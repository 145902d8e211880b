// The ddet_ops operator schemas, argument checks, and the fused CPU kernels.
//
// Memory is the bottleneck: per pixel the op reads sum(groups*s^2) kernel weights and only a
// few values of x. Both passes walk the image one row at a time (parallel over batch and rows)
// so each kernel row is streamed from memory exactly once, while the few rows of x / grad_y it
// touches stay in cache. Inside a row the interior columns, where no tap leaves the image, run
// in fixed-width strips the compiler vectorises; the border columns use the shared per-pixel
// functions of pixel.h (the same code the CUDA kernels run).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "dynconv.h"

namespace ddet_ops {

Problem prepare(const at::Tensor& x, at::TensorList kernels, at::IntArrayRef sizes, int64_t groups,
                int64_t dilation) {
  TORCH_CHECK(x.dim() == 4, "ddet_ops: x must be 4-D (N, C, H, W), got shape ", x.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "ddet_ops: x must be float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(groups >= 1, "ddet_ops: groups must be >= 1, got ", groups);
  TORCH_CHECK(dilation >= 1, "ddet_ops: dilation must be >= 1, got ", dilation);
  const int64_t C = x.size(1);
  TORCH_CHECK(C % groups == 0, "ddet_ops: groups=", groups, " does not divide the ", C, " channels of x");
  TORCH_CHECK(!sizes.empty(), "ddet_ops: sizes must name at least one kernel size");
  TORCH_CHECK(static_cast<int64_t>(sizes.size()) <= kMaxSizes, "ddet_ops: at most ", kMaxSizes,
              " kernel sizes per call, got ", sizes.size());
  TORCH_CHECK(!kernels.empty(), "ddet_ops: kernels is an empty list");
  const bool packed = kernels.size() != sizes.size();
  TORCH_CHECK(!packed || kernels.size() == 1, "ddet_ops: got ", kernels.size(), " kernel tensors for ",
              sizes.size(), " sizes: pass one tensor per size, or one packed tensor");

  Problem p;
  Geometry& geo = p.geo;
  geo.N = x.size(0);
  geo.C = C;
  geo.H = x.size(2);
  geo.W = x.size(3);
  geo.groups = groups;
  geo.channels_per_group = C / groups;
  geo.dilation = dilation;
  geo.num_sizes = static_cast<int>(sizes.size());
  int64_t largest = 1;
  int64_t channel = 0;
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int64_t s = sizes[k];
    TORCH_CHECK(s >= 1 && s % 2 == 1, "ddet_ops: kernel sizes must be odd and >= 1, got ", s);
    geo.size[k] = static_cast<int>(s);
    largest = std::max(largest, s);
    p.tensor_of.push_back(packed ? 0 : k);
    p.channel_offset.push_back(packed ? channel : 0);
    channel += groups * s * s;
  }
  geo.reach = (largest / 2) * dilation;

  for (size_t t = 0; t < kernels.size(); ++t) {
    const at::Tensor& k = kernels[t];
    TORCH_CHECK(k.dim() == 4, "ddet_ops: kernels[", t, "] must be 4-D, got shape ", k.sizes());
    const int64_t expected = packed ? channel : groups * sizes[t] * sizes[t];
    TORCH_CHECK(k.size(1) == expected, "ddet_ops: kernels[", t, "] has ", k.size(1), " channels, expected ",
                expected, packed ? " (groups * sum of s^2 over sizes)" : " (groups * s^2)");
    TORCH_CHECK(k.size(0) == geo.N && k.size(2) == geo.H && k.size(3) == geo.W, "ddet_ops: kernels[", t,
                "] has shape ", k.sizes(), ", whose batch and spatial sizes differ from x's ", x.sizes());
    TORCH_CHECK(k.scalar_type() == dtype, "ddet_ops: kernels[", t, "] has dtype ", k.scalar_type(),
                ", but x has ", dtype);
    TORCH_CHECK(k.device() == x.device(), "ddet_ops: kernels[", t, "] is on ", k.device(), ", but x is on ",
                x.device());
    p.kernels.push_back(k.contiguous());
  }
  p.x = x.contiguous();
  return p;
}

std::vector<at::Tensor> empty_like_all(const std::vector<at::Tensor>& like) {
  std::vector<at::Tensor> out;
  out.reserve(like.size());
  for (const auto& t : like) out.push_back(at::empty(t.sizes(), t.options()));
  return out;
}

namespace {

// Columns [begin, end) of a row where every tap of every size stays inside the image.
struct Interior {
  int64_t begin, end;
  explicit Interior(const Geometry& geo)
      : begin(std::min(geo.reach, geo.W)), end(std::max(geo.W - geo.reach, std::min(geo.reach, geo.W))) {}
};

// Calls strip(w0, width) over the interior in full strips of kStrip columns, then one column at a
// time for the remainder, and border(w) for every border column.
template <int kStrip, typename Strip, typename Remainder, typename Border>
inline void walk_row(const Geometry& geo, const Interior& interior, const Strip& strip,
                     const Remainder& remainder, const Border& border) {
  int64_t w = interior.begin;
  for (; w + kStrip <= interior.end; w += kStrip) strip(w);
  for (; w < interior.end; ++w) remainder(w);
  for (int64_t b = 0; b < interior.begin; ++b) border(b);
  for (int64_t b = interior.end; b < geo.W; ++b) border(b);
}

constexpr int kStrip = 16;

// y[c, h, w0 : w0 + kWidth] for one channel, all taps valid.
template <int kWidth, typename scalar_t, typename acc_t>
inline void forward_strip(const Geometry& geo, const KernelBank<const scalar_t>& bank,
                          const scalar_t* __restrict__ x_plane, int64_t n, int64_t group, int64_t h,
                          int64_t w0, scalar_t* __restrict__ y_row) {
  const int64_t hw = plane(geo);
  acc_t acc[kWidth] = {};
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int s = geo.size[k];
    const int64_t half = s / 2;
    const scalar_t* weights = bank.data[k] + n * bank.batch_stride[k] + group * s * s * hw + h * geo.W + w0;
    for (int i = 0; i < s; ++i) {
      const int64_t hh = h + (i - half) * geo.dilation;
      if (hh < 0 || hh >= geo.H) continue;
      const scalar_t* x_row = x_plane + hh * geo.W + w0 - half * geo.dilation;
      for (int j = 0; j < s; ++j) {
        const scalar_t* __restrict__ wr = weights + (i * s + j) * hw;
        const scalar_t* __restrict__ xr = x_row + j * geo.dilation;
        for (int v = 0; v < kWidth; ++v) acc[v] += static_cast<acc_t>(wr[v]) * static_cast<acc_t>(xr[v]);
      }
    }
  }
  for (int v = 0; v < kWidth; ++v) y_row[w0 + v] = static_cast<scalar_t>(acc[v]);
}

// grad_x[c, h, w0 : w0 + kWidth] for one channel, gathered from the neighbours' taps.
template <int kWidth, typename scalar_t, typename acc_t>
inline void grad_x_strip(const Geometry& geo, const KernelBank<const scalar_t>& bank,
                         const scalar_t* __restrict__ gy_plane, int64_t n, int64_t group, int64_t h,
                         int64_t w0, scalar_t* __restrict__ gx_row) {
  const int64_t hw = plane(geo);
  acc_t acc[kWidth] = {};
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int s = geo.size[k];
    const int64_t half = s / 2;
    const scalar_t* weights = bank.data[k] + n * bank.batch_stride[k] + group * s * s * hw;
    for (int i = 0; i < s; ++i) {
      const int64_t hs = h - (i - half) * geo.dilation;
      if (hs < 0 || hs >= geo.H) continue;
      for (int j = 0; j < s; ++j) {
        const int64_t source = hs * geo.W + w0 - (j - half) * geo.dilation;
        const scalar_t* __restrict__ wr = weights + (i * s + j) * hw + source;
        const scalar_t* __restrict__ gr = gy_plane + source;
        for (int v = 0; v < kWidth; ++v) acc[v] += static_cast<acc_t>(wr[v]) * static_cast<acc_t>(gr[v]);
      }
    }
  }
  for (int v = 0; v < kWidth; ++v) gx_row[w0 + v] = static_cast<scalar_t>(acc[v]);
}

// grad of one tap's weights at [h, w0 : w0 + kWidth]: sum over the group's channels.
template <int kWidth, typename scalar_t, typename acc_t>
inline void grad_weight_strip(const Geometry& geo, const scalar_t* __restrict__ gy_group,
                              const scalar_t* __restrict__ x_group, int64_t h, int64_t shifted_row,
                              int64_t dj, int64_t w0, scalar_t* __restrict__ gk_row) {
  const int64_t hw = plane(geo);
  acc_t acc[kWidth] = {};
  for (int64_t c = 0; c < geo.channels_per_group; ++c) {
    const scalar_t* __restrict__ gr = gy_group + c * hw + h * geo.W + w0;
    const scalar_t* __restrict__ xr = x_group + c * hw + shifted_row * geo.W + w0 + dj;
    for (int v = 0; v < kWidth; ++v) acc[v] += static_cast<acc_t>(gr[v]) * static_cast<acc_t>(xr[v]);
  }
  for (int v = 0; v < kWidth; ++v) gk_row[w0 + v] = static_cast<scalar_t>(acc[v]);
}

// Rows per parallel task: enough work per task to amortise scheduling.
int64_t row_grain(const Geometry& geo) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, geo.W * geo.C)); }

template <typename scalar_t>
void forward_cpu(const Problem& p, scalar_t* y) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geometry& geo = p.geo;
  const auto bank = make_bank<const scalar_t>(p, p.kernels);
  const scalar_t* x = p.x.const_data_ptr<scalar_t>();
  const Interior interior(geo);
  const int64_t hw = plane(geo);
  at::parallel_for(0, geo.N * geo.H, row_grain(geo), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / geo.H, h = row % geo.H;
      for (int64_t c = 0; c < geo.C; ++c) {
        const int64_t group = c / geo.channels_per_group;
        const scalar_t* x_plane = x + (n * geo.C + c) * hw;
        scalar_t* y_row = y + (n * geo.C + c) * hw + h * geo.W;
        walk_row<kStrip>(
            geo, interior,
            [&](int64_t w) { forward_strip<kStrip, scalar_t, acc_t>(geo, bank, x_plane, n, group, h, w, y_row); },
            [&](int64_t w) { forward_strip<1, scalar_t, acc_t>(geo, bank, x_plane, n, group, h, w, y_row); },
            [&](int64_t w) {
              acc_t value;
              forward_pixel<1>(geo, bank, x, n, c, 1, h, w, &value);
              y_row[w] = static_cast<scalar_t>(value);
            });
      }
    }
  });
}

template <typename scalar_t>
void backward_cpu(const Problem& p, const scalar_t* grad_y, scalar_t* grad_x,
                  const std::vector<at::Tensor>& grad_kernels) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geometry& geo = p.geo;
  const auto bank = make_bank<const scalar_t>(p, p.kernels);
  const bool need_kernels = !grad_kernels.empty();
  const auto grad_bank = need_kernels ? make_bank<scalar_t>(p, grad_kernels) : KernelBank<scalar_t>{};
  const scalar_t* x = p.x.const_data_ptr<scalar_t>();
  const Interior interior(geo);
  const int64_t hw = plane(geo);
  const int64_t cpg = geo.channels_per_group;
  at::parallel_for(0, geo.N * geo.H, row_grain(geo), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / geo.H, h = row % geo.H;
      for (int64_t c = 0; grad_x != nullptr && c < geo.C; ++c) {
        const int64_t group = c / cpg;
        const scalar_t* gy_plane = grad_y + (n * geo.C + c) * hw;
        scalar_t* gx_row = grad_x + (n * geo.C + c) * hw + h * geo.W;
        walk_row<kStrip>(
            geo, interior,
            [&](int64_t w) { grad_x_strip<kStrip, scalar_t, acc_t>(geo, bank, gy_plane, n, group, h, w, gx_row); },
            [&](int64_t w) { grad_x_strip<1, scalar_t, acc_t>(geo, bank, gy_plane, n, group, h, w, gx_row); },
            [&](int64_t w) {
              acc_t value;
              grad_x_pixel<1>(geo, bank, grad_y, n, c, 1, h, w, &value);
              gx_row[w] = static_cast<scalar_t>(value);
            });
      }
      for (int64_t group = 0; need_kernels && group < geo.groups; ++group) {
        const scalar_t* gy_group = grad_y + (n * geo.C + group * cpg) * hw;
        const scalar_t* x_group = x + (n * geo.C + group * cpg) * hw;
        for (int k = 0; k < geo.num_sizes; ++k) {
          const int s = geo.size[k];
          const int64_t half = s / 2;
          for (int i = 0; i < s; ++i) {
            const int64_t hh = h + (i - half) * geo.dilation;
            for (int j = 0; j < s; ++j) {
              const int64_t dj = (j - half) * geo.dilation;
              scalar_t* gk_row = grad_bank.data[k] + n * grad_bank.batch_stride[k] +
                                 (group * s * s + i * s + j) * hw + h * geo.W;
              if (hh < 0 || hh >= geo.H) {
                std::fill(gk_row, gk_row + geo.W, scalar_t(0));
                continue;
              }
              walk_row<kStrip>(
                  geo, interior,
                  [&](int64_t w) {
                    grad_weight_strip<kStrip, scalar_t, acc_t>(geo, gy_group, x_group, h, hh, dj, w, gk_row);
                  },
                  [&](int64_t w) {
                    grad_weight_strip<1, scalar_t, acc_t>(geo, gy_group, x_group, h, hh, dj, w, gk_row);
                  },
                  [&](int64_t w) {
                    gk_row[w] = static_cast<scalar_t>(
                        grad_weight_pixel<scalar_t, acc_t>(geo, x, grad_y, k, i, j, n, group, h, w));
                  });
            }
          }
        }
      }
    }
  });
}

bool is_empty(const Geometry& geo) { return geo.N * geo.C * geo.H * geo.W == 0; }

at::Tensor multi_dynconv_cpu(const at::Tensor& x, at::TensorList kernels, at::IntArrayRef sizes, int64_t groups,
                             int64_t dilation) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  at::Tensor y = at::empty(p.x.sizes(), p.x.options());
  if (is_empty(p.geo)) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "multi_dynconv_cpu",
                                  [&] { forward_cpu<scalar_t>(p, y.mutable_data_ptr<scalar_t>()); });
  return y;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> multi_dynconv_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, at::TensorList kernels, at::IntArrayRef sizes, int64_t groups,
    int64_t dilation, bool need_x, bool need_kernels) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type() &&
                  grad_y.device() == x.device(),
              "ddet_ops: grad_y must match x in shape, dtype and device");
  const at::Tensor gy = grad_y.contiguous();
  at::Tensor grad_x = need_x ? at::empty(p.x.sizes(), p.x.options()) : at::empty({0}, p.x.options());
  std::vector<at::Tensor> grad_kernels = need_kernels ? empty_like_all(p.kernels) : std::vector<at::Tensor>{};
  if (is_empty(p.geo)) {
    for (auto& g : grad_kernels) g.zero_();
    return {grad_x, grad_kernels};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "multi_dynconv_backward_cpu", [&] {
    backward_cpu<scalar_t>(p, gy.const_data_ptr<scalar_t>(), need_x ? grad_x.mutable_data_ptr<scalar_t>() : nullptr,
                           grad_kernels);
  });
  return {grad_x, grad_kernels};
}

}  // namespace

TORCH_LIBRARY(ddet_ops, m) {
  m.def("multi_dynconv(Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation) -> Tensor");
  m.def(
      "multi_dynconv_backward(Tensor grad_y, Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation, "
      "bool need_x, bool need_kernels) -> (Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(ddet_ops, CPU, m) {
  m.impl("multi_dynconv", &multi_dynconv_cpu);
  m.impl("multi_dynconv_backward", &multi_dynconv_backward_cpu);
}

}  // namespace ddet_ops
