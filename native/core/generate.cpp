// Generation: greedy or sampled (temperature, top-k, top-p) decoding with a KV cache.
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

}  // namespace tunekit
