// AdamW and SGD over a model's trainable parameters, with clipping by global norm.
// The update arithmetic follows torch.optim's single-tensor implementations step for step, so tunekit and PyTorch
// land on the same weights from the same gradients.
#include <unordered_set>

#include "../io.h"

namespace tunekit {

struct ParamState {
  std::string name;
  torch::Tensor param, exp_avg, exp_avg_sq, momentum_buffer;
  bool decay = true;
};

class Optimizer {
 public:
  OptimizerSpec spec;
  std::vector<ParamState> states;
  int64_t step = 0;
};

std::shared_ptr<Optimizer> create_optimizer(Model& m, const OptimizerSpec& spec) {
  if (spec.kind != "adamw" && spec.kind != "sgd") throw Error("E_ARG", "optimizer must be 'adamw' or 'sgd'");
  auto o = std::make_shared<Optimizer>();
  o->spec = spec;
  std::unordered_set<std::string> no_decay(spec.no_decay.begin(), spec.no_decay.end());
  for (const auto& name : m.order) {
    const auto& p = m.params.at(name);
    if (!p.requires_grad()) continue;  // frozen: no state at all
    ParamState s;
    s.name = name;
    s.param = p;
    s.decay = !no_decay.count(name);
    o->states.push_back(s);
  }
  return o;
}

// Unscales the gradients, then returns their global norm and clips them to max_norm; a non-finite norm is returned
// before anything is clipped (the caller refuses or skips the step).
static double unscale_and_clip(Optimizer& o, double max_norm, double grad_scale) {
  std::vector<torch::Tensor> grads;
  for (auto& s : o.states)
    if (s.param.grad().defined()) grads.push_back(s.param.grad());
  if (grads.empty()) return 0.0;
  if (grad_scale != 1.0)
    for (auto& g : grads) g.mul_(1.0 / grad_scale);
  std::vector<torch::Tensor> norms;
  for (auto& g : grads) norms.push_back(torch::linalg_vector_norm(g, 2, {}, false, torch::kFloat32));
  auto total = torch::linalg_vector_norm(torch::stack(norms), 2);
  double value = total.item<double>();
  if (!std::isfinite(value)) return value;
  if (max_norm > 0) {
    auto coef = torch::clamp(max_norm / (total + 1e-6), c10::nullopt, 1.0);
    for (auto& g : grads) g.mul_(coef.to(g.scalar_type()));
  }
  return value;
}

double optimizer_step(Optimizer& o, double lr, double max_norm, double grad_scale, bool skip_non_finite) {
  if (!std::isfinite(lr) || lr < 0) throw Error("E_ARG", "learning rate must be a finite number >= 0");
  if (!std::isfinite(grad_scale) || grad_scale <= 0) throw Error("E_ARG", "gradient scale must be a finite number > 0");
  torch::NoGradGuard no_grad;
  double norm = unscale_and_clip(o, max_norm, grad_scale);
  if (!std::isfinite(norm)) {
    if (skip_non_finite) return norm;
    throw Error("E_NAN", std::string("gradient norm is ") + (std::isnan(norm) ? "NaN" : "infinite") +
                             "; the step was refused and the weights are unchanged");
  }
  o.step++;
  const auto& sp = o.spec;
  if (sp.kind == "adamw") {
    // torch's fused AdamW kernel: one pass over each parameter instead of six elementwise passes. Same update as the
    // single-tensor loop below (checked against torch.optim in test/optim.test.ts); that loop remains for other dtypes.
    std::vector<torch::Tensor> p[2], g[2], m[2], v[2], t[2];
    bool all_f32 = true;
    for (auto& s : o.states) {
      if (!s.param.grad().defined()) continue;
      if (s.param.scalar_type() != torch::kFloat32) all_f32 = false;
      if (!s.exp_avg.defined()) {
        s.exp_avg = torch::zeros_like(s.param, torch::MemoryFormat::Preserve);
        s.exp_avg_sq = torch::zeros_like(s.param, torch::MemoryFormat::Preserve);
      }
      int k = s.decay && sp.weight_decay != 0 ? 1 : 0;
      p[k].push_back(s.param);
      g[k].push_back(s.param.grad());
      m[k].push_back(s.exp_avg);
      v[k].push_back(s.exp_avg_sq);
      t[k].push_back(torch::full({}, double(o.step), torch::TensorOptions().dtype(torch::kFloat32).device(s.param.device())));
    }
    if (all_f32) {
      for (int k = 0; k < 2; k++) {
        if (p[k].empty()) continue;
        at::_fused_adamw_(p[k], g[k], m[k], v[k], {}, t[k], lr, sp.beta1, sp.beta2, k ? sp.weight_decay : 0.0, sp.eps, false, false);
      }
      return norm;
    }
  }
  for (auto& s : o.states) {
    auto& p = s.param;
    if (!p.grad().defined()) continue;
    auto g = p.grad();
    if (sp.kind == "adamw") {
      if (!s.exp_avg.defined()) {
        s.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Preserve);
        s.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Preserve);
      }
      if (s.decay && sp.weight_decay != 0) p.mul_(1 - lr * sp.weight_decay);
      s.exp_avg.lerp_(g, 1 - sp.beta1);
      s.exp_avg_sq.mul_(sp.beta2).addcmul_(g, g, 1 - sp.beta2);
      double bc1 = 1 - std::pow(sp.beta1, double(o.step));
      double bc2 = 1 - std::pow(sp.beta2, double(o.step));
      auto denom = (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(sp.eps);
      p.addcdiv_(s.exp_avg, denom, -lr / bc1);
    } else {
      if (s.decay && sp.weight_decay != 0) g = g.add(p, sp.weight_decay);
      if (sp.momentum != 0) {
        if (!s.momentum_buffer.defined())
          s.momentum_buffer = g.clone();
        else
          s.momentum_buffer.mul_(sp.momentum).add_(g, 1 - sp.dampening);
        g = sp.nesterov ? g.add(s.momentum_buffer, sp.momentum) : s.momentum_buffer;
      }
      p.add_(g, -lr);
    }
  }
  return norm;
}

int64_t optimizer_steps(Optimizer& o) { return o.step; }

void optimizer_save(Optimizer& o, const std::string& path) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (auto& s : o.states) {
    if (s.exp_avg.defined()) {
      tensors.emplace_back(s.name + ".exp_avg", s.exp_avg);
      tensors.emplace_back(s.name + ".exp_avg_sq", s.exp_avg_sq);
    }
    if (s.momentum_buffer.defined()) tensors.emplace_back(s.name + ".momentum_buffer", s.momentum_buffer);
  }
  write_safetensors(path, tensors);
}

void optimizer_load(Optimizer& o, const std::string& path, const std::vector<TensorEntry>& entries, int64_t step) {
  auto tensors = read_safetensors(path, entries);
  std::unordered_map<std::string, ParamState*> by_name;
  for (auto& s : o.states) by_name[s.name] = &s;
  std::vector<std::tuple<torch::Tensor*, torch::Tensor, const ParamState*>> plan;
  for (size_t i = 0; i < entries.size(); i++) {
    const auto& key = entries[i].name;
    auto dot = key.rfind('.');
    auto it = dot == std::string::npos ? by_name.end() : by_name.find(key.substr(0, dot));
    if (it == by_name.end()) throw Error("E_FORMAT", path + ": optimizer state '" + key + "' matches no trainable parameter");
    auto kind = key.substr(dot + 1);
    auto* s = it->second;
    torch::Tensor* slot = kind == "exp_avg"           ? &s->exp_avg
                          : kind == "exp_avg_sq"      ? &s->exp_avg_sq
                          : kind == "momentum_buffer" ? &s->momentum_buffer
                                                      : nullptr;
    if (!slot) throw Error("E_FORMAT", path + ": unknown optimizer state '" + key + "'");
    if (tensors[i].sizes() != s->param.sizes())
      throw Error("E_SHAPE", path + ": optimizer state '" + key + "' does not match its parameter's shape");
    plan.emplace_back(slot, tensors[i], s);
  }
  for (auto& [slot, t, s] : plan) *slot = t.to(s->param.device(), s->param.scalar_type());
  o.step = step;
}

}  // namespace tunekit
