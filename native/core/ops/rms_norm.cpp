// RMSNorm as LlamaRMSNorm computes it, weight * (x * rsqrt(mean(x^2) + eps)) with the normalisation in float32, in one
// pass forward and one backward on the CPU.
//
// The composite is six elementwise operations and a reduction forward and about twice that backward, each a pass over
// the activations; with rotary's, they were about a fifth of a llama step's time outside the products. The kernel
// computes the same float32 expression per element; only the sums (of squares forward, of products backward and over
// rows for the weight's gradient) are taken in another order, so results agree with the composite's to float32
// rounding.
#include <ATen/Parallel.h>

#include <cmath>

#include "../model.h"
#include "vec.h"

namespace tunekit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Sums in kLanes independent partial sums (which the compiler turns into SIMD lanes; a single running sum would stay
// scalar, as float addition may not be reordered), then across them.
constexpr int64_t kLanes = 16;

#pragma GCC push_options
TUNEKIT_VECTORISE

template <typename F>
inline float lane_sum(int64_t n, F term) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; l++) acc[l] += term(i + l);
  float total = 0;
  for (; i < n; i++) total += term(i);
  for (int64_t l = 0; l < kLanes; l++) total += acc[l];
  return total;
}

void forward_rows(const float* x, const float* w, float* y, float* rstd, int64_t begin, int64_t end, int64_t C, float eps) {
  for (int64_t row = begin; row < end; row++) {
    const float* xr = x + row * C;
    float* yr = y + row * C;
    float mean = lane_sum(C, [&](int64_t i) { return xr[i] * xr[i]; }) / float(C);
    float r = 1.0f / std::sqrt(mean + eps);
    rstd[row] = r;
    for (int64_t i = 0; i < C; i++) yr[i] = w[i] * (xr[i] * r);
  }
}

// dx = r (w dy - h mean(w dy h)) with h = x r; dw (when wanted) accumulates dy h over the rows.
void backward_rows(const float* dy, const float* x, const float* w, const float* rstd, float* dx, float* dw, int64_t begin, int64_t end,
                   int64_t C) {
  for (int64_t row = begin; row < end; row++) {
    const float *g = dy + row * C, *xr = x + row * C;
    float* dxr = dx + row * C;
    const float r = rstd[row];
    float mean = lane_sum(C, [&](int64_t i) { return g[i] * w[i] * (xr[i] * r); }) / float(C);
    for (int64_t i = 0; i < C; i++) dxr[i] = r * (g[i] * w[i] - (xr[i] * r) * mean);
    if (dw)
      for (int64_t i = 0; i < C; i++) dw[i] += g[i] * (xr[i] * r);
  }
}

#pragma GCC pop_options

// The weight's gradient is summed over rows in this many fixed blocks, one partial sum each, so that its rounding does
// not depend on the number of threads.
constexpr int64_t kWeightBlocks = 32;

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& w, double eps) {
    auto x = x_in.contiguous();
    const int64_t C = x.size(-1), rows = x.numel() / C;
    auto y = torch::empty_like(x);
    auto rstd = torch::empty({rows}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
    float *yp = y.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / C),
                     [&](int64_t b, int64_t e) { forward_rows(xp, wp, yp, rp, b, e, C, float(eps)); });
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto x = s[0], w = s[1], rstd = s[2];
    auto dy = grads[0].contiguous();
    const int64_t C = x.size(-1), rows = x.numel() / C;
    auto dx = torch::empty_like(x);
    const bool want_dw = ctx->needs_input_grad(1);
    const int64_t blocks = std::min(kWeightBlocks, rows);
    auto partial = want_dw ? torch::zeros({blocks, C}, x.options()) : torch::Tensor();
    const float *gp = dy.data_ptr<float>(), *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    float* dxp = dx.data_ptr<float>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; b++) {
        float* dw = want_dw ? partial.data_ptr<float>() + b * C : nullptr;
        backward_rows(gp, xp, wp, rp, dxp, dw, rows * b / blocks, rows * (b + 1) / blocks, C);
      }
    });
    return {dx, want_dw ? partial.sum(0) : torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  bool kernel = x.device().is_cpu() && x.numel() > 0 && x.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32 &&
                weight.dim() == 1 && weight.is_contiguous() && x.size(-1) == weight.size(0);
  if (kernel) return RmsNormFn::apply(x, weight, eps);
  auto h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, true) + eps);
  return weight * h.to(x.scalar_type());
}

}  // namespace tunekit
