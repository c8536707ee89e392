// GELU with the tanh approximation (GPT-2's gelu_new), 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3),
// one pass each way on CPUs with AVX-512.
//
// torch's kernel evaluates tanh with Sleef's 1-ulp routine, and its forward and backward took 20 ms of the bench's
// GPT-2 step (as long as all of attention) in float32 and in bfloat16 alike. The same function is x sigmoid(2u) =
// x / (1 + e^(-2u)), which needs one exp each way (vec::exp); bfloat16 inputs are computed in float32 and rounded
// once, as torch does. The results agree with torch's to a few float32 ulp (test_core).
#include <ATen/Parallel.h>

#include "../model.h"
#include "vec.h"

namespace tunekit {

#if defined(__x86_64__)
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using vec::BF16;

constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kKappa = 0.044715f;

#pragma GCC push_options
TUNEKIT_VECTORISE

// e^(-2u), its argument capped at 80 so that 1 / (1 + e) and e / (1 + e)^2 stay normal floats (a denormal costs a
// microcode assist); the cap only moves outputs for x < -10, and by less than 1e-33.
TUNEKIT_INLINE float exp_minus_2u(float u) {
  float a = -2.0f * u;
  return vec::exp(a < 80.0f ? a : 80.0f);
}

template <typename T>
struct Forward {
  TUNEKIT_INLINE static void span(const T* __restrict x, const T* __restrict, T* __restrict y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
      float v = vec::widen(x[i]);
      y[i] = vec::narrow<T>(v / (1.0f + exp_minus_2u(kBeta * (v + kKappa * v * v * v))));
    }
  }
};

// d/dx [x s] with s = sigmoid(2u): s + x s (1 - s) 2 u', where s (1 - s) = e / (1 + e)^2 for e = e^(-2u).
template <typename T>
struct Backward {
  TUNEKIT_INLINE static void span(const T* __restrict x, const T* __restrict dy, T* __restrict dx, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
      float v = vec::widen(x[i]);
      float e = exp_minus_2u(kBeta * (v + kKappa * v * v * v));
      float s = 1.0f / (1.0f + e);
      float du = kBeta * (1.0f + 3.0f * kKappa * v * v);
      dx[i] = vec::narrow<T>(vec::widen(dy[i]) * (s + (e * s) * s * (2.0f * v * du)));  // e s first: e^2 could overflow
    }
  }
};

template <typename K, typename T>
TUNEKIT_AVX512 void spans(const T* a, const T* b, T* out, int64_t n) {
  K::span(a, b, out, n);
}
#pragma GCC pop_options

// out = K(a, b) elementwise over contiguous tensors of one dtype (b may be undefined), in parallel chunks.
template <template <typename> class K>
torch::Tensor run(const torch::Tensor& a, const torch::Tensor& b) {
  auto out = torch::empty_like(a);
  auto go = [&]<typename T>() {
    const T *ap = a.data_ptr<T>(), *bp = b.defined() ? b.data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    at::parallel_for(0, a.numel(), 16384,
                     [&](int64_t begin, int64_t end) { spans<K<T>>(ap + begin, bp ? bp + begin : nullptr, op + begin, end - begin); });
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
    return run<Forward>(x, torch::Tensor());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {run<Backward>(ctx->get_saved_variables()[0], grads[0].contiguous())};
  }
};

}  // namespace
#endif

torch::Tensor gelu_tanh(const torch::Tensor& x) {
#if defined(__x86_64__)
  if (vec::kAvx512 && x.device().is_cpu() && (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16))
    return GeluTanhFn::apply(x.contiguous());
#endif
  return torch::gelu(x, "tanh");
}

}  // namespace tunekit
