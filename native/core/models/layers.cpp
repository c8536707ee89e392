// Blocks every family shares: activations, attention masks, scaled-dot-product attention, norms.
#include "../model.h"

namespace tunekit {

const Adapter* Model::active_adapter() const {
  if (active.empty()) return nullptr;
  auto it = adapters.find(active);
  return it == adapters.end() ? nullptr : &it->second;
}

int64_t Model::virtual_tokens() const {
  const auto* a = active_adapter();
  return a ? a->virtual_tokens : 0;
}

torch::Tensor Model::token_embeddings(const std::string& table, const torch::Tensor& ids) const {
  auto x = torch::embedding(P(table), ids);
  const auto* a = active_adapter();
  if (!a || a->prompt.empty() || past() > 0) return x;  // a cache already holds the virtual tokens
  const auto& prompt = params.at(a->prompt);
  return torch::cat({prompt.unsqueeze(0).expand({ids.size(0), -1, -1}).to(x.scalar_type()), x}, 1);
}

std::string Model::word_embeddings_name() const {
  if (spec.family == "gpt2") return base + "wte.weight";
  if (spec.family == "llama") return base + "embed_tokens.weight";
  return base + "embeddings.word_embeddings.weight";
}

const torch::Tensor& Model::P(const std::string& name) const {
  if (const auto* a = active_adapter(); a && !a->overrides.empty()) {
    auto o = a->overrides.find(name);
    if (o != a->overrides.end()) return params.at(o->second);
  }
  auto it = params.find(name);
  if (it == params.end()) throw Error("E_STATE", "model has no parameter '" + name + "'");
  return it->second;
}

void Model::add(const std::string& name, torch::Tensor t) {
  if (!params.count(name)) order.push_back(name);
  params[name] = t.to(device, dtype).set_requires_grad(true);
}

torch::Tensor Model::linear(const std::string& module, const torch::Tensor& x) const {
  auto b = params.find(module + ".bias");
  torch::Tensor bias = b == params.end() ? torch::Tensor() : P(module + ".bias");
  if (const auto* a = active_adapter(); a && !a->merged) {
    auto l = a->lora.find(module);
    if (l != a->lora.end()) return lora_linear(x, P(module + ".weight"), bias, params.at(l->second.A), params.at(l->second.B), l->second, training);
  }
  return adapted(module, dense(x, P(module + ".weight"), bias));
}

torch::Tensor Model::adapted(const std::string& module, torch::Tensor y) const {
  const auto* a = active_adapter();
  if (!a || a->bottleneck.empty()) return y;
  auto it = a->bottleneck.find(module);
  if (it == a->bottleneck.end()) return y;
  const auto& p = it->second;
  auto h = activation(a->nonlinearity, torch::linear(y, params.at(p + "down.weight"), params.at(p + "down.bias")));
  return y + torch::linear(h, params.at(p + "up.weight"), params.at(p + "up.bias"));
}

torch::Tensor Model::conv1d(const std::string& module, const torch::Tensor& x) const {
  if (const auto* a = active_adapter(); a && !a->merged) {
    auto l = a->lora.find(module);
    if (l != a->lora.end()) return lora_linear(x, P(module + ".weight"), P(module + ".bias"), params.at(l->second.A), params.at(l->second.B), l->second, training);
  }
  return adapted(module, dense(x, P(module + ".weight"), P(module + ".bias"), /*fan_in_fan_out=*/true));
}

torch::Tensor Model::layer_norm(const std::string& module, const torch::Tensor& x) const {
  return torch::layer_norm(x, {x.size(-1)}, P(module + ".weight"), P(module + ".bias"), spec.norm_eps);
}

// As LlamaRMSNorm: normalise in float32, scale in the model's dtype.
torch::Tensor Model::rms_norm(const std::string& module, const torch::Tensor& x) const {
  auto h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, true) + spec.norm_eps);
  return P(module + ".weight") * h.to(x.scalar_type());
}

torch::Tensor Model::dropout(const torch::Tensor& x, double p) const {
  return (training && p > 0) ? torch::dropout(x, p, true) : x;
}

torch::Tensor activation(const std::string& name, const torch::Tensor& x) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return torch::gelu(x, "tanh");
  if (name == "gelu") return torch::gelu(x);
  if (name == "relu") return torch::relu(x);
  if (name == "silu" || name == "swish") return torch::silu(x);
  throw Error("E_CONFIG", "unsupported activation '" + name + "'");
}

torch::Tensor attention_mask_4d(const torch::Tensor& mask, int64_t seq, bool causal) {
  if (!mask.defined()) return {};
  if (mask.all().item<bool>()) return {};
  auto keys = mask.to(torch::kBool).view({mask.size(0), 1, 1, seq});
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(mask.device());
  // A padded query may see no key at all: libtorch's attention returns zeros (and finite gradients) for such a row,
  // exactly as transformers gets, so it is left empty rather than patched.
  return causal ? keys & torch::ones({seq, seq}, opts).tril() : keys.expand({mask.size(0), 1, seq, seq});
}

torch::Tensor prefix_mask_4d(const torch::Tensor& mask, int64_t batch, int64_t seq, int64_t prefix, bool causal, torch::Device device) {
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(device);
  auto pattern = torch::cat({torch::ones({seq, prefix}, opts), causal ? torch::ones({seq, seq}, opts).tril() : torch::ones({seq, seq}, opts)}, 1);
  auto keys = torch::cat({torch::ones({batch, prefix}, opts), mask.defined() ? mask.to(torch::kBool) : torch::ones({batch, seq}, opts)}, 1);
  return keys.view({batch, 1, 1, prefix + seq}) & pattern;
}

torch::Tensor cached_mask_4d(const torch::Tensor& mask, int64_t batch, int64_t seq, int64_t past, torch::Device device) {
  // One new token, no padding anywhere: it sees every cached key, so no mask (callers then attend without causality).
  if (seq == 1 && (!mask.defined() || mask.all().item<bool>())) return {};
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(device);
  auto pattern = torch::cat({torch::ones({seq, past}, opts), torch::ones({seq, seq}, opts).tril()}, 1);
  auto keys = mask.defined() ? mask.to(torch::kBool) : torch::ones({batch, past + seq}, opts);
  return keys.view({batch, 1, 1, past + seq}) & pattern;
}

std::pair<torch::Tensor, torch::Tensor> with_cache(Model& m, int64_t layer, torch::Tensor k, torch::Tensor v) {
  if (!m.cache) return {k, v};
  auto& c = *m.cache;
  const int64_t end = c.len + k.size(2);
  if (end <= c.capacity) {
    // Writing into a buffer reserved for the whole generation: concatenating would copy the cache every step and
    // allocate a slightly larger block each time, which no allocator can reuse.
    if (c.len == 0) {
      auto shape = k.sizes().vec();
      shape[2] = c.capacity;
      c.kbuf.resize(c.k.size());
      c.vbuf.resize(c.v.size());
      c.kbuf[layer] = torch::empty(shape, k.options());
      c.vbuf[layer] = torch::empty(shape, v.options());
    }
    c.kbuf[layer].narrow(2, c.len, k.size(2)).copy_(k);
    c.vbuf[layer].narrow(2, c.len, v.size(2)).copy_(v);
    c.k[layer] = c.kbuf[layer].narrow(2, 0, end);
    c.v[layer] = c.vbuf[layer].narrow(2, 0, end);
    return {c.k[layer], c.v[layer]};
  }
  if (c.len > 0) {
    k = torch::cat({c.k[layer], k}, 2);
    v = torch::cat({c.v[layer], v}, 2);
  }
  c.k[layer] = k;
  c.v[layer] = v;
  return {k, v};
}

int64_t Model::prefix_tokens() const {
  const auto* a = active_adapter();
  return a ? a->prefix_tokens : 0;
}

std::pair<torch::Tensor, torch::Tensor> Model::prefix_kv(int64_t layer, int64_t batch) const {
  // PEFT's layout: [n, layers * 2, heads, head_dim], key of layer i at 2i and value at 2i + 1.
  auto kv = [&](int64_t j) { return prefix_values.select(1, j).permute({1, 0, 2}).unsqueeze(0).expand({batch, -1, -1, -1}); };
  return {kv(2 * layer), kv(2 * layer + 1)};
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask4d,
                        bool causal, double dropout, double scale, bool training) {
  double p = training ? dropout : 0.0;
  if (mask4d.defined()) return at::scaled_dot_product_attention(q, k, v, mask4d, p, false, scale);
  return at::scaled_dot_product_attention(q, k, v, {}, p, causal, scale);
}

torch::Tensor last_token_index(const Model& m, const torch::Tensor& ids) {
  int64_t batch = ids.size(0), seq = ids.size(1);
  if (m.spec.pad_token_id < 0) {
    if (batch != 1) throw Error("E_CONFIG", "config has no pad_token_id: cannot find the last token of a padded batch");
    return torch::full({batch}, seq - 1 + m.virtual_tokens(), torch::TensorOptions().dtype(torch::kLong).device(ids.device()));
  }
  // Rightmost token that is not padding, so left and right padding both work.
  auto non_pad = (ids != m.spec.pad_token_id).to(torch::kInt32);
  auto positions = torch::arange(seq, torch::TensorOptions().dtype(torch::kInt32).device(ids.device()));
  // Behind a soft prompt the sequence starts after the virtual tokens.
  return (positions * non_pad).argmax(-1) + m.virtual_tokens();
}

std::string scalar_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: return c10::toString(t);
  }
}

torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32") return torch::kFloat32;
  if (s == "bfloat16") return torch::kBFloat16;
  if (s == "float16") return torch::kFloat16;
  throw Error("E_ARG", "dtype must be 'float32', 'bfloat16' or 'float16', got '" + s + "'");
}

}  // namespace tunekit
