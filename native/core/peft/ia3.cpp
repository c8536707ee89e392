// (IA)^3 (Liu et al. 2022) as PEFT 0.21's IA3: a learned vector rescales the output of each target linear layer
// (keys, values), or, for the feed-forward modules, its input. The vectors start at one, so the adapted model starts
// as the base model; they fold into the weights (and, for output scaling, the bias) exactly.
#include "method.h"

namespace tunekit {
namespace {

struct IA3Module {
  std::string vector;  // "<module>.ia3_l.<adapter>": [1, in] (feed-forward) or [out, 1], as PEFT stores it
  bool feedforward = false;
};

struct IA3 : AdapterMethod {
  std::unordered_map<std::string, IA3Module> modules;

  torch::Tensor linear(const ForwardContext& c, const std::string& module, const torch::Tensor& x, const torch::Tensor& W,
                       const torch::Tensor& b, bool fan_in_fan_out) const override {
    auto it = modules.find(module);
    if (it == modules.end()) return dense(x, W, b, fan_in_fan_out);
    auto l = c.m.stored(it->second.vector).flatten();
    if (it->second.feedforward) return dense(x * l.to(x.scalar_type()), W, b, fan_in_fan_out);
    auto y = dense(x, W, b, fan_in_fan_out);
    return y * l.to(y.scalar_type());
  }

  // Feed-forward: W's input columns times l; otherwise W's output rows and the bias times l (PEFT's merge). Unfolding
  // divides by l + 1e-8 as PEFT does, so a vector entry of zero cannot be unfolded.
  Folded folded(const Model& m, double sign) const override {
    Folded out;
    for (const auto& [mod, l] : modules) {
      auto v = m.stored(l.vector).flatten();
      if (sign < 0) v = v + 1e-8;
      const auto& W = m.stored(mod + ".weight");
      bool fifo = m.is_conv1d(mod);
      // [out, in] (or [in, out] for Conv1D): scale along the input or the output dimension.
      auto scale = l.feedforward == fifo ? v.unsqueeze(1) : v.unsqueeze(0);
      out.emplace_back(mod + ".weight", sign > 0 ? W * scale : W / scale);
      if (!l.feedforward && m.has(mod + ".bias")) {
        const auto& b = m.stored(mod + ".bias");
        out.emplace_back(mod + ".bias", sign > 0 ? b * v : b / v);
      }
    }
    return out;
  }
};

std::unique_ptr<AdapterMethod> create(const Model& m, SpecReader& s, Created& created) {
  auto a = std::make_unique<IA3>();
  auto feedforward = s.strings("feedforwardModules");
  for (const auto& mod : linear_targets(m, s.strings("modules"), "IA3")) {
    auto [in, out] = linear_shape(m, mod);
    IA3Module l{mod + ".ia3_l." + s.adapter(), std::find(feedforward.begin(), feedforward.end(), mod) != feedforward.end()};
    created.emplace_back(l.vector, torch::ones(l.feedforward ? std::vector<int64_t>{1, in} : std::vector<int64_t>{out, 1}));
    a->modules[mod] = l;
  }
  for (const auto& f : feedforward)
    require(a->modules.count(f) > 0, "E_ARG", "IA3 feedforward module '" + f + "' is not one of the target modules");
  return a;
}

const bool kRegistered = register_method("ia3", create);

}  // namespace
}  // namespace tunekit
