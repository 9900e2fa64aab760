// The layer-normalized cells' parameter gradients (layernorm_cell_ops.h): sums over the rows of
// what their gate-gradient kernels wrote (grad_pre) and what their forward saved, device-agnostic.
#include "layernorm_cell_ops.h"

#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>

namespace fused_rnn {
namespace {

// The gradients of an LN's weight and bias: sums over the rows of d * x_hat and of d.
void layer_norm_grads(const Tensor& d, const Tensor& x_hat, bool weight, bool bias,
                      at::ScalarType dtype, Tensor& grad_weight, Tensor& grad_bias) {
  if (weight) grad_weight = at::sum(at::mul(d, x_hat), 0).to(dtype);
  if (bias) grad_bias = at::sum(d, 0).to(dtype);
}

// Checks norms[k] against sizes[k] (names[k] in messages).
void check_each(const char* op, at::ArrayRef<Tensor> norms, at::ArrayRef<const char*> names,
                at::ArrayRef<int64_t> sizes, const Tensor& input) {
  TORCH_CHECK(norms.size() == names.size(), op, ": expected ", names.size(),
              " layer-norm parameters, got ", norms.size());
  for (size_t k = 0; k < norms.size(); ++k) check_saved(op, names[k], norms[k], {sizes[k]}, input);
}

}  // namespace

void LayerNormLstmCell::check_norms(const char* op, at::ArrayRef<Tensor> norms, int64_t hidden,
                                    const Tensor& input) {
  const int64_t rows = kGates * hidden;
  check_each(op, norms,
             {"ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_c_weight",
              "ln_c_bias"},
             {rows, rows, rows, rows, hidden, hidden}, input);
}

void LayerNormGruCell::check_norms(const char* op, at::ArrayRef<Tensor> norms, int64_t hidden,
                                   const Tensor& input) {
  const int64_t rows = kGates * hidden;
  check_each(op, norms, {"ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias"},
             {rows, rows, rows, rows}, input);
}

void LayerNormLstmCell::parameter_grads(const Tensor& grad_pre, const Tensor& saved,
                                        int64_t hidden, const GradMask& mask, Grads& grads,
                                        at::ScalarType dtype) {
  const int64_t G = kGates, H = hidden;
  // grad_pre: [pre-activations' gradient (4H) | LN_c output's (H)]; saved: [gates (4H) |
  // x_hat_ih (4H) | x_hat_hh (4H) | c_hat (H) | rstd].
  const Tensor d = grad_pre.narrow(1, 0, G * H), d_c = grad_pre.narrow(1, G * H, H);
  std::vector<Tensor>& n = grads.norms;
  n.assign(kNorms, Tensor());
  const auto& want = mask.norms;
  if (mask.b_ih) grads.b_ih = at::sum(d, 0).to(dtype);
  layer_norm_grads(d, saved.narrow(1, G * H, G * H), want[0], want[1], dtype, n[0], n[1]);
  layer_norm_grads(d, saved.narrow(1, 2 * G * H, G * H), want[2], want[3], dtype, n[2], n[3]);
  layer_norm_grads(d_c, saved.narrow(1, 3 * G * H, H), want[4], want[5], dtype, n[4], n[5]);
}

void LayerNormGruCell::parameter_grads(const Tensor& grad_pre, const Tensor& saved,
                                       int64_t hidden, const GradMask& mask, Grads& grads,
                                       at::ScalarType dtype) {
  const int64_t G = kGates, H = hidden;
  // grad_pre: [input side's gradient after LN (3H) | hidden side's (3H)]; saved: [r z n h_n (4H)
  // | x_hat_ih (3H) | x_hat_hh (3H) | rstd].
  const Tensor d_x = grad_pre.narrow(1, 0, G * H), d_h = grad_pre.narrow(1, G * H, G * H);
  std::vector<Tensor>& n = grads.norms;
  n.assign(kNorms, Tensor());
  const auto& want = mask.norms;
  if (mask.b_ih) grads.b_ih = at::sum(d_x, 0).to(dtype);
  if (mask.b_hh) grads.b_hh = at::sum(d_h, 0).to(dtype);
  layer_norm_grads(d_x, saved.narrow(1, kGruSaved * H, G * H), want[0], want[1], dtype, n[0],
                   n[1]);
  layer_norm_grads(d_h, saved.narrow(1, (kGruSaved + G) * H, G * H), want[2], want[3], dtype,
                   n[2], n[3]);
}

}  // namespace fused_rnn
