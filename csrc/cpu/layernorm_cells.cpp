// The layer-normalized LSTM's and GRU's CPU kernels (CellKernels, layernorm_cell_ops.h; math in
// layernorm_cell_math.h): a step is the hidden product (linear.h) and one pass per batch row that
// normalizes both products, runs the gate math and (LSTM) normalizes the new cell state, writing
// what the backward reads; its backward, one pass per row (the LN backward needs a row's sums).
// Rows run in parallel; values are computed, and saved, in the op-math type (float for the half
// types). The layer loops, BPTT and the cell ops are the shared ones.
#include "../layernorm_cell_ops.h"
#include "linear.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>

namespace fused_rnn::cpu {
namespace {

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

template <typename T>
const T* data_or_null(const OptionalTensor& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// The step's hidden product h_prev @ W_hh^T in the saved type (W_hh is in it already,
// prepare_recurrent having readied it), contiguous.
Tensor hidden_product(const StepTensors& t) {
  return linear_cpu(t.h_prev.to(t.saved.scalar_type()), t.w_hh, std::nullopt).contiguous();
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

Tensor prepare_recurrent_layernorm(const Tensor& w_hh, int64_t rows, int64_t uses) {
  return prepare_linear_cpu(w_hh, rows, uses);
}

// ---------------------------------------------------------------------------------------------
// LSTM. Saved row: [i f g o (4H) | x_hat_ih (4H) | x_hat_hh (4H) | c_hat (H) | rstd ih, hh, c].
// Norms: ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias.

void layernorm_lstm_step_cpu(const StepTensors& t) {
  const int64_t B = t.h_out.size(0), H = t.h_out.size(1), G = kLstmGates;
  const Tensor h_proj = hidden_product(t);
  std::array<Tensor, 6> norms;
  for (int k = 0; k < 6; ++k) norms[k] = t.norms[k].contiguous();
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.h_out.scalar_type(), "layernorm_lstm_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *xp = t.input_side.data_ptr<acc_t>(), *hp = h_proj.data_ptr<acc_t>();
    const scalar_t* cp = t.c_prev.data_ptr<scalar_t>();
    const scalar_t *b_ih = data_or_null<scalar_t>(t.b_ih), *b_hh = data_or_null<scalar_t>(t.b_hh);
    const scalar_t *wi = norms[0].data_ptr<scalar_t>(), *bi = norms[1].data_ptr<scalar_t>();
    const scalar_t *wh = norms[2].data_ptr<scalar_t>(), *bh = norms[3].data_ptr<scalar_t>();
    const scalar_t *wc = norms[4].data_ptr<scalar_t>(), *bc = norms[5].data_ptr<scalar_t>();
    scalar_t *hy = t.h_out.data_ptr<scalar_t>(), *cy = t.c_out.data_ptr<scalar_t>();
    acc_t* saved = t.saved.data_ptr<acc_t>();
    const int64_t columns = LayerNormLstmCell::saved_columns(H);
    over_rows(B, 4 * G * H, [&](int64_t b) {
      const acc_t *x = xp + b * G * H, *h = hp + b * G * H;
      acc_t* row = saved + b * columns;
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
        acc_t a = x_hat_ih[k] * acc_t(wi[k]) + acc_t(bi[k]) + x_hat_hh[k] * acc_t(wh[k]) +
                  acc_t(bh[k]);
        if (b_ih) a += acc_t(b_ih[k]);
        if (b_hh) a += acc_t(b_hh[k]);
        return a;
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
        cy[b * H + j] = static_cast<scalar_t>(st.c_new);
        c_new[j] = acc_t(cy[b * H + j]);
      }
      const auto c = row_stats<acc_t>(H, [&](int64_t j) { return c_new[j]; });
      for (int64_t j = 0; j < H; ++j) {
        c_hat[j] = (c_new[j] - c.mean) * c.rstd;
        const acc_t y = c_hat[j] * acc_t(wc[j]) + acc_t(bc[j]);
        hy[b * H + j] = static_cast<scalar_t>(layernorm_lstm_hidden(gates[3 * H + j], y));
      }
      rstd[0] = ih.rstd;
      rstd[1] = hh.rstd;
      rstd[2] = c.rstd;
    });
  });
}

// grad_pre rows: [the pre-activations' gradient (4H) | LN_c output's (H)].
void layernorm_lstm_gate_grads_cpu(const GateGradTensors& t) {
  const int64_t B = t.grad_h.size(0), H = t.grad_h.size(1), G = kLstmGates;
  const Tensor wi = t.norms[0].contiguous(), wh = t.norms[2].contiguous();
  const Tensor wc = t.norms[4].contiguous(), bc = t.norms[5].contiguous();
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.grad_h.scalar_type(), "layernorm_lstm_gate_grads_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* saved = t.saved.data_ptr<acc_t>();
    const scalar_t *dh = t.grad_h.data_ptr<scalar_t>(), *dc = t.grad_c.data_ptr<scalar_t>();
    const scalar_t* cp = t.c_prev.data_ptr<scalar_t>();
    const scalar_t *wi_p = wi.data_ptr<scalar_t>(), *wh_p = wh.data_ptr<scalar_t>();
    const scalar_t *wc_p = wc.data_ptr<scalar_t>(), *bc_p = bc.data_ptr<scalar_t>();
    acc_t* pre = t.grad_pre.data_ptr<acc_t>();
    acc_t *dx = t.grad_input_gates.data_ptr<acc_t>(), *dhp = t.grad_hidden_gates.data_ptr<acc_t>();
    scalar_t* dc_prev = t.grad_c_prev.data_ptr<scalar_t>();
    const int64_t columns = LayerNormLstmCell::saved_columns(H);
    over_rows(B, 6 * G * H, [&](int64_t b) {
      const acc_t* row = saved + b * columns;
      const acc_t *gates = row, *x_hat_ih = row + G * H, *x_hat_hh = row + 2 * G * H;
      const acc_t* c_hat = row + 3 * G * H;
      const acc_t* rstd = row + kLayerNormLstmSavedPerUnit * H;
      acc_t* d = pre + b * (G + 1) * H;
      acc_t* dy = d + G * H;
      // Through h' = o tanh(LN_c(c')): a_o's gradient and LN_c's output gradient.
      acc_t sum = 0, sum_c_hat = 0;
      for (int64_t j = 0; j < H; ++j) {
        const acc_t y = c_hat[j] * acc_t(wc_p[j]) + acc_t(bc_p[j]);
        const auto out = layernorm_lstm_output_grad(gates[3 * H + j], y, acc_t(dh[b * H + j]));
        dy[j] = out.y;
        d[3 * H + j] = out.a_o;
        const acc_t dx_hat = out.y * acc_t(wc_p[j]);
        sum += dx_hat;
        sum_c_hat += dx_hat * c_hat[j];
      }
      const acc_t mean = sum / acc_t(H), mean_c_hat = sum_c_hat / acc_t(H);
      for (int64_t j = 0; j < H; ++j) {
        // grad_c_prev may be grad_c: entry j is read before it is written.
        const acc_t grad_c =
            acc_t(dc[b * H + j]) + layer_norm_input_grad(dy[j] * acc_t(wc_p[j]), c_hat[j],
                                                         rstd[2], mean, mean_c_hat);
        const auto g = layernorm_lstm_cell_grad(gates[j], gates[H + j], gates[2 * H + j],
                                                acc_t(cp[b * H + j]), grad_c);
        d[j] = g.a_i;
        d[H + j] = g.a_f;
        d[2 * H + j] = g.a_g;
        dc_prev[b * H + j] = static_cast<scalar_t>(g.c);
      }
      layer_norm_backward_row(G * H, d, x_hat_ih, rstd[0], wi_p, dx + b * G * H);
      layer_norm_backward_row(G * H, d, x_hat_hh, rstd[1], wh_p, dhp + b * G * H);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// GRU. Saved row: [r z n h_n (4H) | x_hat_ih (3H) | x_hat_hh (3H) | rstd ih, hh].
// Norms: ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias.

void layernorm_gru_step_cpu(const StepTensors& t) {
  const int64_t B = t.h_out.size(0), H = t.h_out.size(1), G = kGruGates;
  const Tensor h_proj = hidden_product(t);
  std::array<Tensor, 4> norms;
  for (int k = 0; k < 4; ++k) norms[k] = t.norms[k].contiguous();
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.h_out.scalar_type(), "layernorm_gru_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *xp = t.input_side.data_ptr<acc_t>(), *hp = h_proj.data_ptr<acc_t>();
    const scalar_t* h_p = t.h_prev.data_ptr<scalar_t>();
    const scalar_t *b_ih = data_or_null<scalar_t>(t.b_ih), *b_hh = data_or_null<scalar_t>(t.b_hh);
    const scalar_t *wi = norms[0].data_ptr<scalar_t>(), *bi = norms[1].data_ptr<scalar_t>();
    const scalar_t *wh = norms[2].data_ptr<scalar_t>(), *bh = norms[3].data_ptr<scalar_t>();
    scalar_t* hy = t.h_out.data_ptr<scalar_t>();
    acc_t* saved = t.saved.data_ptr<acc_t>();
    const int64_t columns = LayerNormGruCell::saved_columns(H);
    over_rows(B, 4 * G * H, [&](int64_t b) {
      const acc_t *x = xp + b * G * H, *h = hp + b * G * H;
      acc_t* row = saved + b * columns;
      acc_t *x_hat_ih = row + kGruSaved * H, *x_hat_hh = x_hat_ih + G * H;
      acc_t* rstd = row + kLayerNormGruSavedPerUnit * H;
      const auto ih = row_stats<acc_t>(G * H, [&](int64_t k) { return x[k]; });
      const auto hh = row_stats<acc_t>(G * H, [&](int64_t k) { return h[k]; });
      for (int64_t k = 0; k < G * H; ++k) {
        x_hat_ih[k] = (x[k] - ih.mean) * ih.rstd;
        x_hat_hh[k] = (h[k] - hh.mean) * hh.rstd;
      }
      const auto gx = [&](int64_t k) {
        const acc_t v = x_hat_ih[k] * acc_t(wi[k]) + acc_t(bi[k]);
        return b_ih ? v + acc_t(b_ih[k]) : v;
      };
      const auto gh = [&](int64_t k) {
        const acc_t v = x_hat_hh[k] * acc_t(wh[k]) + acc_t(bh[k]);
        return b_hh ? v + acc_t(b_hh[k]) : v;
      };
      for (int64_t j = 0; j < H; ++j) {
        const auto st = gru_step_forward<acc_t>(gx(j), gx(H + j), gx(2 * H + j), gh(j),
                                                gh(H + j), gh(2 * H + j), acc_t(h_p[b * H + j]));
        store_gru_saved(st, [&](int64_t k, acc_t v) { row[k * H + j] = v; });
        hy[b * H + j] = static_cast<scalar_t>(st.h_new);
      }
      rstd[0] = ih.rstd;
      rstd[1] = hh.rstd;
    });
  });
}

// grad_pre rows: [the input side's gradient after LN (3H) | the hidden side's (3H)].
void layernorm_gru_gate_grads_cpu(const GateGradTensors& t) {
  const int64_t B = t.grad_h.size(0), H = t.grad_h.size(1), G = kGruGates;
  const Tensor wi = t.norms[0].contiguous(), wh = t.norms[2].contiguous();
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.grad_h.scalar_type(), "layernorm_gru_gate_grads_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* saved = t.saved.data_ptr<acc_t>();
    const scalar_t *dh = t.grad_h.data_ptr<scalar_t>(), *h_p = t.h_prev.data_ptr<scalar_t>();
    const scalar_t *wi_p = wi.data_ptr<scalar_t>(), *wh_p = wh.data_ptr<scalar_t>();
    acc_t* pre = t.grad_pre.data_ptr<acc_t>();
    acc_t *dx = t.grad_input_gates.data_ptr<acc_t>(), *dhp = t.grad_hidden_gates.data_ptr<acc_t>();
    scalar_t* direct = t.grad_h_direct.data_ptr<scalar_t>();
    const int64_t columns = LayerNormGruCell::saved_columns(H);
    over_rows(B, 6 * G * H, [&](int64_t b) {
      const acc_t* row = saved + b * columns;
      const acc_t *x_hat_ih = row + kGruSaved * H, *x_hat_hh = x_hat_ih + G * H;
      const acc_t* rstd = row + kLayerNormGruSavedPerUnit * H;
      acc_t *dgx = pre + b * 2 * G * H, *dgh = dgx + G * H;
      for (int64_t j = 0; j < H; ++j) {
        // grad_h_direct may be grad_h: entry j is read before it is written.
        const auto d = gru_step_backward<acc_t>([&](int64_t k) { return row[k * H + j]; },
                                                acc_t(h_p[b * H + j]), acc_t(dh[b * H + j]));
        store_gru_gate_grads(
            d, [&](int64_t g, acc_t v) { dgx[g * H + j] = v; },
            [&](int64_t g, acc_t v) { dgh[g * H + j] = v; });
        direct[b * H + j] = static_cast<scalar_t>(d.h);
      }
      layer_norm_backward_row(G * H, dgx, x_hat_ih, rstd[0], wi_p, dx + b * G * H);
      layer_norm_backward_row(G * H, dgh, x_hat_hh, rstd[1], wh_p, dhp + b * G * H);
    });
  });
}

// The layer-normalized cells' tables: no fused whole-sequence kernels (the steps' row-wise
// normalization needs each product's whole row).
constexpr CellKernels<LayerNormLstmCell> kCpuLayerNormLstm{
    .prepare_recurrent = &prepare_recurrent_layernorm,
    .step = &layernorm_lstm_step_cpu,
    .gate_grads = &layernorm_lstm_gate_grads_cpu,
    .sequence = nullptr,
    .sequence_from_input = nullptr,
    .backward_sequence = nullptr,
};

constexpr CellKernels<LayerNormGruCell> kCpuLayerNormGru{
    .prepare_recurrent = &prepare_recurrent_layernorm,
    .step = &layernorm_gru_step_cpu,
    .gate_grads = &layernorm_gru_gate_grads_cpu,
    .sequence = nullptr,
    .sequence_from_input = nullptr,
    .backward_sequence = nullptr,
};

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  impl_layernorm_lstm_ops<kCpuLinear, kCpuLayerNormLstm>(m);
  impl_layernorm_gru_ops<kCpuLinear, kCpuLayerNormGru>(m);
}

}  // namespace fused_rnn::cpu
