// Prefix tuning (Li & Liang 2021) as PEFT's PREFIX_TUNING: every layer's attention sees num_virtual_tokens extra
// key/value positions in front of the input, trained while the model stays frozen. The keys and values either are an
// embedding table directly ([n, layers * 2 * kv_dim]) or come from a small MLP over a [n, kv_dim] table
// (prefix_projection), which PEFT found to train more stably.
#include <cmath>

#include "method.h"

namespace tunekit {
namespace {

struct Prefix : AdapterMethod {
  std::string table, mlp;  // the embedding parameter; the MLP's name prefix ("<..>.transform") or ""
  int64_t tokens = 0;

  int64_t prefix_tokens() const override { return tokens; }

  torch::Tensor prefix_values(const Model& m) const override {
    auto values = m.stored(table);
    if (!mlp.empty()) {
      auto h = torch::tanh(torch::linear(values, m.stored(mlp + ".0.weight"), m.stored(mlp + ".0.bias")));
      values = torch::linear(h, m.stored(mlp + ".2.weight"), m.stored(mlp + ".2.bias"));
    }
    return values.view({tokens, m.spec.num_layers * 2, m.spec.num_kv_heads, m.spec.head_dim});
  }

  // PEFT saves the final keys and values, [n, layers * 2 * kv_dim], under "prompt_embeddings".
  torch::Tensor exported(const Model& m, const std::string& what) const override {
    if (what != "prompt_embeddings") return AdapterMethod::exported(m, what);
    auto t = prefix_values(m);
    return t.reshape({t.size(0), -1});
  }
};

std::unique_ptr<AdapterMethod> create(const Model& m, SpecReader& s, Created& created) {
  auto a = std::make_unique<Prefix>();
  a->tokens = s.integer("numVirtualTokens", 8);
  require(a->tokens >= 1, "E_ARG", "numVirtualTokens must be a positive integer");
  const int64_t n = a->tokens, L = m.spec.num_layers, kv_dim = m.spec.num_kv_heads * m.spec.head_dim;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(s.integer("seed", 0)));
  auto f32 = torch::kFloat32;
  a->table = "prefix_encoder." + s.adapter() + ".embedding.weight";
  // nn.Embedding starts N(0, 1); nn.Linear starts U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
  auto linear = [&](const std::string& name, int64_t in, int64_t out) {
    double bound = 1.0 / std::sqrt(double(in));
    created.emplace_back(name + ".weight", torch::empty({out, in}, f32).uniform_(-bound, bound, gen));
    created.emplace_back(name + ".bias", torch::empty({out}, f32).uniform_(-bound, bound, gen));
  };
  if (s.flag("projection", false)) {
    int64_t hidden = s.integer("encoderHiddenSize", 0);
    if (hidden <= 0) hidden = kv_dim;
    created.emplace_back(a->table, torch::empty({n, kv_dim}, f32).normal_(0, 1, gen));
    a->mlp = "prefix_encoder." + s.adapter() + ".transform";
    linear(a->mlp + ".0", kv_dim, hidden);
    linear(a->mlp + ".2", hidden, L * 2 * kv_dim);
  } else {
    s.integer("encoderHiddenSize", 0);  // meaningful only with a projection
    created.emplace_back(a->table, torch::empty({n, L * 2 * kv_dim}, f32).normal_(0, 1, gen));
  }
  return a;
}

const bool kRegistered = register_method("prefix", create);

}  // namespace
}  // namespace tunekit
