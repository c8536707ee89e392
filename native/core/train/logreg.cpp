// Logistic regression for the feature-based strategy: frozen-model embeddings in, a linear classifier out.
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/lbfgs.h>

#include "../model.h"

namespace tunekit {

LogRegResult logreg_fit(const std::vector<float>& x, int64_t n, int64_t dim, const std::vector<int32_t>& y, int64_t classes,
                        const LogRegSpec& spec) {
  if (n < 1 || dim < 1) throw Error("E_SHAPE", "logistic regression needs at least one example and one feature");
  if (int64_t(x.size()) != n * dim)
    throw Error("E_SHAPE",
                "features have " + std::to_string(x.size()) + " values, expected " + std::to_string(n) + " x " + std::to_string(dim));
  if (int64_t(y.size()) != n)
    throw Error("E_SHAPE", "labels have " + std::to_string(y.size()) + " entries for " + std::to_string(n) + " examples");
  if (classes < 2) throw Error("E_ARG", "logistic regression needs at least 2 classes");
  if (!(spec.C > 0)) throw Error("E_ARG", "C must be positive");
  for (int64_t i = 0; i < n; i++) {
    if (y[i] < 0 || y[i] >= classes)
      throw Error("E_RANGE",
                  "label " + std::to_string(y[i]) + " at row " + std::to_string(i) + " is outside [0, " + std::to_string(classes) + ")");
  }
  torch::NoGradGuard outer;  // re-enabled below only for the objective
  auto X = torch::from_blob(const_cast<float*>(x.data()), {n, dim}, torch::kFloat32).to(torch::kFloat64);
  if (!torch::isfinite(X).all().item<bool>()) throw Error("E_NAN", "features contain NaN or infinity");
  auto Y = torch::from_blob(const_cast<int32_t*>(y.data()), {n}, torch::kInt32).to(torch::kInt64);
  const bool binary = classes == 2;
  const int64_t rows = binary ? 1 : classes;
  auto W = torch::zeros({rows, dim}, torch::kFloat64).requires_grad_(true);
  auto b = torch::zeros({rows}, torch::kFloat64).requires_grad_(true);
  auto Yf = Y.to(torch::kFloat64);
  // Dividing sklearn's objective by C * n keeps its minimiser and makes the tolerances scale-free.
  const double penalty = 0.5 / (spec.C * double(n));
  auto objective = [&]() {
    auto z = torch::addmm(b, X, W.t());
    torch::Tensor nll =
        binary ? (torch::nn::functional::softplus(z.squeeze(1)) - Yf * z.squeeze(1)).mean() : torch::nn::functional::cross_entropy(z, Y);
    return std::make_pair(nll, nll + penalty * W.pow(2).sum());
  };
  torch::optim::LBFGS opt({W, b}, torch::optim::LBFGSOptions(1.0)
                                      .max_iter(spec.max_iter)
                                      .max_eval(spec.max_iter * 5 / 4 + 1)
                                      .tolerance_grad(spec.tol)
                                      .tolerance_change(1e-14)
                                      .history_size(20)
                                      .line_search_fn("strong_wolfe"));
  int64_t evals = 0;
  {
    torch::AutoGradMode on(true);
    opt.step([&]() {
      opt.zero_grad();
      auto loss = objective().second;
      loss.backward();
      evals++;
      return loss;
    });
  }
  LogRegResult r;
  r.rows = rows;
  r.iterations = evals;
  torch::Tensor gmax;
  {
    torch::AutoGradMode on(true);
    W.mutable_grad() = torch::Tensor();
    b.mutable_grad() = torch::Tensor();
    auto [nll, total] = objective();
    total.backward();
    gmax = torch::max(W.grad().abs().max(), b.grad().abs().max());
    r.loss = nll.item<double>();
  }
  if (!std::isfinite(r.loss)) throw Error("E_NAN", "logistic regression diverged (non-finite loss)");
  r.converged = gmax.item<double>() <= spec.tol * 10;
  auto Wc = W.detach().contiguous();
  auto bc = b.detach().contiguous();
  r.weights.assign(Wc.data_ptr<double>(), Wc.data_ptr<double>() + Wc.numel());
  r.bias.assign(bc.data_ptr<double>(), bc.data_ptr<double>() + bc.numel());
  return r;
}

}  // namespace tunekit
