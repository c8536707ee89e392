// The Llama-style decoder that several families share: RMSNorm, rotary position embeddings, SwiGLU feed-forward
// and grouped-query attention, names as in transformers' LlamaModel. spec.attention_bias puts biases on the query,
// key and value projections, spec.attention_out_bias on the output projection.
#include "family.h"

namespace tunekit {

namespace {

void decoder_build(Model& m) {
  const auto& s = m.spec;
  if (s.task == "masked-lm") throw Error("E_CONFIG", s.family + " has no masked-lm head");
  int64_t C = s.hidden_size, hd = s.head_dim, F = s.intermediate_size;
  auto& b = m.base;
  m.add(b + "embed_tokens.weight", init_normal({s.vocab_size, C}));
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "layers." + std::to_string(i) + ".";
    m.add(l + "input_layernorm.weight", torch::ones({C}));
    add_linear(m, l + "self_attn.q_proj", C, s.num_heads * hd, s.attention_bias);
    add_linear(m, l + "self_attn.k_proj", C, s.num_kv_heads * hd, s.attention_bias);
    add_linear(m, l + "self_attn.v_proj", C, s.num_kv_heads * hd, s.attention_bias);
    add_linear(m, l + "self_attn.o_proj", s.num_heads * hd, C, s.attention_out_bias);
    m.add(l + "post_attention_layernorm.weight", torch::ones({C}));
    add_linear(m, l + "mlp.gate_proj", C, F, s.mlp_bias);
    add_linear(m, l + "mlp.up_proj", C, F, s.mlp_bias);
    add_linear(m, l + "mlp.down_proj", F, C, s.mlp_bias);
  }
  m.add(b + "norm.weight", torch::ones({C}));
  if (s.task == "sequence-classification") m.add("score.weight", init_normal({s.num_labels, C}));
  if (s.task == "causal-lm" && !s.tie_word_embeddings) m.add("lm_head.weight", init_normal({s.vocab_size, C}));
}

// cos/sin tables as LlamaRotaryEmbedding computes them: in float32, then cast to the model's dtype.
std::pair<torch::Tensor, torch::Tensor> rotary(const Model& m, const torch::Tensor& positions) {
  int64_t hd = m.spec.head_dim;
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(m.device);
  auto inv_freq = 1.0 / torch::pow(m.spec.rope_theta, torch::arange(0, hd, 2, f32) / double(hd));
  auto freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // [T, hd / 2], or [batch, T, hd / 2]
  auto emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(m.dtype), emb.sin().to(m.dtype)};
}

Output decoder_forward(ForwardContext& c, const torch::Tensor& ids, const torch::Tensor& mask) {
  const auto& s = c.m.spec;
  const auto& b = c.m.base;
  auto x = c.token_embeddings(b + "embed_tokens.weight", ids);
  int64_t B = ids.size(0), T = x.size(1), hd = s.head_dim, nh = s.num_heads, nkv = s.num_kv_heads;
  auto [cos, sin] = rotary(c.m, c.positions(T, ids.device()));
  if (cos.dim() == 3) {  // a position per row: [batch, 1, T, hd] against the [batch, heads, T, hd] queries and keys
    cos = cos.unsqueeze(1);
    sin = sin.unsqueeze(1);
  }
  auto mask4d = c.mask_4d(mask, B, T, /*causal=*/true);
  const bool causal = c.past() == 0;  // decoding from a cache attends to everything before the new token
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "layers." + std::to_string(i) + ".";
    auto h = product_inputs(c.rms_norm(l + "input_layernorm", x), 3);
    auto q = c.linear(l + "self_attn.q_proj", h[0]).view({B, T, nh, hd}).transpose(1, 2);
    auto k = c.linear(l + "self_attn.k_proj", h[1]).view({B, T, nkv, hd}).transpose(1, 2);
    auto v = c.linear(l + "self_attn.v_proj", h[2]).view({B, T, nkv, hd}).transpose(1, 2);
    q = apply_rotary(q, cos, sin);
    k = apply_rotary(k, cos, sin);
    std::tie(k, v) = c.keys_values(i, k, v);
    auto y = attention(q, k, v, mask4d, causal, s.attn_dropout, 1.0 / std::sqrt(double(hd)), c.training);
    x = x + c.linear(l + "self_attn.o_proj", y.transpose(1, 2).reshape({B, T, nh * hd}));
    h = product_inputs(c.rms_norm(l + "post_attention_layernorm", x), 2);
    auto gated = gated_activation(s.activation, c.linear(l + "mlp.gate_proj", h[0]), c.linear(l + "mlp.up_proj", h[1]));
    x = x + c.linear(l + "mlp.down_proj", gated);
  }
  Output out;
  out.hidden = c.rms_norm(b + "norm", x);
  if (s.task == "causal-lm") {
    out.logits = dense(out.hidden, c.P(c.m.has("lm_head.weight") ? "lm_head.weight" : b + "embed_tokens.weight"), torch::Tensor());
  } else if (s.task == "sequence-classification") {
    auto last = c.last_token_index(ids);
    out.logits = torch::linear(out.hidden.index({torch::arange(B, last.options()), last}), c.P("score.weight"));
  }
  return out;
}

}  // namespace

Family decoder_family(std::string name) {
  return {.name = std::move(name),
          .backbone = "model.",
          .word_embeddings = "embed_tokens.weight",
          .embeddings = {"embed_tokens"},
          .positions = Family::Positions::rotary,
          .pad_row_frozen = true,
          .build = decoder_build,
          .forward = decoder_forward};
}

}  // namespace tunekit
