// Bindings of the preference and RLHF core (native/core/rl/): objective steps, token log-probabilities and values,
// the value head and the PPO kernels.
#include "convert.h"

namespace tunekit::addon {
namespace {

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

}  // namespace

void init_rl(Napi::Env env, Napi::Object exports) {
  exports.Set("objectiveStep", Napi::Function::New(env, ObjectiveStep));
  exports.Set("tokenLogprobs", Napi::Function::New(env, TokenLogprobs));
  exports.Set("addValueHead", Napi::Function::New(env, AddValueHead));
  exports.Set("tokenLogprobsAndValues", Napi::Function::New(env, TokenLogprobsAndValues));
  exports.Set("ppoAdvantages", Napi::Function::New(env, PpoAdvantagesJs));
}

}  // namespace tunekit::addon
