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
// 32 x 6 x 64 x 64 layer take 16.5 ms against 8.0 ms in float32 on the same bfloat16 inputs (256 keys: even; 384:
// bfloat16 is faster; without gradients bfloat16 is always faster). There, training attends the bfloat16-rounded
// inputs in float32 and returns bfloat16, as torch's own math backend computes low-precision attention, so the
// result is one that autocast's scaled_dot_product_attention already allows, and no less precise.
constexpr int64_t kFloat32AttentionMaxKeys = 128;

bool attend_in_float32(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, torch::ScalarType dtype) {
  return dtype == torch::kBFloat16 && q.device().is_cpu() && k.size(-2) <= kFloat32AttentionMaxKeys && at::GradMode::is_enabled() &&
         (q.requires_grad() || k.requires_grad() || v.requires_grad());
}

}  // namespace

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask4d, bool causal,
                        double dropout, double scale, bool training) {
  double p = training ? dropout : 0.0;
  // Grouped-query attention (fewer key/value heads than query heads) shares each key/value head in the kernel rather
  // than copying it per query head, which a decoding step would otherwise do to the whole cache at every token.
  bool gqa = k.size(1) != q.size(1);
  auto attend = [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
    if (mask4d.defined()) return at::scaled_dot_product_attention(q, k, v, mask4d, p, false, scale, gqa);
    return at::scaled_dot_product_attention(q, k, v, {}, p, causal, scale, gqa);
  };
  auto dtype = attention_dtype(q);
  if (!attend_in_float32(q, k, v, dtype)) return attend(q, k, v);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  auto in_float32 = [&](const torch::Tensor& t) { return t.to(dtype).to(torch::kFloat32); };
  return attend(in_float32(q), in_float32(k), in_float32(v)).to(dtype);
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
