// Process-wide state and facts: the RNG, the device, the matmul ceiling, what this libtorch is.
#include <torch/cuda.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>

#include "model.h"

namespace tunekit {

void manual_seed(uint64_t seed) { torch::manual_seed(seed); }

std::vector<uint8_t> rng_state() {
  auto s = at::detail::getDefaultCPUGenerator().get_state();
  return std::vector<uint8_t>(s.data_ptr<uint8_t>(), s.data_ptr<uint8_t>() + s.numel());
}

void set_rng_state(const std::vector<uint8_t>& state) {
  auto t = torch::from_blob(const_cast<uint8_t*>(state.data()), {int64_t(state.size())}, torch::kUInt8).clone();
  try {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(t);
  } catch (const c10::Error& e) {
    throw Error("E_FORMAT", "invalid RNG state (" + std::to_string(state.size()) + " bytes)");
  }
}

bool cuda_available() { return torch::cuda::is_available(); }

double bench_matmul(int64_t n, int64_t iters, const std::string& dtype) {
  if (n < 1 || iters < 1) throw Error("E_ARG", "bench_matmul needs n >= 1 and iters >= 1");
  auto t = parse_dtype(dtype);
  torch::NoGradGuard g;
  auto opts = torch::TensorOptions().dtype(t);
  auto a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts), c = torch::empty({n, n}, opts);
  auto rate = [&](const std::function<void()>& product) {
    product();  // warm-up: thread pool, caches, oneDNN's kernel generation
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < iters; i++) product();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return 2.0 * double(n) * double(n) * double(n) * double(iters) / s / 1e9;
  };
  double aten = rate([&] { torch::mm_out(c, a, b); });
  if (t != torch::kFloat32) return aten;  // aten's reduced-precision products already run through oneDNN
  // In float32 the better of the two matmul libraries inside this libtorch (MKL through aten, oneDNN through
  // matmul_nt), since tunekit's dense layers use both: the ceiling is the best square product the machine gives either.
  double onednn = rate([&] { c = matmul_nt(a, b, torch::Tensor()); });
  return std::max(aten, onednn);
}

// How many threads at::parallel_for, as compiled into tunekit's own kernels, actually spreads work over.
int kernel_threads() {
  std::vector<std::atomic<bool>> seen(at::get_num_threads());
  at::parallel_for(0, int64_t(seen.size()), 1, [&](int64_t, int64_t) { seen[at::get_thread_num()] = true; });
  return int(std::count_if(seen.begin(), seen.end(), [](const std::atomic<bool>& s) { return s.load(); }));
}

std::string torch_info() {
  auto c = cpu_cache_stats();
  auto mib = [](size_t b) { return std::to_string(double(b) / (1 << 20)); };
  return std::string("{\"torch\":\"") + TORCH_VERSION + "\",\"threads\":" + std::to_string(at::get_num_threads()) +
         ",\"kernelThreads\":" + std::to_string(kernel_threads()) + ",\"cpuAllocator\":\"" + (c.active ? "caching" : "system") +
         "\",\"cpuCache\":{\"inUseMiB\":" + mib(c.in_use) + ",\"cachedMiB\":" + mib(c.cached) + ",\"peakMiB\":" + mib(c.peak) +
         ",\"hits\":" + std::to_string(c.hits) + ",\"misses\":" + std::to_string(c.misses) + "},\"gemm\":\"" +
         (onednn_gemm() ? "onednn+mkl" : "aten") + "\"}";
}

}  // namespace tunekit
