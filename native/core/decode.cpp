// Decoding for a server: sessions whose KV caches stay in the core between calls, advanced together one token a step
// (continuous batching: a session joins at any step and leaves when its request ends).
#include <map>

#include "batch.h"
#include "models/family.h"
#include "peft/method.h"

namespace tunekit {

class DecodeSession {
 public:
  std::string adapter;
  KVCache kv;  // batch 1, in a buffer reserved for the model's whole context
};

std::shared_ptr<DecodeSession> decode_open(Model& m, const std::string& adapter) {
  require(m.spec.task == "causal-lm", "E_STATE", "decoding needs a causal-lm model");
  m.adapter(adapter);  // an unknown name fails here, not at the first step
  auto s = std::make_shared<DecodeSession>();
  s->adapter = adapter;
  s->kv.k.resize(m.spec.num_layers);
  s->kv.v.resize(m.spec.num_layers);
  return s;
}

namespace {

torch::Tensor ids_tensor(const Model& m, const std::vector<int32_t>& ids) {
  for (auto id : ids)
    require(id >= 0 && id < m.spec.vocab_size, "E_RANGE",
            "token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(m.spec.vocab_size));
  return torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kLong).view({1, -1}).to(m.device);
}

void require_room(const Model& m, const DecodeSession& s, size_t tokens) {
  require(s.kv.len + int64_t(tokens) <= m.spec.max_positions, "E_RANGE",
          "the session holds " + std::to_string(s.kv.len) + " positions; " + std::to_string(tokens) +
              " more exceed the model's context of " + std::to_string(m.spec.max_positions));
}

// Runs a session's new tokens (a prompt, or several at once) through its own cache; returns the last position's logits.
torch::Tensor prefill(Model& m, DecodeSession& s, const std::vector<int32_t>& tokens) {
  ForwardContext c(m, m.adapter(s.adapter), /*training=*/false, &s.kv);
  if (s.kv.len == 0) s.kv.capacity = m.spec.max_positions + c.virtual_tokens() + c.prefix_tokens();
  require_room(m, s, tokens.size());
  auto ids = ids_tensor(m, tokens);
  // Continuing a filled cache, the mask spans what it holds and the new tokens.
  auto mask = s.kv.len > 0 ? torch::ones({1, s.kv.len + ids.size(1)}, ids.options()) : torch::Tensor();
  return c.run(ids, mask).logits.select(1, -1).to(torch::kFloat32);
}

// One token for each of `rows` (sessions with filled caches) in one forward: their caches padded to the longest and
// stacked, the padding masked out, each row's token at its own position; the new keys/values go back to each cache.
torch::Tensor step_together(Model& m, const std::vector<DecodeSession*>& rows, const std::vector<int32_t>& tokens,
                            const AdapterMethod* adapter, std::vector<std::pair<const AdapterMethod*, torch::Tensor>> groups) {
  const int64_t B = int64_t(rows.size()), layers = m.spec.num_layers;
  int64_t longest = 0;
  std::vector<int64_t> past;
  for (auto* s : rows) {
    require_room(m, *s, 1);
    past.push_back(s->kv.len);
    longest = std::max(longest, s->kv.len);
  }
  auto lopts = torch::TensorOptions().dtype(torch::kLong).device(m.device);
  KVCache stacked;
  stacked.len = longest;  // capacity 0: the step's keys/values are concatenated after the stacked ones
  for (int64_t l = 0; l < layers; l++) {
    std::vector<torch::Tensor> ks, vs;
    for (auto* s : rows) {
      int64_t pad = longest - s->kv.len;
      ks.push_back(pad ? torch::constant_pad_nd(s->kv.k[l], {0, 0, 0, pad}) : s->kv.k[l]);
      vs.push_back(pad ? torch::constant_pad_nd(s->kv.v[l], {0, 0, 0, pad}) : s->kv.v[l]);
    }
    stacked.k.push_back(torch::cat(ks, 0));
    stacked.v.push_back(torch::cat(vs, 0));
  }
  auto row_past = torch::tensor(past, torch::kLong).to(m.device);
  // Keys: each row's own cached positions, then the new token; a shorter row's padding in between is masked out.
  auto mask =
      torch::cat({torch::arange(longest, lopts).unsqueeze(0) < row_past.unsqueeze(1), torch::ones({B, 1}, lopts.dtype(torch::kBool))}, 1)
          .to(torch::kLong);
  ForwardContext c(m, adapter, /*training=*/false, &stacked);
  c.row_past = row_past;
  c.row_groups = std::move(groups);
  auto ids = torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), torch::kLong).view({B, 1}).to(m.device);
  auto logits = c.run(ids, mask).logits.select(1, -1).to(torch::kFloat32);
  for (int64_t r = 0; r < B; r++) {
    auto& kv = rows[r]->kv;
    for (int64_t l = 0; l < layers; l++) {
      kv.kbuf[l].narrow(2, kv.len, 1).copy_(stacked.k[l].narrow(0, r, 1).narrow(2, longest, 1));
      kv.vbuf[l].narrow(2, kv.len, 1).copy_(stacked.v[l].narrow(0, r, 1).narrow(2, longest, 1));
      kv.k[l] = kv.kbuf[l].narrow(2, 0, kv.len + 1);
      kv.v[l] = kv.vbuf[l].narrow(2, 0, kv.len + 1);
    }
    kv.len += 1;
  }
  return logits;
}

}  // namespace

FloatArray decode_step(Model& m, const std::vector<std::shared_ptr<DecodeSession>>& sessions,
                       const std::vector<std::vector<int32_t>>& tokens) {
  require(sessions.size() == tokens.size(), "E_SHAPE", "decode step: one token list per session");
  require(!sessions.empty(), "E_ARG", "decode step: no sessions");
  c10::InferenceMode inference;
  std::vector<torch::Tensor> logits(sessions.size());
  // Sessions stepping one token, by adapter.
  std::map<std::string, std::vector<size_t>> stepping;
  for (size_t i = 0; i < sessions.size(); i++) {
    require(!tokens[i].empty(), "E_ARG", "decode step: session " + std::to_string(i) + " has no new tokens");
    for (size_t j = 0; j < i; j++) require(sessions[j] != sessions[i], "E_ARG", "decode step: a session appears twice");
    if (sessions[i]->kv.len == 0 || tokens[i].size() > 1)
      logits[i] = prefill(m, *sessions[i], tokens[i]);
    else
      stepping[sessions[i]->adapter].push_back(i);
  }
  auto together = [&](const std::vector<size_t>& idx, const AdapterMethod* adapter,
                      std::vector<std::pair<const AdapterMethod*, torch::Tensor>> groups) {
    std::vector<DecodeSession*> rows;
    std::vector<int32_t> next;
    for (auto i : idx) rows.push_back(sessions[i].get()), next.push_back(tokens[i][0]);
    auto out = step_together(m, rows, next, adapter, std::move(groups));
    for (size_t r = 0; r < idx.size(); r++) logits[idx[r]] = out[int64_t(r)].unsqueeze(0);
  };
  bool gathered = stepping.size() > 1;
  for (const auto& [name, idx] : stepping)
    if (!name.empty() && !m.adapter(name)->gathers()) gathered = false;
  if (gathered) {
    // Every row in one forward, each adapter's LoRA term on its own rows.
    std::vector<size_t> all;
    std::vector<std::pair<const AdapterMethod*, torch::Tensor>> groups;
    for (const auto& [name, idx] : stepping) {
      std::vector<int64_t> rows;
      for (auto i : idx) rows.push_back(int64_t(all.size())), all.push_back(i);
      if (!name.empty()) groups.emplace_back(m.adapter(name), torch::tensor(rows, torch::kLong).to(m.device));
    }
    together(all, nullptr, std::move(groups));
  } else {
    // One forward per adapter: methods other than LoRA (prefixes, soft prompts, IA3, bottlenecks) do not mix rows.
    for (const auto& [name, idx] : stepping) together(idx, m.adapter(name), {});
  }
  return to_floats(torch::cat(logits, 0));
}

}  // namespace tunekit
