// GPT-2 (GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification), names as in transformers.
// Conv1D layers keep their weights as [in, out].
#include "family.h"

namespace tunekit {
namespace {

void build(Model& m) {
  const auto& s = m.spec;
  if (s.task == "masked-lm") throw Error("E_CONFIG", "gpt2 has no masked-lm head");
  int64_t C = s.hidden_size, F = s.intermediate_size > 0 ? s.intermediate_size : 4 * C;
  auto& b = m.base;
  m.add(b + "wte.weight", init_normal({s.vocab_size, C}));
  m.add(b + "wpe.weight", init_normal({s.max_positions, C}));
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto h = b + "h." + std::to_string(i) + ".";
    add_layer_norm(m, h + "ln_1", C);
    m.add(h + "attn.c_attn.weight", init_normal({C, 3 * C}));
    m.add(h + "attn.c_attn.bias", torch::zeros({3 * C}));
    m.add(h + "attn.c_proj.weight", init_normal({C, C}));
    m.add(h + "attn.c_proj.bias", torch::zeros({C}));
    add_layer_norm(m, h + "ln_2", C);
    m.add(h + "mlp.c_fc.weight", init_normal({C, F}));
    m.add(h + "mlp.c_fc.bias", torch::zeros({F}));
    m.add(h + "mlp.c_proj.weight", init_normal({F, C}));
    m.add(h + "mlp.c_proj.bias", torch::zeros({C}));
  }
  add_layer_norm(m, b + "ln_f", C);
  if (s.task == "sequence-classification") m.add("score.weight", init_normal({s.num_labels, C}));
  if (s.task == "causal-lm" && !s.tie_word_embeddings) m.add("lm_head.weight", init_normal({s.vocab_size, C}));
}

Output forward(ForwardContext& c, const torch::Tensor& ids, const torch::Tensor& mask) {
  const auto& s = c.m.spec;
  const auto& b = c.m.base;
  auto tokens = c.token_embeddings(b + "wte.weight", ids);
  int64_t B = ids.size(0), T = tokens.size(1), C = s.hidden_size, nh = s.num_heads, hd = C / nh;
  auto x = c.dropout(tokens + torch::embedding(c.P(b + "wpe.weight"), c.positions(T, ids.device())), s.embd_dropout);
  auto mask4d = c.mask_4d(mask, B, T, /*causal=*/true);
  const bool causal = c.past() == 0;  // decoding from a cache attends to everything before the new token
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto h = b + "h." + std::to_string(i) + ".";
    auto qkv = c.linear(h + "attn.c_attn", c.layer_norm(h + "ln_1", x, s.norm_eps)).split(C, 2);
    auto heads = [&](const torch::Tensor& t) { return t.view({B, T, nh, hd}).transpose(1, 2); };
    double scale = 1.0 / std::sqrt(double(hd));
    if (s.scale_attn_by_inverse_layer_idx) scale /= double(i + 1);
    auto [k, v] = c.keys_values(i, heads(qkv[1]), heads(qkv[2]));
    auto y = attention(heads(qkv[0]), k, v, mask4d, causal, s.attn_dropout, scale, c.training);
    y = y.transpose(1, 2).reshape({B, T, C});
    x = x + c.dropout(c.linear(h + "attn.c_proj", y), s.resid_dropout);
    auto f = activation(s.activation, c.linear(h + "mlp.c_fc", c.layer_norm(h + "ln_2", x, s.norm_eps)));
    x = x + c.dropout(c.linear(h + "mlp.c_proj", f), s.resid_dropout);
  }
  Output out;
  out.hidden = c.layer_norm(b + "ln_f", x, s.norm_eps);
  if (s.task == "causal-lm") {
    out.logits = dense(out.hidden, c.P(c.m.has("lm_head.weight") ? "lm_head.weight" : b + "wte.weight"), torch::Tensor());
  } else if (s.task == "sequence-classification") {
    auto last = c.last_token_index(ids);
    out.logits = torch::linear(out.hidden.index({torch::arange(B, last.options()), last}), c.P("score.weight"));
  }
  return out;
}

// Every projection inside the blocks (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) is a Conv1D; the heads are not.
bool conv1d(const std::string& module) {
  return module.find("h.") != std::string::npos &&
         (module.find(".attn.") != std::string::npos || module.find(".mlp.") != std::string::npos);
}

const Family& kGpt2 = register_family({.name = "gpt2",
                                       .backbone = "transformer.",
                                       .word_embeddings = "wte.weight",
                                       .embeddings = {"wte", "wpe"},
                                       .positions = Family::Positions::table_after_prefix,
                                       .build = build,
                                       .forward = forward,
                                       .conv1d = conv1d});

}  // namespace
}  // namespace tunekit
