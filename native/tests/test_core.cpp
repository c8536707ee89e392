// The core without Node: build a tiny model of each family, check training reduces the loss (bare, under each PEFT
// method, and under autocast: bfloat16, and float16 with loss scaling on CUDA), that an overflowing scaled step is
// skipped, that a bad token id and a bad config are refused, that the blocked cross-entropy, the RMSNorm and rotary
// kernels and the shared cast of a product input equal what they replace, and that the device works. Run by ctest
// (CPU, and CUDA where the libtorch has it).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>

#include "../core/api.h"
#include "../core/model.h"

using namespace tunekit;

static int failures = 0;
#define EXPECT(cond, msg)                                                        \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "FAIL %s: %s\n", __func__, std::string(msg).c_str()); \
      failures++;                                                                \
    }                                                                            \
  } while (0)

static ModelSpec tiny(const std::string& family, const std::string& task, const std::string& device) {
  ModelSpec s;
  s.family = family;
  s.task = task;
  s.device = device;
  s.vocab_size = 64;
  s.hidden_size = 32;
  s.num_layers = 2;
  s.num_heads = 4;
  bool decoder = family == "llama" || family == "qwen2";
  s.num_kv_heads = decoder ? 2 : 4;
  s.head_dim = 8;
  s.intermediate_size = 64;
  s.max_positions = 32;
  s.type_vocab_size = 2;
  s.rope_theta = decoder ? 10000 : 0;
  s.activation = decoder ? "silu" : family == "gpt2" ? "gelu_new" : "gelu";
  s.tie_word_embeddings = !decoder;
  s.attention_bias = family == "qwen2";
  s.pad_token_id = 0;
  return s;
}

static Batch batch(bool classification) {
  Batch b;
  b.batch = 2;
  b.seq = 6;
  b.input_ids = {5, 9, 12, 3, 7, 1, 8, 8, 2, 4, 0, 0};
  b.attention_mask = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  if (classification) {
    b.labels = {0, 1};
    b.labels_shape = {2};
  } else {
    b.labels = {5, 9, 12, 3, 7, 1, 8, 8, 2, 4, -100, -100};
    b.labels_shape = {2, 6};
  }
  return b;
}

static void trains(const std::string& family, const std::string& task, const std::string& device, const AdapterSpec* peft = nullptr,
                   const std::string& autocast = "float32") {
  auto m = create_model(tiny(family, task, device));
  set_autocast(*m, autocast);
  std::string label =
      family + " " + task + (peft ? " + " + peft->method : "") + (autocast != "float32" ? " under " + autocast + " autocast" : "");
  if (peft) {
    auto created = add_adapter(*m, *peft);
    EXPECT(!created.empty(), (label + ": the adapter created no parameters").c_str());
    std::vector<std::string> base;
    for (const auto& p : parameters(*m))
      if (std::find(created.begin(), created.end(), p.name) == created.end()) base.push_back(p.name);
    set_trainable(*m, base, false);
    set_adapter(*m, peft->adapter);
  }
  set_training(*m, true);
  OptimizerSpec os;
  auto opt = create_optimizer(*m, os);
  auto b = batch(task == "sequence-classification");
  double first = 0, last = 0;
  // float16 needs its loss scaled (GradScaler's default start); a skipped step halves the scale.
  double scale = autocast == "float16" ? 65536.0 : 1.0;
  for (int i = 0; i < 20; i++) {
    double loss = backward(*m, b, scale);
    // The few adapter parameters of a random model move slowly.
    double norm = optimizer_step(*opt, peft ? 5e-2 : 1e-2, 1.0, scale, autocast == "float16");
    if (!std::isfinite(norm)) scale /= 2;
    zero_grad(*m);
    if (i == 0) first = loss;
    last = loss;
  }
  std::printf("%s on %s: loss %.4f -> %.4f\n", label.c_str(), device.c_str(), first, last);
  EXPECT(std::isfinite(last) && last < first * (peft ? 0.98 : 0.7), (label + " did not learn").c_str());
}

// A step whose scaled gradients overflow is skipped (nothing changes) when asked, and refused as E_NAN otherwise.
static void skips_overflowing_step(const std::string& device) {
  auto m = create_model(tiny("gpt2", "causal-lm", device));
  set_training(*m, true);
  OptimizerSpec os;
  auto opt = create_optimizer(*m, os);
  auto b = batch(false);
  auto before = forward(*m, b, false).loss;
  backward(*m, b, 1e39);  // beyond float32's range: infinite gradients
  double norm = optimizer_step(*opt, 1e-2, 1.0, 1e39, true);
  EXPECT(!std::isfinite(norm), "an overflowing step reported a finite norm");
  EXPECT(forward(*m, b, false).loss == before, "a skipped step changed the weights");
  zero_grad(*m);
  backward(*m, b, 1e39);
  try {
    optimizer_step(*opt, 1e-2, 1.0, 1e39, false);
    EXPECT(false, "an overflowing step without skipping accepted");
  } catch (const Error& e) {
    EXPECT(e.code == "E_NAN", "wrong error code for an overflowing step");
  }
}

static void refuses_bad_ids(const std::string& device) {
  auto m = create_model(tiny("gpt2", "causal-lm", device));
  auto b = batch(false);
  b.input_ids[3] = 64;
  try {
    forward(*m, b, true);
    EXPECT(false, "out-of-range id accepted");
  } catch (const Error& e) {
    EXPECT(e.code == "E_RANGE", "wrong error code");
  }
}

static void refuses_bad_config(const std::string& device) {
  auto s = tiny("llama", "causal-lm", device);
  s.num_kv_heads = 3;  // does not divide the 4 heads
  try {
    create_model(s);
    EXPECT(false, "num_key_value_heads that does not divide the heads accepted");
  } catch (const Error& e) {
    EXPECT(e.code == "E_CONFIG", "wrong error code for a bad config");
  }
  s = tiny("mamba", "causal-lm", device);
  try {
    create_model(s);
    EXPECT(false, "unknown family accepted");
  } catch (const Error& e) {
    EXPECT(e.code == "E_CONFIG" && std::string(e.what()).find("bert") != std::string::npos, "unknown family error lists the families");
  }
}

static torch::TensorOptions options_on(const std::string& device) {
  return torch::TensorOptions().device(device == "cuda" ? torch::kCUDA : torch::kCPU);
}

// The largest difference between two tensors, relative to the largest entry of the second.
static double worst_rel(const torch::Tensor& got, const torch::Tensor& want) {
  auto w = want.to(torch::kFloat32);
  return (got.to(torch::kFloat32) - w).abs().max().item<double>() / w.abs().max().item<double>();
}

// Loss and gradient against torch's cross_entropy on the float32-widened logits (what autocast runs), with ignored rows
// and more rows than one block, in float32 and bfloat16. Both sides compute in float32 from the same inputs, so they
// agree to float32 rounding of sums over the classes. bfloat16 gradients are rounded to 8 significant bits on both
// sides, so that rounding can flip a last bit: at most one bfloat16 step of the largest gradient, 2^-7 of it.
static void cross_entropy_equals_torch(const std::string& device) {
  constexpr double kBFloat16Step = 1.0 / 128;
  torch::manual_seed(0);
  auto opts = options_on(device);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto logits = (torch::randn({300, 4000}, opts) * 3).to(dtype);  // 131 rows per block: three blocks
    auto targets = torch::randint(0, 4000, {300}, opts.dtype(torch::kLong));
    targets.slice(0, 0, 300, 7).fill_(-100);
    auto ours_in = logits.detach().requires_grad_(), ref_in = logits.detach().requires_grad_();
    auto ours = cross_entropy(ours_in, targets);
    auto ref = torch::cross_entropy_loss(ref_in.to(torch::kFloat32), targets, {}, at::Reduction::Mean, -100);
    ours.backward();
    ref.backward();
    double loss_err = std::abs(ours.item<double>() - ref.item<double>()) / std::abs(ref.item<double>());
    double grad_err = worst_rel(ours_in.grad(), ref_in.grad());
    double grad_tol = dtype == torch::kBFloat16 ? kBFloat16Step : 1e-5;
    std::printf("cross_entropy %s on %s: loss rel. %.1e, gradient rel. %.1e\n", scalar_name(dtype).c_str(), device.c_str(), loss_err,
                grad_err);
    EXPECT(loss_err < 1e-5, "cross_entropy's loss differs from torch's");
    EXPECT(grad_err < grad_tol, "cross_entropy's gradient differs from torch's");
    EXPECT(ours_in.grad().scalar_type() == dtype, "cross_entropy's gradient is not in the logits' dtype");
  }
  // A sampling temperature divides the widened logits, as torch's log_softmax(logits.float() / temperature) does.
  auto logits = torch::randn({50, 300}, opts).to(torch::kBFloat16);
  auto targets = torch::randint(0, 300, {50}, opts.dtype(torch::kLong));
  auto ours_in = logits.detach().requires_grad_(), ref_in = logits.detach().requires_grad_();
  auto ours = target_logprobs(ours_in, targets, 0.7);
  auto ref = (ref_in.to(torch::kFloat32) / 0.7).log_softmax(-1).gather(1, targets.unsqueeze(1)).squeeze(1);
  (ours * torch::arange(50, opts)).sum().backward();
  (ref * torch::arange(50, opts)).sum().backward();
  EXPECT(worst_rel(ours, ref) < 1e-5, "target_logprobs at a temperature differs from torch's");
  EXPECT(worst_rel(ours_in.grad(), ref_in.grad()) <= kBFloat16Step, "target_logprobs' gradient at a temperature differs from torch's");
  auto none = cross_entropy(torch::randn({2, 5}, opts), torch::full({2}, -100, opts.dtype(torch::kLong)));
  EXPECT(std::isnan(none.item<double>()), "cross_entropy over ignored rows only is not NaN, as torch's mean");
}

// apply_rotary against transformers' composite (x * cos + rotate_half(x) * sin, then the dtype attention reads) on a
// strided x, with [seq, dim] and per-row [batch, 1, seq, dim] tables, in float32, bfloat16 with float32 tables (as under
// autocast and bf16-true generation) and bfloat16 throughout. The kernel performs the composite's operations in its
// order and rounds where torch's kernels round, so outputs and gradients must be equal bit for bit: a tolerance would
// hide a missed or extra rounding, which shows as a last-bit difference.
static void rotary_equals_composite(const std::string& device) {
  torch::manual_seed(0);
  auto opts = options_on(device);
  auto rotate_half = [](const torch::Tensor& x) {
    auto h = x.chunk(2, -1);
    return torch::cat({-h[1], h[0]}, -1);
  };
  struct Case {
    torch::ScalarType x, table;
    bool autocast;
  };
  for (auto c : {Case{torch::kFloat32, torch::kFloat32, false}, Case{torch::kBFloat16, torch::kFloat32, false},
                 Case{torch::kBFloat16, torch::kBFloat16, false}, Case{torch::kBFloat16, torch::kFloat32, true},
                 Case{torch::kFloat32, torch::kFloat32, true}}) {
    for (bool per_row : {false, true}) {
      auto x = torch::randn({2, 5, 3, 8}, opts).to(c.x).transpose(1, 2);  // [batch, heads, seq, dim], strided as q is
      auto angles = torch::randn(per_row ? std::vector<int64_t>{2, 1, 5, 8} : std::vector<int64_t>{5, 8}, opts) * 3;
      auto cos = angles.cos().to(c.table), sin = angles.sin().to(c.table);
      auto ours_in = x.detach().requires_grad_(), ref_in = x.detach().requires_grad_();
      torch::Tensor ours, ref;
      {
        std::optional<AutocastScope> scope;
        if (c.autocast) scope.emplace(ours_in.device().type(), torch::kBFloat16);
        ours = apply_rotary(ours_in, cos, sin);
      }
      ref = ref_in * cos + rotate_half(ref_in) * sin;
      if (c.autocast) ref = ref.to(torch::kBFloat16);
      auto grad = torch::randn(ref.sizes(), opts).to(ref.scalar_type());
      ours.backward(grad);
      ref.backward(grad);
      auto label =
          scalar_name(c.x) + " x, " + scalar_name(c.table) + " tables" + (c.autocast ? ", autocast" : "") + (per_row ? ", per row" : "");
      EXPECT(ours.scalar_type() == ref.scalar_type(), (label + ": wrong output dtype").c_str());
      EXPECT(torch::equal(ours, ref), (label + ": output differs from the composite").c_str());
      EXPECT(torch::equal(ours_in.grad(), ref_in.grad()), (label + ": gradient differs from the composite").c_str());
    }
  }
  auto empty = apply_rotary(torch::randn({1, 2, 0, 8}, opts), torch::randn({0, 8}, opts), torch::randn({0, 8}, opts));
  EXPECT(empty.sizes() == c10::IntArrayRef({1, 2, 0, 8}), "apply_rotary of an empty sequence has the wrong shape");
}

// rms_norm against LlamaRMSNorm's composite in float32, forward and both gradients. The kernel sums squares, row
// products and the weight's gradient over rows in another order than torch's reductions; over n <= 64 terms the
// difference is at most n * 2^-24 (4e-6) of the sum of their magnitudes, which the bound below covers.
static void rms_norm_equals_composite(const std::string& device) {
  torch::manual_seed(0);
  auto opts = options_on(device);
  auto x = torch::randn({3, 10, 64}, opts) * 2;
  auto w = torch::randn({64}, opts);
  auto ours_x = x.detach().requires_grad_(), ref_x = x.detach().requires_grad_();
  auto ours_w = w.detach().requires_grad_(), ref_w = w.detach().requires_grad_();
  auto ours = rms_norm(ours_x, ours_w, 1e-5);
  auto ref = ref_w * (ref_x * torch::rsqrt(ref_x.pow(2).mean(-1, true) + 1e-5));
  auto grad = torch::randn(ref.sizes(), opts);
  ours.backward(grad);
  ref.backward(grad);
  EXPECT(worst_rel(ours, ref) < 1e-5, "rms_norm differs from the composite");
  EXPECT(worst_rel(ours_x.grad(), ref_x.grad()) < 1e-5, "rms_norm's input gradient differs from the composite");
  EXPECT(worst_rel(ours_w.grad(), ref_w.grad()) < 1e-5, "rms_norm's weight gradient differs from the composite");
}

// The activation kernels (ops/activations.cpp) and torch's own, forward and backward, each against the exact function
// (torch's formula in float64 on the same inputs), over ordinary activations, the tails and NaN. A float32 kernel is
// off by the rounding of its argument (GELU's u = sqrt(2/pi)(x + 0.044715 x^3): a few 2^-24 of u, times
// x sigmoid'(2u) 2u <= 0.5 |x|) and of a few operations more; 1e-6 (|x| + 1) is ten times that, the gradient's bound
// growing with GELU's u' ~ x^2, and SwiGLU's scaled by |up|. Each bfloat16 rounding (SwiGLU rounds silu's output, then
// the product; the backward two gradients) adds one bfloat16 step, 2^-7 relative. torch's kernels meet the same
// bounds, which checks them.
static void activations_match_exact(const std::string& device) {
  torch::manual_seed(0);
  auto opts = options_on(device);
  auto tails = torch::tensor({0.0f, -10.5f, -30.0f, 12.0f, 100.0f, -100.0f, 1e4f, -1e4f, NAN}, opts);
  auto x = torch::cat({torch::randn({4096}, opts) * 3, tails}), up = torch::cat({torch::randn({4096}, opts) * 2, tails.flip(0)});
  auto g = torch::randn(x.sizes(), opts);
  auto within = [](const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& tol) {
    auto ok = (got.to(torch::kFloat64) - want).abs() <= tol;
    return (ok | (got.isnan() & want.isnan())).all().item<bool>();
  };
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto xd = x.to(dtype), ud = up.to(dtype), gd = g.to(dtype);
    auto steps = [&](const torch::Tensor& t, double n) {
      return dtype == torch::kBFloat16 ? t.abs() * (n * std::ldexp(1.0, -7)) : torch::zeros_like(t);
    };
    auto x64 = xd.to(torch::kFloat64).requires_grad_(), u64 = ud.to(torch::kFloat64).requires_grad_();
    auto a64 = x64.detach().abs(), g64 = gd.to(torch::kFloat64).abs();
    // GELU (tanh approximation)
    auto gelu = torch::gelu(x64, "tanh");
    auto gelu_dx = torch::autograd::grad({gelu}, {x64}, {gd.to(torch::kFloat64)})[0];
    auto gelu_tol = 1e-6 * (a64 + 1) + steps(gelu.detach(), 1), gelu_dx_tol = 1e-6 * (a64.square() + 1) * g64 + steps(gelu_dx, 1);
    // SwiGLU: silu(gate) * up
    auto swiglu = torch::silu(x64) * u64;
    auto swiglu_d = torch::autograd::grad({swiglu}, {x64, u64}, {gd.to(torch::kFloat64)});
    auto u_abs = u64.detach().abs(), s_abs = torch::silu(x64.detach()).abs();
    auto swiglu_tol = 1e-6 * (a64 + 1) * (u_abs + 1) + steps(swiglu.detach(), 2);
    auto dgate_tol = 1e-6 * (a64 + 1) * u_abs * g64 + steps(swiglu_d[0], 2), dup_tol = 1e-6 * (a64 + 1) * g64 + steps(swiglu_d[1], 2);
    for (bool ours : {true, false}) {
      std::string who = std::string(ours ? "tunekit's" : "torch's") + " kernels in " + scalar_name(dtype) + ": ";
      auto xi = xd.detach().requires_grad_(), ui = ud.detach().requires_grad_();
      auto y = ours ? activation("gelu_new", xi) : torch::gelu(xi, "tanh");
      y.backward(gd);
      EXPECT(y.scalar_type() == dtype && xi.grad().scalar_type() == dtype, who + "GELU changed the dtype");
      EXPECT(within(y, gelu.detach(), gelu_tol), who + "GELU differs from the exact function by more than its rounding");
      EXPECT(within(xi.grad(), gelu_dx, gelu_dx_tol), who + "GELU's gradient differs from the exact one by more than its rounding");
      xi.mutable_grad().reset();
      auto z = ours ? gated_activation("silu", xi, ui) : torch::silu(xi) * ui;
      z.backward(gd);
      EXPECT(z.scalar_type() == dtype && xi.grad().scalar_type() == dtype && ui.grad().scalar_type() == dtype,
             who + "SwiGLU changed the dtype");
      EXPECT(within(z, swiglu.detach(), swiglu_tol), who + "SwiGLU differs from the exact function by more than its rounding");
      EXPECT(within(xi.grad(), swiglu_d[0], dgate_tol),
             who + "SwiGLU's gate gradient differs from the exact one by more than its rounding");
      EXPECT(within(ui.grad(), swiglu_d[1], dup_tol), who + "SwiGLU's up gradient differs from the exact one by more than its rounding");
    }
  }
}

// Short-sequence bfloat16 training attention (ops/attention.cpp) against the exact composite (scores, softmax that
// gives a query seeing no key zeros, products; float64 on the same bfloat16 inputs), forward and the three gradients,
// causal with grouped-query heads, with a padding mask that hides a whole sequence, and with dropout (the composite
// given the same keep mask, drawn from the same seed). Each result is a product Y = A B rounded to bfloat16 whose
// A (probabilities, score gradients) was rounded to bfloat16 first: off by at most bfloat16's unit roundoff (2^-8) of
// |Y| plus 2^-8 of |A| |B|; the bound is twice that. libtorch's bfloat16 flash attention rounds at the same places
// going forward, so its output meets the same bound, which checks it (not its gradients: it takes each query's
// sum of dP * P as dO . O from the rounded output, an error the kernel here avoids by summing the float32 terms).
static void short_attention_matches_exact(const std::string& device) {
  torch::manual_seed(0);
  auto opts = options_on(device);
  struct Case {
    const char* name;
    int64_t kv_heads;
    bool causal, pad;
    double dropout;
  };
  for (auto c : {Case{"causal, grouped heads", 2, true, false, 0.0}, Case{"padding mask", 4, false, true, 0.0},
                 Case{"no mask", 4, false, false, 0.0}, Case{"causal with dropout", 4, true, false, 0.3}}) {
    int64_t batch = 3, heads = 4, seq = 24, dim = 16;
    double scale = 1.0 / std::sqrt(double(dim));
    auto q = (torch::randn({batch, seq, heads, dim}, opts) * 2).to(torch::kBFloat16).transpose(1, 2);  // strided as the models' q
    auto k = (torch::randn({batch, c.kv_heads, seq, dim}, opts) * 2).to(torch::kBFloat16);
    auto v = torch::randn({batch, c.kv_heads, seq, dim}, opts).to(torch::kBFloat16);
    auto g = torch::randn({batch, heads, seq, dim}, opts).to(torch::kBFloat16);
    torch::Tensor mask4d;
    if (c.pad) {
      auto keys = torch::ones({batch, seq}, opts.dtype(torch::kBool));
      keys[0].slice(0, 17).fill_(false);
      keys[2].fill_(false);  // a sequence of padding only: every query sees no key
      mask4d = keys.view({batch, 1, 1, seq}).expand({batch, 1, seq, seq});
    }
    for (bool ours : {true, false}) {
      if (!ours && c.dropout > 0) continue;  // libtorch draws its dropout mask its own way
      auto qi = q.detach().requires_grad_(), ki = k.detach().requires_grad_(), vi = v.detach().requires_grad_();
      torch::manual_seed(7);
      auto y = ours ? attention(qi, ki, vi, mask4d, c.causal, c.dropout, scale, true)
                    : at::scaled_dot_product_attention(qi, ki, vi, mask4d.defined() ? std::optional<at::Tensor>(mask4d) : std::nullopt, 0.0,
                                                       c.causal && !c.pad, scale, c.kv_heads != heads);
      y.backward(g);
      // The exact composite, with the keep mask the kernel drew: [batch * kv heads, group * queries, keys].
      auto q64 = q.to(torch::kFloat64).requires_grad_(), k64 = k.to(torch::kFloat64).requires_grad_(),
           v64 = v.to(torch::kFloat64).requires_grad_();
      auto group = heads / c.kv_heads;
      auto k_rep = k64.repeat_interleave(group, 1), v_rep = v64.repeat_interleave(group, 1);
      auto scores = torch::matmul(q64, k_rep.transpose(-1, -2)) * scale;
      auto hidden = torch::zeros({seq, seq}, opts.dtype(torch::kBool));
      if (c.causal) hidden = torch::ones({seq, seq}, opts.dtype(torch::kBool)).triu(1);
      if (mask4d.defined()) hidden = hidden | mask4d.logical_not();
      auto probs = at::_safe_softmax(scores.masked_fill(hidden, -INFINITY), -1);
      auto keep_scaled = torch::ones({}, opts.dtype(torch::kFloat64));
      if (c.dropout > 0) {
        torch::manual_seed(7);
        auto keep = torch::empty({batch * c.kv_heads, group * seq, seq}, opts.dtype(torch::kBool)).bernoulli_(1 - c.dropout);
        keep_scaled = keep.view({batch, heads, seq, seq}) / (1 - c.dropout);
      }
      auto kept = probs * keep_scaled;
      auto exact = torch::matmul(kept, v_rep);
      auto d = torch::autograd::grad({exact}, {q64, k64, v64}, {g.to(torch::kFloat64)});
      // |A| |B| of each product, on the exact operands.
      auto d_probs = torch::matmul(g.to(torch::kFloat64), v_rep.transpose(-1, -2)) * keep_scaled;
      auto d_scores = (probs * (d_probs - (d_probs * probs).sum(-1, true))).abs() * scale;
      auto sum_groups = [&](const torch::Tensor& t) { return t.view({batch, c.kv_heads, group, seq, dim}).sum(2); };
      auto bound = [](const torch::Tensor& y, const torch::Tensor& a_b) { return (y.abs() + a_b) * std::ldexp(1.0, -7) + 1e-6; };
      auto within = [](const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& tol) {
        return ((got.to(torch::kFloat64) - want).abs() <= tol).all().item<bool>();
      };
      auto y_tol = bound(exact.detach(), torch::matmul(kept.detach().abs(), v_rep.detach().abs()));
      auto dq_tol = bound(d[0], torch::matmul(d_scores.detach(), k_rep.detach().abs()));
      auto dk_tol = bound(d[1], sum_groups(torch::matmul(d_scores.detach().transpose(-1, -2), q64.detach().abs())));
      auto dv_tol = bound(d[2], sum_groups(torch::matmul(kept.detach().abs().transpose(-1, -2), g.to(torch::kFloat64).abs())));
      std::string who = std::string(ours ? "tunekit's" : "libtorch's flash") + " attention, " + c.name + ": ";
      EXPECT(y.scalar_type() == torch::kBFloat16 && qi.grad().scalar_type() == torch::kBFloat16, who + "changed the dtype");
      EXPECT(within(y, exact.detach(), y_tol), who + "output differs from the exact one by more than its rounding");
      if (!ours) continue;
      EXPECT(within(qi.grad(), d[0], dq_tol), who + "query gradient differs from the exact one by more than its rounding");
      EXPECT(within(ki.grad(), d[1], dk_tol), who + "key gradient differs from the exact one by more than its rounding");
      EXPECT(within(vi.grad(), d[2], dv_tol), who + "value gradient differs from the exact one by more than its rounding");
    }
  }
}

// product_inputs under autocast: the products see one bfloat16 copy, and the float32 gradient equals that of separate
// casts (autograd sums the widened gradients in float32 either way).
static void shared_product_input(const std::string& device) {
  torch::manual_seed(0);
  auto opts = options_on(device);
  auto x = torch::randn({6, 16}, opts);
  std::vector<torch::Tensor> w = {torch::randn({8, 16}, opts), torch::randn({4, 16}, opts), torch::randn({4, 16}, opts)};
  auto ours_in = x.detach().requires_grad_(), ref_in = x.detach().requires_grad_();
  torch::Tensor ours, ref;
  {
    AutocastScope scope(x.device().type(), torch::kBFloat16);
    // Activations, not leaves: autocast caches its cast of a leaf that requires grad (a weight) and would share it.
    auto inputs = product_inputs(ours_in * 1.0, 3);
    auto ref_x = ref_in * 1.0;
    EXPECT(inputs[0].scalar_type() == torch::kBFloat16, "product_inputs did not narrow under autocast");
    EXPECT(inputs[0].data_ptr() == inputs[2].data_ptr(), "product_inputs made more than one copy");
    for (size_t i = 0; i < 3; i++) {
      auto y = torch::linear(inputs[i], w[i]).to(torch::kFloat32).square().sum();
      auto r = torch::linear(ref_x, w[i]).to(torch::kFloat32).square().sum();
      ours = ours.defined() ? ours + y : y;
      ref = ref.defined() ? ref + r : r;
    }
  }
  ours.backward();
  ref.backward();
  EXPECT(ours_in.grad().scalar_type() == torch::kFloat32, "product_inputs' gradient is not float32");
  EXPECT(torch::equal(ours, ref) && torch::equal(ours_in.grad(), ref_in.grad()), "product_inputs differs from separate casts");
}

static AdapterSpec peft(const std::string& method, std::vector<std::string> modules) {
  AdapterSpec a;
  a.method = method;
  a.adapter = "a";
  if (!modules.empty()) a.lists["modules"] = modules;
  if (method == "lora") a.numbers["alpha"] = 16;
  if (method == "ia3") a.lists["feedforwardModules"] = {modules.back()};
  return a;
}

int main(int argc, char** argv) {
  std::string device = argc > 1 ? argv[1] : "cpu";
  if (device == "cuda" && !cuda_available()) {
    std::fprintf(stderr, "FAIL: CUDA requested but not available\n");
    return 1;
  }
  trains("gpt2", "causal-lm", device);
  trains("llama", "causal-lm", device);
  trains("gpt2", "sequence-classification", device);
  trains("distilbert", "sequence-classification", device);
  trains("bert", "sequence-classification", device);
  trains("bert", "masked-lm", device);
  trains("qwen2", "causal-lm", device);
  auto lora = peft("lora", {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"});
  trains("qwen2", "causal-lm", device, &lora);
  auto ia3 = peft("ia3", {"bert.encoder.layer.0.attention.self.value", "bert.encoder.layer.1.output.dense"});
  ia3.lists["modulesToSave"] = {"classifier.weight", "classifier.bias"};
  trains("bert", "sequence-classification", device, &ia3);
  auto prefix = peft("prefix", {});
  trains("gpt2", "causal-lm", device, &prefix);
  auto prompt = peft("prompt", {});
  trains("llama", "causal-lm", device, &prompt);
  trains("gpt2", "causal-lm", device, nullptr, "bfloat16");
  trains("llama", "causal-lm", device, &lora, "bfloat16");
  trains("distilbert", "sequence-classification", device, nullptr, "bfloat16");
  if (device == "cuda") trains("llama", "causal-lm", device, nullptr, "float16");
  skips_overflowing_step(device);
  cross_entropy_equals_torch(device);
  rotary_equals_composite(device);
  rms_norm_equals_composite(device);
  activations_match_exact(device);
  short_attention_matches_exact(device);
  shared_product_input(device);
  refuses_bad_ids(device);
  refuses_bad_config(device);
  std::printf("%s\n", failures ? "FAILED" : "all core tests passed");
  return failures ? 1 : 0;
}
