// LoRA (Hu et al. 2021) as PEFT 0.21 implements it: y = W x + b + scaling * B A dropout(x), scaling = alpha / r
// (alpha / sqrt(r) with rsLoRA), A Kaiming-uniform, B zero, so the adapted model starts equal to the base.
#include <ATen/autocast_mode.h>

#include <cmath>

#include "method.h"

namespace tunekit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Forward and backward written out: the frozen weight's gradient (the largest product) is never formed, and the
// dropout mask touches only the adapter's input.
struct LoraLinearFn : public torch::autograd::Function<LoraLinearFn> {
  // The bias is added outside (autograd's Function cannot take an undefined tensor for a bias-free layer).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& W_in, const torch::Tensor& A_in,
                               const torch::Tensor& B_in, double scaling, double p, bool training, bool fan_in_fan_out) {
    // Under autocast every product runs in its dtype, as PEFT's layers do there; the gradients autograd hands back are
    // cast to each input's own dtype (float32 adapters, float32 or bfloat16 activations).
    auto x = x_in, W = W_in, A = A_in, B = B_in;
    if (at::autocast::is_autocast_enabled(x.device().type())) {
      auto lp = at::autocast::get_autocast_dtype(x.device().type());
      x = x.to(lp), W = W.to(lp), A = A.to(lp), B = B.to(lp);
    }
    auto x2 = x.reshape({-1, x.size(-1)});
    auto base = matmul_nt(x2, fan_in_fan_out ? W.t() : W, torch::Tensor());
    torch::Tensor mask, xd = x2;
    if (training && p > 0) {
      mask = torch::empty_like(x2).bernoulli_(1 - p).div_(1 - p);
      xd = x2 * mask;
    }
    auto xa = torch::mm(xd, A.t());                     // [N, r]
    auto y = base.add_(torch::mm(xa, B.t()), scaling);  // [N, out]
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
    auto dy = grads[0].reshape({-1, grads[0].size(-1)});  // [N, out]
    auto g_xa = torch::mm(dy, B).mul_(scaling);           // [N, r]
    torch::Tensor dx, dW, dA, dB;
    if (ctx->needs_input_grad(0)) {
      dx = matmul_nt(dy, fifo ? W : W.t(), torch::Tensor());
      auto da = torch::mm(g_xa, A);
      dx.add_(mask.defined() ? da.mul_(mask) : da);
      dx = unflatten_rows(dx, grads[0]);
    }
    if (ctx->needs_input_grad(1)) dW = fifo ? torch::mm(x2.t(), dy) : torch::mm(dy.t(), x2);
    if (ctx->needs_input_grad(2)) dA = torch::mm(g_xa.t(), xd);              // [r, in]
    if (ctx->needs_input_grad(3)) dB = torch::mm(dy.t(), xa).mul_(scaling);  // [out, r]
    return {dx, dW, dA, dB, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

struct LoraModule {
  std::string A, B;  // parameter names
};

struct Lora : AdapterMethod {
  std::unordered_map<std::string, LoraModule> modules;
  double scaling = 1, dropout = 0;

  torch::Tensor linear(const ForwardContext& c, const std::string& module, const torch::Tensor& x, const torch::Tensor& W,
                       const torch::Tensor& b, bool fan_in_fan_out) const override {
    auto l = modules.find(module);
    if (l == modules.end()) return dense(x, W, b, fan_in_fan_out);
    auto y = LoraLinearFn::apply(x, W, c.m.stored(l->second.A), c.m.stored(l->second.B), scaling, dropout, c.training, fan_in_fan_out);
    // In y's dtype: under autocast a biased product comes out in the lower precision, as the base layer's would.
    return b.defined() ? y + b.to(y.scalar_type()) : y;
  }

  // Not with modules_to_save copies (a row's head would differ), nor when folded into the base weights.
  bool gathers() const override { return overrides.empty() && !merged; }

  torch::Tensor delta(const ForwardContext& c, const std::string& module, const torch::Tensor& x) const override {
    auto l = modules.find(module);
    if (l == modules.end()) return {};
    auto dtype =
        at::autocast::is_autocast_enabled(x.device().type()) ? at::autocast::get_autocast_dtype(x.device().type()) : x.scalar_type();
    auto x2 = x.reshape({-1, x.size(-1)}).to(dtype);
    auto xa = torch::mm(x2, c.m.stored(l->second.A).to(dtype).t());
    return unflatten_rows(torch::mm(xa, c.m.stored(l->second.B).to(dtype).t()).mul_(scaling), x);
  }

  // W += scaling * B A (transposed for Conv1D): the adapted model then runs at the base model's cost.
  Folded folded(const Model& m, double sign) const override {
    Folded out;
    for (const auto& [mod, l] : modules) {
      auto delta = torch::mm(m.stored(l.B), m.stored(l.A)).mul_(scaling);
      out.emplace_back(mod + ".weight", m.stored(mod + ".weight").add(m.is_conv1d(mod) ? delta.t() : delta, sign));
    }
    return out;
  }
};

std::unique_ptr<AdapterMethod> create(const Model& m, SpecReader& s, Created& created) {
  auto a = std::make_unique<Lora>();
  int64_t r = s.integer("r", 8);
  double alpha = s.number("alpha", 8);
  a->dropout = s.number("dropout", 0);
  require(r >= 1, "E_ARG", "LoRA rank r must be a positive integer");
  require(a->dropout >= 0 && a->dropout < 1, "E_ARG", "LoRA dropout must be in [0, 1)");
  a->scaling = s.flag("rslora", false) ? alpha / std::sqrt(double(r)) : alpha / double(r);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(s.integer("seed", 0)));
  for (const auto& mod : linear_targets(m, s.strings("modules"), "LoRA")) {
    auto [in, out] = linear_shape(m, mod);
    LoraModule l{mod + ".lora_A." + s.adapter() + ".weight", mod + ".lora_B." + s.adapter() + ".weight"};
    // PEFT: nn.init.kaiming_uniform_(A, a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0.
    double bound = 1.0 / std::sqrt(double(in));
    created.emplace_back(l.A, torch::empty({r, in}, torch::kFloat32).uniform_(-bound, bound, gen));
    created.emplace_back(l.B, torch::zeros({out, r}, torch::kFloat32));
    a->modules[mod] = l;
  }
  return a;
}

const bool kRegistered = register_method("lora", create);

}  // namespace
}  // namespace tunekit
