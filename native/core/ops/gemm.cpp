// Dense layers through oneDNN where it is faster than MKL.
//
// The torch wheel's aten::mm/addmm call MKL, which on this project's AMD EPYC servers runs a slower code path than
// oneDNN (bundled in the same libtorch): for the shapes of the benchmark models, oneDNN computes x W^T 5-40% faster,
// and when decoding one token, where each product streams its weight from memory, it reads them at about 16 GB/s
// against MKL's 11 (a batch-1 LM head over an [8192, 384] table: four times faster). The weight gradient is the
// exception (MKL wins there), so the backward computes it with aten::mm. Results agree with MKL's to float32
// rounding (1e-6).
// TUNEKIT_GEMM=aten sends every product back through aten.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <optional>

#include "../model.h"

namespace tunekit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LinearPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                                   c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>);

const c10::TypedOperatorHandle<LinearPointwise>* onednn_linear() {
  static const c10::TypedOperatorHandle<LinearPointwise>* op = []() -> const c10::TypedOperatorHandle<LinearPointwise>* {
    const char* mode = std::getenv("TUNEKIT_GEMM");
    if (mode && std::string(mode) == "aten") return nullptr;
    auto h = c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
    if (!h || !h->hasKernelForDispatchKey(c10::DispatchKey::CPU)) return nullptr;  // a libtorch built without oneDNN
    return new c10::TypedOperatorHandle<LinearPointwise>(h->typed<LinearPointwise>());
  }();
  return op;
}

// Only device, dtypes and autocast decide, so callers pass the tensors in whatever shape they hold them. Under
// autocast the product goes through aten, whose autocast kernels cast it to the lower precision.
bool use_onednn(const torch::Tensor& x, const torch::Tensor& w) {
  if (!x.device().is_cpu() || x.scalar_type() != torch::kFloat32 || w.scalar_type() != torch::kFloat32) return false;
  if (at::autocast::is_autocast_enabled(c10::DeviceType::CPU)) return false;
  return onednn_linear() != nullptr;
}

template <bool kBias>
struct DenseFn : public torch::autograd::Function<DenseFn<kBias>> {
  // w is the weight as stored; fan_in_fan_out: stored [in, out] (Conv1D) rather than [out, in].
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                               bool fan_in_fan_out) {
    auto x2 = x.reshape({-1, x.size(-1)});
    auto w_oi = fan_in_fan_out ? w.t() : w;
    auto y = matmul_nt(x2, w_oi, kBias ? b : torch::Tensor());
    ctx->save_for_backward({x2, w});
    ctx->saved_data["fifo"] = fan_in_fan_out;
    return unflatten_rows(y, x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto x2 = s[0], w = s[1];
    bool fifo = ctx->saved_data["fifo"].toBool();
    auto dy = grads[0].reshape({-1, grads[0].size(-1)});
    torch::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) {
      auto w_oi = fifo ? w.t() : w;
      dx = unflatten_rows(matmul_nt(dy, w_oi.t(), torch::Tensor()), grads[0]);
    }
    if (ctx->needs_input_grad(1)) dw = fifo ? torch::mm(x2.t(), dy) : torch::mm(dy.t(), x2);
    if (kBias && ctx->needs_input_grad(2)) db = dy.sum(0);
    return {dx, dw, db, torch::Tensor()};
  }
};

// A lower-precision copy of an activation, standing in for autocast's cast of it before one product: the gradient
// comes back widened to the activation's dtype, as autocast's cast gives it back.
struct CastFor : public torch::autograd::Function<CastFor> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& copy) {
    ctx->saved_data["dtype"] = x.scalar_type();
    return copy;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {grads[0].to(ctx->saved_data["dtype"].toScalarType()), torch::Tensor()};
  }
};

}  // namespace

std::vector<torch::Tensor> product_inputs(const torch::Tensor& x, size_t n) {
  auto device = x.device().type();
  if (!at::autocast::is_autocast_enabled(device) || x.scalar_type() != torch::kFloat32) return std::vector<torch::Tensor>(n, x);
  auto copy = x.detach().to(at::autocast::get_autocast_dtype(device));
  if (!x.requires_grad() || !at::GradMode::is_enabled()) return std::vector<torch::Tensor>(n, copy);
  std::vector<torch::Tensor> inputs;
  for (size_t i = 0; i < n; i++) inputs.push_back(CastFor::apply(x, copy));
  return inputs;
}

torch::Tensor unflatten_rows(const torch::Tensor& y2, const torch::Tensor& like) {
  auto sizes = like.sizes().vec();
  sizes.back() = y2.size(1);
  return y2.view(sizes);
}

bool onednn_gemm() { return onednn_linear() != nullptr; }

torch::Tensor matmul_nt(const torch::Tensor& x2, const torch::Tensor& w_oi, const torch::Tensor& bias) {
  if (use_onednn(x2, w_oi)) {
    std::optional<at::Tensor> b;
    if (bias.defined()) b = bias;
    return onednn_linear()->call(x2, w_oi, b, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
  }
  return bias.defined() ? torch::addmm(bias, x2, w_oi.t()) : torch::mm(x2, w_oi.t());
}

torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, bool fan_in_fan_out) {
  if (!use_onednn(x, weight)) {
    if (!fan_in_fan_out) return torch::linear(x, weight, bias);
    auto x2 = x.reshape({-1, x.size(-1)});
    return unflatten_rows(bias.defined() ? torch::addmm(bias, x2, weight) : torch::mm(x2, weight), x);
  }
  if (bias.defined()) return DenseFn<true>::apply(x, weight, bias, fan_in_fan_out);
  return DenseFn<false>::apply(x, weight, weight, fan_in_fan_out);  // the third input is a placeholder, never read
}

}  // namespace tunekit
