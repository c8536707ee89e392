// N-API glue: checks JS arguments, converts them once, runs the core on a worker thread, settles a Promise.
// Never includes torch (compile time), and never lets a C++ exception reach Node.
#include <napi.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <type_traits>

#include "../core/api.h"

namespace {

using namespace tunekit;

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& msg) {
  auto e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

[[noreturn]] void type_error(Napi::Env env, const std::string& msg) {
  auto e = Napi::TypeError::New(env, msg);
  e.Set("code", Napi::String::New(env, "E_TYPE"));
  throw e;
}

// Every job runs on this one long-lived thread, whichever libuv thread picked it up. libtorch's OpenMP pool belongs to
// the thread that calls into it: jobs that hopped between libuv's four threads built up to four pools whose spinning
// workers fought the running one for the cores, and glibc gave each thread its own heap arena, so freed activations
// of one step were not reused by the next (bench: 40k vs 126k page faults per training step on alternate steps).
class ComputeThread {
 public:
  static ComputeThread& get() {
    static ComputeThread* t = new ComputeThread();  // never destroyed: a detached thread may outlive static teardown
    return *t;
  }
  void run(const std::function<void()>& fn) {
    std::packaged_task<void()> task(fn);
    auto done = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    done.get();
  }

 private:
  ComputeThread() {
    std::thread([this] {
      for (;;) {
        std::packaged_task<void()> task;
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [this] { return !queue_.empty(); });
          task = std::move(queue_.front());
          queue_.pop_front();
        }
        task();
      }
    }).detach();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
};

// Runs `work` off the event loop; `done` turns its result into JS on the main thread.
template <typename T>
class Job : public Napi::AsyncWorker {
 public:
  Job(Napi::Env env, std::function<T()> work, std::function<Napi::Value(Napi::Env, T&)> done)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)), done_(std::move(done)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      ComputeThread::get().run([this] { result_ = work_(); });
    } catch (const tunekit::Error& e) {
      fail(e.code, e.what());
    } catch (const std::bad_alloc&) {
      fail("E_MEMORY", "out of memory");
    } catch (const std::exception& e) {
      // libtorch's own errors (c10::Error) carry a backtrace after the first line; keep the message.
      std::string msg = e.what();
      auto cut = msg.find("\nException raised from");
      fail("E_TORCH", cut == std::string::npos ? msg : msg.substr(0, cut));
    }
  }
  void OnOK() override {
    if (!code_.empty()) {
      deferred_.Reject(make_error(Env(), code_, message_).Value());
      return;
    }
    try {
      deferred_.Resolve(done_(Env(), result_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  void fail(const std::string& code, const std::string& msg) {
    code_ = code;
    message_ = msg;
  }
  Napi::Promise::Deferred deferred_;
  std::function<T()> work_;
  std::function<Napi::Value(Napi::Env, T&)> done_;
  T result_{};
  std::string code_, message_;
};

template <typename T>
Napi::Value run(Napi::Env env, std::function<T()> work, std::function<Napi::Value(Napi::Env, T&)> done) {
  auto* job = new Job<T>(env, std::move(work), std::move(done));
  auto p = job->promise();
  job->Queue();
  return p;
}

Napi::Value run_void(Napi::Env env, std::function<void()> work) {
  return run<bool>(env, [work] { work(); return true; }, [](Napi::Env e, bool&) { return e.Undefined(); });
}

// ---- argument readers -----------------------------------------------------------------------------------------

Napi::Object object_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsObject()) type_error(info.Env(), std::string(what) + " must be an object");
  return info[i].As<Napi::Object>();
}

std::string string_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) type_error(info.Env(), std::string(what) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

double number_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) type_error(info.Env(), std::string(what) + " must be a number");
  return info[i].As<Napi::Number>().DoubleValue();
}

bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsBoolean()) type_error(info.Env(), std::string(what) + " must be a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

double num_field(const Napi::Object& o, const char* key, double fallback) {
  auto v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) type_error(o.Env(), std::string(key) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

std::string str_field(const Napi::Object& o, const char* key, const std::string& fallback) {
  auto v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsString()) type_error(o.Env(), std::string(key) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

bool bool_field(const Napi::Object& o, const char* key, bool fallback) {
  auto v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsBoolean()) type_error(o.Env(), std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::vector<std::string> strings(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsArray()) type_error(env, std::string(what) + " must be an array of strings");
  auto a = v.As<Napi::Array>();
  std::vector<std::string> out;
  for (uint32_t i = 0; i < a.Length(); i++) {
    auto s = a.Get(i);
    if (!s.IsString()) type_error(env, std::string(what) + "[" + std::to_string(i) + "] must be a string");
    out.push_back(s.As<Napi::String>().Utf8Value());
  }
  return out;
}

std::vector<int64_t> ints(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsArray()) type_error(env, std::string(what) + " must be an array of integers");
  auto a = v.As<Napi::Array>();
  std::vector<int64_t> out;
  for (uint32_t i = 0; i < a.Length(); i++) {
    auto n = a.Get(i);
    if (!n.IsNumber()) type_error(env, std::string(what) + "[" + std::to_string(i) + "] must be a number");
    out.push_back(n.As<Napi::Number>().Int64Value());
  }
  return out;
}

template <typename TA, typename T>
std::vector<T> typed(Napi::Env env, const Napi::Value& v, napi_typedarray_type type, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) type_error(env, std::string(what) + " has the wrong typed-array type");
  auto a = v.As<TA>();
  return std::vector<T>(a.Data(), a.Data() + a.ElementLength());
}

// A handle JS holds; `kind` tells a model from an optimizer so one is never read as the other.
struct Holder {
  const char* kind;
  std::shared_ptr<void> ptr;
};

template <typename T>
constexpr const char* kind_of() {
  return std::is_same_v<T, Model> ? "model" : "optimizer";
}

template <typename T>
Napi::Value wrap(Napi::Env env, std::shared_ptr<T> p) {
  return Napi::External<Holder>::New(env, new Holder{kind_of<T>(), std::move(p)}, [](Napi::Env, Holder* h) { delete h; });
}

template <typename T>
std::shared_ptr<T> unwrap(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsExternal()) type_error(info.Env(), std::string(what) + " must be a tunekit handle");
  auto* h = info[i].As<Napi::External<Holder>>().Data();
  if (std::string(h->kind) != kind_of<T>()) type_error(info.Env(), std::string(what) + " must be a " + kind_of<T>() + " handle");
  if (!h->ptr) throw make_error(info.Env(), "E_DISPOSED", std::string(what) + " was disposed");
  return std::static_pointer_cast<T>(h->ptr);
}

Batch batch_arg(const Napi::CallbackInfo& info, size_t i) {
  auto env = info.Env();
  auto o = object_arg(info, i, "batch");
  Batch b;
  b.batch = int64_t(num_field(o, "batch", -1));
  b.seq = int64_t(num_field(o, "seq", -1));
  b.input_ids = typed<Napi::Int32Array, int32_t>(env, o.Get("inputIds"), napi_int32_array, "inputIds");
  auto mask = o.Get("attentionMask");
  if (!mask.IsUndefined()) b.attention_mask = typed<Napi::Int32Array, int32_t>(env, mask, napi_int32_array, "attentionMask");
  auto labels = o.Get("labels");
  if (!labels.IsUndefined()) {
    b.labels = typed<Napi::Float32Array, float>(env, labels, napi_float32_array, "labels");
    b.labels_shape = ints(env, o.Get("labelsShape"), "labelsShape");
    int64_t n = 1;
    for (auto d : b.labels_shape) n *= d;
    if (n != int64_t(b.labels.size())) throw make_error(env, "E_SHAPE", "labels has the wrong number of elements for its shape");
  }
  return b;
}

Napi::Value float_array(Napi::Env env, FloatArray& a) {
  auto o = Napi::Object::New(env);
  auto data = Napi::Float32Array::New(env, a.data.size());
  std::copy(a.data.begin(), a.data.end(), data.Data());
  auto shape = Napi::Array::New(env, a.shape.size());
  for (size_t i = 0; i < a.shape.size(); i++) shape.Set(uint32_t(i), Napi::Number::New(env, double(a.shape[i])));
  o.Set("data", data);
  o.Set("shape", shape);
  return o;
}

std::vector<TensorEntry> entries_arg(Napi::Env env, const Napi::Value& v) {
  if (!v.IsArray()) type_error(env, "entries must be an array");
  auto a = v.As<Napi::Array>();
  std::vector<TensorEntry> out;
  for (uint32_t i = 0; i < a.Length(); i++) {
    if (!a.Get(i).IsObject()) type_error(env, "entries must hold objects");
    auto o = a.Get(i).As<Napi::Object>();
    TensorEntry e;
    e.name = str_field(o, "name", "");
    e.dtype = str_field(o, "dtype", "");
    e.shape = ints(env, o.Get("shape"), "shape");
    e.begin = int64_t(num_field(o, "begin", -1));
    e.end = int64_t(num_field(o, "end", -1));
    out.push_back(e);
  }
  return out;
}

// ---- exported functions ---------------------------------------------------------------------------------------

Napi::Value CreateModel(const Napi::CallbackInfo& info) {
  auto o = object_arg(info, 0, "spec");
  ModelSpec s;
  s.family = str_field(o, "family", "");
  s.task = str_field(o, "task", "");
  s.device = str_field(o, "device", "cpu");
  s.dtype = str_field(o, "dtype", "float32");
  s.vocab_size = int64_t(num_field(o, "vocabSize", 0));
  s.hidden_size = int64_t(num_field(o, "hiddenSize", 0));
  s.num_layers = int64_t(num_field(o, "numLayers", 0));
  s.num_heads = int64_t(num_field(o, "numHeads", 0));
  s.num_kv_heads = int64_t(num_field(o, "numKvHeads", double(s.num_heads)));
  s.head_dim = int64_t(num_field(o, "headDim", s.num_heads ? double(s.hidden_size / s.num_heads) : 0));
  s.intermediate_size = int64_t(num_field(o, "intermediateSize", 0));
  s.max_positions = int64_t(num_field(o, "maxPositions", 0));
  s.num_labels = int64_t(num_field(o, "numLabels", 2));
  s.pad_token_id = int64_t(num_field(o, "padTokenId", -1));
  s.norm_eps = num_field(o, "normEps", 1e-5);
  s.rope_theta = num_field(o, "ropeTheta", 10000);
  s.embd_dropout = num_field(o, "embdDropout", 0);
  s.attn_dropout = num_field(o, "attnDropout", 0);
  s.resid_dropout = num_field(o, "residDropout", 0);
  s.classifier_dropout = num_field(o, "classifierDropout", 0);
  s.activation = str_field(o, "activation", "gelu_new");
  s.tie_word_embeddings = bool_field(o, "tieWordEmbeddings", true);
  s.attention_bias = bool_field(o, "attentionBias", false);
  s.mlp_bias = bool_field(o, "mlpBias", false);
  s.scale_attn_by_inverse_layer_idx = bool_field(o, "scaleAttnByInverseLayerIdx", false);
  s.init_seed = uint64_t(num_field(o, "initSeed", 0));
  return run<std::shared_ptr<Model>>(info.Env(), [s] { return create_model(s); },
                                     [](Napi::Env env, std::shared_ptr<Model>& m) { return wrap(env, m); });
}

Napi::Value Parameters(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  return run<std::vector<ParamInfo>>(info.Env(), [m] { return parameters(*m); }, [](Napi::Env env, std::vector<ParamInfo>& ps) {
    auto a = Napi::Array::New(env, ps.size());
    for (size_t i = 0; i < ps.size(); i++) {
      auto o = Napi::Object::New(env);
      o.Set("name", ps[i].name);
      o.Set("dtype", ps[i].dtype);
      auto shape = Napi::Array::New(env, ps[i].shape.size());
      for (size_t j = 0; j < ps[i].shape.size(); j++) shape.Set(uint32_t(j), Napi::Number::New(env, double(ps[i].shape[j])));
      o.Set("shape", shape);
      o.Set("numel", Napi::Number::New(env, double(ps[i].numel)));
      o.Set("trainable", Napi::Boolean::New(env, ps[i].trainable));
      o.Set("hasGrad", Napi::Boolean::New(env, ps[i].has_grad));
      a.Set(uint32_t(i), o);
    }
    return Napi::Value(a);
  });
}

Napi::Value SetTrainable(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto names = strings(info.Env(), info[1], "names");
  bool on = bool_arg(info, 2, "trainable");
  return run_void(info.Env(), [m, names, on] { set_trainable(*m, names, on); });
}

Napi::Value SetTraining(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  bool on = bool_arg(info, 1, "training");
  return run_void(info.Env(), [m, on] { set_training(*m, on); });
}

Napi::Value LoadSafetensors(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto path = string_arg(info, 1, "path");
  auto entries = entries_arg(info.Env(), info[2]);
  return run_void(info.Env(), [m, path, entries] { load_safetensors(*m, path, entries); });
}

Napi::Value SaveSafetensors(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto path = string_arg(info, 1, "path");
  auto names = strings(info.Env(), info[2], "names");
  std::vector<std::string> keys;
  if (info.Length() > 3 && !info[3].IsUndefined()) keys = strings(info.Env(), info[3], "keys");
  return run_void(info.Env(), [m, path, names, keys] { save_safetensors(*m, path, names, keys); });
}

Napi::Value Forward(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  bool want = bool_arg(info, 2, "wantLogits");
  return run<ForwardResult>(info.Env(), [m, b, want] { return forward(*m, b, want); }, [want](Napi::Env env, ForwardResult& r) {
    auto o = Napi::Object::New(env);
    if (want) o.Set("logits", float_array(env, r.logits));
    if (r.has_loss) o.Set("loss", Napi::Number::New(env, r.loss));
    return Napi::Value(o);
  });
}

Napi::Value Backward(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  double scale = number_arg(info, 2, "lossScale");
  return run<double>(info.Env(), [m, b, scale] { return backward(*m, b, scale); },
                     [](Napi::Env env, double& loss) { return Napi::Number::New(env, loss); });
}

Napi::Value Embed(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  auto pooling = string_arg(info, 2, "pooling");
  return run<FloatArray>(info.Env(), [m, b, pooling] { return embed(*m, b, pooling); }, float_array);
}

Napi::Value Generate(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  auto o = object_arg(info, 2, "options");
  GenerateSpec g;
  g.max_new_tokens = int64_t(num_field(o, "maxNewTokens", 20));
  g.temperature = num_field(o, "temperature", 1.0);
  g.top_k = int64_t(num_field(o, "topK", 0));
  g.top_p = num_field(o, "topP", 1.0);
  g.do_sample = bool_field(o, "doSample", false);
  g.eos_token_id = int64_t(num_field(o, "eosTokenId", -1));
  g.use_cache = bool_field(o, "useCache", true);
  g.seed = uint64_t(num_field(o, "seed", 0));
  using Rows = std::vector<std::vector<int32_t>>;
  return run<Rows>(info.Env(), [m, b, g] { return generate(*m, b, g); }, [](Napi::Env env, Rows& rows) {
    auto a = Napi::Array::New(env, rows.size());
    for (size_t i = 0; i < rows.size(); i++) {
      auto r = Napi::Array::New(env, rows[i].size());
      for (size_t j = 0; j < rows[i].size(); j++) r.Set(uint32_t(j), Napi::Number::New(env, rows[i][j]));
      a.Set(uint32_t(i), r);
    }
    return Napi::Value(a);
  });
}

Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  return run_void(info.Env(), [m] { zero_grad(*m); });
}

Napi::Value GradNorm(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  return run<double>(info.Env(), [m] { return grad_norm(*m); }, [](Napi::Env env, double& n) { return Napi::Number::New(env, n); });
}

Napi::Value Dispose(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) type_error(info.Env(), "handle must be a tunekit handle");
  // A job still running keeps its own shared_ptr, so the tensors outlive it.
  info[0].As<Napi::External<Holder>>().Data()->ptr.reset();
  return info.Env().Undefined();
}

Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  manual_seed(uint64_t(number_arg(info, 0, "seed")));
  return info.Env().Undefined();
}

Napi::Value RngState(const Napi::CallbackInfo& info) {
  auto s = rng_state();
  return Napi::Buffer<uint8_t>::Copy(info.Env(), s.data(), s.size());
}

Napi::Value SetRngState(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsBuffer()) type_error(info.Env(), "state must be a Buffer");
  auto b = info[0].As<Napi::Buffer<uint8_t>>();
  try {
    set_rng_state(std::vector<uint8_t>(b.Data(), b.Data() + b.Length()));
  } catch (const tunekit::Error& e) {
    throw make_error(info.Env(), e.code, e.what());
  }
  return info.Env().Undefined();
}

Napi::Value CudaAvailable(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), cuda_available()); }

Napi::Value BenchMatmul(const Napi::CallbackInfo& info) {
  auto n = int64_t(number_arg(info, 0, "n")), iters = int64_t(number_arg(info, 1, "iters"));
  return run<double>(info.Env(), [n, iters] { return bench_matmul(n, iters); }, [](Napi::Env env, double& g) { return Napi::Number::New(env, g); });
}

Napi::Value TorchInfo(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), torch_info()); }

Napi::Value CreateOptimizer(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto o = object_arg(info, 1, "spec");
  OptimizerSpec s;
  s.kind = str_field(o, "kind", "adamw");
  s.beta1 = num_field(o, "beta1", 0.9);
  s.beta2 = num_field(o, "beta2", 0.999);
  s.eps = num_field(o, "eps", 1e-8);
  s.weight_decay = num_field(o, "weightDecay", 0.01);
  s.momentum = num_field(o, "momentum", 0);
  s.dampening = num_field(o, "dampening", 0);
  s.nesterov = bool_field(o, "nesterov", false);
  s.no_decay = strings(info.Env(), o.Get("noDecay"), "noDecay");
  return run<std::shared_ptr<Optimizer>>(info.Env(), [m, s] { return create_optimizer(*m, s); },
                                         [](Napi::Env env, std::shared_ptr<Optimizer>& opt) { return wrap(env, opt); });
}

Napi::Value OptimizerStep(const Napi::CallbackInfo& info) {
  auto o = unwrap<Optimizer>(info, 0, "optimizer");
  double lr = number_arg(info, 1, "lr"), max_norm = number_arg(info, 2, "maxGradNorm");
  return run<double>(info.Env(), [o, lr, max_norm] { return optimizer_step(*o, lr, max_norm); },
                     [](Napi::Env env, double& n) { return Napi::Number::New(env, n); });
}

Napi::Value OptimizerSave(const Napi::CallbackInfo& info) {
  auto o = unwrap<Optimizer>(info, 0, "optimizer");
  auto path = string_arg(info, 1, "path");
  return run_void(info.Env(), [o, path] { optimizer_save(*o, path); });
}

Napi::Value OptimizerLoad(const Napi::CallbackInfo& info) {
  auto o = unwrap<Optimizer>(info, 0, "optimizer");
  auto path = string_arg(info, 1, "path");
  auto entries = entries_arg(info.Env(), info[2]);
  auto step = int64_t(number_arg(info, 3, "step"));
  return run_void(info.Env(), [o, path, entries, step] { optimizer_load(*o, path, entries, step); });
}

// The fields every adapter spec has: its name, PEFT's modules_to_save, and the seed of its initialisation.
template <typename Spec>
void adapter_fields(Napi::Env env, const Napi::Object& o, Spec& s) {
  s.adapter = str_field(o, "adapter", "default");
  auto mts = o.Get("modulesToSave");
  if (!mts.IsUndefined()) s.modules_to_save = strings(env, mts, "modulesToSave");
  s.seed = uint64_t(num_field(o, "seed", 0));
}

Napi::Value AddLora(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto o = object_arg(info, 1, "spec");
  LoraSpec s;
  adapter_fields(info.Env(), o, s);
  s.modules = strings(info.Env(), o.Get("modules"), "modules");
  s.r = int64_t(num_field(o, "r", 8));
  s.alpha = num_field(o, "alpha", 8);
  s.dropout = num_field(o, "dropout", 0);
  s.rslora = bool_field(o, "rslora", false);
  return run_void(info.Env(), [m, s] { add_lora(*m, s); });
}

Napi::Value AddPrompt(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto o = object_arg(info, 1, "spec");
  PromptSpec s;
  adapter_fields(info.Env(), o, s);
  s.num_virtual_tokens = int64_t(num_field(o, "numVirtualTokens", 8));
  auto init = o.Get("initIds");
  if (!init.IsUndefined()) {
    for (auto v : ints(info.Env(), init, "initIds")) s.init_ids.push_back(int32_t(v));
  }
  return run_void(info.Env(), [m, s] { add_prompt(*m, s); });
}

Napi::Value AddBottleneck(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto o = object_arg(info, 1, "spec");
  BottleneckSpec s;
  adapter_fields(info.Env(), o, s);
  s.modules = strings(info.Env(), o.Get("modules"), "modules");
  s.bottleneck_size = int64_t(num_field(o, "bottleneckSize", 64));
  s.nonlinearity = str_field(o, "nonlinearity", "relu");
  return run_void(info.Env(), [m, s] { add_bottleneck(*m, s); });
}

Napi::Value AddPrefix(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto o = object_arg(info, 1, "spec");
  PrefixSpec s;
  adapter_fields(info.Env(), o, s);
  s.num_virtual_tokens = int64_t(num_field(o, "numVirtualTokens", 8));
  s.projection = bool_field(o, "projection", false);
  s.encoder_hidden_size = int64_t(num_field(o, "encoderHiddenSize", 0));
  return run_void(info.Env(), [m, s] { add_prefix(*m, s); });
}

Napi::Value SetAdapter(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto name = string_arg(info, 1, "adapter name");
  return run_void(info.Env(), [m, name] { set_adapter(*m, name); });
}

Napi::Value MergeAdapter(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  bool merge = bool_arg(info, 1, "merge");
  return run_void(info.Env(), [m, merge] { merge ? merge_adapter(*m) : unmerge_adapter(*m); });
}

Napi::Value DeleteAdapter(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto name = string_arg(info, 1, "adapter name");
  return run_void(info.Env(), [m, name] { delete_adapter(*m, name); });
}

Napi::Value LogRegFit(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  if (info.Length() < 6) type_error(env, "logRegFit(x, n, dim, y, classes, spec) takes 6 arguments");
  auto x = typed<Napi::Float32Array, float>(env, info[0], napi_float32_array, "features");
  auto n = int64_t(number_arg(info, 1, "n")), dim = int64_t(number_arg(info, 2, "dim"));
  auto y = typed<Napi::Int32Array, int32_t>(env, info[3], napi_int32_array, "labels");
  auto classes = int64_t(number_arg(info, 4, "classes"));
  auto o = object_arg(info, 5, "spec");
  LogRegSpec s;
  s.C = num_field(o, "C", 1.0);
  s.max_iter = int64_t(num_field(o, "maxIter", 1000));
  s.tol = num_field(o, "tol", 1e-6);
  return run<LogRegResult>(env, [x = std::move(x), n, dim, y = std::move(y), classes, s] { return logreg_fit(x, n, dim, y, classes, s); },
                           [](Napi::Env env, LogRegResult& r) {
                             auto out = Napi::Object::New(env);
                             auto w = Napi::Float64Array::New(env, r.weights.size());
                             std::copy(r.weights.begin(), r.weights.end(), w.Data());
                             auto b = Napi::Float64Array::New(env, r.bias.size());
                             std::copy(r.bias.begin(), r.bias.end(), b.Data());
                             out.Set("weights", w);
                             out.Set("bias", b);
                             out.Set("rows", Napi::Number::New(env, double(r.rows)));
                             out.Set("iterations", Napi::Number::New(env, double(r.iterations)));
                             out.Set("loss", Napi::Number::New(env, r.loss));
                             out.Set("converged", Napi::Boolean::New(env, r.converged));
                             return Napi::Value(out);
                           });
}

Napi::Value EmptyCpuCache(const Napi::CallbackInfo& info) {
  return run_void(info.Env(), [] { empty_cpu_cache(); });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  try {
    install_cpu_cache();
  } catch (const tunekit::Error& e) {
    throw make_error(env, e.code, e.what());
  }
  exports.Set("emptyCpuCache", Napi::Function::New(env, EmptyCpuCache));
  exports.Set("createModel", Napi::Function::New(env, CreateModel));
  exports.Set("parameters", Napi::Function::New(env, Parameters));
  exports.Set("setTrainable", Napi::Function::New(env, SetTrainable));
  exports.Set("setTraining", Napi::Function::New(env, SetTraining));
  exports.Set("loadSafetensors", Napi::Function::New(env, LoadSafetensors));
  exports.Set("saveSafetensors", Napi::Function::New(env, SaveSafetensors));
  exports.Set("forward", Napi::Function::New(env, Forward));
  exports.Set("backward", Napi::Function::New(env, Backward));
  exports.Set("embed", Napi::Function::New(env, Embed));
  exports.Set("generate", Napi::Function::New(env, Generate));
  exports.Set("zeroGrad", Napi::Function::New(env, ZeroGrad));
  exports.Set("gradNorm", Napi::Function::New(env, GradNorm));
  exports.Set("dispose", Napi::Function::New(env, Dispose));
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed));
  exports.Set("rngState", Napi::Function::New(env, RngState));
  exports.Set("setRngState", Napi::Function::New(env, SetRngState));
  exports.Set("cudaAvailable", Napi::Function::New(env, CudaAvailable));
  exports.Set("benchMatmul", Napi::Function::New(env, BenchMatmul));
  exports.Set("torchInfo", Napi::Function::New(env, TorchInfo));
  exports.Set("createOptimizer", Napi::Function::New(env, CreateOptimizer));
  exports.Set("optimizerStep", Napi::Function::New(env, OptimizerStep));
  exports.Set("optimizerSave", Napi::Function::New(env, OptimizerSave));
  exports.Set("optimizerLoad", Napi::Function::New(env, OptimizerLoad));
  exports.Set("logRegFit", Napi::Function::New(env, LogRegFit));
  exports.Set("addLora", Napi::Function::New(env, AddLora));
  exports.Set("setAdapter", Napi::Function::New(env, SetAdapter));
  exports.Set("addPrompt", Napi::Function::New(env, AddPrompt));
  exports.Set("addBottleneck", Napi::Function::New(env, AddBottleneck));
  exports.Set("addPrefix", Napi::Function::New(env, AddPrefix));
  exports.Set("mergeAdapter", Napi::Function::New(env, MergeAdapter));
  exports.Set("deleteAdapter", Napi::Function::New(env, DeleteAdapter));
  return exports;
}

}  // namespace

NODE_API_MODULE(tunekit, Init)
