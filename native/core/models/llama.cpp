// Llama (LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification): RMSNorm, rotary embeddings,
// SwiGLU and grouped-query attention, names as in transformers.
#include "../model.h"

namespace tunekit {

void llama_build(Model& m) {
  const auto& s = m.spec;
  if (s.task == "masked-lm") throw Error("E_CONFIG", "llama has no masked-lm head");
  m.base = s.task == "feature-extraction" ? "" : "model.";
  int64_t C = s.hidden_size, hd = s.head_dim, F = s.intermediate_size;
  auto normal = [&](std::vector<int64_t> shape) { return torch::randn(shape) * 0.02; };
  auto linear = [&](const std::string& name, int64_t in, int64_t out, bool bias) {
    m.add(name + ".weight", normal({out, in}));
    if (bias) m.add(name + ".bias", torch::zeros({out}));
  };
  auto& b = m.base;
  m.add(b + "embed_tokens.weight", normal({s.vocab_size, C}));
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "layers." + std::to_string(i) + ".";
    m.add(l + "input_layernorm.weight", torch::ones({C}));
    linear(l + "self_attn.q_proj", C, s.num_heads * hd, s.attention_bias);
    linear(l + "self_attn.k_proj", C, s.num_kv_heads * hd, s.attention_bias);
    linear(l + "self_attn.v_proj", C, s.num_kv_heads * hd, s.attention_bias);
    linear(l + "self_attn.o_proj", s.num_heads * hd, C, s.attention_bias);
    m.add(l + "post_attention_layernorm.weight", torch::ones({C}));
    linear(l + "mlp.gate_proj", C, F, s.mlp_bias);
    linear(l + "mlp.up_proj", C, F, s.mlp_bias);
    linear(l + "mlp.down_proj", F, C, s.mlp_bias);
  }
  m.add(b + "norm.weight", torch::ones({C}));
  if (s.task == "sequence-classification") m.add("score.weight", normal({s.num_labels, C}));
  if (s.task == "causal-lm" && !s.tie_word_embeddings) m.add("lm_head.weight", normal({s.vocab_size, C}));
}

// cos/sin tables as LlamaRotaryEmbedding computes them: in float32, then cast to the model's dtype.
static std::pair<torch::Tensor, torch::Tensor> rotary(const Model& m, const torch::Tensor& positions) {
  int64_t hd = m.spec.head_dim;
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(m.device);
  auto inv_freq = 1.0 / torch::pow(m.spec.rope_theta, torch::arange(0, hd, 2, f32) / double(hd));
  auto freqs = torch::outer(positions.to(torch::kFloat32), inv_freq);
  auto emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(m.dtype), emb.sin().to(m.dtype)};
}

static torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, -1);
  return torch::cat({-halves[1], halves[0]}, -1);
}

Output llama_forward(Model& m, const torch::Tensor& ids, const torch::Tensor& mask) {
  const auto& s = m.spec;
  const auto& b = m.base;
  auto x = m.token_embeddings(b + "embed_tokens.weight", ids);
  int64_t B = ids.size(0), T = x.size(1), hd = s.head_dim, nh = s.num_heads, nkv = s.num_kv_heads;
  const int64_t past = m.past();
  const int64_t P = past > 0 ? 0 : m.prefix_tokens();
  const int64_t start = past > 0 ? past : P;
  auto positions = torch::arange(start, start + T, torch::TensorOptions().dtype(torch::kLong).device(ids.device()));
  auto [cos, sin] = rotary(m, positions);
  auto mask4d = past > 0 ? cached_mask_4d(mask, B, T, past, ids.device())
              : P ? prefix_mask_4d(mask, B, T, P, true, ids.device()) : attention_mask_4d(mask, T, true);
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "layers." + std::to_string(i) + ".";
    auto h = m.rms_norm(l + "input_layernorm", x);
    auto q = m.linear(l + "self_attn.q_proj", h).view({B, T, nh, hd}).transpose(1, 2);
    auto k = m.linear(l + "self_attn.k_proj", h).view({B, T, nkv, hd}).transpose(1, 2);
    auto v = m.linear(l + "self_attn.v_proj", h).view({B, T, nkv, hd}).transpose(1, 2);
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    if (P) {  // the prefix keys are used as stored: no rotation, as a cache holds them
      auto [pk, pv] = m.prefix_kv(i, B);
      k = torch::cat({pk.to(k.scalar_type()), k}, 2);
      v = torch::cat({pv.to(v.scalar_type()), v}, 2);
    }
    std::tie(k, v) = with_cache(m, i, k, v);
    if (nkv != nh) {
      k = k.repeat_interleave(nh / nkv, 1);
      v = v.repeat_interleave(nh / nkv, 1);
    }
    auto y = attention(q, k, v, mask4d, /*causal=*/past == 0, s.attn_dropout, 1.0 / std::sqrt(double(hd)), m.training);
    x = x + m.linear(l + "self_attn.o_proj", y.transpose(1, 2).reshape({B, T, nh * hd}));
    h = m.rms_norm(l + "post_attention_layernorm", x);
    auto gated = activation(s.activation, m.linear(l + "mlp.gate_proj", h)) * m.linear(l + "mlp.up_proj", h);
    x = x + m.linear(l + "mlp.down_proj", gated);
  }
  if (m.cache) m.cache->len = m.cache->k[0].size(2);
  Output out;
  out.hidden = m.rms_norm(b + "norm", x);
  if (s.task == "causal-lm") {
    out.logits = dense(out.hidden, m.P(m.has("lm_head.weight") ? "lm_head.weight" : b + "embed_tokens.weight"), torch::Tensor());
  } else if (s.task == "sequence-classification") {
    auto last = last_token_index(m, ids);
    out.logits = torch::linear(out.hidden.index({torch::arange(B, last.options()), last}), m.P("score.weight"));
  }
  return out;
}

}  // namespace tunekit
