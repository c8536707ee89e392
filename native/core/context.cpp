// ForwardContext: the per-call view of a model through which every family's forward reads its weights and calls the
// active adapter's hooks.
#include <ATen/autocast_mode.h>

#include "models/family.h"
#include "peft/method.h"

namespace tunekit {

ForwardContext::ForwardContext(const Model& model, const AdapterMethod* adapter, bool training, KVCache* cache)
    : m(model), adapter(adapter), cache(cache), training(training) {}

Output ForwardContext::run(const torch::Tensor& ids, const torch::Tensor& in_mask) {
  auto mask = in_mask;
  if (past() == 0) {  // with a filled cache the mask already spans prefix and virtual positions
    if (int64_t n = virtual_tokens(); n > 0 && mask.defined()) mask = torch::cat({torch::ones({mask.size(0), n}, mask.options()), mask}, 1);
  }
  prefix_ = past() == 0 && prefix_tokens() > 0 ? adapter->prefix_values(m) : torch::Tensor();
  if (!m.autocast) return m.family->forward(*this, ids, mask);
  // The forward alone, as a transformers user writes `with torch.autocast(...): out = model(...)`: the losses upcast
  // the logits, and backward runs outside the scope.
  AutocastScope scope(m.device.type(), *m.autocast);
  return m.family->forward(*this, ids, mask);
}

AutocastScope::AutocastScope(c10::DeviceType device, torch::ScalarType dtype)
    : device_(device), was_enabled_(at::autocast::is_autocast_enabled(device)), was_dtype_(at::autocast::get_autocast_dtype(device)) {
  at::autocast::set_autocast_enabled(device, true);
  at::autocast::set_autocast_dtype(device, dtype);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(device_, was_enabled_);
  at::autocast::set_autocast_dtype(device_, was_dtype_);
}

int64_t ForwardContext::virtual_tokens() const { return adapter ? adapter->virtual_tokens() : 0; }
int64_t ForwardContext::prefix_tokens() const { return adapter ? adapter->prefix_tokens() : 0; }

const torch::Tensor& ForwardContext::P(const std::string& name) const {
  const std::string* stored = &name;
  if (adapter && !adapter->overrides.empty()) {
    auto o = adapter->overrides.find(name);
    if (o != adapter->overrides.end()) stored = &o->second;
  }
  if (cast_weights) {
    auto c = cast_weights->find(*stored);
    if (c != cast_weights->end()) return c->second;
  }
  return m.stored(*stored);
}

torch::Tensor ForwardContext::linear(const std::string& module, const torch::Tensor& x) const {
  const auto& W = P(module + ".weight");
  auto bias = m.has(module + ".bias") ? P(module + ".bias") : torch::Tensor();
  bool fifo = m.is_conv1d(module);
  if (!row_groups.empty()) {
    // Rows under different adapters in one product, as Punica's gathered LoRA (BGMV): the base product for every row,
    // then each adapter's term on its own rows, added back in place.
    auto y = dense(x, W, bias, fifo);
    for (const auto& [a, rows] : row_groups) {
      auto d = a->delta(*this, module, x.index_select(0, rows));
      if (d.defined()) y.index_add_(0, rows, d.to(y.scalar_type()));
    }
    return y;
  }
  if (adapter && !adapter->merged) return adapter->linear(*this, module, x, W, bias, fifo);
  return dense(x, W, bias, fifo);
}

torch::Tensor ForwardContext::positions(int64_t T, torch::Device device) const {
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  if (row_past.defined()) return row_past.unsqueeze(1) + torch::arange(T, opts);
  const int64_t start = first_position();
  return torch::arange(start, start + T, opts);
}

torch::Tensor ForwardContext::layer_norm(const std::string& module, const torch::Tensor& x, double eps) const {
  return torch::layer_norm(x, {x.size(-1)}, P(module + ".weight"), P(module + ".bias"), eps);
}

torch::Tensor ForwardContext::rms_norm(const std::string& module, const torch::Tensor& x) const {
  return tunekit::rms_norm(x, P(module + ".weight"), m.spec.norm_eps);
}

torch::Tensor ForwardContext::lm_head_input(const torch::Tensor& hidden) const {
  return lm_rows.defined() ? hidden.reshape({-1, hidden.size(-1)}).index_select(0, lm_rows) : hidden;
}

torch::Tensor ForwardContext::dropout(const torch::Tensor& x, double p) const {
  return (training && p > 0) ? torch::dropout(x, p, true) : x;
}

torch::Tensor ForwardContext::token_embeddings(const std::string& table, const torch::Tensor& ids) const {
  auto x = torch::embedding(P(table), ids, m.family->pad_row_frozen ? m.spec.pad_token_id : -1);
  if (!adapter || past() > 0) return x;  // a cache already holds the virtual tokens
  return adapter->input_embeddings(*this, x);
}

std::pair<torch::Tensor, torch::Tensor> ForwardContext::keys_values(int64_t layer, torch::Tensor k, torch::Tensor v) {
  if (prefix_.defined()) {
    // PEFT's layout: [n, layers * 2, heads, head_dim], key of layer i at 2i and value at 2i + 1. Prefix keys are used
    // as stored: no rotary embedding, as a cache holds them.
    auto prefix = [&](int64_t j, const torch::Tensor& like) {
      return prefix_.select(1, j).permute({1, 0, 2}).unsqueeze(0).expand({like.size(0), -1, -1, -1}).to(like.scalar_type());
    };
    k = torch::cat({prefix(2 * layer, k), k}, 2);
    v = torch::cat({prefix(2 * layer + 1, v), v}, 2);
  }
  if (!cache) return {k, v};
  auto& c = *cache;
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
  } else {
    c.k[layer] = c.len > 0 ? torch::cat({c.k[layer], k}, 2) : k;
    c.v[layer] = c.len > 0 ? torch::cat({c.v[layer], v}, 2) : v;
  }
  // The last layer's write completes this step.
  if (layer == int64_t(c.k.size()) - 1) c.len = end;
  return {c.k[layer], c.v[layer]};
}

torch::Tensor ForwardContext::last_token_index(const torch::Tensor& ids) const {
  int64_t batch = ids.size(0), seq = ids.size(1);
  if (m.spec.pad_token_id < 0) {
    if (batch != 1) throw Error("E_CONFIG", "config has no pad_token_id: cannot find the last token of a padded batch");
    return torch::full({batch}, seq - 1 + virtual_tokens(), torch::TensorOptions().dtype(torch::kLong).device(ids.device()));
  }
  // Rightmost token that is not padding, so left and right padding both work.
  auto non_pad = (ids != m.spec.pad_token_id).to(torch::kInt32);
  auto positions = torch::arange(seq, torch::TensorOptions().dtype(torch::kInt32).device(ids.device()));
  // Behind a soft prompt the sequence starts after the virtual tokens.
  return (positions * non_pad).argmax(-1) + virtual_tokens();
}

}  // namespace tunekit
