// Generation (greedy or sampled: temperature, top-k, top-p) and continuation scoring, both with a KV cache.
#include "batch.h"
#include "models/family.h"

namespace tunekit {

std::vector<std::vector<int32_t>> generate(Model& m, const Batch& b, const GenerateSpec& g) {
  require(m.spec.task == "causal-lm", "E_STATE", "generate() needs a causal-lm model");
  KVCache kv;
  ForwardContext c(m, m.adapter(m.active), /*training=*/false, g.use_cache ? &kv : nullptr);
  auto t = to_tensors(c, b);
  c10::InferenceMode inference;  // lighter than NoGradGuard per op, and nothing made here is ever differentiated
  auto gen = at::make_generator<at::CPUGeneratorImpl>(g.seed);
  auto ids = t.ids;
  auto mask = t.mask.defined() ? t.mask : torch::ones_like(ids);
  auto done = torch::zeros({ids.size(0)}, torch::TensorOptions().dtype(torch::kBool).device(m.device));
  // With the cache, each step feeds only the newest token; `keys` is the mask over everything the cache holds.
  kv.k.resize(m.spec.num_layers);
  kv.v.resize(m.spec.num_layers);
  torch::Tensor input = ids, keys;
  const int64_t extra = c.virtual_tokens() + c.prefix_tokens();
  kv.capacity = ids.size(1) + extra + g.max_new_tokens;
  // Under a mixed precision the weights are cast to its dtype once for the whole call, and decoding then runs as on
  // lower-precision weights: autocast would cast every weight again at every token, which costs more than the product
  // (measured: 3x slower than float32 per token at batch 1-8, against 0.6-0.9x with the copies).
  std::optional<AutocastScope> autocast;
  std::unordered_map<std::string, torch::Tensor> cast;
  if (m.autocast) {
    autocast.emplace(m.device.type(), *m.autocast);
    for (const auto& [name, p] : m.params)
      if (p.is_floating_point() && p.scalar_type() != *m.autocast) cast.emplace(name, p.to(*m.autocast));
    c.cast_weights = &cast;
  }
  for (int64_t step = 0; step < g.max_new_tokens; step++) {
    if (m.family->positions != Family::Positions::rotary && ids.size(1) + extra >= m.spec.max_positions) break;
    auto logits = c.run(input, kv.len > 0 ? keys : mask).logits.select(1, -1).to(torch::kFloat32);
    if (g.use_cache && !keys.defined()) keys = torch::cat({torch::ones({mask.size(0), kv.len - ids.size(1)}, mask.options()), mask}, 1);
    torch::Tensor next;
    if (!g.do_sample) {
      next = logits.argmax(-1);
    } else {
      logits = logits / g.temperature;
      if (g.top_k > 0) {
        auto kth = std::get<0>(logits.topk(std::min(g.top_k, logits.size(-1)), -1)).select(-1, -1).unsqueeze(-1);
        logits = logits.masked_fill(logits < kth, -INFINITY);
      }
      if (g.top_p < 1.0) {
        auto [sorted, order] = logits.sort(-1, true);
        auto cum = sorted.softmax(-1).cumsum(-1);
        auto drop = (cum - sorted.softmax(-1)) > g.top_p;  // keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted.masked_fill(drop, -INFINITY));
      }
      auto probs = logits.softmax(-1).to(torch::kCPU);
      next = torch::multinomial(probs, 1, false, gen).squeeze(-1).to(m.device);
    }
    if (g.eos_token_id >= 0) {
      next = next.masked_fill(done, g.eos_token_id);
      done = done | (next == g.eos_token_id);
    }
    ids = torch::cat({ids, next.unsqueeze(1)}, 1);
    mask = torch::cat({mask, torch::ones({mask.size(0), 1}, mask.options())}, 1);
    if (g.use_cache) {
      input = next.unsqueeze(1);
      keys = torch::cat({keys, torch::ones({keys.size(0), 1}, keys.options())}, 1);
    } else {
      input = ids;
    }
    if (g.eos_token_id >= 0 && done.all().item<bool>()) break;
  }
  auto rows = ids.to(torch::kCPU, torch::kInt32).contiguous();
  std::vector<std::vector<int32_t>> out(rows.size(0));
  for (int64_t i = 0; i < rows.size(0); i++) out[i].assign(rows[i].data_ptr<int32_t>(), rows[i].data_ptr<int32_t>() + rows.size(1));
  return out;
}

std::vector<double> log_likelihood(Model& m, const std::vector<int32_t>& prompt, const std::vector<std::vector<int32_t>>& continuations) {
  require(m.spec.task == "causal-lm", "E_STATE", "logLikelihood() needs a causal-lm model");
  require(!prompt.empty(), "E_SHAPE", "the prompt must not be empty");
  require(!continuations.empty(), "E_SHAPE", "there must be at least one continuation");
  size_t longest = 0;
  for (const auto& c : continuations) {
    require(!c.empty(), "E_SHAPE", "a continuation must not be empty");
    longest = std::max(longest, c.size());
  }
  const int64_t L = int64_t(continuations.size()), n = int64_t(longest);
  KVCache kv;
  kv.k.resize(m.spec.num_layers);
  kv.v.resize(m.spec.num_layers);
  ForwardContext c(m, m.adapter(m.active), /*training=*/false, &kv);
  Batch b;
  b.input_ids = prompt;
  b.batch = 1;
  b.seq = int64_t(prompt.size());
  auto t = to_tensors(c, b);
  if (m.family->positions != Family::Positions::rotary) {
    const int64_t total = b.seq + c.virtual_tokens() + c.prefix_tokens() + n - 1;
    require(total <= m.spec.max_positions, "E_RANGE",
            "the prompt (" + std::to_string(b.seq) + " tokens) and the longest continuation (" + std::to_string(n) +
                ") exceed the model's context of " + std::to_string(m.spec.max_positions) + " positions");
  }
  auto ids = torch::zeros({L, n}, torch::kLong), mask = torch::zeros({L, n}, torch::kLong);
  for (int64_t i = 0; i < L; i++) {
    for (int64_t j = 0; j < int64_t(continuations[i].size()); j++) {
      auto id = continuations[i][j];
      require(id >= 0 && id < m.spec.vocab_size, "E_RANGE",
              "token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(m.spec.vocab_size) + ")");
      ids[i][j] = id;
      mask[i][j] = 1;
    }
  }
  ids = ids.to(m.device);
  mask = mask.to(m.device);
  c10::InferenceMode inference;
  std::optional<AutocastScope> autocast;
  if (m.autocast) autocast.emplace(m.device.type(), *m.autocast);
  // The prompt's last position predicts every continuation's first token.
  auto first = c.run(t.ids, torch::ones_like(t.ids)).logits.select(1, -1).to(torch::kFloat32).log_softmax(-1);
  auto total = first.squeeze(0).index_select(0, ids.select(1, 0));
  if (n > 1) {
    // Every continuation extends the same cache: a view of it per row, not a copy.
    for (size_t i = 0; i < kv.k.size(); i++) {
      kv.k[i] = kv.k[i].expand({L, -1, -1, -1});
      kv.v[i] = kv.v[i].expand({L, -1, -1, -1});
    }
    auto keys = torch::cat({torch::ones({L, kv.len}, mask.options()), mask.slice(1, 0, n - 1)}, 1);
    auto next = target_logprobs(c.run(ids.slice(1, 0, n - 1), keys).logits, ids.slice(1, 1));
    total = total + (next * mask.slice(1, 1).to(next.scalar_type())).sum(1);
  }
  auto out = total.to(torch::kCPU, torch::kDouble).contiguous();
  return std::vector<double>(out.data_ptr<double>(), out.data_ptr<double>() + L);
}

}  // namespace tunekit
