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
  auto normal = [&](std::vector<int64_t> shape) { return torch::randn(shape) * 0.02; };
  auto linear = [&](const std::string& name, int64_t in, int64_t out) {
    m.add(name + ".weight", normal({out, in}));
    m.add(name + ".bias", torch::zeros({out}));
  };
  auto norm = [&](const std::string& name) {
    m.add(name + ".weight", torch::ones({C}));
    m.add(name + ".bias", torch::zeros({C}));
  };
  auto& b = m.base;
  m.add(b + "embeddings.word_embeddings.weight", normal({s.vocab_size, C}));
  m.add(b + "embeddings.position_embeddings.weight", normal({s.max_positions, C}));
  m.add(b + "embeddings.token_type_embeddings.weight", normal({s.type_vocab_size, C}));
  norm(b + "embeddings.LayerNorm");
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "encoder.layer." + std::to_string(i) + ".";
    for (auto p : {"query", "key", "value"}) linear(l + "attention.self." + p, C, C);
    linear(l + "attention.output.dense", C, C);
    norm(l + "attention.output.LayerNorm");
    linear(l + "intermediate.dense", C, F);
    linear(l + "output.dense", F, C);
    norm(l + "output.LayerNorm");
  }
  if (s.task != "masked-lm") linear(b + "pooler.dense", C, C);
  if (s.task == "sequence-classification") {
    linear("classifier", C, s.num_labels);
  } else if (s.task == "masked-lm") {
    linear("cls.predictions.transform.dense", C, C);
    norm("cls.predictions.transform.LayerNorm");
    m.add("cls.predictions.bias", torch::zeros({s.vocab_size}));  // the decoder's weight is the word embeddings
  }
}

Output forward(ForwardContext& c, const torch::Tensor& ids, const torch::Tensor& mask) {
  const auto& s = c.m.spec;
  const auto& b = c.m.base;
  auto tokens = c.token_embeddings(b + "embeddings.word_embeddings.weight", ids);
  int64_t B = ids.size(0), T = tokens.size(1), C = s.hidden_size, nh = s.num_heads, hd = C / nh;
  // Behind a prefix, positions continue after it: transformers counts the prefix as past key/value positions.
  const int64_t P = c.prefix_tokens();
  auto pos = torch::arange(P, P + T, torch::TensorOptions().dtype(torch::kLong).device(ids.device()));
  auto x = tokens + torch::embedding(c.P(b + "embeddings.position_embeddings.weight"), pos) +
           c.P(b + "embeddings.token_type_embeddings.weight")[0];
  x = c.dropout(c.layer_norm(b + "embeddings.LayerNorm", x, s.norm_eps), s.embd_dropout);
  auto mask4d = P ? prefix_mask_4d(mask, B, T, P, false, ids.device()) : attention_mask_4d(mask, T, false);
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, nh, hd}).transpose(1, 2); };
  for (int64_t i = 0; i < s.num_layers; i++) {
    auto l = b + "encoder.layer." + std::to_string(i) + ".";
    auto q = heads(c.linear(l + "attention.self.query", x));
    auto k = heads(c.linear(l + "attention.self.key", x));
    auto v = heads(c.linear(l + "attention.self.value", x));
    if (P) {
      auto [pk, pv] = c.prefix_kv(i, B);
      k = torch::cat({pk.to(k.scalar_type()), k}, 2);
      v = torch::cat({pv.to(v.scalar_type()), v}, 2);
    }
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
    auto h = activation(s.activation, c.linear("cls.predictions.transform.dense", x));
    h = c.layer_norm("cls.predictions.transform.LayerNorm", h, s.norm_eps);
    out.logits = dense(h, c.P(b + "embeddings.word_embeddings.weight"), c.P("cls.predictions.bias"));
  }
  return out;
}

const Family& kBert = register_family({.name = "bert",
                                       .backbone = "bert.",
                                       .word_embeddings = "embeddings.word_embeddings.weight",
                                       .embeddings = {"embeddings.word_embeddings", "embeddings.position_embeddings",
                                                      "embeddings.token_type_embeddings"},
                                       .positions = Family::Positions::table_after_prefix,
                                       .pad_row_frozen = true,
                                       .build = build,
                                       .forward = forward});

}  // namespace
}  // namespace tunekit
