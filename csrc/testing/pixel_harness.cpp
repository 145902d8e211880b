// Test-only CPU entry points that run the CUDA kernels' per-thread code (pixel.h for v1,
// strip.h for v2) serially over every thread index, so the device paths' indexing is checked
// against the reference on machines with no GPU. The v2 entry points also return the names of
// the paths their strips took, and strip_paths() names them all, so a test can require every
// specialisation to have been run. They live in their own op namespace,
// torch.ops.ddet_ops_testing, apart from the production ops.
#include "../dynconv.h"
#include "../channel_tile.h"
#include "../pixel.h"
#include "../softmax_passes.h"

#include <algorithm>
#include <limits>
#include <set>
#include <string>

namespace ddet_ops {
namespace {

Tensor pixelwise_forward(const Tensor& x, const std::vector<Tensor>& kernels, IntList sizes, int64_t groups,
                             int64_t dilation) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  Tensor y = torch::stable::empty(p.x.sizes(), p.x.scalar_type());
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    using acc_t = opmath_t<scalar_t>;
    const auto bank = make_bank<const kernel_t>(p, p.kernels);
    const int64_t threads = forward_threads(p.geo);
    for (int64_t index = 0; index < threads; ++index) {
      forward_thread<scalar_t, kernel_t, acc_t>(p.geo, bank, p.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                      index);
    }
  });
  return y;
}

std::tuple<Tensor, std::vector<Tensor>> pixelwise_backward(const Tensor& grad_y, const Tensor& x,
                                                                   const std::vector<Tensor>& kernels, IntList sizes,
                                                                   int64_t groups, int64_t dilation, bool need_x,
                                                                   bool need_kernels) {
  Backward b = prepare_backward(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels);
  if (b.ready) return {b.grad_x, b.grad_kernels};
  const Problem& p = b.p;
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    using acc_t = opmath_t<scalar_t>;
    const auto bank = make_bank<const kernel_t>(p, p.kernels);
    const auto grad_bank = need_kernels ? make_bank<kernel_t>(p, b.grad_kernels) : KernelBank<kernel_t>{};
    const int64_t threads = backward_threads(p.geo);
    for (int64_t index = 0; index < threads; ++index) {
      backward_thread<scalar_t, kernel_t, acc_t>(p.geo, bank, grad_bank, need_kernels, p.x.const_data_ptr<scalar_t>(),
                                       b.grad_y.const_data_ptr<scalar_t>(),
                                       need_x ? b.grad_x.mutable_data_ptr<scalar_t>() : nullptr, index);
    }
  });
  return {b.grad_x, b.grad_kernels};
}

// Records the name of every path a strip takes.
struct PathTrace {
  std::set<std::string> seen;
  void operator()(Pass pass, int size, bool inside, bool vector) {
    static const char* const kPassNames[] = {"forward",        "grad_x",         "grad_k",
                                             "forward_tile",   "grad_x_tile",    "softmax forward",
                                             "softmax grad_x", "softmax grad_k", "softmax dot"};
    std::string name = std::string(kPassNames[static_cast<int>(pass)]) + " ";
    if (pass == Pass::kForwardTile || pass == Pass::kGradXTile) {
      seen.insert(name + "s" + std::to_string(size));
      return;
    }
    name += size == 0 ? "generic" : "s" + std::to_string(size) + (inside ? " interior" : " border");
    seen.insert(vector ? name + " vector" : name);
  }
  std::vector<std::string> names() const { return {seen.begin(), seen.end()}; }
};

std::vector<std::string> strip_paths() {
  PathTrace all;
  for (int size : kSpecialisedSizes) {
    all(Pass::kForwardTile, size, true, true);
    all(Pass::kGradXTile, size, true, true);
  }
  for (Pass pass : {Pass::kForward, Pass::kGradX, Pass::kGradK, Pass::kSoftmaxForward, Pass::kSoftmaxGradX,
                    Pass::kSoftmaxGradK, Pass::kSoftmaxDot}) {
    all(pass, 0, false, false);
    for (int size : kSpecialisedSizes) {
      for (bool inside : {false, true}) {
        for (bool vector : {false, true}) {
          // A vector strip is whole and a size-1 window never leaves the image.
          if (inside || !vector || size > 1) all(pass, size, inside, vector);
        }
      }
    }
  }
  return all.names();
}

// The device's order: per tile and chunk of channels, phase 1 for every thread of the block, then
// phase 2 for every thread.
template <bool kGather, typename kernel_t, typename scalar_t>
void run_channel_tiles(const Problem& p, const KernelBank<const kernel_t>& bank, const scalar_t* src, scalar_t* out,
                       PathTrace& trace) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int kV = strip_width<scalar_t>();
  std::vector<acc_t> tile(tile_channels<acc_t>() * tile_channel_length<kV>());
  for (int64_t index = 0; index < channel_tile_count(p.geo, kV); ++index) {
    const TilePlace at = tile_place(p.geo, kV, index);
    for (int64_t c0 = 0; c0 < p.geo.C; c0 += tile_channels<acc_t>()) {
      // What phase 1 leaves unwritten would be stale on the device: NaN here, so a sum reading it shows.
      std::fill(tile.begin(), tile.end(), std::numeric_limits<acc_t>::quiet_NaN());
      for (int thread = 0; thread < kTileThreads; ++thread) load_channel_tile<kV>(p.geo, src, at, c0, thread, tile.data());
      for (int thread = 0; thread < kTileThreads; ++thread) {
        channel_tile_strip<kGather, kV>(p.geo, bank, out, at, c0, thread, tile.data(), trace);
      }
    }
  }
}

template <bool kGather, typename kernel_t, typename scalar_t, typename Norm>
void run_gather_strips(const Problem& p, const KernelBank<const kernel_t>& bank, const scalar_t* src, scalar_t* out,
                       bool vector, const Norm& norm, PathTrace& trace) {
  const int64_t threads = gather_strip_threads<scalar_t, kernel_t, Norm>(p.geo);
  for (int64_t index = 0; index < threads; ++index) {
    gather_strip<kGather, scalar_t, kernel_t, opmath_t<scalar_t>>(p.geo, bank, src, out, index, vector, trace, norm);
  }
}

// As the device's launch_gather: the channel tiles where they apply, else the strips.
template <bool kGather, typename kernel_t, typename scalar_t>
void run_gather(const Problem& p, const scalar_t* src, scalar_t* out, PathTrace& trace) {
  const auto bank = make_bank<const kernel_t>(p, p.kernels);
  const bool vector = strips_can_use_vectors<scalar_t>(p.geo, bank, src, out);
  if (takes_channel_tiles(p.geo, vector)) {
    run_channel_tiles<kGather>(p, bank, src, out, trace);
    return;
  }
  run_gather_strips<kGather>(p, bank, src, out, vector, RawWeights{}, trace);
}

template <typename scalar_t, typename kernel_t, typename Gradients>
void run_grad_kernel_strips(const Problem& p, const scalar_t* grad_y, std::vector<Tensor>& grad_kernels, bool vector,
                            const Gradients& gradients, PathTrace& trace) {
  const auto bank = make_bank<kernel_t>(p, grad_kernels);
  const int64_t threads = grad_kernel_strip_threads<scalar_t>(p.geo);
  for (int64_t index = 0; index < threads; ++index) {
    grad_kernel_strip<scalar_t, kernel_t, opmath_t<scalar_t>>(p.geo, bank, p.x.const_data_ptr<scalar_t>(), grad_y,
                                                             index, vector, trace, gradients);
  }
}

std::tuple<Tensor, std::vector<std::string>> strip_forward(const Tensor& x, const std::vector<Tensor>& kernels,
                                                              IntList sizes, int64_t groups, int64_t dilation) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  Tensor y = torch::stable::empty(p.x.sizes(), p.x.scalar_type());
  PathTrace trace;
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    run_gather<false, kernel_t>(p, p.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), trace);
  });
  return {y, trace.names()};
}

std::tuple<Tensor, std::vector<Tensor>, std::vector<std::string>> strip_backward(
    const Tensor& grad_y, const Tensor& x, const std::vector<Tensor>& kernels, IntList sizes, int64_t groups,
    int64_t dilation, bool need_x, bool need_kernels) {
  Backward b = prepare_backward(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels);
  PathTrace trace;
  if (b.ready) return {b.grad_x, b.grad_kernels, trace.names()};
  const Problem& p = b.p;
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    if (need_x) {
      run_gather<true, kernel_t>(p, b.grad_y.const_data_ptr<scalar_t>(), b.grad_x.mutable_data_ptr<scalar_t>(), trace);
    }
    if (!need_kernels) return;
    const bool vector = strips_can_use_vectors<scalar_t>(p.geo, make_bank<kernel_t>(p, b.grad_kernels),
                                                         p.x.const_data_ptr(), b.grad_y.const_data_ptr());
    run_grad_kernel_strips<scalar_t, kernel_t>(p, b.grad_y.const_data_ptr<scalar_t>(), b.grad_kernels, vector,
                                               RawGradients{}, trace);
  });
  return {b.grad_x, b.grad_kernels, trace.names()};
}

std::tuple<Tensor, Tensor, std::vector<std::string>> strip_softmax_forward(const Tensor& x,
                                                                            const std::vector<Tensor>& kernels,
                                                                            IntList sizes, int64_t groups,
                                                                            int64_t dilation, bool per_size) {
  const Problem p = prepare(x, kernels, sizes, groups, dilation);
  Tensor y = torch::stable::empty(p.x.sizes(), p.x.scalar_type());
  Tensor lse = empty_log_normalisers(p, per_size);
  PathTrace trace;
  if (is_empty(p.geo)) return {y, lse, trace.names()};
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    dispatch_per_size(per_size, [&](auto per_size_tag) {
      const auto pass = softmax_forward_pass<scalar_t, kernel_t, decltype(per_size_tag)::value>(p, y, lse);
      run_gather_strips<false>(p, pass.kernels, pass.src, pass.out, pass.vector, pass.norm, trace);
    });
  });
  return {y, lse, trace.names()};
}

// As the device: grad_x, then the dot products into a scratch tensor, then the kernel gradients.
std::tuple<Tensor, std::vector<Tensor>, std::vector<std::string>> strip_softmax_backward(
    const Tensor& grad_y, const Tensor& x, const std::vector<Tensor>& kernels, const Tensor& lse, IntList sizes,
    int64_t groups, int64_t dilation, bool per_size, bool need_x, bool need_kernels) {
  Backward b = prepare_backward(grad_y, x, kernels, sizes, groups, dilation, need_x, need_kernels);
  const Tensor normalisers = checked_log_normalisers(b.p, lse, per_size);
  PathTrace trace;
  if (b.ready) return {b.grad_x, b.grad_kernels, trace.names()};
  const Problem& p = b.p;
  Tensor dots = empty_log_normalisers(p, per_size);
  dispatch_pair(p, [&](auto x_type, auto kernel_type) {
    using scalar_t = typename decltype(x_type)::type;
    using kernel_t = typename decltype(kernel_type)::type;
    using acc_t = opmath_t<scalar_t>;
    if (need_x) {
      const auto pass = softmax_grad_x_pass<scalar_t, kernel_t>(p, b.grad_y, normalisers, per_size, b.grad_x);
      run_gather_strips<true>(p, pass.kernels, pass.src, pass.out, pass.vector, pass.norm, trace);
    }
    if (!need_kernels) return;
    const auto pass = softmax_kernel_gradient_pass<scalar_t, kernel_t>(p, b.grad_y, normalisers, per_size,
                                                                       b.grad_kernels, dots);
    const int64_t threads = softmax_dot_strip_threads<scalar_t>(p.geo);
    for (int64_t index = 0; index < threads; ++index) {
      softmax_dot_strip<scalar_t, kernel_t, acc_t>(p.geo, pass.kernels, pass.lse, pass.dots, pass.x, pass.grad_y,
                                                   index, pass.vector, trace);
    }
    run_grad_kernel_strips<scalar_t, kernel_t>(p, pass.grad_y, b.grad_kernels, pass.vector, pass.gradients(), trace);
  });
  return {b.grad_x, b.grad_kernels, trace.names()};
}

}  // namespace

STABLE_TORCH_LIBRARY(ddet_ops_testing, m) {
  m.def("pixelwise_v1_forward(Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation) -> Tensor");
  m.def(
      "pixelwise_v1_backward(Tensor grad_y, Tensor x, Tensor[] kernels, int[] sizes, int groups, "
      "int dilation, bool need_x, bool need_kernels) -> (Tensor, Tensor[])");
  m.def("strip_forward(Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation) -> (Tensor, str[])");
  m.def(
      "strip_backward(Tensor grad_y, Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation, "
      "bool need_x, bool need_kernels) -> (Tensor, Tensor[], str[])");
  m.def(
      "strip_softmax_forward(Tensor x, Tensor[] kernels, int[] sizes, int groups, int dilation, bool per_size) "
      "-> (Tensor, Tensor, str[])");
  m.def(
      "strip_softmax_backward(Tensor grad_y, Tensor x, Tensor[] kernels, Tensor lse, int[] sizes, int groups, "
      "int dilation, bool per_size, bool need_x, bool need_kernels) -> (Tensor, Tensor[], str[])");
  m.def("strip_paths() -> str[]");
}

STABLE_TORCH_LIBRARY_IMPL(ddet_ops_testing, CPU, m) {
  m.impl("pixelwise_v1_forward", TORCH_BOX(&pixelwise_forward));
  m.impl("pixelwise_v1_backward", TORCH_BOX(&pixelwise_backward));
  m.impl("strip_forward", TORCH_BOX(&strip_forward));
  m.impl("strip_backward", TORCH_BOX(&strip_backward));
  m.impl("strip_softmax_forward", TORCH_BOX(&strip_softmax_forward));
  m.impl("strip_softmax_backward", TORCH_BOX(&strip_softmax_backward));
}

// No tensor arguments, so no device to dispatch on: registered for every one.
STABLE_TORCH_LIBRARY_IMPL(ddet_ops_testing, CompositeExplicitAutograd, m) {
  m.impl("strip_paths", TORCH_BOX(&strip_paths));
}

}  // namespace ddet_ops
