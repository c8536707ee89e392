// Preference, RLHF and contrastive objectives behind one entry point (objective_step), each the math of its TRL (or
// sentence-transformers) trainer, and the per-token log-probabilities every such method starts from. An objective is
// a function of the model's output on a batch and of the spec's numbers, strings and arrays; adding one is adding a
// function to the table at the end.
#include <torch/nn/functional/normalization.h>

#include <cmath>
#include <functional>
#include <optional>

#include "../batch.h"
#include "../models/family.h"

namespace tunekit {

namespace {

using Stats = std::map<std::string, double>;

// TRL's AutoModelForCausalLMWithValueHead names: v_head.summary.{weight,bias}.
const std::string kValueHead = "v_head.summary";

struct Objective {
  std::string task;  // the model task it needs
  std::function<torch::Tensor(ForwardContext&, const Tensors&, const ObjectiveSpec&, Stats&)> loss;
};

double number(const ObjectiveSpec& s, const std::string& key, double fallback) {
  auto it = s.numbers.find(key);
  if (it == s.numbers.end()) return fallback;
  require(std::isfinite(it->second), "E_ARG", s.name + ": '" + key + "' must be a finite number");
  return it->second;
}

// A float array of the spec as a tensor of `shape` on the model's device; undefined when absent and optional.
torch::Tensor array(const ForwardContext& c, const ObjectiveSpec& s, const std::string& key, std::vector<int64_t> shape, bool required) {
  auto it = s.arrays.find(key);
  if (it == s.arrays.end()) {
    require(!required, "E_ARG", s.name + " needs the array '" + key + "'");
    return {};
  }
  int64_t n = 1;
  for (auto d : shape) n *= d;
  require(int64_t(it->second.size()) == n, "E_SHAPE",
          s.name + ": '" + key + "' has " + std::to_string(it->second.size()) + " values but the batch needs " + std::to_string(n));
  auto t = torch::from_blob(const_cast<float*>(it->second.data()), shape, torch::kFloat32).to(c.m.device);
  require(torch::isfinite(t).all().item<bool>(), "E_NAN", s.name + ": '" + key + "' holds a non-finite value");
  return t;
}

// Rows come as [first half; second half] (chosen; rejected): an even, non-zero count.
int64_t pairs_of(const Tensors& t, const std::string& what) {
  int64_t rows = t.ids.size(0);
  require(rows % 2 == 0, "E_SHAPE", what + ": the batch must hold chosen rows then as many rejected rows");
  return rows / 2;
}

// Log-probabilities of each next token, [rows, seq - 1], float32: the logits of position t score token t + 1.
torch::Tensor next_token_logprobs(const ForwardContext& c, const Tensors& t, const Output& out, double temperature) {
  auto logits = out.logits;
  // Virtual tokens of a soft prompt come first and predict nothing of the text.
  if (int64_t n = c.virtual_tokens(); n > 0) logits = logits.slice(1, n);
  return target_logprobs(logits.slice(1, 0, -1), t.ids.slice(1, 1), temperature);
}

torch::Tensor pairwise_reward(ForwardContext& c, const Tensors& t, const ObjectiveSpec& s, Stats& st) {
  require(c.m.spec.num_labels == 1, "E_CONFIG", "a reward model is a sequence classifier with one output (numLabels: 1)");
  int64_t n = pairs_of(t, "pairwise-reward");
  auto rewards = c.run(t.ids, t.mask).logits.to(torch::kFloat32).squeeze(-1);
  auto chosen = rewards.slice(0, 0, n), rejected = rewards.slice(0, n);
  auto diff = chosen - rejected;
  if (auto margin = array(c, s, "margin", {n}, false); margin.defined()) diff = diff - margin;
  auto loss = -torch::log_sigmoid(diff).mean();
  double center = number(s, "center_rewards_coefficient", 0);
  if (center != 0) loss = loss + center * (chosen + rejected).pow(2).mean();
  torch::NoGradGuard g;
  st["accuracy"] = (chosen > rejected).to(torch::kFloat32).mean().item<double>();
  st["margin"] = (chosen - rejected).mean().item<double>();
  st["meanReward"] = rewards.mean().item<double>();
  st["minReward"] = rewards.min().item<double>();
  st["maxReward"] = rewards.max().item<double>();
  return loss;
}

torch::Tensor dpo(ForwardContext& c, const Tensors& t, const ObjectiveSpec& s, Stats& st) {
  int64_t n = pairs_of(t, "dpo");
  int64_t rows = t.ids.size(0), seq = t.ids.size(1);
  double beta = number(s, "beta", 0.1);
  require(beta > 0, "E_ARG", "dpo: beta must be positive");
  auto type_it = s.strings.find("loss_type");
  std::string type = type_it == s.strings.end() ? "sigmoid" : type_it->second;
  auto completion = array(c, s, "completion_mask", {rows, seq}, true);
  auto ref = array(c, s, "ref_logps", {rows}, true);

  auto logps = (next_token_logprobs(c, t, c.run(t.ids, t.mask), 1.0) * completion.slice(1, 1)).sum(1);
  auto logratios = logps - ref;
  auto chosen = logratios.slice(0, 0, n), rejected = logratios.slice(0, n);
  auto delta = chosen - rejected;
  torch::Tensor per_pair;
  if (type == "sigmoid") {
    per_pair = -torch::log_sigmoid(beta * delta);
  } else if (type == "hinge") {
    per_pair = torch::relu(1 - beta * delta);
  } else if (type == "ipo") {
    // TRL normalises IPO's log-ratios by the completion length (tokens of the unshifted mask), confirmed by its authors.
    auto lengths = completion.sum(1).clamp_min(1.0);
    auto ipo = chosen / lengths.slice(0, 0, n) - rejected / lengths.slice(0, n);
    per_pair = (ipo - 1 / (2 * beta)).pow(2);
  } else if (type == "robust") {
    double eps = number(s, "label_smoothing", 0);
    require(eps >= 0 && eps < 0.5, "E_ARG", "dpo: labelSmoothing must be in [0, 0.5) for the robust loss");
    auto clean = -(1 - eps) * torch::log_sigmoid(beta * delta);
    auto flipped = -eps * torch::log_sigmoid(-beta * delta);
    per_pair = (clean - flipped) / (1 - 2 * eps);
  } else {
    throw Error("E_ARG", "dpo: lossType must be 'sigmoid', 'hinge', 'ipo' or 'robust', got '" + type + "'");
  }
  auto loss = per_pair.mean();
  torch::NoGradGuard g;
  auto rc = beta * chosen, rr = beta * rejected;
  st["rewards/chosen"] = rc.mean().item<double>();
  st["rewards/rejected"] = rr.mean().item<double>();
  st["rewards/accuracies"] = (rc > rr).to(torch::kFloat32).mean().item<double>();
  st["rewards/margins"] = (rc - rr).mean().item<double>();
  st["logps/chosen"] = logps.slice(0, 0, n).mean().item<double>();
  st["logps/rejected"] = logps.slice(0, n).mean().item<double>();
  return loss;
}

torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask) { return (x * mask).sum() / mask.sum().clamp_min(1); }

// The value head's estimate at every position, [rows, seq]: Linear(hidden, 1) on the final hidden state.
torch::Tensor values_of(const ForwardContext& c, const Output& out) {
  require(c.m.has(kValueHead + ".weight"), "E_STATE", "the model has no value head (PPO adds one)");
  auto h = out.hidden;
  if (int64_t n = c.virtual_tokens(); n > 0) h = h.slice(1, n);
  return torch::linear(h.to(torch::kFloat32), c.m.stored(kValueHead + ".weight").to(torch::kFloat32),
                       c.m.stored(kValueHead + ".bias").to(torch::kFloat32))
      .squeeze(-1);
}

// Row r's response token t sits at shifted index query_length[r] - 1 + t (the position that predicts it): the
// [rows, response] gather index, clamped inside the row where the mask is off.
torch::Tensor response_index(const ForwardContext& c, const ObjectiveSpec& s, int64_t rows, int64_t response, int64_t shifted) {
  auto q = array(c, s, "query_lengths", {rows}, true).to(torch::kLong);
  require((q >= 1).all().item<bool>(), "E_ARG", s.name + ": every query needs at least one token");
  auto idx = q.unsqueeze(1) - 1 + torch::arange(response, q.options()).unsqueeze(0);
  return idx.clamp_max(shifted - 1);
}

// PPO's clipped policy and value losses (TRL's PPOv2 trainer; Huang et al. 2024) on a minibatch.
torch::Tensor ppo(ForwardContext& c, const Tensors& t, const ObjectiveSpec& s, Stats& st) {
  int64_t rows = t.ids.size(0), shifted = t.ids.size(1) - 1;
  auto it = s.arrays.find("mask");
  require(it != s.arrays.end() && rows > 0 && it->second.size() % rows == 0, "E_ARG", "ppo needs the array 'mask' of [rows, response]");
  int64_t R = int64_t(it->second.size()) / rows;
  auto mask = array(c, s, "mask", {rows, R}, true);
  auto old_logprobs = array(c, s, "old_logprobs", {rows, R}, true);
  auto old_values = array(c, s, "old_values", {rows, R}, true);
  auto advantages = array(c, s, "advantages", {rows, R}, true);
  auto returns = array(c, s, "returns", {rows, R}, true);
  double clip = number(s, "cliprange", 0.2), clip_v = number(s, "cliprange_value", 0.2), vf_coef = number(s, "vf_coef", 0.1);
  double temperature = number(s, "temperature", 1.0);
  require(temperature > 0, "E_ARG", "ppo: temperature must be positive");
  auto idx = response_index(c, s, rows, R, shifted);

  auto out = c.run(t.ids, t.mask);
  auto logits = out.logits;
  if (int64_t n = c.virtual_tokens(); n > 0) logits = logits.slice(1, n);
  logits = logits.slice(1, 0, -1).to(torch::kFloat32) / temperature;
  auto resp_logits = logits.gather(1, idx.unsqueeze(-1).expand({rows, R, logits.size(-1)}));
  auto targets = t.ids.slice(1, 1).gather(1, idx);
  auto logprobs = target_logprobs(resp_logits, targets);
  auto vpred = values_of(c, out).slice(1, 0, -1).gather(1, idx);

  auto vclipped = old_values + (vpred - old_values).clamp(-clip_v, clip_v);
  auto vf1 = (vpred - returns).pow(2), vf2 = (vclipped - returns).pow(2);
  auto vf_loss = 0.5 * masked_mean(torch::max(vf1, vf2), mask);
  auto log_ratio = logprobs - old_logprobs;
  auto ratio = log_ratio.exp();
  auto pg1 = -advantages * ratio, pg2 = -advantages * ratio.clamp(1 - clip, 1 + clip);
  auto pg_loss = masked_mean(torch::max(pg1, pg2), mask);
  auto loss = pg_loss + vf_coef * vf_loss;

  torch::NoGradGuard g;
  auto probs = resp_logits.softmax(-1);
  auto entropy = torch::logsumexp(resp_logits, -1) - (probs * resp_logits).sum(-1);
  st["policy/approxkl"] = 0.5 * masked_mean(log_ratio.pow(2), mask).item<double>();
  st["policy/clipfrac"] = masked_mean((pg2 > pg1).to(torch::kFloat32), mask).item<double>();
  st["policy/entropy"] = masked_mean(entropy, mask).item<double>();
  st["loss/policy"] = pg_loss.item<double>();
  st["loss/value"] = vf_loss.item<double>();
  st["val/clipfrac"] = masked_mean((vf2 > vf1).to(torch::kFloat32), mask).item<double>();
  st["val/ratio"] = masked_mean(ratio, mask).item<double>();
  return loss;
}

// TRL's GRPO loss: the clipped surrogate per completion token with group-normalised advantages, plus beta times the
// k3 estimate of the KL to the reference; averaged per sequence then over sequences ('grpo') or over all tokens ('bnpo',
// 'dapo').
torch::Tensor grpo(ForwardContext& c, const Tensors& t, const ObjectiveSpec& s, Stats& st) {
  int64_t rows = t.ids.size(0), seq = t.ids.size(1);
  double beta = number(s, "beta", 0), eps_low = number(s, "epsilon_low", 0.2), eps_high = number(s, "epsilon_high", 0.2);
  double temperature = number(s, "temperature", 1.0);
  require(temperature > 0, "E_ARG", "grpo: temperature must be positive");
  auto type_it = s.strings.find("loss_type");
  std::string type = type_it == s.strings.end() ? "grpo" : type_it->second;
  // dapo normalises by the completion tokens of the whole generation batch: on one batch, the token mean (bnpo).
  require(type == "grpo" || type == "bnpo" || type == "dapo", "E_ARG",
          "grpo: lossType must be 'grpo', 'bnpo' or 'dapo', got '" + type + "'");
  auto mask = array(c, s, "completion_mask", {rows, seq}, true).slice(1, 1);
  auto advantages = array(c, s, "advantages", {rows}, true).unsqueeze(1);
  auto logps = next_token_logprobs(c, t, c.run(t.ids, t.mask), temperature);
  auto old = array(c, s, "old_logps", {rows, seq - 1}, false);
  if (!old.defined()) old = logps.detach();
  auto coef1 = (logps - old).exp();
  auto coef2 = coef1.clamp(1 - eps_low, 1 + eps_high);
  auto per_token = -torch::min(coef1 * advantages, coef2 * advantages);
  torch::Tensor kl;
  if (beta != 0) {
    auto ref = array(c, s, "ref_logps", {rows, seq - 1}, true);
    kl = (ref - logps).exp() - (ref - logps) - 1;
    // TRL's default since DeepSeek-V3.2: weighted by the ratio, the KL gradient is the unbiased reverse-KL gradient.
    if (number(s, "bias_correction_kl", 1) != 0) kl = kl * coef1;
    per_token = per_token + beta * kl;
  }
  auto loss = type == "grpo" ? ((per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean() : masked_mean(per_token, mask);
  torch::NoGradGuard g;
  if (kl.defined()) st["kl"] = masked_mean(kl, mask).item<double>();
  auto low = (coef1 < 1 - eps_low) & (advantages < 0), high = (coef1 > 1 + eps_high) & (advantages > 0);
  st["clip_ratio/low_mean"] = masked_mean(low.to(torch::kFloat32), mask).item<double>();
  st["clip_ratio/high_mean"] = masked_mean(high.to(torch::kFloat32), mask).item<double>();
  st["clip_ratio/region_mean"] = masked_mean((low | high).to(torch::kFloat32), mask).item<double>();
  return loss;
}

// sentence-transformers' MultipleNegativesRankingLoss (InfoNCE with in-batch negatives): rows are n anchors, then
// their n positives, then any number of n-row groups of hard negatives. Every anchor scores every candidate by scaled
// cosine similarity, and cross-entropy asks for its own positive; the other rows' positives are its negatives.
torch::Tensor multiple_negatives_ranking(ForwardContext& c, const Tensors& t, const ObjectiveSpec& s, Stats& st) {
  int64_t rows = t.ids.size(0);
  double anchors = number(s, "anchors", 0);
  int64_t n = int64_t(anchors);
  require(n >= 1 && double(n) == anchors && rows % n == 0 && rows / n >= 2, "E_SHAPE",
          "multiple-negatives-ranking: the batch must hold the anchors, then as many positives, then any hard negatives "
          "in groups of as many rows (" +
              std::to_string(rows) + " rows for " + std::to_string(anchors) + " anchors)");
  auto pooling = s.strings.find("pooling");
  require(pooling != s.strings.end(), "E_ARG", "multiple-negatives-ranking needs the string 'pooling'");
  auto v = pooled_hidden(c, t, pooling->second).to(torch::kFloat32);
  namespace F = torch::nn::functional;
  auto a = F::normalize(v.slice(0, 0, n), F::NormalizeFuncOptions().dim(1));
  auto candidates = F::normalize(v.slice(0, n), F::NormalizeFuncOptions().dim(1));
  auto cosines = a.mm(candidates.t());
  auto labels = torch::arange(n, torch::TensorOptions().dtype(torch::kLong).device(cosines.device()));
  auto loss = torch::cross_entropy_loss(cosines * number(s, "scale", 20), labels);
  torch::NoGradGuard g;
  st["accuracy"] = (cosines.argmax(1) == labels).to(torch::kFloat32).mean().item<double>();
  st["positiveCosine"] = cosines.diagonal().mean().item<double>();
  st["negativeCosine"] =
      n * (rows - n) > n ? ((cosines.sum() - cosines.diagonal().sum()) / double(n * (rows - n) - n)).item<double>() : 0.0;
  return loss;
}

const std::map<std::string, Objective>& objectives() {
  static const std::map<std::string, Objective> table = {
      {"multiple-negatives-ranking", {"feature-extraction", multiple_negatives_ranking}},
      {"pairwise-reward", {"sequence-classification", pairwise_reward}},
      {"dpo", {"causal-lm", dpo}},
      {"ppo", {"causal-lm", ppo}},
      {"grpo", {"causal-lm", grpo}},
  };
  return table;
}

}  // namespace

std::map<std::string, double> objective_step(Model& m, const Batch& b, const ObjectiveSpec& s, double loss_scale, bool backward) {
  auto it = objectives().find(s.name);
  require(it != objectives().end(), "E_ARG", "unknown objective '" + s.name + "'");
  require(m.spec.task == it->second.task, "E_STATE", s.name + " needs a " + it->second.task + " model, not a " + m.spec.task + " one");
  auto c = call_context(m);
  auto t = to_tensors(c, b);
  Stats stats;
  std::optional<torch::NoGradGuard> no_grad;
  if (!backward) no_grad.emplace();
  auto loss = it->second.loss(c, t, s, stats);
  double value = loss.item<double>();
  stats["loss"] = value;
  if (!backward) return stats;
  require(std::isfinite(value), "E_NAN",
          s.name + ": loss is " + (std::isnan(value) ? "NaN" : "infinite") + "; no gradient was accumulated");
  run_backward(m, loss, loss_scale);
  return stats;
}

void add_value_head(Model& m) {
  require(m.spec.task == "causal-lm", "E_STATE", "a value head goes on a causal-lm policy, not a " + m.spec.task + " model");
  require(!m.has(kValueHead + ".weight"), "E_STATE", "the model already has a value head");
  // Zero at the start, as TRL's value head: every first value estimate is 0.
  m.add(kValueHead + ".weight", torch::zeros({1, m.spec.hidden_size}));
  m.add(kValueHead + ".bias", torch::zeros({1}));
}

std::pair<FloatArray, FloatArray> token_logprobs_and_values(Model& m, const Batch& b, double temperature) {
  require(std::isfinite(temperature) && temperature > 0, "E_ARG", "temperature must be a positive number");
  auto c = call_context(m);
  auto t = to_tensors(c, b);
  require(t.ids.size(1) >= 2, "E_SHAPE", "value estimates need sequences of at least 2 tokens");
  torch::NoGradGuard g;
  auto out = c.run(t.ids, t.mask);  // one forward for both
  return {to_floats(next_token_logprobs(c, t, out, temperature)), to_floats(values_of(c, out).slice(1, 0, -1))};
}

// GAE over [rows, T] response-aligned tensors: rewards are -kl_coef * (logprob - ref) per token plus the score at each
// row's last token; advantages whitened over the mask (mean, unbiased variance, rsqrt(var + 1e-8)).
PpoAdvantages ppo_advantages(const PpoInputs& in) {
  int64_t B = in.rows, T = in.length;
  auto f = [&](const std::vector<float>& v, const char* what) {
    require(int64_t(v.size()) == B * T, "E_SHAPE", std::string("ppo: ") + what + " must have rows x response entries");
    auto t = torch::from_blob(const_cast<float*>(v.data()), {B, T}, torch::kFloat32).clone();
    require(torch::isfinite(t).all().item<bool>(), "E_NAN", std::string("ppo: ") + what + " holds a non-finite value");
    return t;
  };
  auto logprobs = f(in.logprobs, "logprobs"), ref = f(in.ref_logprobs, "ref logprobs"), values = f(in.values, "values");
  auto mask = f(in.mask, "mask");
  require(int64_t(in.scores.size()) == B, "E_SHAPE", "ppo: one score per row");
  auto scores = torch::tensor(in.scores, torch::kFloat32);
  require(torch::isfinite(scores).all().item<bool>(), "E_NAN", "ppo: a score is not finite");
  auto lengths = mask.sum(1).to(torch::kLong);
  require((lengths >= 1).all().item<bool>(), "E_ARG", "ppo: every response needs at least one token");

  auto kl = (logprobs - ref) * mask;
  auto non_score = -in.kl_coef * kl;
  auto rewards = non_score.clone();
  auto last = (lengths - 1).unsqueeze(1);
  rewards.scatter_add_(1, last, scores.unsqueeze(1));
  auto whiten = [&](const torch::Tensor& x, bool shift_mean) {
    auto mean = masked_mean(x, mask);
    auto centred = x - mean;
    auto n = mask.sum();
    auto var = (centred.pow(2) * mask).sum() / (n - 1).clamp_min(1);  // unbiased, as TRL's masked_var
    auto w = centred * torch::rsqrt(var + 1e-8);
    return shift_mean ? w : w + mean;
  };
  if (in.whiten_rewards) rewards = whiten(rewards, false) * mask;
  values = values * mask;
  auto adv = torch::zeros_like(rewards);
  auto lastgaelam = torch::zeros({B}, torch::kFloat32);
  for (int64_t t = T - 1; t >= 0; t--) {
    auto next = t + 1 < T ? values.select(1, t + 1) : torch::zeros({B}, torch::kFloat32);
    auto delta = rewards.select(1, t) + in.gamma * next - values.select(1, t);
    lastgaelam = delta + in.gamma * in.lam * lastgaelam;
    adv.select(1, t).copy_(lastgaelam);
  }
  auto returns = adv + values;
  adv = whiten(adv, true) * mask;

  PpoAdvantages out;
  auto vec = [](const torch::Tensor& t) {
    auto c = t.contiguous();
    return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  };
  out.rewards = vec(rewards);
  out.advantages = vec(adv);
  out.returns = vec(returns);
  out.kl = kl.sum(1).mean().item<double>();
  out.non_score_reward = non_score.sum(1).mean().item<double>();
  return out;
}

FloatArray token_logprobs(Model& m, const Batch& b, double temperature) {
  require(m.spec.task == "causal-lm", "E_STATE", "token log-probabilities need a causal-lm model, not a " + m.spec.task + " one");
  require(std::isfinite(temperature) && temperature > 0, "E_ARG", "temperature must be a positive number");
  auto c = call_context(m);
  auto t = to_tensors(c, b);
  require(t.ids.size(1) >= 2, "E_SHAPE", "token log-probabilities need sequences of at least 2 tokens");
  torch::NoGradGuard g;
  return to_floats(next_token_logprobs(c, t, c.run(t.ids, t.mask), temperature));
}

}  // namespace tunekit
