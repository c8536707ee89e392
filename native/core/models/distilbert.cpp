// DistilBERT (DistilBertModel, DistilBertForSequenceClassification, DistilBertForMaskedLM), names as in transformers.
// The pretraining task adds BERT's next-sentence head to the masked-LM one (the sentence-level signal [CLS] gets in
// BERT's pretraining); it has the sequence classifier's shape under nsp_* names, and
// transformers has no class for it: savePretrained drops it.
// Post-norm blocks with bidirectional attention; LayerNorm eps is fixed at 1e-12 as in transformers.
#include "family.h"

namespace tunekit {
namespace {

constexpr double kEps = 1e-12;

void build(Model& m) {
  const auto& s = m.spec;
  if (s.task == "causal-lm") throw Error("E_CONFIG", "distilbert is an encoder: it has no causal-lm head");
  int64_t C = s.hidden_size, F = s.intermediate_size;
  auto& b = m.base;
  m.add(b + "embeddings.word_embeddings.weight", init_normal({s.vocab_size, C}));
  m.add(b + "embeddings.position_embeddings.weight", init_normal({s.max_positions, C}));
  add_layer_norm(m, b + "embeddings.LayerNorm", C);
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "transformer.layer." + std::to_string(i) + ".";
    for (auto p : {"q_lin", "k_lin", "v_lin", "out_lin"}) add_linear(m, l + "attention." + p, C, C);
    add_layer_norm(m, l + "sa_layer_norm", C);
    add_linear(m, l + "ffn.lin1", C, F);
    add_linear(m, l + "ffn.lin2", F, C);
    add_layer_norm(m, l + "output_layer_norm", C);
  }
  if (s.task == "sequence-classification") {
    add_linear(m, "pre_classifier", C, C);
    add_linear(m, "classifier", C, s.num_labels);
  }
  if (s.task == "masked-lm" || s.task == "pretraining") {
    add_linear(m, "vocab_transform", C, C);
    add_layer_norm(m, "vocab_layer_norm", C);
    m.add("vocab_projector.bias", torch::zeros({s.vocab_size}));  // its weight is tied to the word embeddings
  }
  if (s.task == "pretraining") {
    add_linear(m, "nsp_pre_classifier", C, C);
    add_linear(m, "nsp_classifier", C, 2);
  }
}

Output forward(ForwardContext& c, const torch::Tensor& ids, const torch::Tensor& mask) {
  const auto& s = c.m.spec;
  const auto& b = c.m.base;
  auto tokens = c.token_embeddings(b + "embeddings.word_embeddings.weight", ids);
  int64_t B = ids.size(0), T = tokens.size(1), C = s.hidden_size, nh = s.num_heads, hd = C / nh;
  auto ln = [&](const std::string& module, const torch::Tensor& x) { return c.layer_norm(module, x, kEps); };
  auto pos = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(ids.device()));
  auto x = tokens + torch::embedding(c.P(b + "embeddings.position_embeddings.weight"), pos);
  x = c.dropout(ln(b + "embeddings.LayerNorm", x), s.embd_dropout);
  auto mask4d = c.mask_4d(mask, B, T, /*causal=*/false);
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "transformer.layer." + std::to_string(i) + ".";
    auto heads = [&](const torch::Tensor& t) { return t.view({B, T, nh, hd}).transpose(1, 2); };
    auto in = product_inputs(x, 3);
    auto q = heads(c.linear(l + "attention.q_lin", in[0]));
    auto k = heads(c.linear(l + "attention.k_lin", in[1]));
    auto v = heads(c.linear(l + "attention.v_lin", in[2]));
    std::tie(k, v) = c.keys_values(i, k, v);
    auto y = attention(q, k, v, mask4d, false, s.attn_dropout, 1.0 / std::sqrt(double(hd)), c.training);
    y = c.linear(l + "attention.out_lin", y.transpose(1, 2).reshape({B, T, C}));
    x = ln(l + "sa_layer_norm", y + x);
    auto f = c.linear(l + "ffn.lin2", activation(s.activation, c.linear(l + "ffn.lin1", x)));
    x = ln(l + "output_layer_norm", c.dropout(f, s.resid_dropout) + x);
  }
  Output out;
  out.hidden = x;
  auto classify = [&](const std::string& pre, const std::string& head) {
    return c.linear(head, c.dropout(torch::relu(c.linear(pre, x.select(1, 0))), s.classifier_dropout));
  };
  if (s.task == "sequence-classification") out.logits = classify("pre_classifier", "classifier");
  if (s.task == "masked-lm" || s.task == "pretraining") {
    auto h = ln("vocab_layer_norm", activation(s.activation, c.linear("vocab_transform", c.lm_head_input(x))));
    out.logits = dense(h, c.P(b + "embeddings.word_embeddings.weight"), c.P("vocab_projector.bias"));
  }
  if (s.task == "pretraining") out.sentence_logits = classify("nsp_pre_classifier", "nsp_classifier");
  return out;
}

const Family& kDistilBert = register_family({.name = "distilbert",
                                             .backbone = "distilbert.",
                                             .word_embeddings = "embeddings.word_embeddings.weight",
                                             .embeddings = {"embeddings.word_embeddings", "embeddings.position_embeddings"},
                                             .positions = Family::Positions::table,
                                             .pad_row_frozen = true,
                                             .build = build,
                                             .forward = forward});

}  // namespace
}  // namespace tunekit
