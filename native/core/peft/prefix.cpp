// Prefix tuning (Li & Liang 2021) as PEFT's PREFIX_TUNING: every layer's attention sees num_virtual_tokens extra
// key/value positions in front of the input, trained while the model stays frozen. The keys and values either are an
// embedding table directly ([n, layers * 2 * kv_dim]) or come from a small MLP over a [n, kv_dim] table
// (prefix_projection), which PEFT found to train more stably.
#include <cmath>

#include "../model.h"

namespace tunekit {

static int64_t kv_heads(const Model& m) { return m.spec.family == "llama" ? m.spec.num_kv_heads : m.spec.num_heads; }
static int64_t head_dim(const Model& m) { return m.spec.family == "llama" ? m.spec.head_dim : m.spec.hidden_size / m.spec.num_heads; }

void add_prefix(Model& m, const PrefixSpec& s) {
  check_new_adapter(m, s.adapter);
  if (s.num_virtual_tokens < 1) throw Error("E_ARG", "numVirtualTokens must be a positive integer");
  const int64_t n = s.num_virtual_tokens, L = m.spec.num_layers, kv_dim = kv_heads(m) * head_dim(m);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(s.seed);
  auto f32 = torch::kFloat32;
  Adapter a;
  a.method = "prefix";
  a.prefix_tokens = n;
  a.prefix = "prefix_encoder." + s.adapter + ".embedding.weight";
  std::vector<std::pair<std::string, torch::Tensor>> created;
  // nn.Embedding starts N(0, 1); nn.Linear starts U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
  auto linear = [&](const std::string& name, int64_t in, int64_t out) {
    double bound = 1.0 / std::sqrt(double(in));
    created.emplace_back(name + ".weight", torch::empty({out, in}, f32).uniform_(-bound, bound, gen));
    created.emplace_back(name + ".bias", torch::empty({out}, f32).uniform_(-bound, bound, gen));
  };
  if (s.projection) {
    int64_t hidden = s.encoder_hidden_size > 0 ? s.encoder_hidden_size : kv_dim;
    created.emplace_back(a.prefix, torch::empty({n, kv_dim}, f32).normal_(0, 1, gen));
    a.prefix_mlp = "prefix_encoder." + s.adapter + ".transform";
    linear(a.prefix_mlp + ".0", kv_dim, hidden);
    linear(a.prefix_mlp + ".2", hidden, L * 2 * kv_dim);
  } else {
    created.emplace_back(a.prefix, torch::empty({n, L * 2 * kv_dim}, f32).normal_(0, 1, gen));
  }
  add_saved_copies(m, s.adapter, s.modules_to_save, a, created);
  for (auto& [name, t] : created) m.add(name, t);
  m.adapters[s.adapter] = std::move(a);
}

torch::Tensor prefix_table(const Model& m, const Adapter* a) {
  if (!a) a = m.active_adapter();
  auto values = m.params.at(a->prefix);
  if (!a->prefix_mlp.empty()) {
    const auto& p = a->prefix_mlp;
    auto h = torch::tanh(torch::linear(values, m.params.at(p + ".0.weight"), m.params.at(p + ".0.bias")));
    values = torch::linear(h, m.params.at(p + ".2.weight"), m.params.at(p + ".2.bias"));
  }
  return values.view({a->prefix_tokens, m.spec.num_layers * 2, kv_heads(m), head_dim(m)});
}

}  // namespace tunekit
