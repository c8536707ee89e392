// Activations by their transformers names, and the gated feed-forward's activation(gate) * up.
//
// Two of them run as one pass each way on CPUs with AVX-512, written as plain loops for the vectoriser with an exp of
// their own (vec::exp) in place of Sleef's routines:
// - GELU's tanh approximation (GPT-2's gelu_new), 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3): torch's
//   kernel evaluates tanh with Sleef's 1-ulp routine, and forward and backward took 20 ms of the bench's GPT-2 step, as
//   long as all of attention, in float32 and bfloat16 alike. The same function is x sigmoid(2u) = x / (1 + e^(-2u)).
// - SwiGLU, silu(gate) * up: torch runs silu, the product and their backward as five passes over the [tokens, ffn]
//   activations and keeps silu's output for backward; here one pass each way reads gate and up (and the gradient) and
//   keeps nothing more. Every intermediate is rounded where torch's kernels round it (silu's output, each product's
//   gradient), so bfloat16 results differ from the composite's only where a last float32 bit (of exp, or of a product
//   taken in another order) tips a rounding.
// Elsewhere (other processors, dtypes or devices) torch's kernels run. test_core holds both against the float64
// functions with the bounds torch's own kernels meet.
#include <ATen/Parallel.h>

#include "../model.h"
#include "vec.h"

namespace tunekit {
namespace {

#if defined(__x86_64__)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using vec::BF16;
using vec::narrow;
using vec::round_to;
using vec::widen;

#pragma GCC push_options
TUNEKIT_VECTORISE

// e^(-a), the argument capped at 80 so that 1 / (1 + e) and e / (1 + e)^2 stay normal floats (a denormal costs a
// microcode assist); the cap moves sigmoid(a) only where it is below 1.8e-35.
TUNEKIT_INLINE float exp_minus(float a) {
  a = -a;
  return vec::exp(a < 80.0f ? a : 80.0f);
}

constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kKappa = 0.044715f;

// Each kernel maps up to three inputs (a, b, c) to up to two outputs (y, z), element by element; unused ones are null.

// y = gelu(a)
template <typename T>
struct GeluForward {
  TUNEKIT_INLINE static void span(const T* __restrict a, const T*, const T*, T* __restrict y, T*, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
      float x = widen(a[i]);
      y[i] = narrow<T>(x / (1.0f + exp_minus(2.0f * kBeta * (x + kKappa * x * x * x))));
    }
  }
};

// y = d gelu(a) with b = d out: d/dx [x s] with s = sigmoid(2u) is s + x s (1 - s) 2 u', and s (1 - s) = e s^2 for
// e = e^(-2u).
template <typename T>
struct GeluBackward {
  TUNEKIT_INLINE static void span(const T* __restrict a, const T* __restrict b, const T*, T* __restrict y, T*, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
      float x = widen(a[i]);
      float e = exp_minus(2.0f * kBeta * (x + kKappa * x * x * x));
      float s = 1.0f / (1.0f + e);
      float du = kBeta * (1.0f + 3.0f * kKappa * x * x);
      y[i] = narrow<T>(widen(b[i]) * (s + (e * s) * s * (2.0f * x * du)));  // e s first: e^2 could overflow
    }
  }
};

// y = silu(a) * b, silu's output rounded to T first, as torch's silu returns it.
template <typename T>
struct SwigluForward {
  TUNEKIT_INLINE static void span(const T* __restrict a, const T* __restrict b, const T*, T* __restrict y, T*, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
      float g = widen(a[i]);
      y[i] = narrow<T>(round_to<T>(g / (1.0f + exp_minus(g))) * widen(b[i]));
    }
  }
};

// With a = gate, b = up, c = d out: y = d gate, z = d up. The product's gradients, each rounded to T as autograd's
// mul backward returns them: d silu = c b, d up = c silu(a); then silu's backward d silu * s (1 + g (1 - s)).
template <typename T>
struct SwigluBackward {
  TUNEKIT_INLINE static void span(const T* __restrict a, const T* __restrict b, const T* __restrict c, T* __restrict y, T* __restrict z,
                                  int64_t n) {
    for (int64_t i = 0; i < n; i++) {
      float g = widen(a[i]), d = widen(c[i]);
      float e = exp_minus(g);
      float s = 1.0f / (1.0f + e);
      float dsilu = round_to<T>(d * widen(b[i]));
      z[i] = narrow<T>(d * round_to<T>(g / (1.0f + e)));  // silu(g) as the forward computed it
      y[i] = narrow<T>(dsilu * (s * (1.0f + g * (1.0f - s))));
    }
  }
};

template <typename K, typename T>
TUNEKIT_AVX512 void spans(const T* a, const T* b, const T* c, T* y, T* z, int64_t n) {
  K::span(a, b, c, y, z, n);
}
#pragma GCC pop_options

// K over contiguous tensors of one dtype (float32 or bfloat16) in parallel chunks: inputs a, b, c (b and c may be
// undefined), `outputs` results shaped as a.
template <template <typename> class K>
std::vector<torch::Tensor> run(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& c, int outputs) {
  std::vector<torch::Tensor> out;
  for (int i = 0; i < outputs; i++) out.push_back(torch::empty_like(a));
  auto go = [&]<typename T>() {
    auto in = [](const torch::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; };
    const T *ap = in(a), *bp = in(b), *cp = in(c);
    T *yp = out[0].data_ptr<T>(), *zp = outputs > 1 ? out[1].data_ptr<T>() : nullptr;
    auto at = [](auto* p, int64_t i) { return p ? p + i : p; };
    at::parallel_for(0, a.numel(), 16384, [&](int64_t begin, int64_t end) {
      spans<K<T>>(at(ap, begin), at(bp, begin), at(cp, begin), at(yp, begin), at(zp, begin), end - begin);
    });
  };
  if (a.scalar_type() == torch::kFloat32)
    go.template operator()<float>();
  else
    go.template operator()<BF16>();
  return out;
}

struct GeluTanhFn : public torch::autograd::Function<GeluTanhFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    ctx->save_for_backward({x});
    return run<GeluForward>(x, {}, {}, 1)[0];
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {run<GeluBackward>(ctx->get_saved_variables()[0], grads[0].contiguous(), {}, 1)[0]};
  }
};

struct SwigluFn : public torch::autograd::Function<SwigluFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate, const torch::Tensor& up) {
    ctx->save_for_backward({gate, up});
    return run<SwigluForward>(gate, up, {}, 1)[0];
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto d = run<SwigluBackward>(s[0], s[1], grads[0].contiguous(), 2);
    return {d[0], d[1]};
  }
};
#endif

// Whether the kernels above serve these tensors.
bool kernel_for(std::initializer_list<torch::Tensor> ts) {
#if defined(__x86_64__)
  if (!vec::kAvx512) return false;
  auto first = *ts.begin();
  for (const auto& t : ts)
    if (!t.device().is_cpu() || t.scalar_type() != first.scalar_type() || t.sizes() != first.sizes()) return false;
  return first.scalar_type() == torch::kFloat32 || first.scalar_type() == torch::kBFloat16;
#else
  return false;
#endif
}

}  // namespace

torch::Tensor activation(const std::string& name, const torch::Tensor& x) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
#if defined(__x86_64__)
    if (kernel_for({x})) return GeluTanhFn::apply(x.contiguous());
#endif
    return torch::gelu(x, "tanh");
  }
  if (name == "gelu") return torch::gelu(x);
  if (name == "relu") return torch::relu(x);
  if (name == "silu" || name == "swish") return torch::silu(x);
  if (name == "tanh") return torch::tanh(x);
  throw Error("E_CONFIG", "unsupported activation '" + name + "'");
}

torch::Tensor gated_activation(const std::string& name, const torch::Tensor& gate, const torch::Tensor& up) {
#if defined(__x86_64__)
  if ((name == "silu" || name == "swish") && kernel_for({gate, up})) return SwigluFn::apply(gate.contiguous(), up.contiguous());
#endif
  return activation(name, gate) * up;
}

}  // namespace tunekit
