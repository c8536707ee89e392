// What every binding file shares: errors with a code, the compute thread, Promise-returning jobs, argument readers
// and converters between JS values and the core's plain types (api.h). Never includes torch.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <type_traits>

#include "../core/api.h"

namespace tunekit::addon {

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& msg);
[[noreturn]] void type_error(Napi::Env env, const std::string& msg);

// Every job runs on one long-lived thread, whichever libuv thread picked it up (see convert.cc).
void run_on_compute_thread(const std::function<void()>& fn);

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
      run_on_compute_thread([this] { result_ = work_(); });
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

Napi::Value run_void(Napi::Env env, std::function<void()> work);

Napi::Object object_arg(const Napi::CallbackInfo& info, size_t i, const char* what);
std::string string_arg(const Napi::CallbackInfo& info, size_t i, const char* what);
double number_arg(const Napi::CallbackInfo& info, size_t i, const char* what);
bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* what);
double num_field(const Napi::Object& o, const char* key, double fallback);
std::string str_field(const Napi::Object& o, const char* key, const std::string& fallback);
bool bool_field(const Napi::Object& o, const char* key, bool fallback);
std::vector<std::string> strings(Napi::Env env, const Napi::Value& v, const char* what);
std::vector<int64_t> ints(Napi::Env env, const Napi::Value& v, const char* what);

template <typename TA, typename T>
std::vector<T> typed(Napi::Env env, const Napi::Value& v, napi_typedarray_type type, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    type_error(env, std::string(what) + " has the wrong typed-array type");
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
  if constexpr (std::is_same_v<T, Model>) return "model";
  if constexpr (std::is_same_v<T, DecodeSession>) return "decode session";
  if constexpr (std::is_same_v<T, ProcessGroup>) return "process group";
  return "optimizer";
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

Batch batch_arg(const Napi::CallbackInfo& info, size_t i);
Napi::Value float_array(Napi::Env env, FloatArray& a);
std::vector<TensorEntry> entries_arg(Napi::Env env, const Napi::Value& v);

// Each binding file adds its functions to the module's exports.
void init_model(Napi::Env env, Napi::Object exports);
void init_peft(Napi::Env env, Napi::Object exports);
void init_train(Napi::Env env, Napi::Object exports);
void init_rl(Napi::Env env, Napi::Object exports);
void init_dist(Napi::Env env, Napi::Object exports);

}  // namespace tunekit::addon
