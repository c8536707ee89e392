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
  double lr = number_arg(info, 1, "lr"), max_norm = number_arg(info, 2, "maxGradNorm"), scale = number_arg(info, 3, "gradScale");
  bool skip = bool_arg(info, 4, "skipNonFinite");
  return run<double>(
      info.Env(), [o, lr, max_norm, scale, skip] { return optimizer_step(*o, lr, max_norm, scale, skip); },
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
}

}  // namespace tunekit::addon
