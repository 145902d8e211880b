// Runs a model exported with `ddet export -o model.pt2` from C++, without Python: loads
// libddet_ops (the dynamic-filtering op the package calls), then the AOTInductor package, runs it
// on an image tensor and writes the result, or compares it with a reference.
//
//   ddet_run_pt2 <libddet_ops.so> <model.pt2> <input.tensor> <output.tensor>
//   ddet_run_pt2 <libddet_ops.so> <model.pt2> <input.tensor> --check <reference.tensor> [tolerance]
//
// A .tensor file is what ddet.deploy.write_tensor writes: int64 rank, int64 sizes, then float32
// values in row-major order, all little-endian.
#include <ATen/ATen.h>
#include <dlfcn.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

at::Tensor read_tensor(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open " + path);
  int64_t rank = 0;
  if (!file.read(reinterpret_cast<char*>(&rank), sizeof rank) || rank < 1 || rank > 8)
    throw std::runtime_error(path + ": not a .tensor file (bad rank)");
  std::vector<int64_t> sizes(rank);
  if (!file.read(reinterpret_cast<char*>(sizes.data()), rank * sizeof(int64_t)))
    throw std::runtime_error(path + ": truncated header");
  at::Tensor tensor = at::empty(sizes, at::kFloat);
  if (!file.read(reinterpret_cast<char*>(tensor.data_ptr<float>()), tensor.numel() * sizeof(float)))
    throw std::runtime_error(path + ": fewer values than its sizes say");
  return tensor;
}

void write_tensor(const std::string& path, const at::Tensor& tensor) {
  at::Tensor values = tensor.to(at::kFloat).contiguous();
  std::ofstream file(path, std::ios::binary);
  const int64_t rank = values.dim();
  file.write(reinterpret_cast<const char*>(&rank), sizeof rank);
  file.write(reinterpret_cast<const char*>(values.sizes().data()), rank * sizeof(int64_t));
  file.write(reinterpret_cast<const char*>(values.data_ptr<float>()), values.numel() * sizeof(float));
  if (!file) throw std::runtime_error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  const bool check = argc >= 6 && std::string(argv[4]) == "--check";
  if (argc != 5 && !(check && argc <= 7)) {
    std::fprintf(stderr, "usage: %s <libddet_ops.so> <model.pt2> <input.tensor> <output.tensor | --check reference.tensor [tolerance]>\n", argv[0]);
    return 2;
  }
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 1;
  }
  try {
    torch::inductor::AOTIModelPackageLoader package(argv[2]);
    at::Tensor output = package.run({read_tensor(argv[3])}).at(0);
    if (!check) {
      write_tensor(argv[4], output);
      return 0;
    }
    const at::Tensor reference = read_tensor(argv[5]);
    const double tolerance = argc == 7 ? std::stod(argv[6]) : 1e-4;
    if (output.sizes() != reference.sizes()) {
      std::fprintf(stderr, "FAIL: output shape %s, reference %s\n", c10::str(output.sizes()).c_str(),
                   c10::str(reference.sizes()).c_str());
      return 1;
    }
    const double difference = (output - reference).abs().max().item<double>();
    std::printf("%s: output %s, max |output - reference| = %.3g (tolerance %.3g)\n", difference <= tolerance ? "PASS" : "FAIL",
                c10::str(output.sizes()).c_str(), difference, tolerance);
    return difference <= tolerance ? 0 : 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
