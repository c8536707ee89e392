// LoRA (Hu et al. 2021) as PEFT 0.21 implements it: y = W x + b + scaling * B A dropout(x), scaling = alpha / r
// (alpha / sqrt(r) with rsLoRA), A Kaiming-uniform, B zero, so the adapted model starts equal to the base.
#include <cmath>

#include "../model.h"

namespace tunekit {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Forward and backward written out: the frozen weight's gradient (the largest product) is never formed, and the
// dropout mask touches only the adapter's input.
struct LoraLinearFn : public torch::autograd::Function<LoraLinearFn> {
  // The bias is added outside (autograd's Function cannot take an undefined tensor for a bias-free layer).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& A,
                               const torch::Tensor& B, double scaling, double p, bool training, bool fan_in_fan_out) {
    auto x2 = x.reshape({-1, x.size(-1)});
    auto base = matmul_nt(x2, fan_in_fan_out ? W.t() : W, torch::Tensor());
    torch::Tensor mask, xd = x2;
    if (training && p > 0) {
      mask = torch::empty_like(x2).bernoulli_(1 - p).div_(1 - p);
      xd = x2 * mask;
    }
    auto xa = torch::mm(xd, A.t());                                 // [N, r]
    auto y = base.add_(torch::mm(xa, B.t()), scaling);             // [N, out]
    ctx->save_for_backward({xd, xa, W, A, B, mask, x2});
    ctx->saved_data["scaling"] = scaling;
    ctx->saved_data["fan_in_fan_out"] = fan_in_fan_out;
    return unflatten_rows(y, x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto xd = s[0], xa = s[1], W = s[2], A = s[3], B = s[4], mask = s[5], x2 = s[6];
    double scaling = ctx->saved_data["scaling"].toDouble();
    bool fifo = ctx->saved_data["fan_in_fan_out"].toBool();
    auto dy = grads[0].reshape({-1, grads[0].size(-1)});           // [N, out]
    auto g_xa = torch::mm(dy, B).mul_(scaling);                    // [N, r]
    torch::Tensor dx, dW, dA, dB;
    if (ctx->needs_input_grad(0)) {
      dx = matmul_nt(dy, fifo ? W : W.t(), torch::Tensor());
      auto da = torch::mm(g_xa, A);
      dx.add_(mask.defined() ? da.mul_(mask) : da);
      dx = unflatten_rows(dx, grads[0]);
    }
    if (ctx->needs_input_grad(1)) dW = fifo ? torch::mm(x2.t(), dy) : torch::mm(dy.t(), x2);
    if (ctx->needs_input_grad(2)) dA = torch::mm(g_xa.t(), xd);    // [r, in]
    if (ctx->needs_input_grad(3)) dB = torch::mm(dy.t(), xa).mul_(scaling);  // [out, r]
    return {dx, dW, dA, dB, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor lora_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& A,
                          const torch::Tensor& B, const LoraModule& spec, bool training) {
  auto y = LoraLinearFn::apply(x, weight, A, B, spec.scaling, spec.dropout, training, spec.fan_in_fan_out);
  return bias.defined() ? y + bias : y;
}

void check_new_adapter(const Model& m, const std::string& name) {
  if (name.empty() || name.find('.') != std::string::npos) throw Error("E_ARG", "adapter name must be non-empty and contain no '.'");
  if (m.adapters.count(name)) throw Error("E_STATE", "the model already has an adapter named '" + name + "'");
}

void add_saved_copies(const Model& m, const std::string& adapter, const std::vector<std::string>& bases, Adapter& a,
                      std::vector<std::pair<std::string, torch::Tensor>>& created) {
  for (const auto& base : bases) {
    if (!m.params.count(base)) throw Error("E_ARG", "modules_to_save: the model has no parameter '" + base + "'");
    auto dot = base.rfind('.');
    auto copy = base.substr(0, dot) + ".modules_to_save." + adapter + base.substr(dot);
    created.emplace_back(copy, m.params.at(base).detach().clone());
    a.overrides[base] = copy;
  }
}

void add_lora(Model& m, const LoraSpec& s) {
  check_new_adapter(m, s.adapter);
  if (s.r < 1) throw Error("E_ARG", "LoRA rank r must be a positive integer");
  if (!(s.dropout >= 0 && s.dropout < 1)) throw Error("E_ARG", "LoRA dropout must be in [0, 1)");
  if (s.modules.empty()) throw Error("E_ARG", "LoRA needs at least one target module");
  Adapter a;
  a.method = "lora";
  double scaling = s.rslora ? s.alpha / std::sqrt(double(s.r)) : s.alpha / double(s.r);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(s.seed);
  std::vector<std::pair<std::string, torch::Tensor>> created;
  for (const auto& mod : s.modules) {
    if (!m.params.count(mod + ".weight")) throw Error("E_ARG", "target module '" + mod + "' has no weight");
    const auto& W = m.params.at(mod + ".weight");
    if (W.dim() != 2) throw Error("E_ARG", "target module '" + mod + "' is not a linear layer");
    if (mod.find("embed") != std::string::npos || mod.find("wte") != std::string::npos || mod.find("wpe") != std::string::npos)
      throw Error("E_ARG", "target module '" + mod + "' is an embedding; LoRA here adapts linear layers only");
    LoraModule l;
    l.fan_in_fan_out = m.is_conv1d(mod);
    int64_t in = l.fan_in_fan_out ? W.size(0) : W.size(1), out = l.fan_in_fan_out ? W.size(1) : W.size(0);
    l.A = mod + ".lora_A." + s.adapter + ".weight";
    l.B = mod + ".lora_B." + s.adapter + ".weight";
    l.scaling = scaling;
    l.dropout = s.dropout;
    // PEFT: nn.init.kaiming_uniform_(A, a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0.
    double bound = 1.0 / std::sqrt(double(in));
    auto A = torch::empty({s.r, in}, torch::kFloat32).uniform_(-bound, bound, gen);
    created.emplace_back(l.A, A);
    created.emplace_back(l.B, torch::zeros({out, s.r}, torch::kFloat32));
    a.lora[mod] = l;
  }
  add_saved_copies(m, s.adapter, s.modules_to_save, a, created);
  for (auto& [name, t] : created) m.add(name, t);
  m.adapters[s.adapter] = std::move(a);
}

void set_adapter(Model& m, const std::string& name) {
  if (!name.empty() && !m.adapters.count(name)) throw Error("E_ARG", "the model has no adapter named '" + name + "'");
  if (!m.active.empty() && m.active != name && m.adapters.at(m.active).merged)
    throw Error("E_STATE", "adapter '" + m.active + "' is merged into the weights; unmerge it before switching");
  m.active = name;
}

// W += scaling * B A (transposed for Conv1D): the adapted model then runs at the base model's cost.
static void fold(Model& m, double sign) {
  if (m.active.empty()) throw Error("E_STATE", "no adapter is active");
  auto& a = m.adapters.at(m.active);
  if (a.method != "lora") throw Error("E_STATE", "adapter '" + m.active + "' is " + a.method + " tuning; only LoRA folds into the weights");
  if ((sign > 0) == a.merged) throw Error("E_STATE", std::string("adapter '") + m.active + (a.merged ? "' is already merged" : "' is not merged"));
  torch::NoGradGuard g;
  for (auto& [mod, l] : a.lora) {
    auto& W = m.params.at(mod + ".weight");
    auto delta = torch::mm(m.params.at(l.B), m.params.at(l.A)).mul_(l.scaling);
    W.add_(l.fan_in_fan_out ? delta.t() : delta, sign);
  }
  a.merged = sign > 0;
}

void merge_adapter(Model& m) { fold(m, 1); }
void unmerge_adapter(Model& m) { fold(m, -1); }

void delete_adapter(Model& m, const std::string& name) {
  auto it = m.adapters.find(name);
  if (it == m.adapters.end()) throw Error("E_ARG", "the model has no adapter named '" + name + "'");
  if (it->second.merged) throw Error("E_STATE", "adapter '" + name + "' is merged; unmerge it first");
  std::vector<std::string> drop;
  for (auto& [mod, l] : it->second.lora) drop.insert(drop.end(), {l.A, l.B});
  for (auto& [base, copy] : it->second.overrides) drop.push_back(copy);
  if (!it->second.prompt.empty()) drop.push_back(it->second.prompt);
  if (!it->second.prefix.empty()) drop.push_back(it->second.prefix);
  if (!it->second.prefix_mlp.empty())
    for (auto p : {".0.weight", ".0.bias", ".2.weight", ".2.bias"}) drop.push_back(it->second.prefix_mlp + p);
  for (auto& [mod, prefix] : it->second.bottleneck)
    for (auto p : {"down.weight", "down.bias", "up.weight", "up.bias"}) drop.push_back(prefix + p);
  for (auto& n : drop) m.params.erase(n);
  m.order.erase(std::remove_if(m.order.begin(), m.order.end(), [&](const std::string& n) { return !m.params.count(n); }), m.order.end());
  if (m.active == name) m.active = "";
  m.adapters.erase(it);
}

}  // namespace tunekit
