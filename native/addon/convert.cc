// The shared converters and the compute thread (convert.h).
#include "convert.h"

#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

namespace tunekit::addon {

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
namespace {
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
}  // namespace

void run_on_compute_thread(const std::function<void()>& fn) { ComputeThread::get().run(fn); }

Napi::Value run_void(Napi::Env env, std::function<void()> work) {
  return run<bool>(
      env,
      [work] {
        work();
        return true;
      },
      [](Napi::Env e, bool&) { return e.Undefined(); });
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

}  // namespace tunekit::addon
