// The entry points that turn plain batches into tensors and back: forward, backward (with the loss), pooled embeddings.
#include "batch.h"
#include "models/family.h"

namespace tunekit {

Tensors to_tensors(const ForwardContext& c, const Batch& b) {
  const auto& m = c.m;
  require(b.batch > 0 && b.seq > 0, "E_SHAPE", "inputIds must be a non-empty [batch, seq] array");
  require(int64_t(b.input_ids.size()) == b.batch * b.seq, "E_SHAPE", "inputIds has the wrong number of elements");
  int64_t V = m.spec.vocab_size;
  for (auto id : b.input_ids)
    require(id >= 0 && id < V, "E_RANGE", "token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
  if (m.family->positions != Family::Positions::rotary) {  // rotary positions have no table to run off
    // Virtual tokens take positions, and so does a prefix where positions continue after it.
    bool after_prefix = m.family->positions == Family::Positions::table_after_prefix;
    int64_t extra = c.virtual_tokens() + (after_prefix ? c.prefix_tokens() : 0);
    require(b.seq + extra <= m.spec.max_positions, "E_RANGE",
            "sequence length " + std::to_string(b.seq) + (extra ? " + " + std::to_string(extra) + " virtual tokens" : "") +
                " exceeds max_position_embeddings " + std::to_string(m.spec.max_positions));
  }
  Tensors t;
  auto i32 = torch::TensorOptions().dtype(torch::kInt32);
  t.ids = torch::from_blob(const_cast<int32_t*>(b.input_ids.data()), {b.batch, b.seq}, i32).to(m.device, torch::kLong);
  if (!b.attention_mask.empty()) {
    require(int64_t(b.attention_mask.size()) == b.batch * b.seq, "E_SHAPE", "attentionMask must have the shape of inputIds");
    for (auto v : b.attention_mask) require(v == 0 || v == 1, "E_RANGE", "attentionMask values must be 0 or 1");
    t.mask = torch::from_blob(const_cast<int32_t*>(b.attention_mask.data()), {b.batch, b.seq}, i32).to(m.device, torch::kLong);
  }
  if (!b.labels.empty()) {
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    t.labels = torch::from_blob(const_cast<float*>(b.labels.data()), b.labels_shape, f32).to(m.device);
  }
  return t;
}

// A language model's targets as a [batch, seq] grid over the positions the model sees, -100 where nothing is
// predicted: behind a soft prompt the virtual positions predict nothing (PEFT prepends -100 labels), and in
// pretraining position 0 ([CLS]) holds the sentence label instead.
static torch::Tensor lm_targets(const ForwardContext& c, const torch::Tensor& labels, int64_t batch, int64_t seq) {
  require(labels.dim() == 2 && labels.size(0) == batch && labels.size(1) == seq, "E_SHAPE",
          c.m.spec.task == "pretraining" ? "labels for pretraining must have the shape of inputIds"
                                         : "labels for a language model must have the shape of inputIds");
  auto l = labels.to(torch::kLong);
  if (c.m.spec.task == "pretraining") {
    l = l.clone();
    l.select(1, 0).fill_(-100);
  }
  if (int64_t n = c.virtual_tokens(); n > 0) l = torch::cat({torch::full({batch, n}, -100, l.options()), l}, 1);
  return l;
}

static bool is_masked_lm(const std::string& task) { return task == "masked-lm" || task == "pretraining"; }

// When only the loss is wanted, a masked LM's head scores the positions with a target alone (15% of them in BERT's
// recipe): its dense layer and vocabulary projection are a small encoder's largest products. The loss is the same as
// over every position, where the others weigh 0.
static void score_targets_only(ForwardContext& c, const Tensors& t) {
  if (!is_masked_lm(c.m.spec.task) || !t.labels.defined()) return;
  auto grid = lm_targets(c, t.labels, t.ids.size(0), t.ids.size(1));
  c.lm_rows = (grid.reshape({-1}) != -100).nonzero().squeeze(1);
}

static torch::Tensor loss_of(const ForwardContext& c, const Output& out, const torch::Tensor& labels) {
  const auto& m = c.m;
  const auto& task = m.spec.task;
  auto check_range = [&](const torch::Tensor& l, int64_t hi, const char* what) {
    auto bad = ((l < 0) & (l != -100)) | (l >= hi);
    require(!bad.any().item<bool>(), "E_RANGE",
            std::string("labels must be -100 (ignored) or in [0, ") + std::to_string(hi) + ") for " + what);
  };
  if (task == "causal-lm" || is_masked_lm(task)) {
    auto targets = lm_targets(c, labels, out.hidden.size(0), out.hidden.size(1) - c.virtual_tokens());
    check_range(targets, m.spec.vocab_size, task == "pretraining" ? "masked-LM positions" : "a language model");
    if (task == "causal-lm") {
      // predict token t+1 from position t: shift the labels, not the (large) logits
      targets = torch::cat({targets.slice(1, 1), torch::full({targets.size(0), 1}, -100, targets.options())}, 1);
      return cross_entropy(out.logits, targets);
    }
    // [rows, vocabulary] logits when the head scored lm_rows alone; a head that does not take them scores every position.
    bool rows_only = c.lm_rows.defined() && out.logits.dim() == 2;
    auto loss = cross_entropy(out.logits, rows_only ? targets.reshape({-1}).index_select(0, c.lm_rows) : targets);
    // For pretraining, one [batch, seq] array carries both targets: position 0 ([CLS], never a masked-LM target)
    // holds the next-sentence label, the rest the masked-LM labels. The loss is their sum, as BertForPreTraining's; a
    // batch without sentence labels (-100 at position 0) has the masked-LM loss alone.
    if (task == "pretraining") {
      auto next = labels.select(1, 0).to(torch::kLong);
      check_range(next, 2, "the next-sentence label at position 0");
      if ((next != -100).any().item<bool>()) loss = loss + cross_entropy(out.sentence_logits, next);
    }
    return loss;
  }
  require(task == "sequence-classification", "E_STATE", "a " + task + " model computes no loss");
  require(labels.dim() == 1 && labels.size(0) == out.logits.size(0), "E_SHAPE", "classification labels must be [batch]");
  if (m.spec.num_labels == 1) return torch::mse_loss(out.logits.to(torch::kFloat32).squeeze(-1), labels);
  auto l = labels.to(torch::kLong);
  check_range(l, m.spec.num_labels, "classification");
  return cross_entropy(out.logits, l);
}

FloatArray to_floats(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  FloatArray a;
  a.shape = c.sizes().vec();
  a.data.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  return a;
}

ForwardContext call_context(const Model& m) { return ForwardContext(m, m.adapter(m.active), m.training); }

ForwardResult forward(Model& m, const Batch& b, bool want_logits) {
  auto c = call_context(m);
  auto t = to_tensors(c, b);
  torch::NoGradGuard no_grad;
  if (!want_logits) score_targets_only(c, t);
  auto out = c.run(t.ids, t.mask);
  ForwardResult r;
  // A feature-extraction model answers with its last hidden state, as transformers' base models do.
  if (want_logits) r.logits = to_floats(out.logits.defined() ? out.logits : out.hidden);
  if (t.labels.defined()) {
    r.has_loss = true;
    r.loss = loss_of(c, out, t.labels).item<double>();
  }
  return r;
}

void run_backward(Model& m, const torch::Tensor& loss, double scale) {
  if (!m.grad_sync) {
    (loss * scale).backward();
    return;
  }
  m.grad_sync->before_backward(loss);
  try {
    (loss * scale).backward();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    m.grad_sync->failed(e);
  }
}

double backward(Model& m, const Batch& b, double loss_scale) {
  auto c = call_context(m);
  auto t = to_tensors(c, b);
  require(t.labels.defined(), "E_ARG", "backward needs labels");
  score_targets_only(c, t);
  auto loss = loss_of(c, c.run(t.ids, t.mask), t.labels);
  double value = loss.item<double>();
  // Refuse before autograd runs: a non-finite loss would poison every accumulated gradient.
  require(std::isfinite(value), "E_NAN",
          std::string("loss is ") + (std::isnan(value) ? "NaN" : "infinite") + "; no gradient was accumulated");
  run_backward(m, loss, loss_scale);
  return value;
}

FloatArray embed(Model& m, const Batch& b, const std::string& pooling) {
  auto c = call_context(m);
  auto t = to_tensors(c, b);
  torch::NoGradGuard no_grad;
  return to_floats(pooled_hidden(c, t, pooling));
}

torch::Tensor pooled_hidden(ForwardContext& c, Tensors t, const std::string& pooling) {
  auto h = c.run(t.ids, t.mask).hidden;
  if (int64_t n = c.virtual_tokens(); n > 0 && t.mask.defined())
    t.mask = torch::cat({torch::ones({t.mask.size(0), n}, t.mask.options()), t.mask}, 1);
  torch::Tensor pooled;
  if (pooling == "cls") {
    pooled = h.select(1, 0);
  } else if (pooling == "mean") {
    auto w = (t.mask.defined() ? t.mask : torch::ones({h.size(0), h.size(1)}, t.ids.options())).to(h.scalar_type()).unsqueeze(-1);
    pooled = (h * w).sum(1) / w.sum(1).clamp_min(1);
  } else if (pooling == "last") {
    int64_t T = h.size(1);
    auto last =
        t.mask.defined() ? (torch::arange(T, t.mask.options()) * t.mask).argmax(-1) : torch::full({h.size(0)}, T - 1, t.ids.options());
    pooled = h.index({torch::arange(h.size(0), last.options()), last});
  } else {
    throw Error("E_ARG", "pooling must be 'cls', 'mean' or 'last', got '" + pooling + "'");
  }
  return pooled;
}

}  // namespace tunekit
