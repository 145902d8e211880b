// A cache of large freed CPU output blocks, the CPU counterpart of the CUDA caching allocator.
//
// The op's outputs are large and fresh: the kernel gradients alone are as big as the kernels.
// Fresh memory costs a page fault and a kernel-side zeroing per page on first touch, which on a
// 2-core Xeon made writing a new 332 MB gradient 2.3x slower than writing memory touched before
// (7 GB/s against 16 GB/s, huge pages included). In a training loop the same sizes come back
// every step, so blocks of at least kMinBytes are kept when their tensors die and handed out
// again, up to a byte limit (DDET_OPS_CPU_CACHE_MB, default 2048; 0 turns the cache off).
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#endif

#include "../dynconv.h"

namespace ddet_ops {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
// Smaller outputs fault in little time and glibc reuses their memory anyway.
constexpr size_t kMinBytes = size_t(4) << 20;

// The byte limit from DDET_OPS_CPU_CACHE_MB; a value whose byte count does not fit in size_t is
// refused rather than wrapped around (which could turn the cache off or shrink it unnoticed).
size_t limit_from_environment() {
  const char* text = std::getenv("DDET_OPS_CPU_CACHE_MB");
  if (text == nullptr || *text == '\0') return size_t(2048) << 20;
  char* end = nullptr;
  errno = 0;
  const long long megabytes = std::strtoll(text, &end, 10);
  TORCH_CHECK(*end == '\0' && megabytes >= 0 && errno != ERANGE,
              "ddet_ops: DDET_OPS_CPU_CACHE_MB must be a whole number of megabytes >= 0, got '", text, "'");
  TORCH_CHECK(static_cast<unsigned long long>(megabytes) <= (SIZE_MAX >> 20),
              "ddet_ops: DDET_OPS_CPU_CACHE_MB=", text, " megabytes is more bytes than this machine can address");
  return static_cast<size_t>(megabytes) << 20;
}

struct Block {
  void* ptr;
  size_t bytes;
};

class BlockCache final : public c10::Allocator {
 public:
  BlockCache() : limit_(limit_from_environment()) {
#ifdef __linux__
    // A fork while another thread is inside the cache would give the child a locked lock and a
    // half-updated block list (DataLoader workers are forked): forks wait for the lock.
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
#endif
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes || limit_ == 0) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    Block* block = take(bytes);
    if (block == nullptr) block = fresh(bytes);
    report(block, static_cast<int64_t>(block->bytes));
    return {block->ptr, block, &BlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  void empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [bytes, block] : free_) destroy(block);
    free_.clear();
    cached_ = 0;
  }

  size_t cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  // A block of exactly `bytes`, or up to 1/8 larger so that a slightly smaller request does not
  // pin a much larger block.
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > bytes + bytes / 8) return nullptr;
    Block* block = it->second;
    free_.erase(it);
    cached_ -= block->bytes;
    return block;
  }

  static Block* fresh(size_t bytes) {
    void* ptr = nullptr;
    const int error = posix_memalign(&ptr, kHugePage, bytes);
    TORCH_CHECK(error == 0 && ptr != nullptr, "ddet_ops: out of memory allocating ", bytes, " bytes for an output");
#ifdef __linux__
    // Transparent huge pages: one first-touch page fault per 2 MiB of a fresh block, not per 4 KiB.
    madvise(ptr, bytes, MADV_HUGEPAGE);
#endif
    return new Block{ptr, bytes};
  }

  static void destroy(Block* block) {
    std::free(block->ptr);
    delete block;
  }

  static void release(void* context) {
    Block* block = static_cast<Block*>(context);
    instance().report(block, -static_cast<int64_t>(block->bytes));
    instance().keep(block);
  }

  // Tells torch.profiler (profile_memory=True) about blocks handed out and given back, as
  // torch's own CPU allocator does, so memory profiles see the op's outputs.
  void report(const Block* block, int64_t delta) {
    const size_t in_use = in_use_ += delta;
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(block->ptr, delta, in_use, in_use + cached(),
                                       c10::Device(c10::DeviceType::CPU));
    }
  }

  void keep(Block* block) {
    if (block->bytes > limit_) {  // would not fit even in an empty cache: keep the others
      destroy(block);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    // Make room by dropping the largest cached blocks first: they are the costliest to hold.
    while (!free_.empty() && cached_ + block->bytes > limit_) {
      auto largest = std::prev(free_.end());
      cached_ -= largest->first;
      destroy(largest->second);
      free_.erase(largest);
    }
    free_.emplace(block->bytes, block);
    cached_ += block->bytes;
  }

 public:
  // Never destroyed: tensors may be freed during interpreter shutdown, after static destructors.
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();
    return *cache;
  }

 private:
  const size_t limit_;
  std::mutex mutex_;
  std::multimap<size_t, Block*> free_;
  size_t cached_ = 0;
  std::atomic<size_t> in_use_{0};
};

void empty_cpu_cache() { BlockCache::instance().empty(); }

int64_t cpu_cache_bytes() { return static_cast<int64_t>(BlockCache::instance().cached()); }

}  // namespace

at::Tensor empty_cpu_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_generic(sizes, &BlockCache::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   c10::MemoryFormat::Contiguous);
}

TORCH_LIBRARY_FRAGMENT(ddet_ops, m) {
  m.def("empty_cpu_cache() -> ()", &empty_cpu_cache);
  m.def("cpu_cache_bytes() -> int", &cpu_cache_bytes);
}

}  // namespace ddet_ops
