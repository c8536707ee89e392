// Log-probabilities of target classes (the losses, RLHF's token log-probabilities, scoring continuations), and the
// cross-entropy built on them, without a float32 copy of all the logits.
// torch's cross_entropy widens bfloat16 logits to float32 first (autocast's float32 list), keeps the float32
// log-softmax for backward and builds the gradient in full-size passes (zeros, scatter, softmax backward, cast back);
// for a language model's [tokens, vocabulary] logits these are the largest tensors of a step. Here the logits stay in
// their dtype and are widened a block of rows at a time, in cache; backward recomputes the softmax from them and the
// saved log-sum-exp and writes the gradient in the logits' dtype, which is what autocast's cast hands back. The
// arithmetic is log_softmax + gather in float32, the same as torch's.
#include "../model.h"

namespace tunekit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows per block: about 2 MiB of float32, which stays in a core's L2 cache while each pass reads it.
int64_t block_rows(int64_t classes) { return std::max<int64_t>(1, (int64_t(1) << 19) / std::max<int64_t>(classes, 1)); }

// Rows a..b of the logits in float32, divided by the temperature as a float32 division (torch's order: widen, then
// divide).
torch::Tensor widened(const torch::Tensor& logits, int64_t a, int64_t b, double temperature) {
  auto x = logits.slice(0, a, b).to(torch::kFloat32);
  return temperature == 1.0 ? x : x / temperature;
}

struct TargetLogprobFn : public torch::autograd::Function<TargetLogprobFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& targets, double temperature) {
    int64_t rows = logits.size(0), step = block_rows(logits.size(1));
    auto lse = torch::empty({rows}, logits.options().dtype(torch::kFloat32));
    for (int64_t a = 0; a < rows; a += step) {
      int64_t b = std::min(rows, a + step);
      lse.slice(0, a, b).copy_(torch::logsumexp(widened(logits, a, b, temperature), {1}));
    }
    auto picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1).to(torch::kFloat32);
    if (temperature != 1.0) picked = picked / temperature;
    ctx->save_for_backward({logits, targets, lse});
    ctx->saved_data["temperature"] = temperature;
    return picked - lse;
  }

  // With z = x / temperature: d(z_t - logsumexp z)/dx = (onehot(t) - softmax(z)) / temperature, times each row's
  // incoming gradient.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto logits = s[0], targets = s[1], lse = s[2];
    double temperature = ctx->saved_data["temperature"].toDouble();
    auto g = grads[0].to(torch::kFloat32).unsqueeze(1);  // [rows, 1]
    if (temperature != 1.0) g = g / temperature;
    int64_t rows = logits.size(0), step = block_rows(logits.size(1));
    auto dlogits = torch::empty(logits.sizes(), logits.options());
    for (int64_t a = 0; a < rows; a += step) {
      int64_t b = std::min(rows, a + step);
      auto gb = g.slice(0, a, b);
      auto p = (widened(logits, a, b, temperature) - lse.slice(0, a, b).unsqueeze(1)).exp_().mul_(-gb);
      p.scatter_add_(1, targets.slice(0, a, b).unsqueeze(1), gb);
      dlogits.slice(0, a, b).copy_(p);
    }
    return {dlogits, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor target_logprobs(const torch::Tensor& logits, const torch::Tensor& targets, double temperature) {
  require(logits.dim() >= 1 && targets.sizes() == logits.sizes().slice(0, logits.dim() - 1), "E_SHAPE",
          "target_logprobs takes [..., classes] logits and [...] targets, got " + shape_str(logits.sizes()) + " and " +
              shape_str(targets.sizes()));
  auto rows = TargetLogprobFn::apply(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}).to(torch::kLong), temperature);
  return rows.view(targets.sizes());
}

torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets, int64_t ignore_index) {
  auto t = targets.to(torch::kLong);
  auto kept = t != ignore_index;
  // Ignored rows gather class 0 and are weighted 0; with none kept the mean is 0/0, NaN, as torch's.
  auto logprobs = target_logprobs(logits, t.masked_fill(~kept, 0));
  return -(logprobs * kept).sum() / kept.sum();
}

}  // namespace tunekit
