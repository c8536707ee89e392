// Preference and RLHF objectives behind one entry point (objective_step), each the math of its TRL trainer, and the
// per-token log-probabilities every such method starts from. An objective is a function of the model's output on a
// batch and of the spec's numbers, strings and arrays; adding one is adding a function to the table at the end.
#include <cmath>
#include <functional>
#include <optional>

#include "../batch.h"
#include "../models/family.h"

namespace tunekit {

namespace {

using Stats = std::map<std::string, double>;

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
  logits = logits.slice(1, 0, -1).to(torch::kFloat32);
  if (temperature != 1.0) logits = logits / temperature;
  auto targets = t.ids.slice(1, 1).unsqueeze(-1);
  return logits.log_softmax(-1).gather(-1, targets).squeeze(-1);
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

const std::map<std::string, Objective>& objectives() {
  static const std::map<std::string, Objective> table = {
      {"pairwise-reward", {"sequence-classification", pairwise_reward}},
      {"dpo", {"causal-lm", dpo}},
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
  (loss * loss_scale).backward();
  return stats;
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
