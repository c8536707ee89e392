// The module: installs the CPU allocator, then exports every binding file's functions and the runtime's own.
#include "convert.h"

namespace tunekit::addon {
namespace {

// The RNG is seeded, read and restored as jobs like any other, so that a seed lands between the computations queued
// before and after it rather than racing a job already running on the compute thread.
Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  auto seed = uint64_t(number_arg(info, 0, "seed"));
  return run_void(info.Env(), [seed] { manual_seed(seed); });
}

Napi::Value RngState(const Napi::CallbackInfo& info) {
  using Bytes = std::vector<uint8_t>;
  return run<Bytes>(
      info.Env(), [] { return rng_state(); },
      [](Napi::Env env, Bytes& s) { return Napi::Value(Napi::Buffer<uint8_t>::Copy(env, s.data(), s.size())); });
}

Napi::Value SetRngState(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsBuffer()) type_error(info.Env(), "state must be a Buffer");
  auto b = info[0].As<Napi::Buffer<uint8_t>>();
  std::vector<uint8_t> state(b.Data(), b.Data() + b.Length());
  return run_void(info.Env(), [state] { set_rng_state(state); });
}

Napi::Value CudaAvailable(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), cuda_available()); }

Napi::Value BenchMatmul(const Napi::CallbackInfo& info) {
  auto n = int64_t(number_arg(info, 0, "n")), iters = int64_t(number_arg(info, 1, "iters"));
  auto dtype = string_arg(info, 2, "dtype");
  return run<double>(
      info.Env(), [n, iters, dtype] { return bench_matmul(n, iters, dtype); },
      [](Napi::Env env, double& g) { return Napi::Number::New(env, g); });
}

Napi::Value TorchInfo(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), torch_info()); }

Napi::Value EmptyCpuCache(const Napi::CallbackInfo& info) {
  return run_void(info.Env(), [] { empty_cpu_cache(); });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  try {
    install_cpu_cache();
  } catch (const tunekit::Error& e) {
    throw make_error(env, e.code, e.what());
  }
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed));
  exports.Set("rngState", Napi::Function::New(env, RngState));
  exports.Set("setRngState", Napi::Function::New(env, SetRngState));
  exports.Set("cudaAvailable", Napi::Function::New(env, CudaAvailable));
  exports.Set("benchMatmul", Napi::Function::New(env, BenchMatmul));
  exports.Set("torchInfo", Napi::Function::New(env, TorchInfo));
  exports.Set("emptyCpuCache", Napi::Function::New(env, EmptyCpuCache));
  init_model(env, exports);
  init_peft(env, exports);
  init_train(env, exports);
  init_rl(env, exports);
  init_dist(env, exports);
  return exports;
}

}  // namespace
}  // namespace tunekit::addon

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return tunekit::addon::Init(env, exports); }

NODE_API_MODULE(tunekit, InitModule)
