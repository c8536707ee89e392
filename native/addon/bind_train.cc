// Bindings of training pieces: optimizers and the logistic regression of the feature-based strategy.
#include "convert.h"

namespace tunekit::addon {
namespace {

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
  return run<std::shared_ptr<Optimizer>>(
      info.Env(), [m, s] { return create_optimizer(*m, s); },
      [](Napi::Env env, std::shared_ptr<Optimizer>& opt) { return wrap(env, opt); });
}

Napi::Value OptimizerStep(const Napi::CallbackInfo& info) {
  auto o = unwrap<Optimizer>(info, 0, "optimizer");
  double lr = number_arg(info, 1, "lr"), max_norm = number_arg(info, 2, "maxGradNorm");
  return run<double>(
      info.Env(), [o, lr, max_norm] { return optimizer_step(*o, lr, max_norm); },
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

// { name, numbers: {k: number}, strings: {k: string}, arrays: {k: Float32Array} }: the objective reads its own fields.
ObjectiveSpec objective_arg(const Napi::CallbackInfo& info, size_t i) {
  auto env = info.Env();
  auto o = object_arg(info, i, "objective");
  ObjectiveSpec s;
  s.name = str_field(o, "name", "");
  auto group = [&](const char* key) -> Napi::Object {
    auto v = o.Get(key);
    if (v.IsUndefined()) return Napi::Object::New(env);
    if (!v.IsObject()) type_error(env, std::string("objective.") + key + " must be an object");
    return v.As<Napi::Object>();
  };
  auto numbers = group("numbers");
  for (const auto& k : strings(env, numbers.GetPropertyNames(), "objective.numbers")) {
    auto v = numbers.Get(k);
    if (!v.IsNumber()) type_error(env, "objective.numbers." + k + " must be a number");
    s.numbers[k] = v.As<Napi::Number>().DoubleValue();
  }
  auto strs = group("strings");
  for (const auto& k : strings(env, strs.GetPropertyNames(), "objective.strings")) {
    auto v = strs.Get(k);
    if (!v.IsString()) type_error(env, "objective.strings." + k + " must be a string");
    s.strings[k] = v.As<Napi::String>().Utf8Value();
  }
  auto arrays = group("arrays");
  for (const auto& k : strings(env, arrays.GetPropertyNames(), "objective.arrays"))
    s.arrays[k] = typed<Napi::Float32Array, float>(env, arrays.Get(k), napi_float32_array, ("objective.arrays." + k).c_str());
  return s;
}

Napi::Value ObjectiveStep(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  auto spec = objective_arg(info, 2);
  double scale = number_arg(info, 3, "lossScale");
  bool backward = bool_arg(info, 4, "backward");
  return run<std::map<std::string, double>>(
      info.Env(), [m, b, spec, scale, backward] { return objective_step(*m, b, spec, scale, backward); },
      [](Napi::Env env, std::map<std::string, double>& stats) {
        auto o = Napi::Object::New(env);
        for (const auto& [k, v] : stats) o.Set(k, Napi::Number::New(env, v));
        return Napi::Value(o);
      });
}

Napi::Value TokenLogprobs(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  double temperature = number_arg(info, 2, "temperature");
  return run<FloatArray>(
      info.Env(), [m, b, temperature] { return token_logprobs(*m, b, temperature); }, float_array);
}

Napi::Value AddValueHead(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  return run_void(info.Env(), [m] { add_value_head(*m); });
}

Napi::Value TokenLogprobsAndValues(const Napi::CallbackInfo& info) {
  auto m = unwrap<Model>(info, 0, "model");
  auto b = batch_arg(info, 1);
  double temperature = number_arg(info, 2, "temperature");
  return run<std::pair<FloatArray, FloatArray>>(
      info.Env(), [m, b, temperature] { return token_logprobs_and_values(*m, b, temperature); },
      [](Napi::Env env, std::pair<FloatArray, FloatArray>& r) {
        auto o = Napi::Object::New(env);
        o.Set("logprobs", float_array(env, r.first));
        o.Set("values", float_array(env, r.second));
        return Napi::Value(o);
      });
}

Napi::Value PpoAdvantagesJs(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto o = object_arg(info, 0, "ppo");
  PpoInputs in;
  in.rows = int64_t(num_field(o, "rows", 0));
  in.length = int64_t(num_field(o, "length", 0));
  auto f32 = [&](const char* key) { return typed<Napi::Float32Array, float>(env, o.Get(key), napi_float32_array, key); };
  in.logprobs = f32("logprobs");
  in.ref_logprobs = f32("refLogprobs");
  in.values = f32("values");
  in.mask = f32("mask");
  in.scores = f32("scores");
  in.kl_coef = num_field(o, "klCoef", 0.05);
  in.gamma = num_field(o, "gamma", 1);
  in.lam = num_field(o, "lam", 0.95);
  in.whiten_rewards = bool_field(o, "whitenRewards", false);
  return run<PpoAdvantages>(
      env, [in] { return ppo_advantages(in); },
      [](Napi::Env env, PpoAdvantages& r) {
        auto out = Napi::Object::New(env);
        auto arr = [&](const std::vector<float>& v) {
          auto a = Napi::Float32Array::New(env, v.size());
          std::copy(v.begin(), v.end(), a.Data());
          return a;
        };
        out.Set("rewards", arr(r.rewards));
        out.Set("advantages", arr(r.advantages));
        out.Set("returns", arr(r.returns));
        out.Set("kl", Napi::Number::New(env, r.kl));
        out.Set("nonScoreReward", Napi::Number::New(env, r.non_score_reward));
        return Napi::Value(out);
      });
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
  return run<LogRegResult>(
      env, [x = std::move(x), n, dim, y = std::move(y), classes, s] { return logreg_fit(x, n, dim, y, classes, s); },
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

}  // namespace

void init_train(Napi::Env env, Napi::Object exports) {
  exports.Set("createOptimizer", Napi::Function::New(env, CreateOptimizer));
  exports.Set("optimizerStep", Napi::Function::New(env, OptimizerStep));
  exports.Set("optimizerSave", Napi::Function::New(env, OptimizerSave));
  exports.Set("optimizerLoad", Napi::Function::New(env, OptimizerLoad));
  exports.Set("logRegFit", Napi::Function::New(env, LogRegFit));
  exports.Set("objectiveStep", Napi::Function::New(env, ObjectiveStep));
  exports.Set("tokenLogprobs", Napi::Function::New(env, TokenLogprobs));
  exports.Set("addValueHead", Napi::Function::New(env, AddValueHead));
  exports.Set("tokenLogprobsAndValues", Napi::Function::New(env, TokenLogprobsAndValues));
  exports.Set("ppoAdvantages", Napi::Function::New(env, PpoAdvantagesJs));
}

}  // namespace tunekit::addon
