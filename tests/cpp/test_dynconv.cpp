// C++ test of the libtorch build: loads libddet_ops like a C++ user would, calls the ops through
// the dispatcher, and compares them with a direct evaluation of the formula in docs/ops.md.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace {

int passed = 0, failed = 0;

void check(bool ok, const std::string& what) {
  (ok ? passed : failed)++;
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
}

// y[n,c,h,w] = sum_s sum_ij K_s[n, g*s*s + i*s + j, h, w] * x[n, c, h + (i - s/2)d, w + (j - s/2)d]
at::Tensor formula(const at::Tensor& x, const std::vector<at::Tensor>& kernels, const std::vector<int64_t>& sizes,
                   int64_t groups, int64_t d) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor y = at::zeros_like(x);
  auto xa = x.accessor<double, 4>();
  auto ya = y.accessor<double, 4>();
  for (size_t k = 0; k < sizes.size(); ++k) {
    auto ka = kernels[k].accessor<double, 4>();
    const int64_t s = sizes[k];
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w)
            for (int64_t i = 0; i < s; ++i)
              for (int64_t j = 0; j < s; ++j) {
                const int64_t hh = h + (i - s / 2) * d, ww = w + (j - s / 2) * d;
                if (hh < 0 || hh >= H || ww < 0 || ww >= W) continue;
                ya[n][c][h][w] += ka[n][(c / (C / groups)) * s * s + i * s + j][h][w] * xa[n][c][hh][ww];
              }
  }
  return y;
}

}  // namespace

int main() {
  if (dlopen(DDET_OPS_LIBRARY, RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::printf("cannot load %s: %s\n", DDET_OPS_LIBRARY, dlerror());
    return 1;
  }
  auto forward = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("ddet_ops::multi_dynconv", "")
                     .typed<at::Tensor(const at::Tensor&, at::TensorList, at::IntArrayRef, int64_t, int64_t)>();
  auto backward = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("ddet_ops::multi_dynconv_backward", "")
                      .typed<std::tuple<at::Tensor, std::vector<at::Tensor>>(
                          const at::Tensor&, const at::Tensor&, at::TensorList, at::IntArrayRef, int64_t, int64_t,
                          bool, bool)>();

  struct Case {
    int64_t n, c, h, w;
    std::vector<int64_t> sizes;
    int64_t groups, dilation;
  };
  const std::vector<Case> cases = {
      {1, 3, 9, 13, {3, 5, 7}, 1, 1}, {2, 4, 6, 5, {1, 3}, 2, 2}, {1, 2, 1, 1, {3, 5, 7}, 2, 1},
      {1, 6, 17, 40, {3, 5, 7}, 3, 1}, {2, 1, 4, 19, {9}, 1, 3}};
  at::manual_seed(0);
  for (const auto& t : cases) {
    const std::string name = std::to_string(t.n) + "x" + std::to_string(t.c) + "x" + std::to_string(t.h) + "x" +
                             std::to_string(t.w) + " groups " + std::to_string(t.groups) + " dilation " +
                             std::to_string(t.dilation);
    const auto options = at::TensorOptions().dtype(at::kDouble);
    at::Tensor x = at::randn({t.n, t.c, t.h, t.w}, options);
    std::vector<at::Tensor> kernels;
    for (int64_t s : t.sizes) kernels.push_back(at::randn({t.n, t.groups * s * s, t.h, t.w}, options));
    const at::Tensor y = forward.call(x, kernels, t.sizes, t.groups, t.dilation);
    check(at::allclose(y, formula(x, kernels, t.sizes, t.groups, t.dilation), 1e-10, 1e-10), "forward " + name);

    // The backward pass is the adjoint of the forward one: <grad_y, f(x, K)> is linear in x and in K, so
    // <grad_x, x> and <grad_K, K> must both equal <grad_y, y>.
    const at::Tensor grad_y = at::randn_like(x);
    auto [grad_x, grad_kernels] = backward.call(grad_y, x, kernels, t.sizes, t.groups, t.dilation, true, true);
    const double expected = (grad_y * y).sum().item<double>();
    double through_kernels = 0;
    for (size_t k = 0; k < kernels.size(); ++k) through_kernels += (grad_kernels[k] * kernels[k]).sum().item<double>();
    const double tolerance = 1e-9 * (1 + std::abs(expected));
    check(std::abs((grad_x * x).sum().item<double>() - expected) < tolerance, "grad_x adjoint " + name);
    check(std::abs(through_kernels - expected) < tolerance, "grad_kernels adjoint " + name);
  }

  bool refused = false;
  try {
    forward.call(at::zeros({1, 1, 4, 4}), {at::zeros({1, 16, 4, 4})}, {4}, 1, 1);
  } catch (const std::exception& e) {  // std::runtime_error: the stable ABI has no c10::Error
    refused = std::string(e.what()).find("odd") != std::string::npos;
  }
  check(refused, "an even kernel size is refused with a message");

  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
