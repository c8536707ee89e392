// Blocks every family shares: attention masks, scaled-dot-product attention, dtype names.
#include <ATen/autocast_mode.h>

#include "../model.h"

namespace tunekit {

namespace {

torch::Tensor plain_mask_4d(const torch::Tensor& mask, int64_t seq, bool causal) {
  if (!mask.defined()) return {};
  if (mask.all().item<bool>()) return {};
  auto keys = mask.to(torch::kBool).view({mask.size(0), 1, 1, seq});
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(mask.device());
  // A padded query may see no key at all: libtorch's attention returns zeros (and finite gradients) for such a row,
  // exactly as transformers gets, so it is left empty rather than patched.
  return causal ? keys & torch::ones({seq, seq}, opts).tril() : keys.expand({mask.size(0), 1, seq, seq});
}

// `prefix` always-visible key positions in front: [batch, 1, seq, prefix + seq].
torch::Tensor prefix_mask_4d(const torch::Tensor& mask, int64_t batch, int64_t seq, int64_t prefix, bool causal, torch::Device device) {
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(device);
  auto pattern =
      torch::cat({torch::ones({seq, prefix}, opts), causal ? torch::ones({seq, seq}, opts).tril() : torch::ones({seq, seq}, opts)}, 1);
  auto keys = torch::cat({torch::ones({batch, prefix}, opts), mask.defined() ? mask.to(torch::kBool) : torch::ones({batch, seq}, opts)}, 1);
  return keys.view({batch, 1, 1, prefix + seq}) & pattern;
}

// Decoding with a cache: `seq` new queries after `past` cached keys; `mask` covers all past + seq key positions.
torch::Tensor cached_mask_4d(const torch::Tensor& mask, int64_t batch, int64_t seq, int64_t past, torch::Device device) {
  // One new token, no padding anywhere: it sees every cached key, so no mask (callers then attend without causality).
  if (seq == 1 && (!mask.defined() || mask.all().item<bool>())) return {};
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(device);
  auto pattern = torch::cat({torch::ones({seq, past}, opts), torch::ones({seq, seq}, opts).tril()}, 1);
  auto keys = mask.defined() ? mask.to(torch::kBool) : torch::ones({batch, past + seq}, opts);
  return keys.view({batch, 1, 1, past + seq}) & pattern;
}

}  // namespace

torch::Tensor ForwardContext::mask_4d(const torch::Tensor& mask, int64_t batch, int64_t seq, bool causal) const {
  if (past() > 0) return cached_mask_4d(mask, batch, seq, past(), m.device);
  if (prefix_.defined()) return prefix_mask_4d(mask, batch, seq, prefix_.size(0), causal, m.device);
  return plain_mask_4d(mask, seq, causal);
}

namespace {

// The dtype attention runs in: autocast's for scaled_dot_product_attention (a lower-precision op, which autocast
// applies to every floating input but float64), else the inputs'.
torch::ScalarType attention_dtype(const torch::Tensor& q) {
  if (q.is_floating_point() && q.scalar_type() != torch::kFloat64 && at::autocast::is_autocast_enabled(q.device().type()))
    return at::autocast::get_autocast_dtype(q.device().type());
  return q.scalar_type();
}

// libtorch's bfloat16 flash attention on CPU has a slow backward at short sequences: forward and backward of one
// 8 x 6 x 128 x 64 causal layer take 9.7 ms against 4.6 ms in float32 on the same bfloat16 inputs (256 keys: even; 384:
// bfloat16 is faster; without gradients bfloat16 is always faster). There, training computes attention from its batched
// products instead (3.4-4.4 ms for that layer), in flash attention's precisions: the scores and their gradient in
// float32 (products of bfloat16 values are exact in float32, so a float32 product of the rounded inputs is what a
// bfloat16 kernel accumulating in float32 gives), softmax in float32, and the products whose results are bfloat16
// anyway (the output, the input gradients) in bfloat16. It keeps the float32 probabilities for backward rather than
// recomputing them as flash does: at most 128 keys, they take as much memory as the layer's q, k, v and output with
// 64-wide heads.
constexpr int64_t kShortAttentionMaxKeys = 128;

bool attend_short(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, torch::ScalarType dtype) {
  return dtype == torch::kBFloat16 && q.device().is_cpu() && k.size(-2) <= kShortAttentionMaxKeys && at::GradMode::is_enabled() &&
         (q.requires_grad() || k.requires_grad() || v.requires_grad());
}

// q [batch, heads, queries, dim]; k, v [batch, kv heads, keys, dim] in bfloat16. Grouped-query attention falls out of
// the shapes: the query heads sharing a key/value head are stacked along the query axis of one product.
// `bias`: float32 scores to add (-inf where a key is hidden), broadcastable to [batch, 1, queries, keys], or none.
struct ShortAttentionFn : public torch::autograd::Function<ShortAttentionFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const std::optional<torch::Tensor>& bias, double scale, double dropout) {
    int64_t batch = q.size(0), heads = q.size(1), queries = q.size(2), dim = q.size(3), kv = k.size(1), keys = k.size(2);
    int64_t group = heads / kv;
    auto qg = q.reshape({batch * kv, group * queries, dim});
    auto kg = k.reshape({batch * kv, keys, dim});
    auto vg = v.reshape({batch * kv, keys, dim});
    auto scores = torch::bmm(qg.to(torch::kFloat32), kg.to(torch::kFloat32).transpose(1, 2)).mul_(scale);
    auto per_group = [&](const torch::Tensor& t) { return t.view({t.size(0), 1, 1, queries, t.size(-1)}); };
    if (bias) scores.view({batch, kv, group, queries, keys}).add_(per_group(*bias));
    auto probs = torch::softmax(scores, -1);
    if (bias) {
      // A query that sees no key gets zeros (and zero gradients), as libtorch's flash attention gives it.
      auto blind = bias->isneginf().all(-1, true);
      if (blind.any().item<bool>()) probs.view({batch, kv, group, queries, keys}).masked_fill_(per_group(blind), 0);
    }
    auto kept = probs;
    torch::Tensor keep;
    if (dropout > 0) {
      keep = torch::empty_like(probs, torch::kBool).bernoulli_(1 - dropout);
      kept = probs * keep / (1 - dropout);
    }
    auto out = torch::bmm(kept.to(q.scalar_type()), vg);
    ctx->save_for_backward({qg, kg, vg, probs, keep});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dropout"] = dropout;
    ctx->saved_data["shape"] = q.sizes().vec();
    return out.view(q.sizes());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto qg = s[0], kg = s[1], vg = s[2], probs = s[3], keep = s[4];
    double scale = ctx->saved_data["scale"].toDouble(), dropout = ctx->saved_data["dropout"].toDouble();
    auto dtype = qg.scalar_type();
    auto d_out = grads[0].to(dtype).reshape({qg.size(0), qg.size(1), qg.size(2)});
    auto kept = keep.defined() ? probs * keep / (1 - dropout) : probs;
    auto d_v = torch::bmm(kept.to(dtype).transpose(1, 2), d_out);
    auto d_probs = torch::bmm(d_out.to(torch::kFloat32), vg.to(torch::kFloat32).transpose(1, 2));
    if (keep.defined()) d_probs.mul_(keep).div_(1 - dropout);
    auto d_scores = at::_softmax_backward_data(d_probs, probs, -1, torch::kFloat32).mul_(scale).to(dtype);
    auto d_q = torch::bmm(d_scores, kg);
    auto d_k = torch::bmm(d_scores.transpose(1, 2), qg);
    auto q_shape = ctx->saved_data["shape"].toIntVector();
    std::vector<int64_t> kv_shape{q_shape[0], kg.size(0) / q_shape[0], kg.size(1), kg.size(2)};
    return {d_q.view(q_shape), d_k.view(kv_shape), d_v.view(kv_shape), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

std::optional<torch::Tensor> score_bias(const torch::Tensor& mask4d, bool causal, int64_t queries, int64_t keys, torch::Device device) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  auto hidden = -std::numeric_limits<float>::infinity();
  if (mask4d.defined())
    return torch::zeros({mask4d.size(0), 1, queries, keys}, opts)
        .masked_fill_(mask4d.logical_not().expand({mask4d.size(0), 1, queries, keys}), hidden);
  if (causal) return torch::full({1, 1, queries, keys}, hidden, opts).triu(1);
  return std::nullopt;
}

}  // namespace

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask4d, bool causal,
                        double dropout, double scale, bool training) {
  double p = training ? dropout : 0.0;
  auto dtype = attention_dtype(q);
  if (attend_short(q, k, v, dtype)) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto bias = score_bias(mask4d, causal, q.size(2), k.size(2), q.device());
    return ShortAttentionFn::apply(q.to(dtype), k.to(dtype), v.to(dtype), bias, scale, p);
  }
  // Grouped-query attention (fewer key/value heads than query heads) shares each key/value head in the kernel rather
  // than copying it per query head, which a decoding step would otherwise do to the whole cache at every token.
  bool gqa = k.size(1) != q.size(1);
  if (mask4d.defined()) return at::scaled_dot_product_attention(q, k, v, mask4d, p, false, scale, gqa);
  return at::scaled_dot_product_attention(q, k, v, {}, p, causal, scale, gqa);
}

std::string scalar_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return "float32";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kFloat16:
      return "float16";
    default:
      return c10::toString(t);
  }
}

torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32") return torch::kFloat32;
  if (s == "bfloat16") return torch::kBFloat16;
  if (s == "float16") return torch::kFloat16;
  throw Error("E_ARG", "dtype must be 'float32', 'bfloat16' or 'float16', got '" + s + "'");
}

std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); i++) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

}  // namespace tunekit
