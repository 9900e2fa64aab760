// The layer-normalized LSTM and GRU cell ops on the CPU (schemas in fused_rnn.cpp, math in
// layernorm_cell_math.h). A step: the two products (linear.h), then one pass per batch row that
// normalizes both products, runs the gate math and (LSTM) normalizes the new cell state, writing
// what the backward reads; the backward: one pass per row (the LN backward needs a row's sums),
// then the products. Rows run in parallel; the passes compute in float for the half types.
#include "../cell_ops.h"
#include "../layernorm_cell_math.h"
#include "linear.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <utility>

namespace fused_rnn::cpu {
namespace {

// Checks an LN parameter: [size], on input's device, of its dtype.
void check_ln_parameter(const char* op, const char* name, const Tensor& t, int64_t size,
                        const Tensor& input) {
  check_saved(op, name, t, {size}, input);
}

// The dtype the saved values keep: the op-math type (float for the half types), since the
// normalized values and the rstd set the scale of every gradient.
at::ScalarType saved_dtype(const Tensor& input) {
  return at::toOpMathType(input.scalar_type());
}

// A row of n values' mean and rstd (two passes: the deviations' squares, not the squares'
// difference, which loses digits).
template <typename acc_t, typename Load>
RowStats<acc_t> row_stats(int64_t n, const Load& value) {
  acc_t sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += value(k);
  const acc_t mean = sum / acc_t(n);
  acc_t squares = 0;
  for (int64_t k = 0; k < n; ++k) {
    const acc_t d = value(k) - mean;
    squares += d * d;
  }
  return {mean, rstd_from(squares, n)};
}

// Runs row(b) for the rows [0, rows) over ATen's threads, a few rows a task.
template <typename Row>
void over_rows(int64_t rows, int64_t row_work, const Row& row) {
  const int64_t grain = std::max<int64_t>(1, kGrainUnits / std::max<int64_t>(1, row_work));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) row(b);
  });
}

// The backward ops' results (schemas in fused_rnn.cpp).
using LayerNormLstmCellGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                          Tensor, Tensor, Tensor, Tensor, Tensor>;
using LayerNormGruCellGrads =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
template <size_t N>
auto as_tuple(const std::array<Tensor, N>& a) {
  return std::apply([](const auto&... t) { return std::make_tuple(t...); }, a);
}

// x @ w^T in the saved type (for the half types in float: LN subtracts the row's mean, which
// would magnify the product's rounding to the half type), contiguous.
Tensor product_in_saved_type(const Tensor& x, const Tensor& w) {
  const at::ScalarType saved = saved_dtype(x);
  return linear_cpu(x.to(saved), w.to(saved), std::nullopt).contiguous();
}

template <typename T>
const T* data_or_null(const OptionalTensor& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// ---------------------------------------------------------------------------------------------
// LSTM. Saved row: [i f g o (4H) | x_hat_ih (4H) | x_hat_hh (4H) | c_hat (H) | rstd ih, hh, c].

constexpr const char* kLstmOp = "fused_rnn.layernorm_lstm_cell";
constexpr const char* kLstmBackwardOp = "fused_rnn.layernorm_lstm_cell_backward";

int64_t lstm_saved_columns(int64_t H) {
  return kLayerNormLstmSavedPerUnit * H + kLayerNormLstmSavedPerRow;
}

std::tuple<Tensor, Tensor, Tensor> layernorm_lstm_cell_cpu(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
    const Tensor& ln_ih_weight, const Tensor& ln_ih_bias, const Tensor& ln_hh_weight,
    const Tensor& ln_hh_bias, const Tensor& ln_c_weight, const Tensor& ln_c_bias) {
  const CellSizes s = check_cell_forward_args(kLstmOp, kLstmGates, input, hx, cx, w_ih, w_hh,
                                              b_ih, b_hh);
  const int64_t B = s.batch, H = s.hidden, G = kLstmGates;
  check_ln_parameter(kLstmOp, "ln_ih_weight", ln_ih_weight, G * H, input);
  check_ln_parameter(kLstmOp, "ln_ih_bias", ln_ih_bias, G * H, input);
  check_ln_parameter(kLstmOp, "ln_hh_weight", ln_hh_weight, G * H, input);
  check_ln_parameter(kLstmOp, "ln_hh_bias", ln_hh_bias, G * H, input);
  check_ln_parameter(kLstmOp, "ln_c_weight", ln_c_weight, H, input);
  check_ln_parameter(kLstmOp, "ln_c_bias", ln_c_bias, H, input);
  const Tensor x_proj = product_in_saved_type(input, w_ih);
  const Tensor h_proj = product_in_saved_type(hx, w_hh);
  Tensor hy = at::empty({B, H}, input.options());
  Tensor cy = at::empty({B, H}, input.options());
  Tensor saved = at::empty({B, lstm_saved_columns(H)}, input.options().dtype(saved_dtype(input)));
  const Tensor c_prev = cx.contiguous();
  const OptionalTensor bias = summed_biases({&b_ih, &b_hh});
  const Tensor bias_c = bias.has_value() ? bias->contiguous() : Tensor();
  const Tensor wi = ln_ih_weight.contiguous(), bi = ln_ih_bias.contiguous();
  const Tensor wh = ln_hh_weight.contiguous(), bh = ln_hh_bias.contiguous();
  const Tensor wc = ln_c_weight.contiguous(), bc = ln_c_bias.contiguous();
  FUSED_RNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "layernorm_lstm_cell_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *xp = x_proj.data_ptr<acc_t>(), *hp = h_proj.data_ptr<acc_t>();
    const scalar_t* cp = c_prev.data_ptr<scalar_t>();
    const scalar_t* bias_p = bias_c.defined() ? bias_c.data_ptr<scalar_t>() : nullptr;
    const scalar_t *wi_p = wi.data_ptr<scalar_t>(), *bi_p = bi.data_ptr<scalar_t>();
    const scalar_t *wh_p = wh.data_ptr<scalar_t>(), *bh_p = bh.data_ptr<scalar_t>();
    const scalar_t *wc_p = wc.data_ptr<scalar_t>(), *bc_p = bc.data_ptr<scalar_t>();
    scalar_t *hy_p = hy.data_ptr<scalar_t>(), *cy_p = cy.data_ptr<scalar_t>();
    acc_t* saved_p = saved.data_ptr<acc_t>();
    const int64_t columns = lstm_saved_columns(H);
    over_rows(B, 4 * G * H, [&](int64_t b) {
      const acc_t *x = xp + b * G * H, *h = hp + b * G * H;
      acc_t* row = saved_p + b * columns;
      acc_t *gates = row, *x_hat_ih = row + G * H, *x_hat_hh = row + 2 * G * H;
      acc_t* c_hat = row + 3 * G * H;
      acc_t* rstd = row + kLayerNormLstmSavedPerUnit * H;
      const auto ih = row_stats<acc_t>(G * H, [&](int64_t k) { return x[k]; });
      const auto hh = row_stats<acc_t>(G * H, [&](int64_t k) { return h[k]; });
      for (int64_t k = 0; k < G * H; ++k) {
        x_hat_ih[k] = (x[k] - ih.mean) * ih.rstd;
        x_hat_hh[k] = (h[k] - hh.mean) * hh.rstd;
      }
      const auto pre = [&](int64_t k) {
        const acc_t a = x_hat_ih[k] * acc_t(wi_p[k]) + acc_t(bi_p[k]) +
                        x_hat_hh[k] * acc_t(wh_p[k]) + acc_t(bh_p[k]);
        return bias_p ? a + acc_t(bias_p[k]) : a;
      };
      acc_t* c_new = c_hat;  // c' first, normalized in place below
      for (int64_t j = 0; j < H; ++j) {
        const auto st = layernorm_lstm_gates<acc_t>(pre(j), pre(H + j), pre(2 * H + j),
                                                    pre(3 * H + j), acc_t(cp[b * H + j]));
        gates[j] = st.i;
        gates[H + j] = st.f;
        gates[2 * H + j] = st.g;
        gates[3 * H + j] = st.o;
        // The cell state carried on is the dtype's, as the plain LSTM's; LN_c reads it so.
        cy_p[b * H + j] = static_cast<scalar_t>(st.c_new);
        c_new[j] = acc_t(cy_p[b * H + j]);
      }
      const auto c = row_stats<acc_t>(H, [&](int64_t j) { return c_new[j]; });
      for (int64_t j = 0; j < H; ++j) {
        c_hat[j] = (c_new[j] - c.mean) * c.rstd;
        const acc_t y = c_hat[j] * acc_t(wc_p[j]) + acc_t(bc_p[j]);
        hy_p[b * H + j] = static_cast<scalar_t>(layernorm_lstm_hidden(gates[3 * H + j], y));
      }
      rstd[0] = ih.rstd;
      rstd[1] = hh.rstd;
      rstd[2] = c.rstd;
    });
  });
  return {hy, cy, saved};
}

// The LN backward of one side of a row: from the pre-activations' gradient d (as LN's output
// gradient) and the side's x_hat, rstd and LN weight, writes the raw product's gradient.
template <typename acc_t, typename scalar_t>
void layer_norm_backward_row(int64_t n, const acc_t* d, const acc_t* x_hat, acc_t rstd,
                             const scalar_t* weight, acc_t* grad_raw) {
  acc_t sum = 0, sum_x_hat = 0;
  for (int64_t k = 0; k < n; ++k) {
    const acc_t dx_hat = d[k] * acc_t(weight[k]);
    sum += dx_hat;
    sum_x_hat += dx_hat * x_hat[k];
  }
  const acc_t mean = sum / acc_t(n), mean_x_hat = sum_x_hat / acc_t(n);
  for (int64_t k = 0; k < n; ++k) {
    grad_raw[k] =
        layer_norm_input_grad(d[k] * acc_t(weight[k]), x_hat[k], rstd, mean, mean_x_hat);
  }
}

// The backward's products a @ b (+ add) of a gradient a in the saved type with an argument b of
// the dtype: in the saved type (the half types' products in float, which keeps the LN's
// gradients, scaled by rstd, from a rounding to the half type first), the result in the dtype.
struct ProductsInSavedType {
  at::ScalarType dtype, saved;
  explicit ProductsInSavedType(const Tensor& input)
      : dtype(input.scalar_type()), saved(saved_dtype(input)) {}
  Tensor operator()(const Tensor& a, const Tensor& b, const OptionalTensor& add = {}) const {
    const OptionalTensor add_saved =
        add.has_value() ? OptionalTensor(add->to(saved)) : std::nullopt;
    return matmul_cpu(a, b.to(saved), add_saved).to(dtype);
  }
};

// The gradients of an LN's weight and bias over the rows: sum of d * x_hat, sum of d, where d
// [B, n] and x_hat [B, n] are column blocks of larger rows.
std::pair<Tensor, Tensor> layer_norm_parameter_grads(const Tensor& d, const Tensor& x_hat,
                                                     const Tensor& like) {
  return {at::sum(at::mul(d, x_hat), 0).to(like.scalar_type()),
          at::sum(d, 0).to(like.scalar_type())};
}

LayerNormLstmCellGrads layernorm_lstm_cell_backward_cpu(
    const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& ln_ih_weight,
    const Tensor& ln_hh_weight, const Tensor& ln_c_weight, const Tensor& ln_c_bias,
    const Tensor& saved, std::array<bool, 12> output_mask) {
  const CellSizes s = check_cell_forward_args(kLstmBackwardOp, kLstmGates, input, hx, cx, w_ih,
                                              w_hh, std::nullopt, std::nullopt);
  const int64_t B = s.batch, H = s.hidden, G = kLstmGates;
  check_saved(kLstmBackwardOp, "grad_hy", grad_hy, {B, H}, input);
  check_saved(kLstmBackwardOp, "grad_cy", grad_cy, {B, H}, input);
  check_ln_parameter(kLstmBackwardOp, "ln_ih_weight", ln_ih_weight, G * H, input);
  check_ln_parameter(kLstmBackwardOp, "ln_hh_weight", ln_hh_weight, G * H, input);
  check_ln_parameter(kLstmBackwardOp, "ln_c_weight", ln_c_weight, H, input);
  check_ln_parameter(kLstmBackwardOp, "ln_c_bias", ln_c_bias, H, input);
  const Tensor like_saved = at::empty({0}, input.options().dtype(saved_dtype(input)));
  check_saved(kLstmBackwardOp, "saved", saved, {B, lstm_saved_columns(H)}, like_saved);

  const Tensor saved_c = saved.contiguous(), gh_c = grad_hy.contiguous();
  const Tensor gc_c = grad_cy.contiguous(), c_prev = cx.contiguous();
  const Tensor wi = ln_ih_weight.contiguous(), wh = ln_hh_weight.contiguous();
  const Tensor wc = ln_c_weight.contiguous(), bc = ln_c_bias.contiguous();
  // The pre-activations' gradient (serving both sides, the biases and the LN parameters), LN_c's
  // output gradient and the raw products' gradients, all in the saved (op-math) type.
  Tensor grad_pre = at::empty({B, G * H}, like_saved.options());
  Tensor grad_y_c = at::empty({B, H}, like_saved.options());
  Tensor grad_x_proj = at::empty({B, G * H}, like_saved.options());
  Tensor grad_h_proj = at::empty({B, G * H}, like_saved.options());
  Tensor grad_cx = at::empty({B, H}, input.options());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "layernorm_lstm_cell_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* saved_p = saved_c.data_ptr<acc_t>();
    const scalar_t *dh_p = gh_c.data_ptr<scalar_t>(), *dc_p = gc_c.data_ptr<scalar_t>();
    const scalar_t* cp = c_prev.data_ptr<scalar_t>();
    const scalar_t *wi_p = wi.data_ptr<scalar_t>(), *wh_p = wh.data_ptr<scalar_t>();
    const scalar_t *wc_p = wc.data_ptr<scalar_t>(), *bc_p = bc.data_ptr<scalar_t>();
    acc_t *d_pre = grad_pre.data_ptr<acc_t>(), *d_y = grad_y_c.data_ptr<acc_t>();
    acc_t *dx_p = grad_x_proj.data_ptr<acc_t>(), *dhp_p = grad_h_proj.data_ptr<acc_t>();
    scalar_t* dcx_p = grad_cx.data_ptr<scalar_t>();
    const int64_t columns = lstm_saved_columns(H);
    over_rows(B, 6 * G * H, [&](int64_t b) {
      const acc_t* row = saved_p + b * columns;
      const acc_t *gates = row, *x_hat_ih = row + G * H, *x_hat_hh = row + 2 * G * H;
      const acc_t* c_hat = row + 3 * G * H;
      const acc_t* rstd = row + kLayerNormLstmSavedPerUnit * H;
      acc_t* d = d_pre + b * G * H;
      acc_t* dy = d_y + b * H;
      // Through h' = o tanh(LN_c(c')): a_o's gradient and LN_c's output gradient.
      acc_t sum = 0, sum_c_hat = 0;
      for (int64_t j = 0; j < H; ++j) {
        const acc_t y = c_hat[j] * acc_t(wc_p[j]) + acc_t(bc_p[j]);
        const auto out = layernorm_lstm_output_grad(gates[3 * H + j], y, acc_t(dh_p[b * H + j]));
        dy[j] = out.y;
        d[3 * H + j] = out.a_o;
        const acc_t dx_hat = out.y * acc_t(wc_p[j]);
        sum += dx_hat;
        sum_c_hat += dx_hat * c_hat[j];
      }
      const acc_t mean = sum / acc_t(H), mean_c_hat = sum_c_hat / acc_t(H);
      for (int64_t j = 0; j < H; ++j) {
        const acc_t grad_c =
            acc_t(dc_p[b * H + j]) + layer_norm_input_grad(dy[j] * acc_t(wc_p[j]), c_hat[j],
                                                           rstd[2], mean, mean_c_hat);
        const auto g = layernorm_lstm_cell_grad(gates[j], gates[H + j], gates[2 * H + j],
                                                acc_t(cp[b * H + j]), grad_c);
        d[j] = g.a_i;
        d[H + j] = g.a_f;
        d[2 * H + j] = g.a_g;
        dcx_p[b * H + j] = static_cast<scalar_t>(g.c);
      }
      layer_norm_backward_row(G * H, d, x_hat_ih, rstd[0], wi_p, dx_p + b * G * H);
      layer_norm_backward_row(G * H, d, x_hat_hh, rstd[1], wh_p, dhp_p + b * G * H);
    });
  });
  const auto mask = [&](int k) { return output_mask[k]; };
  const ProductsInSavedType product(input);
  std::array<Tensor, 12> grads;
  if (mask(0)) grads[0] = product(grad_x_proj, w_ih);
  if (mask(1)) grads[1] = product(grad_h_proj, w_hh);
  if (mask(2)) grads[2] = grad_cx;
  if (mask(3)) grads[3] = product(grad_x_proj.t(), input);
  if (mask(4)) grads[4] = product(grad_h_proj.t(), hx);
  if (mask(5)) grads[5] = at::sum(grad_pre, 0).to(input.scalar_type());
  const auto blocks = [&](int64_t first, int64_t width) {
    return saved_c.narrow(1, first, width);
  };
  if (mask(6) || mask(7)) {
    std::tie(grads[6], grads[7]) = layer_norm_parameter_grads(grad_pre, blocks(G * H, G * H), input);
  }
  if (mask(8) || mask(9)) {
    std::tie(grads[8], grads[9]) =
        layer_norm_parameter_grads(grad_pre, blocks(2 * G * H, G * H), input);
  }
  if (mask(10) || mask(11)) {
    std::tie(grads[10], grads[11]) =
        layer_norm_parameter_grads(grad_y_c, blocks(3 * G * H, H), input);
  }
  for (int k = 6; k < 12; ++k) {
    if (!mask(k)) grads[k] = Tensor();
  }
  return as_tuple(grads);
}

// ---------------------------------------------------------------------------------------------
// GRU. Saved row: [r z n h_n (4H) | x_hat_ih (3H) | x_hat_hh (3H) | rstd ih, hh].

constexpr const char* kGruOp = "fused_rnn.layernorm_gru_cell";
constexpr const char* kGruBackwardOp = "fused_rnn.layernorm_gru_cell_backward";

int64_t gru_saved_columns(int64_t H) {
  return kLayerNormGruSavedPerUnit * H + kLayerNormGruSavedPerRow;
}

std::tuple<Tensor, Tensor> layernorm_gru_cell_cpu(
    const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const OptionalTensor& b_ih, const OptionalTensor& b_hh, const Tensor& ln_ih_weight,
    const Tensor& ln_ih_bias, const Tensor& ln_hh_weight, const Tensor& ln_hh_bias) {
  const CellSizes s = check_cell_forward_args(kGruOp, kGruGates, input, hx, std::nullopt, w_ih,
                                              w_hh, b_ih, b_hh);
  const int64_t B = s.batch, H = s.hidden, G = kGruGates;
  check_ln_parameter(kGruOp, "ln_ih_weight", ln_ih_weight, G * H, input);
  check_ln_parameter(kGruOp, "ln_ih_bias", ln_ih_bias, G * H, input);
  check_ln_parameter(kGruOp, "ln_hh_weight", ln_hh_weight, G * H, input);
  check_ln_parameter(kGruOp, "ln_hh_bias", ln_hh_bias, G * H, input);
  const Tensor x_proj = product_in_saved_type(input, w_ih);
  const Tensor h_proj = product_in_saved_type(hx, w_hh);
  Tensor hy = at::empty({B, H}, input.options());
  Tensor saved = at::empty({B, gru_saved_columns(H)}, input.options().dtype(saved_dtype(input)));
  const Tensor h_prev = hx.contiguous();
  const OptionalTensor bi_c = b_ih.has_value() ? OptionalTensor(b_ih->contiguous()) : b_ih;
  const OptionalTensor bh_c = b_hh.has_value() ? OptionalTensor(b_hh->contiguous()) : b_hh;
  const Tensor wi = ln_ih_weight.contiguous(), bi = ln_ih_bias.contiguous();
  const Tensor wh = ln_hh_weight.contiguous(), bh = ln_hh_bias.contiguous();
  FUSED_RNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "layernorm_gru_cell_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *xp = x_proj.data_ptr<acc_t>(), *hp = h_proj.data_ptr<acc_t>();
    const scalar_t* h_p = h_prev.data_ptr<scalar_t>();
    const scalar_t *b_ih_p = data_or_null<scalar_t>(bi_c), *b_hh_p = data_or_null<scalar_t>(bh_c);
    const scalar_t *wi_p = wi.data_ptr<scalar_t>(), *bi_p = bi.data_ptr<scalar_t>();
    const scalar_t *wh_p = wh.data_ptr<scalar_t>(), *bh_p = bh.data_ptr<scalar_t>();
    scalar_t* hy_p = hy.data_ptr<scalar_t>();
    acc_t* saved_p = saved.data_ptr<acc_t>();
    const int64_t columns = gru_saved_columns(H);
    over_rows(B, 4 * G * H, [&](int64_t b) {
      const acc_t *x = xp + b * G * H, *h = hp + b * G * H;
      acc_t* row = saved_p + b * columns;
      acc_t *x_hat_ih = row + kGruSaved * H, *x_hat_hh = x_hat_ih + G * H;
      acc_t* rstd = row + kLayerNormGruSavedPerUnit * H;
      const auto ih = row_stats<acc_t>(G * H, [&](int64_t k) { return x[k]; });
      const auto hh = row_stats<acc_t>(G * H, [&](int64_t k) { return h[k]; });
      for (int64_t k = 0; k < G * H; ++k) {
        x_hat_ih[k] = (x[k] - ih.mean) * ih.rstd;
        x_hat_hh[k] = (h[k] - hh.mean) * hh.rstd;
      }
      const auto gx = [&](int64_t k) {
        const acc_t v = x_hat_ih[k] * acc_t(wi_p[k]) + acc_t(bi_p[k]);
        return b_ih_p ? v + acc_t(b_ih_p[k]) : v;
      };
      const auto gh = [&](int64_t k) {
        const acc_t v = x_hat_hh[k] * acc_t(wh_p[k]) + acc_t(bh_p[k]);
        return b_hh_p ? v + acc_t(b_hh_p[k]) : v;
      };
      for (int64_t j = 0; j < H; ++j) {
        const auto st = gru_step_forward<acc_t>(gx(j), gx(H + j), gx(2 * H + j), gh(j),
                                                gh(H + j), gh(2 * H + j), acc_t(h_p[b * H + j]));
        store_gru_saved(st, [&](int64_t k, acc_t v) { row[k * H + j] = v; });
        hy_p[b * H + j] = static_cast<scalar_t>(st.h_new);
      }
      rstd[0] = ih.rstd;
      rstd[1] = hh.rstd;
    });
  });
  return {hy, saved};
}

LayerNormGruCellGrads layernorm_gru_cell_backward_cpu(
    const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& ln_ih_weight, const Tensor& ln_hh_weight,
    const Tensor& saved, std::array<bool, 10> output_mask) {
  const CellSizes s = check_cell_forward_args(kGruBackwardOp, kGruGates, input, hx, std::nullopt,
                                              w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t B = s.batch, H = s.hidden, G = kGruGates;
  check_saved(kGruBackwardOp, "grad_hy", grad_hy, {B, H}, input);
  check_ln_parameter(kGruBackwardOp, "ln_ih_weight", ln_ih_weight, G * H, input);
  check_ln_parameter(kGruBackwardOp, "ln_hh_weight", ln_hh_weight, G * H, input);
  const Tensor like_saved = at::empty({0}, input.options().dtype(saved_dtype(input)));
  check_saved(kGruBackwardOp, "saved", saved, {B, gru_saved_columns(H)}, like_saved);

  const Tensor saved_c = saved.contiguous(), gh_c = grad_hy.contiguous();
  const Tensor h_prev = hx.contiguous();
  const Tensor wi = ln_ih_weight.contiguous(), wh = ln_hh_weight.contiguous();
  // The two sides' gradients after LN (for the biases and the LN parameters) and the raw
  // products', in the saved (op-math) type.
  Tensor grad_gx = at::empty({B, G * H}, like_saved.options());
  Tensor grad_gh = at::empty({B, G * H}, like_saved.options());
  Tensor grad_x_proj = at::empty({B, G * H}, like_saved.options());
  Tensor grad_h_proj = at::empty({B, G * H}, like_saved.options());
  Tensor grad_h_direct = at::empty({B, H}, input.options());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "layernorm_gru_cell_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* saved_p = saved_c.data_ptr<acc_t>();
    const scalar_t *dh_p = gh_c.data_ptr<scalar_t>(), *h_p = h_prev.data_ptr<scalar_t>();
    const scalar_t *wi_p = wi.data_ptr<scalar_t>(), *wh_p = wh.data_ptr<scalar_t>();
    acc_t *dgx_p = grad_gx.data_ptr<acc_t>(), *dgh_p = grad_gh.data_ptr<acc_t>();
    acc_t *dx_p = grad_x_proj.data_ptr<acc_t>(), *dhp_p = grad_h_proj.data_ptr<acc_t>();
    scalar_t* direct_p = grad_h_direct.data_ptr<scalar_t>();
    const int64_t columns = gru_saved_columns(H);
    over_rows(B, 6 * G * H, [&](int64_t b) {
      const acc_t* row = saved_p + b * columns;
      const acc_t *x_hat_ih = row + kGruSaved * H, *x_hat_hh = x_hat_ih + G * H;
      const acc_t* rstd = row + kLayerNormGruSavedPerUnit * H;
      acc_t *dgx = dgx_p + b * G * H, *dgh = dgh_p + b * G * H;
      for (int64_t j = 0; j < H; ++j) {
        const auto d = gru_step_backward<acc_t>([&](int64_t k) { return row[k * H + j]; },
                                                acc_t(h_p[b * H + j]), acc_t(dh_p[b * H + j]));
        store_gru_gate_grads(
            d, [&](int64_t g, acc_t v) { dgx[g * H + j] = v; },
            [&](int64_t g, acc_t v) { dgh[g * H + j] = v; });
        direct_p[b * H + j] = static_cast<scalar_t>(d.h);
      }
      layer_norm_backward_row(G * H, dgx, x_hat_ih, rstd[0], wi_p, dx_p + b * G * H);
      layer_norm_backward_row(G * H, dgh, x_hat_hh, rstd[1], wh_p, dhp_p + b * G * H);
    });
  });
  const auto mask = [&](int k) { return output_mask[k]; };
  const ProductsInSavedType product(input);
  std::array<Tensor, 10> grads;
  if (mask(0)) grads[0] = product(grad_x_proj, w_ih);
  if (mask(1)) grads[1] = product(grad_h_proj, w_hh, grad_h_direct);
  if (mask(2)) grads[2] = product(grad_x_proj.t(), input);
  if (mask(3)) grads[3] = product(grad_h_proj.t(), hx);
  if (mask(4)) grads[4] = at::sum(grad_gx, 0).to(input.scalar_type());
  if (mask(5)) grads[5] = at::sum(grad_gh, 0).to(input.scalar_type());
  const auto block = [&](int64_t first) { return saved_c.narrow(1, first, G * H); };
  if (mask(6) || mask(7)) {
    std::tie(grads[6], grads[7]) = layer_norm_parameter_grads(grad_gx, block(kGruSaved * H), input);
  }
  if (mask(8) || mask(9)) {
    std::tie(grads[8], grads[9]) =
        layer_norm_parameter_grads(grad_gh, block((kGruSaved + G) * H), input);
  }
  for (int k = 6; k < 10; ++k) {
    if (!mask(k)) grads[k] = Tensor();
  }
  return as_tuple(grads);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("layernorm_lstm_cell", &layernorm_lstm_cell_cpu);
  m.impl("layernorm_lstm_cell_backward", &layernorm_lstm_cell_backward_cpu);
  m.impl("layernorm_gru_cell", &layernorm_gru_cell_cpu);
  m.impl("layernorm_gru_cell_backward", &layernorm_gru_cell_backward_cpu);
}

}  // namespace fused_rnn::cpu
