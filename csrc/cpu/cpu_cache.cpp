// A cache of large freed CPU output blocks, the CPU counterpart of the CUDA caching allocator.
//
// The op's outputs are large and fresh: the kernel gradients alone are as big as the kernels.
// Fresh memory costs a page fault and a kernel-side zeroing per page on first touch, which on a
// 2-core Xeon made writing a new 332 MB gradient 2.3x slower than writing memory touched before
// (7 GB/s against 16 GB/s, huge pages included). In a training loop the same sizes come back
// every step, so blocks of at least kMinBytes are kept when their tensors die and handed out
// again, up to a byte limit (DDET_OPS_CPU_CACHE_MB, default 2048; 0 turns the cache off).
//
// The stable ABI has no allocator interface: a block is wrapped as a tensor (from_blob) whose
// deleter hands it back. Nor does it reach the profiler's memory events, so the cache counts the
// bytes of its blocks in use and their high-water mark itself (cpu_cache_peak_bytes).
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

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
  DDET_CHECK(*end == '\0' && megabytes >= 0 && errno != ERANGE,
             "ddet_ops: DDET_OPS_CPU_CACHE_MB must be a whole number of megabytes >= 0, got '", text, "'");
  DDET_CHECK(static_cast<unsigned long long>(megabytes) <= (SIZE_MAX >> 20),
             "ddet_ops: DDET_OPS_CPU_CACHE_MB=", text, " megabytes is more bytes than this machine can address");
  return static_cast<size_t>(megabytes) << 20;
}

struct Block {
  void* ptr;
  size_t bytes;
};

class BlockCache {
 public:
  BlockCache() : limit_(limit_from_environment()) {
#ifdef __linux__
    // A fork while another thread is inside the cache would give the child a locked lock and a
    // half-updated block list (DataLoader workers are forked): forks wait for the lock.
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
#endif
  }

  // A contiguous tensor of `sizes`, in a cached block when it is large enough.
  Tensor allocate(IntList sizes, ScalarType dtype, size_t element_bytes) {
    std::vector<int64_t> strides(sizes.size());
    int64_t numel = 1;
    for (size_t d = sizes.size(); d-- > 0;) {
      strides[d] = numel;
      numel *= sizes[d];
    }
    const size_t n = static_cast<size_t>(numel) * element_bytes;
    if (n < kMinBytes || limit_ == 0) return torch::stable::empty(sizes, dtype);
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    Block* block = take(bytes);
    if (block == nullptr) block = fresh(bytes);
    count_in_use(static_cast<int64_t>(block->bytes));
    try {
      return torch::stable::from_blob(block->ptr, sizes, strides, Device(torch::headeronly::DeviceType::CPU), dtype,
                                      [block](void*) { instance().release(block); });
    } catch (...) {
      release(block);
      throw;
    }
  }

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

  size_t peak() const { return peak_; }
  void reset_peak() { peak_ = in_use_.load(); }

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
    DDET_CHECK(error == 0 && ptr != nullptr, "ddet_ops: out of memory allocating ", bytes, " bytes for an output");
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

  void release(Block* block) {
    count_in_use(-static_cast<int64_t>(block->bytes));
    keep(block);
  }

  void count_in_use(int64_t delta) {
    const size_t in_use = in_use_ += delta;
    size_t peak = peak_.load();
    while (in_use > peak && !peak_.compare_exchange_weak(peak, in_use)) {
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
  std::atomic<size_t> peak_{0};
};

void empty_cpu_cache() { BlockCache::instance().empty(); }

int64_t cpu_cache_bytes() { return static_cast<int64_t>(BlockCache::instance().cached()); }

int64_t cpu_cache_peak_bytes() { return static_cast<int64_t>(BlockCache::instance().peak()); }

void reset_cpu_cache_peak() { BlockCache::instance().reset_peak(); }

}  // namespace

Tensor empty_cpu_output(IntList sizes, ScalarType dtype) {
  size_t element_bytes = 0;
  dispatch_floating(dtype, [&](auto type) { element_bytes = sizeof(typename decltype(type)::type); });
  return BlockCache::instance().allocate(sizes, dtype, element_bytes);
}

STABLE_TORCH_LIBRARY_FRAGMENT(ddet_ops, m) {
  m.def("empty_cpu_cache() -> ()");
  m.def("cpu_cache_bytes() -> int");
  m.def("cpu_cache_peak_bytes() -> int");
  m.def("reset_cpu_cache_peak() -> ()");
}

// No tensor arguments, so no device to dispatch on: registered for every one.
STABLE_TORCH_LIBRARY_IMPL(ddet_ops, CompositeExplicitAutograd, m) {
  m.impl("empty_cpu_cache", TORCH_BOX(&empty_cpu_cache));
  m.impl("cpu_cache_bytes", TORCH_BOX(&cpu_cache_bytes));
  m.impl("cpu_cache_peak_bytes", TORCH_BOX(&cpu_cache_peak_bytes));
  m.impl("reset_cpu_cache_peak", TORCH_BOX(&reset_cpu_cache_peak));
}

}  // namespace ddet_ops
