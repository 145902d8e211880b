// What the kernels need from torch and the LibTorch stable ABI does not offer (see
// docs/stable-abi.md): one-line errors, message formatters for shapes and devices, the type
// that half types accumulate in, and a dtype dispatch usable around CUDA launches.
//
// Everything torch-facing in csrc/ goes through torch/csrc/stable and torch/headeronly only;
// the build defines TORCH_TARGET_VERSION, which turns every other torch header into an error.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/Dispatch.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace ddet_ops {

using torch::headeronly::ScalarType;
using torch::stable::Device;
using torch::stable::Tensor;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;

// Throws the parts, streamed one after another, as a RuntimeError in Python. Unlike
// STD_TORCH_CHECK, the message carries no function name and source path before it.
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw std::runtime_error(message.str());
}

#define DDET_CHECK(condition, ...)                              \
  do {                                                          \
    if (!(condition)) [[unlikely]] ::ddet_ops::fail(__VA_ARGS__); \
  } while (false)

// Shapes and devices as torch prints them: "[1, 3, 8, 8]", "cpu", "cuda:1".
inline std::string shape_text(IntList sizes) {
  std::string text = "[";
  for (size_t d = 0; d < sizes.size(); ++d) text += (d ? ", " : "") + std::to_string(sizes[d]);
  return text + "]";
}

inline std::string device_text(const Device& device) {
  using torch::headeronly::DeviceType;
  std::string text = device.type() == DeviceType::CPU    ? "cpu"
                     : device.type() == DeviceType::CUDA ? "cuda"
                                                         : "device type " + std::to_string(int(device.type()));
  return device.index() < 0 ? text : text + ":" + std::to_string(device.index());
}

// The type sums are kept in: float for the half types, the type itself otherwise.
template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>, float, T>;

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the C++ type of `dtype` (float, double, c10::Half,
// c10::BFloat16). f is an ordinary lambda, so its body may hold the commas of a CUDA launch.
template <typename F>
void dispatch_floating(ScalarType dtype, const F& f) {
#define DDET_FLOATING_CASE(type) THO_DISPATCH_CASE(ScalarType::type, [&] { f(TypeTag<scalar_t>{}); })
  THO_DISPATCH_SWITCH(dtype, "ddet_ops", DDET_FLOATING_CASE(Float) DDET_FLOATING_CASE(Double) DDET_FLOATING_CASE(Half)
                                             DDET_FLOATING_CASE(BFloat16));
#undef DDET_FLOATING_CASE
}

}  // namespace ddet_ops
