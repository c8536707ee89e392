// Bottleneck adapters (Houlsby et al. 2019): after the attention output projection and after the feed-forward output
// projection of every block, y + up(act(down(y))), before the residual connection. `up` starts at zero, so the adapted
// model starts as the base model; `down` is initialised as nn.Linear is (Kaiming-uniform).
#include <cmath>

#include "method.h"

namespace tunekit {
namespace {

struct Bottleneck : AdapterMethod {
  std::unordered_map<std::string, std::string> sites;  // module whose output it adapts -> its parameters' name prefix
  std::string nonlinearity = "relu";

  torch::Tensor linear(const ForwardContext& c, const std::string& module, const torch::Tensor& x, const torch::Tensor& W,
                       const torch::Tensor& b, bool fan_in_fan_out) const override {
    auto y = dense(x, W, b, fan_in_fan_out);
    auto it = sites.find(module);
    if (it == sites.end()) return y;
    const auto& p = it->second;
    const auto& m = c.m;
    auto h = activation(nonlinearity, torch::linear(y, m.stored(p + "down.weight"), m.stored(p + "down.bias")));
    return y + torch::linear(h, m.stored(p + "up.weight"), m.stored(p + "up.bias"));
  }
};

std::unique_ptr<AdapterMethod> create(const Model& m, SpecReader& s, Created& created) {
  auto a = std::make_unique<Bottleneck>();
  int64_t size = s.integer("bottleneckSize", 64);
  require(size >= 1, "E_ARG", "bottleneck size must be a positive integer");
  a->nonlinearity = s.string("nonlinearity", "relu");
  activation(a->nonlinearity, torch::zeros({1}));  // an unknown name fails here, before anything is added
  auto gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(s.integer("seed", 0)));
  auto modules = s.strings("modules");
  require(!modules.empty(), "E_ARG", "a bottleneck adapter needs at least one module to follow");
  for (const auto& mod : linear_targets(m, modules, "a bottleneck adapter")) {
    int64_t hidden = linear_shape(m, mod).second;
    auto prefix = mod + ".adapter." + s.adapter() + ".";
    double bound = 1.0 / std::sqrt(double(hidden));
    created.emplace_back(prefix + "down.weight", torch::empty({size, hidden}, torch::kFloat32).uniform_(-bound, bound, gen));
    created.emplace_back(prefix + "down.bias", torch::empty({size}, torch::kFloat32).uniform_(-bound, bound, gen));
    created.emplace_back(prefix + "up.weight", torch::zeros({hidden, size}, torch::kFloat32));
    created.emplace_back(prefix + "up.bias", torch::zeros({hidden}, torch::kFloat32));
    a->sites[mod] = prefix;
  }
  return a;
}

const bool kRegistered = register_method("bottleneck", create);

}  // namespace
}  // namespace tunekit
