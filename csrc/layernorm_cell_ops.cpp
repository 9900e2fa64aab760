// The layer-normalized cells' parameter gradients (layernorm_cell_ops.h): sums over the rows of
// what their gate-gradient kernels wrote (grad_pre) and what their forward saved, step by step by
// the device's add_row_sums.
#include "layernorm_cell_ops.h"

#include <ATen/ops/zeros.h>

namespace fused_rnn {
namespace {

// A result in `dtype` that aliases no other (one row sum may serve several parameters).
Tensor own_copy(const Tensor& t, at::ScalarType dtype) {
  return t.to(dtype, /*non_blocking=*/false, /*copy=*/true);
}

// The gradients of an LN's weight and bias, where wanted, from its sums [sum of d, of d * x_hat].
void layer_norm_grads(const Tensor& sums, bool weight, bool bias, at::ScalarType dtype,
                      Tensor& grad_weight, Tensor& grad_bias) {
  if (weight) grad_weight = own_copy(sums[1], dtype);
  if (bias) grad_bias = own_copy(sums[0], dtype);
}

// One [2, C] sum per norm, of `columns`.
std::vector<Tensor> zero_sums(at::ArrayRef<int64_t> columns, const at::TensorOptions& options) {
  std::vector<Tensor> sums;
  for (const int64_t c : columns) sums.push_back(at::zeros({2, c}, options));
  return sums;
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

// The LSTM's grad_pre rows: [pre-activations' gradient (4H) | LN_c output's (H)]; saved: [gates
// (4H) | x_hat_ih (4H) | x_hat_hh (4H) | c_hat (H) | rstd]; its sums: LN_ih's, LN_hh's, LN_c's
// (the pre-activations' gradient d is both sides' norms' and the biases').
std::vector<Tensor> LayerNormLstmCell::parameter_sums(int64_t hidden,
                                                      const at::TensorOptions& options) {
  return zero_sums({kGates * hidden, kGates * hidden, hidden}, options);
}

void LayerNormLstmCell::add_parameter_sums(const LinearKernels& lin, const Tensor& grad_pre,
                                           const Tensor& saved, int64_t hidden,
                                           const std::vector<Tensor>& sums) {
  const int64_t GH = kGates * hidden;
  const Tensor d = grad_pre.narrow(1, 0, GH);
  lin.add_row_sums(d, saved.narrow(1, GH, GH), sums[0]);
  lin.add_row_sums(d, saved.narrow(1, 2 * GH, GH), sums[1]);
  lin.add_row_sums(grad_pre.narrow(1, GH, hidden), saved.narrow(1, 3 * GH, hidden), sums[2]);
}

void LayerNormLstmCell::parameter_grads(const std::vector<Tensor>& sums, const GradMask& mask,
                                        Grads& grads, at::ScalarType dtype) {
  std::vector<Tensor>& n = grads.norms;
  n.assign(kNorms, Tensor());
  const auto& want = mask.norms;
  if (mask.b_ih) grads.b_ih = own_copy(sums[0][0], dtype);
  layer_norm_grads(sums[0], want[0], want[1], dtype, n[0], n[1]);
  layer_norm_grads(sums[1], want[2], want[3], dtype, n[2], n[3]);
  layer_norm_grads(sums[2], want[4], want[5], dtype, n[4], n[5]);
}

// The GRU's grad_pre rows: [input side's gradient after LN (3H) | hidden side's (3H)]; saved:
// [r z n h_n (4H) | x_hat_ih (3H) | x_hat_hh (3H) | rstd]; its sums: LN_ih's (and b_ih's),
// LN_hh's (and b_hh's).
std::vector<Tensor> LayerNormGruCell::parameter_sums(int64_t hidden,
                                                     const at::TensorOptions& options) {
  return zero_sums({kGates * hidden, kGates * hidden}, options);
}

void LayerNormGruCell::add_parameter_sums(const LinearKernels& lin, const Tensor& grad_pre,
                                          const Tensor& saved, int64_t hidden,
                                          const std::vector<Tensor>& sums) {
  const int64_t GH = kGates * hidden;
  lin.add_row_sums(grad_pre.narrow(1, 0, GH), saved.narrow(1, kGruSaved * hidden, GH), sums[0]);
  lin.add_row_sums(grad_pre.narrow(1, GH, GH), saved.narrow(1, kGruSaved * hidden + GH, GH),
                   sums[1]);
}

void LayerNormGruCell::parameter_grads(const std::vector<Tensor>& sums, const GradMask& mask,
                                       Grads& grads, at::ScalarType dtype) {
  std::vector<Tensor>& n = grads.norms;
  n.assign(kNorms, Tensor());
  const auto& want = mask.norms;
  if (mask.b_ih) grads.b_ih = own_copy(sums[0][0], dtype);
  if (mask.b_hh) grads.b_hh = own_copy(sums[1][0], dtype);
  layer_norm_grads(sums[0], want[0], want[1], dtype, n[0], n[1]);
  layer_norm_grads(sums[1], want[2], want[3], dtype, n[2], n[3]);
}

}  // namespace fused_rnn
