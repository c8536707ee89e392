// Bottleneck adapters (Houlsby et al. 2019): after the attention output projection and after the feed-forward output
// projection of every block, y + up(act(down(y))), before the residual connection. `up` starts at zero, so the adapted
// model starts as the base model; `down` is initialised as nn.Linear is (Kaiming-uniform).
#include <cmath>

#include "../model.h"

namespace tunekit {

void add_bottleneck(Model& m, const BottleneckSpec& s) {
  check_new_adapter(m, s.adapter);
  if (s.bottleneck_size < 1) throw Error("E_ARG", "bottleneck size must be a positive integer");
  if (s.modules.empty()) throw Error("E_ARG", "a bottleneck adapter needs at least one module to follow");
  activation(s.nonlinearity, torch::zeros({1}));  // an unknown name fails here, before anything is added
  Adapter a;
  a.method = "bottleneck";
  a.nonlinearity = s.nonlinearity;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(s.seed);
  std::vector<std::pair<std::string, torch::Tensor>> created;
  for (const auto& mod : s.modules) {
    if (!m.params.count(mod + ".weight")) throw Error("E_ARG", "adapter site '" + mod + "' has no weight");
    const auto& W = m.params.at(mod + ".weight");
    int64_t hidden = m.is_conv1d(mod) ? W.size(1) : W.size(0);
    auto prefix = mod + ".adapter." + s.adapter + ".";
    double bound = 1.0 / std::sqrt(double(hidden));
    created.emplace_back(prefix + "down.weight", torch::empty({s.bottleneck_size, hidden}, torch::kFloat32).uniform_(-bound, bound, gen));
    created.emplace_back(prefix + "down.bias", torch::empty({s.bottleneck_size}, torch::kFloat32).uniform_(-bound, bound, gen));
    created.emplace_back(prefix + "up.weight", torch::zeros({hidden, s.bottleneck_size}, torch::kFloat32));
    created.emplace_back(prefix + "up.bias", torch::zeros({hidden}, torch::kFloat32));
    a.bottleneck[mod] = prefix;
  }
  add_saved_copies(m, s.adapter, s.modules_to_save, a, created);
  for (auto& [name, t] : created) m.add(name, t);
  m.adapters[s.adapter] = std::move(a);
}

}  // namespace tunekit
