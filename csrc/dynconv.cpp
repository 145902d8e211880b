// The ddet_ops operator schemas and the argument checks every implementation shares (the CPU
// kernels, the CUDA kernels and the test harness all start from prepare / prepare_backward).
#include <algorithm>
#include <cstdlib>

#include "dynconv.h"

namespace ddet_ops {
namespace {

void check_x_and_scalars(const Tensor& x, int64_t groups, int64_t dilation) {
  DDET_CHECK(x.dim() == 4, "ddet_ops: x must be 4-D (N, C, H, W), got shape ", shape_text(x.sizes()));
  const auto dtype = x.scalar_type();
  DDET_CHECK(dtype == ScalarType::Float || dtype == ScalarType::Double || dtype == ScalarType::Half ||
                 dtype == ScalarType::BFloat16,
             "ddet_ops: x must be float32, float64, float16 or bfloat16, got ", dtype);
  DDET_CHECK(groups >= 1, "ddet_ops: groups must be >= 1, got ", groups);
  DDET_CHECK(dilation >= 1, "ddet_ops: dilation must be >= 1, got ", dilation);
  DDET_CHECK(x.size(1) % groups == 0, "ddet_ops: groups=", groups, " does not divide the ", x.size(1),
             " channels of x");
}

// Whether t's channels and (H, W) planes lie as in a contiguous tensor, its images a whole number
// of planes apart: a channel slice of a larger tensor, or one image broadcast by expand(). The
// kernels read such a tensor as it is (make_bank takes its batch stride); whole planes apart, every
// image's planes keep the alignment of the first's, which the CUDA vector loads rely on.
bool planes_dense(const Tensor& t) {
  const int64_t H = t.size(2), W = t.size(3);
  return (W <= 1 || t.stride(3) == 1) && (H <= 1 || t.stride(2) == W) &&
         (t.size(1) <= 1 || t.stride(1) == H * W) &&
         (t.size(0) <= 1 || (H * W > 0 && t.stride(0) % (H * W) == 0));
}

// Records each size in geo and where its kernels live; returns the channels of a packed tensor.
// Sizes are bounded before any product is formed, so no channel count can wrap around.
int64_t place_sizes(Problem& p, IntList sizes, bool packed) {
  Geometry& geo = p.geo;
  geo.num_sizes = static_cast<int>(sizes.size());
  int64_t channel = 0;
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int64_t s = sizes[k];
    DDET_CHECK(s >= 1 && s % 2 == 1, "ddet_ops: kernel sizes must be odd and >= 1, got ", s);
    DDET_CHECK(s <= kMaxKernelSize, "ddet_ops: kernel size ", s, " is too large (at most ", kMaxKernelSize,
               ", so that s*s taps are countable)");
    int64_t taps = 0;
    DDET_CHECK(!__builtin_mul_overflow(geo.groups, s * s, &taps) &&
                   !__builtin_add_overflow(channel, taps, &channel),
               "ddet_ops: groups=", geo.groups, " times the kernel taps overflows a channel count");
    geo.size[k] = static_cast<int>(s);
    p.tensor_of.push_back(packed ? 0 : k);
    p.channel_offset.push_back(packed ? channel - taps : 0);
  }
  const int64_t largest = *std::max_element(sizes.begin(), sizes.end());
  geo.reach = (largest / 2) * geo.dilation;
  return channel;
}

void check_kernel(const Tensor& x, const Tensor& k, size_t t, int64_t expected, bool packed, ScalarType first_dtype) {
  DDET_CHECK(k.dim() == 4, "ddet_ops: kernels[", t, "] must be 4-D, got shape ", shape_text(k.sizes()));
  DDET_CHECK(k.size(1) == expected, "ddet_ops: kernels[", t, "] has ", k.size(1), " channels, expected ", expected,
             packed ? " (groups * sum of s^2 over sizes)" : " (groups * s^2)");
  DDET_CHECK(k.size(0) == x.size(0) && k.size(2) == x.size(2) && k.size(3) == x.size(3), "ddet_ops: kernels[", t,
             "] has shape ", shape_text(k.sizes()), ", whose batch and spatial sizes differ from x's ",
             shape_text(x.sizes()));
  DDET_CHECK(native_pair(x.scalar_type(), k.scalar_type()), "ddet_ops: kernels[", t, "] has dtype ",
             k.scalar_type(), ", which the op does not read with x of dtype ", x.scalar_type(),
             " (same dtype, or float32 with float16 or bfloat16; ddet_ops.multi_dynconv casts other pairs)");
  DDET_CHECK(t == 0 || k.scalar_type() == first_dtype, "ddet_ops: kernels[", t, "] has dtype ", k.scalar_type(),
             ", but kernels[0] has ", first_dtype);
  DDET_CHECK(k.device() == x.device(), "ddet_ops: kernels[", t, "] is on ", device_text(k.device()), ", but x is on ",
             device_text(x.device()));
}

}  // namespace

Problem prepare(const Tensor& x, const std::vector<Tensor>& kernels, IntList sizes, int64_t groups,
                int64_t dilation) {
  check_x_and_scalars(x, groups, dilation);
  DDET_CHECK(!sizes.empty(), "ddet_ops: sizes must name at least one kernel size");
  DDET_CHECK(static_cast<int64_t>(sizes.size()) <= kMaxSizes, "ddet_ops: at most ", kMaxSizes,
             " kernel sizes per call, got ", sizes.size());
  DDET_CHECK(!kernels.empty(), "ddet_ops: kernels is an empty list");
  const bool packed = kernels.size() != sizes.size();
  DDET_CHECK(!packed || kernels.size() == 1, "ddet_ops: got ", kernels.size(), " kernel tensors for ",
             sizes.size(), " sizes: pass one tensor per size, or one packed tensor");

  Problem p;
  Geometry& geo = p.geo;
  geo.N = x.size(0);
  geo.C = x.size(1);
  geo.H = x.size(2);
  geo.W = x.size(3);
  geo.groups = groups;
  geo.channels_per_group = geo.C / groups;
  // Beyond the image size every off-centre tap is outside the image whatever the dilation, so
  // clamping changes no result and keeps tap offsets far from int64 overflow.
  geo.dilation = std::min<int64_t>(dilation, std::max<int64_t>({geo.H, geo.W, 1}));
  const int64_t packed_channels = place_sizes(p, sizes, packed);
  for (size_t t = 0; t < kernels.size(); ++t) {
    check_kernel(x, kernels[t], t, packed ? packed_channels : groups * sizes[t] * sizes[t], packed,
                 kernels[0].scalar_type());
    p.kernels.push_back(planes_dense(kernels[t]) ? kernels[t] : plane_contiguous(kernels[t]));
  }
  p.x = plane_contiguous(x);
  return p;
}

Tensor empty_output(IntList sizes, ScalarType dtype, const Device& device) {
  if (device.is_cpu()) return empty_cpu_output(sizes, dtype);
  return torch::stable::empty(sizes, dtype, std::nullopt, device);
}

std::vector<Tensor> empty_like_all(const std::vector<Tensor>& like) {
  std::vector<Tensor> out;
  out.reserve(like.size());
  for (const auto& t : like) out.push_back(empty_output(t.sizes(), t.scalar_type(), t.device()));
  return out;
}

Backward prepare_backward(const Tensor& grad_y, const Tensor& x, const std::vector<Tensor>& kernels,
                          IntList sizes, int64_t groups, int64_t dilation, bool need_x, bool need_kernels) {
  Problem p = prepare(x, kernels, sizes, groups, dilation);
  DDET_CHECK(grad_y.sizes() == x.sizes(), "ddet_ops: grad_y has shape ", shape_text(grad_y.sizes()), ", but x has ",
             shape_text(x.sizes()));
  DDET_CHECK(grad_y.scalar_type() == x.scalar_type(), "ddet_ops: grad_y has dtype ", grad_y.scalar_type(),
             ", but x has ", x.scalar_type());
  DDET_CHECK(grad_y.device() == x.device(), "ddet_ops: grad_y is on ", device_text(grad_y.device()),
             ", but x is on ", device_text(x.device()));
  const ScalarType dtype = p.x.scalar_type();
  const Device device = p.x.device();
  Tensor grad_x = need_x ? empty_output(p.x.sizes(), dtype, device)
                         : torch::stable::empty({0}, dtype, std::nullopt, device);
  std::vector<Tensor> grad_kernels = need_kernels ? empty_like_all(p.kernels) : std::vector<Tensor>{};
  const bool ready = is_empty(p.geo) || !(need_x || need_kernels);
  if (is_empty(p.geo)) {
    for (auto& g : grad_kernels) torch::stable::zero_(g);
  }
  return {std::move(p), plane_contiguous(grad_y), std::move(grad_x), std::move(grad_kernels), ready};
}

namespace {

std::vector<int64_t> log_normaliser_shape(const Problem& p, bool per_size) {
  return {p.geo.N, p.geo.groups * softmax_sets(p.geo, per_size), p.geo.H, p.geo.W};
}

}  // namespace

Tensor empty_log_normalisers(const Problem& p, bool per_size) {
  const auto shape = log_normaliser_shape(p, per_size);
  return torch::stable::empty(IntList(shape.data(), shape.size()), accumulation_type(p), std::nullopt, p.x.device());
}

Tensor checked_log_normalisers(const Problem& p, const Tensor& lse, bool per_size) {
  const auto shape = log_normaliser_shape(p, per_size);
  DDET_CHECK(lse.sizes() == IntList(shape.data(), shape.size()), "ddet_ops: lse has shape ", shape_text(lse.sizes()),
             ", expected ", shape_text(IntList(shape.data(), shape.size())), " (N, groups * sets, H, W)");
  DDET_CHECK(lse.scalar_type() == accumulation_type(p), "ddet_ops: lse has dtype ", lse.scalar_type(), ", expected ",
             accumulation_type(p));
  DDET_CHECK(lse.device() == p.x.device(), "ddet_ops: lse is on ", device_text(lse.device()), ", but x is on ",
             device_text(p.x.device()));
  return torch::stable::contiguous(lse);
}

const std::string& cuda_kernels() {
  static const std::string version = [] {
    const char* text = std::getenv("DDET_OPS_CUDA_KERNELS");
    const std::string value = text == nullptr || *text == '\0' ? "v2" : text;
    DDET_CHECK(value == "v1" || value == "v2", "ddet_ops: DDET_OPS_CUDA_KERNELS must be v1 or v2, got '", value, "'");
    return value;
  }();
  return version;
}

std::string cuda_kernels_op() { return cuda_kernels(); }

STABLE_TORCH_LIBRARY(ddet_ops, m) {
  m.def("multi_dynconv(Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation) -> Tensor");
  m.def(
      "multi_dynconv_backward(Tensor grad_y, Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation, "
      "bool need_x, bool need_kernels) -> (Tensor, Tensor[])");
  m.def(
      "multi_dynconv_softmax(Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation, bool per_size) "
      "-> (Tensor, Tensor)");
  m.def(
      "multi_dynconv_softmax_backward(Tensor grad_y, Tensor x, Tensor[] kernels, Tensor lse, int[] sizes, "
      "int groups, int dilation, bool per_size, bool need_x, bool need_kernels) -> (Tensor, Tensor[])");
  m.def("cuda_kernels() -> str");
}

// An op without tensor arguments has no device to dispatch on: it is registered for every one.
STABLE_TORCH_LIBRARY_IMPL(ddet_ops, CompositeExplicitAutograd, m) {
  m.impl("cuda_kernels", TORCH_BOX(&cuda_kernels_op));
}

}  // namespace ddet_ops
