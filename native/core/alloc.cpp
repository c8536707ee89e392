// A caching CPU allocator for libtorch, in the spirit of its CUDA caching allocator.
//
// A training step frees and re-allocates the same large activations and gradients every step. Through malloc,
// blocks above glibc's mmap threshold go back to the kernel on free and come back as fresh zeroed pages, one fault
// per 4 KiB: about 50k faults (200 MB of zeroing) per step of the gpt2 benchmark, which is tens of milliseconds.
// Keeping freed large blocks and handing them out again removes that. (Backing them with transparent huge pages was
// tried: no measurable gain in the step, and a slower first step while the kernel compacts memory.)
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "api.h"

namespace tunekit {
namespace {

constexpr size_t kAlign = 64;                // c10's gAlignment
constexpr size_t kLarge = size_t(64) << 10;  // below this, glibc's bins reuse memory well already
constexpr size_t kRound = size_t(16) << 10;  // large requests are rounded up to this
// A block idle for this many large allocations is returned to the system at the next miss. A training step makes a
// few hundred, so a steady loop reuses everything, while the sizes of a shape seen once (a longer batch, a growing
// buffer) do not stay resident until the cache limit.
constexpr size_t kMaxIdle = 2048;

class CachingCpuAllocator;
CachingCpuAllocator* g_alloc = nullptr;  // never freed: tensors may be released during static teardown

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(size_t limit) : limit_(limit) {}

  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};
    void* p = n < kLarge ? map(n) : large(n);
    if (!p) throw std::bad_alloc();
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {true, in_use_, cached_, peak_, hits_, misses_};
  }
  void empty() {
    std::lock_guard<std::mutex> lock(mu_);
    drop_cached();
  }

 private:
  static void release(void* p);

  void* large(size_t n) {
    size_t size = (n + kRound - 1) / kRound * kRound;
    {
      std::lock_guard<std::mutex> lock(mu_);
      tick_++;
      // Best fit, but never a block much larger than asked: a growing KV cache would otherwise pin big blocks.
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= size + size / 4 + kRound) {
        void* p = it->second.ptr;
        size_t got = it->first;
        free_.erase(it);
        cached_ -= got;
        live_[p] = got;
        in_use_ += got;
        peak_ = std::max(peak_, in_use_ + cached_);
        hits_++;
        return p;
      }
      misses_++;
      if (cached_ + size > limit_)
        drop_cached();
      else
        drop_idle();
    }
    void* p = map(size);
    if (!p) {
      empty();  // the cache may be what stands between this request and the memory it needs
      p = map(size);
      if (!p) return nullptr;
    }
    std::lock_guard<std::mutex> lock(mu_);
    live_[p] = size;
    in_use_ += size;
    peak_ = std::max(peak_, in_use_ + cached_);
    return p;
  }

  static void* map(size_t size) {
    void* p = nullptr;
    return posix_memalign(&p, kAlign, size) == 0 ? p : nullptr;
  }

  static void unmap(void* p, size_t) { std::free(p); }

  void give_back(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) {  // a small block
      std::free(p);
      return;
    }
    size_t size = it->second;
    live_.erase(it);
    in_use_ -= size;
    free_.emplace(size, Idle{p, tick_});
    cached_ += size;
    while (cached_ > limit_ && !free_.empty()) {  // over the budget: the largest idle blocks go first
      auto big = std::prev(free_.end());
      unmap(big->second.ptr, big->first);
      cached_ -= big->first;
      free_.erase(big);
    }
  }

  void drop_idle() {
    for (auto it = free_.begin(); it != free_.end();) {
      if (tick_ - it->second.since > kMaxIdle) {
        unmap(it->second.ptr, it->first);
        cached_ -= it->first;
        it = free_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void drop_cached() {
    for (auto& [size, idle] : free_) unmap(idle.ptr, size);
    free_.clear();
    cached_ = 0;
  }

  std::mutex mu_;
  struct Idle {
    void* ptr;
    size_t since;  // tick_ when it was freed
  };
  std::multimap<size_t, Idle> free_;
  std::unordered_map<void*, size_t> live_;
  size_t limit_, tick_ = 0, in_use_ = 0, cached_ = 0, peak_ = 0, hits_ = 0, misses_ = 0;
};

void CachingCpuAllocator::release(void* p) {
  if (p) g_alloc->give_back(p);
}

}  // namespace

bool install_cpu_cache() {
  const char* mode = std::getenv("TUNEKIT_CPU_ALLOCATOR");
  if (mode && std::string(mode) == "system") return false;
  size_t limit_mb = 2048;
  if (const char* mb = std::getenv("TUNEKIT_CPU_CACHE_MB")) {
    char* end = nullptr;
    long long v = std::strtoll(mb, &end, 10);
    if (end == mb || *end || v < 0) throw Error("E_ARG", "TUNEKIT_CPU_CACHE_MB must be a whole number of MiB");
    limit_mb = size_t(v);
  }
  static std::once_flag once;
  std::call_once(once, [limit_mb] {
    g_alloc = new CachingCpuAllocator(limit_mb << 20);
    c10::SetCPUAllocator(g_alloc, /*priority=*/1);
  });
  return true;
}

CpuCacheStats cpu_cache_stats() { return g_alloc ? g_alloc->stats() : CpuCacheStats{}; }

void empty_cpu_cache() {
  if (g_alloc) g_alloc->empty();
}

}  // namespace tunekit
