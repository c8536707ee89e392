// Rotary position embedding, x * cos + rotate_half(x) * sin, in one pass each way.
//
// transformers writes it as five elementwise operations (two products, a negation, a concatenation, a sum) and autograd
// runs about as many backward; under autocast the bfloat16 queries and keys also meet float32 cos/sin tables, so each
// product first widens its bfloat16 operand in a copy, and attention then narrows the float32 result again. Here every
// element is computed with the same operations in the same order, each result rounded where torch's kernels round it:
// products and sum in the promoted dtype, the gradient of each product narrowed to the input's dtype before the two are
// summed, as autograd sums them. The outputs are the composite's, bit for bit.
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include "../model.h"
#include "vec.h"

namespace tunekit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using vec::BF16;
using vec::narrow;
using vec::round_to;
using vec::widen;

// The row loops below are plain C++ that the vectoriser turns into SIMD code (their trip count, head_dim, is not known
// here: vec.h's TUNEKIT_VECTORISE says why that needs its flags).
#pragma GCC push_options
TUNEKIT_VECTORISE

// Rows of `head_dim` contiguous elements over the leading [batch, heads, seq] dimensions, each tensor with its own
// strides (zero where cos/sin broadcast).
struct Rows {
  int64_t heads, seq;
  std::array<std::array<int64_t, 3>, 3> strides;  // per tensor: batch, heads, seq

  Rows(c10::IntArrayRef shape, std::initializer_list<const torch::Tensor*> ts) : heads(shape[1]), seq(shape[2]) {
    size_t i = 0;
    for (const auto* t : ts) strides[i++] = {t->stride(0), t->stride(1), t->stride(2)};
  }
  int64_t offset(size_t tensor, int64_t row) const {
    const auto& s = strides[tensor];
    int64_t t = row % seq, h = (row / seq) % heads, b = row / (seq * heads);
    return b * s[0] + h * s[1] + t * s[2];
  }
};

// The two directions, one row each: `in` to `out`, both [head_dim], under tables c and s of the same row. P is the
// dtype torch computes the composite in (the promotion of x's and the tables'), O the dtype returned.
//
// Forward: out = x * cos + rotate_half(x) * sin, where rotate_half(x) = cat(-x2, x1).
template <typename TX, typename TC, typename P, typename O>
struct Forward {
  using In = TX;
  using Out = O;
  __attribute__((always_inline)) static void row(const TX* __restrict x, const TC* __restrict c, const TC* __restrict s, O* __restrict out,
                                                 int64_t D) {
    const int64_t half = D / 2;
    for (int64_t i = 0; i < half; i++)
      out[i] = narrow<O>(round_to<P>(round_to<P>(widen(x[i]) * widen(c[i])) + round_to<P>(-widen(x[i + half]) * widen(s[i]))));
    for (int64_t i = half; i < D; i++)
      out[i] = narrow<O>(round_to<P>(round_to<P>(widen(x[i]) * widen(c[i])) + round_to<P>(widen(x[i - half]) * widen(s[i]))));
  }
};

// Backward, dx from d(out): each product's gradient in P, narrowed to x's dtype; rotate_half's gradient moves and negates
// that of the second product; the two summed in x's dtype.
template <typename TX, typename TC, typename P, typename O>
struct Backward {
  using In = O;
  using Out = TX;
  __attribute__((always_inline)) static float product_grad(O g, TC t) { return round_to<TX>(round_to<P>(widen(g) * widen(t))); }
  __attribute__((always_inline)) static void row(const O* __restrict g, const TC* __restrict c, const TC* __restrict s, TX* __restrict dx,
                                                 int64_t D) {
    const int64_t half = D / 2;
    for (int64_t i = 0; i < half; i++) dx[i] = narrow<TX>(product_grad(g[i], c[i]) + product_grad(g[i + half], s[i + half]));
    for (int64_t i = half; i < D; i++) dx[i] = narrow<TX>(product_grad(g[i], c[i]) - product_grad(g[i - half], s[i - half]));
  }
};

// The row loop, compiled twice: for AVX2 and for any x86-64 (or the build's own target elsewhere).
template <typename K, typename TC>
void rows(const typename K::In* in, const TC* c, const TC* s, typename K::Out* out, const Rows& r, int64_t begin, int64_t end, int64_t D) {
  for (int64_t row = begin; row < end; row++)
    K::row(in + r.offset(0, row), c + r.offset(1, row), s + r.offset(1, row), out + r.offset(2, row), D);
}
#if defined(__x86_64__)
template <typename K, typename TC>
__attribute__((target("avx2"))) void rows_avx2(const typename K::In* in, const TC* c, const TC* s, typename K::Out* out, const Rows& r,
                                               int64_t begin, int64_t end, int64_t D) {
  for (int64_t row = begin; row < end; row++)
    K::row(in + r.offset(0, row), c + r.offset(1, row), s + r.offset(1, row), out + r.offset(2, row), D);
}
#endif
#pragma GCC pop_options

// Runs kernel K over every row of `in` ([batch, heads, seq, head_dim], last dimension contiguous) into `out`, with
// cos/sin expanded to the same shape.
template <typename K, typename TC>
void run_rows(const torch::Tensor& in, const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor& out) {
  const int64_t D = in.size(3), count = in.size(0) * in.size(1) * in.size(2);
  Rows r(in.sizes(), {&in, &cos, &out});
  const auto* ip = in.data_ptr<typename K::In>();
  const TC *cp = cos.data_ptr<TC>(), *sp = sin.data_ptr<TC>();
  auto* op = out.data_ptr<typename K::Out>();
  at::parallel_for(0, count, std::max<int64_t>(1, 32768 / D), [&](int64_t begin, int64_t end) {
#if defined(__x86_64__)
    if (vec::kAvx2) return rows_avx2<K>(ip, cp, sp, op, r, begin, end, D);
#endif
    rows<K>(ip, cp, sp, op, r, begin, end, D);
  });
}

bool is_float_or_bf16(torch::ScalarType t) { return t == torch::kFloat32 || t == torch::kBFloat16; }

// Runs Dir<TX, TC, P, O> over the rows for the dtypes of x, the tables and the output.
template <template <typename, typename, typename, typename> class Dir>
void dispatch(torch::ScalarType tx, torch::ScalarType tc, torch::ScalarType to, const torch::Tensor& in, const torch::Tensor& cos,
              const torch::Tensor& sin, torch::Tensor& out) {
  auto with_o = [&]<typename TX, typename TC, typename P>() {
    if (to == torch::kFloat32)
      run_rows<Dir<TX, TC, P, float>, TC>(in, cos, sin, out);
    else
      run_rows<Dir<TX, TC, P, BF16>, TC>(in, cos, sin, out);
  };
  if (tx == torch::kFloat32 && tc == torch::kFloat32) with_o.template operator()<float, float, float>();
  if (tx == torch::kFloat32 && tc == torch::kBFloat16) with_o.template operator()<float, BF16, float>();
  if (tx == torch::kBFloat16 && tc == torch::kFloat32) with_o.template operator()<BF16, float, float>();
  if (tx == torch::kBFloat16 && tc == torch::kBFloat16) with_o.template operator()<BF16, BF16, BF16>();
}

struct RotaryFn : public torch::autograd::Function<RotaryFn> {
  // cos and sin arrive expanded to x's shape, their last dimension contiguous.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& cos, const torch::Tensor& sin,
                               torch::ScalarType out_dtype) {
    auto x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
    auto out = torch::empty_like(x, x.options().dtype(out_dtype));
    dispatch<Forward>(x.scalar_type(), cos.scalar_type(), out_dtype, x, cos, sin, out);
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["x_dtype"] = x.scalar_type();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto x_dtype = ctx->saved_data["x_dtype"].toScalarType();
    auto dout = grads[0].stride(3) == 1 ? grads[0] : grads[0].contiguous();
    auto dx = torch::empty_like(dout, dout.options().dtype(x_dtype));
    dispatch<Backward>(x_dtype, s[0].scalar_type(), dout.scalar_type(), dout, s[0], s[1], dx);
    return {dx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, -1);
  return torch::cat({-halves[1], halves[0]}, -1);
}

}  // namespace

torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // Under autocast the result is narrowed to the lower precision at once: attention, which reads it, would cast it there.
  auto out_dtype = torch::result_type(x, cos);
  if (at::autocast::is_autocast_enabled(x.device().type()) && is_float_or_bf16(out_dtype))
    out_dtype = at::autocast::get_autocast_dtype(x.device().type());
  bool kernel = x.device().is_cpu() && x.dim() == 4 && x.numel() > 0 && x.size(3) % 2 == 0 && is_float_or_bf16(x.scalar_type()) &&
                is_float_or_bf16(cos.scalar_type()) && cos.scalar_type() == sin.scalar_type() && is_float_or_bf16(out_dtype) &&
                !cos.requires_grad() && !sin.requires_grad();
  if (!kernel) return (x * cos + rotate_half(x) * sin).to(out_dtype);
  auto table = [&](const torch::Tensor& t) { return t.contiguous().expand(x.sizes()); };
  return RotaryFn::apply(x, table(cos), table(sin), out_dtype);
}

}  // namespace tunekit
