// BERT (BertModel, BertForSequenceClassification, BertForMaskedLM), names as in transformers: learned absolute
// positions, token type embeddings (every token is type 0: the batch carries no token_type_ids), post-norm blocks
// with bidirectional attention, the tanh pooler over [CLS] (absent from BertForMaskedLM, as in transformers).
#include "family.h"

namespace tunekit {
namespace {

void build(Model& m) {
  const auto& s = m.spec;
  if (s.task == "causal-lm") throw Error("E_CONFIG", "bert is an encoder here: it has no causal-lm head");
  if (s.type_vocab_size < 1) throw Error("E_CONFIG", "bert needs type_vocab_size >= 1");
  int64_t C = s.hidden_size, F = s.intermediate_size;
  auto& b = m.base;
  m.add(b + "embeddings.word_embeddings.weight", init_normal({s.vocab_size, C}));
  m.add(b + "embeddings.position_embeddings.weight", init_normal({s.max_positions, C}));
  m.add(b + "embeddings.token_type_embeddings.weight", init_normal({s.type_vocab_size, C}));
  add_layer_norm(m, b + "embeddings.LayerNorm", C);
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "encoder.layer." + std::to_string(i) + ".";
    for (auto p : {"query", "key", "value"}) add_linear(m, l + "attention.self." + p, C, C);
    add_linear(m, l + "attention.output.dense", C, C);
    add_layer_norm(m, l + "attention.output.LayerNorm", C);
    add_linear(m, l + "intermediate.dense", C, F);
    add_linear(m, l + "output.dense", F, C);
    add_layer_norm(m, l + "output.LayerNorm", C);
  }
  if (s.task != "masked-lm") add_linear(m, b + "pooler.dense", C, C);
  if (s.task == "sequence-classification") {
    add_linear(m, "classifier", C, s.num_labels);
  } else if (s.task == "masked-lm") {
    add_linear(m, "cls.predictions.transform.dense", C, C);
    add_layer_norm(m, "cls.predictions.transform.LayerNorm", C);
    m.add("cls.predictions.bias", torch::zeros({s.vocab_size}));  // the decoder's weight is the word embeddings
  }
}

Output forward(ForwardContext& c, const torch::Tensor& ids, const torch::Tensor& mask) {
  const auto& s = c.m.spec;
  const auto& b = c.m.base;
  auto tokens = c.token_embeddings(b + "embeddings.word_embeddings.weight", ids);
  int64_t B = ids.size(0), T = tokens.size(1), C = s.hidden_size, nh = s.num_heads, hd = C / nh;
  // Behind a prefix, positions continue after it: transformers counts the prefix as past key/value positions.
  const int64_t start = c.first_position();
  auto pos = torch::arange(start, start + T, torch::TensorOptions().dtype(torch::kLong).device(ids.device()));
  auto x = tokens + torch::embedding(c.P(b + "embeddings.position_embeddings.weight"), pos) +
           c.P(b + "embeddings.token_type_embeddings.weight")[0];
  x = c.dropout(c.layer_norm(b + "embeddings.LayerNorm", x, s.norm_eps), s.embd_dropout);
  auto mask4d = c.mask_4d(mask, B, T, /*causal=*/false);
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, nh, hd}).transpose(1, 2); };
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "encoder.layer." + std::to_string(i) + ".";
    auto in = product_inputs(x, 3);
    auto q = heads(c.linear(l + "attention.self.query", in[0]));
    auto k = heads(c.linear(l + "attention.self.key", in[1]));
    auto v = heads(c.linear(l + "attention.self.value", in[2]));
    std::tie(k, v) = c.keys_values(i, k, v);
    auto y = attention(q, k, v, mask4d, false, s.attn_dropout, 1.0 / std::sqrt(double(hd)), c.training);
    y = c.dropout(c.linear(l + "attention.output.dense", y.transpose(1, 2).reshape({B, T, C})), s.resid_dropout);
    x = c.layer_norm(l + "attention.output.LayerNorm", y + x, s.norm_eps);
    auto f = c.linear(l + "output.dense", activation(s.activation, c.linear(l + "intermediate.dense", x)));
    x = c.layer_norm(l + "output.LayerNorm", c.dropout(f, s.resid_dropout) + x, s.norm_eps);
  }
  Output out;
  out.hidden = x;
  if (s.task == "sequence-classification") {
    auto pooled = torch::tanh(c.linear(b + "pooler.dense", x.select(1, 0)));
    out.logits = c.linear("classifier", c.dropout(pooled, s.classifier_dropout));
  } else if (s.task == "masked-lm") {
    auto h = activation(s.activation, c.linear("cls.predictions.transform.dense", c.lm_head_input(x)));
    h = c.layer_norm("cls.predictions.transform.LayerNorm", h, s.norm_eps);
    out.logits = dense(h, c.P(b + "embeddings.word_embeddings.weight"), c.P("cls.predictions.bias"));
  }
  return out;
}

const Family& kBert =
    register_family({.name = "bert",
                     .backbone = "bert.",
                     .word_embeddings = "embeddings.word_embeddings.weight",
                     .embeddings = {"embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings"},
                     .positions = Family::Positions::table_after_prefix,
                     .pad_row_frozen = true,
                     .build = build,
                     .forward = forward});

}  // namespace
}  // namespace tunekit
