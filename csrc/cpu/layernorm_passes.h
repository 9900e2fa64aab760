// The layer-normalized cells' passes over a step's rows (CellPointwise<LayerNormLstmCell> and
// <LayerNormGruCell>, pointwise.h), forward and backward, on lane packs: both layer norms, the
// gate math with this ISA's exp and tanh, LN_c. Each covers the rows [begin, end); values are
// computed, and saved, in the op-math type. Compiled per instruction set: included only by
// pointwise_kernels.h (which see).
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY and include this through pointwise_kernels.h"
#endif

#include "../layernorm_cell_ops.h"
#include "pointwise.h"
#include "vec_math.h"

#include <ATen/cpu/vec/functional.h>

namespace fused_rnn::cpu::CPU_CAPABILITY {

// A row of n values' mean and rstd, two passes (the deviations' squares, not the squares'
// difference, which loses digits); the tail past whole packs one value at a time.
template <typename acc_t>
RowStats<acc_t> row_stats(const acc_t* v, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const int64_t whole = n / W * W;
  Vec sums(acc_t(0));
  for (int64_t k = 0; k < whole; k += W) sums = sums + Vec::loadu(v + k);
  acc_t sum = at::vec::vec_reduce_all<acc_t>(std::plus<Vec>(), sums);
  for (int64_t k = whole; k < n; ++k) sum += v[k];
  const acc_t mean = sum / acc_t(n);
  Vec squares(acc_t(0));
  for (int64_t k = 0; k < whole; k += W) {
    const Vec d = Vec::loadu(v + k) - Vec(mean);
    squares = at::vec::fmadd(d, d, squares);
  }
  acc_t sum_squares = at::vec::vec_reduce_all<acc_t>(std::plus<Vec>(), squares);
  for (int64_t k = whole; k < n; ++k) sum_squares += (v[k] - mean) * (v[k] - mean);
  return {mean, rstd_from(sum_squares, n)};
}

// x_hat = (x - mean) * rstd over n values, and the row's stats.
template <typename acc_t>
RowStats<acc_t> normalize_row(const acc_t* x, acc_t* x_hat, int64_t n) {
  using L = Lanes<acc_t>;
  const RowStats<acc_t> s = row_stats(x, n);
  for (int64_t k = 0; k < n; k += L::kWidth) {
    const int64_t count = std::min(L::kWidth, n - k);
    L::store(x_hat + k, (L::load(x + k, count) - typename L::Vec(s.mean)) * typename L::Vec(s.rstd),
             count);
  }
  return s;
}

template <typename T>
const T* data_or_null(const OptionalTensor& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// LSTM. Saved row: [i f g o (4H) | x_hat_ih (4H) | x_hat_hh (4H) | c_hat (H) | rstd ih, hh, c].
// Norms: ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias.
void layernorm_lstm_forward(const StepTensors& t, const Tensor& h_proj, int64_t begin,
                            int64_t end) {
  const int64_t H = t.h_out.size(1), G = kLstmGates;
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.h_out.scalar_type(), "layernorm_lstm_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using LS = Lanes<scalar_t>;  // packs of the dtype's values, in acc_t
    using LA = Lanes<acc_t>;
    using Vec = typename LA::Vec;
    const acc_t *xp = t.input_side.data_ptr<acc_t>(), *hp = h_proj.data_ptr<acc_t>();
    const scalar_t* cp = t.c_prev.data_ptr<scalar_t>();
    const scalar_t *b_ih = data_or_null<scalar_t>(t.b_ih), *b_hh = data_or_null<scalar_t>(t.b_hh);
    const scalar_t *wi = t.norms[0].data_ptr<scalar_t>(), *bi = t.norms[1].data_ptr<scalar_t>();
    const scalar_t *wh = t.norms[2].data_ptr<scalar_t>(), *bh = t.norms[3].data_ptr<scalar_t>();
    const scalar_t *wc = t.norms[4].data_ptr<scalar_t>(), *bc = t.norms[5].data_ptr<scalar_t>();
    scalar_t *hy = t.h_out.data_ptr<scalar_t>(), *cy = t.c_out.data_ptr<scalar_t>();
    acc_t* saved = t.saved.data_ptr<acc_t>();
    const int64_t columns = LayerNormLstmCell::saved_columns(H);
    const auto zone = zoneout_units<scalar_t>(t.zoneout_h, t.zoneout_c);
    const scalar_t* hp_prev = zone.h ? t.h_prev.data_ptr<scalar_t>() : nullptr;  // [B, H]
    for (int64_t b = begin; b < end; ++b) {
      acc_t* row = saved + b * columns;
      acc_t *gates = row, *x_hat_ih = row + G * H, *x_hat_hh = row + 2 * G * H;
      acc_t* c_hat = row + 3 * G * H;
      acc_t* rstd = row + kLayerNormLstmSavedPerUnit * H;
      const RowStats<acc_t> ih = normalize_row(xp + b * G * H, x_hat_ih, G * H);
      const RowStats<acc_t> hh = normalize_row(hp + b * G * H, x_hat_hh, G * H);
      for (int64_t j = 0; j < H; j += LA::kWidth) {
        const int64_t n = std::min(LA::kWidth, H - j);
        Vec a[kLstmGates];
        for (int64_t g = 0; g < G; ++g) {
          const int64_t k = g * H + j;
          a[g] = LA::load(x_hat_ih + k, n) * LS::load(wi + k, n) + LS::load(bi + k, n) +
                 LA::load(x_hat_hh + k, n) * LS::load(wh + k, n) + LS::load(bh + k, n);
          if (b_ih) a[g] = a[g] + LS::load(b_ih + k, n);
          if (b_hh) a[g] = a[g] + LS::load(b_hh + k, n);
        }
        const auto st = layernorm_lstm_gates(a[0], a[1], a[2], a[3], LS::load(cp + b * H + j, n));
        LA::store(gates + j, st.i, n);
        LA::store(gates + H + j, st.f, n);
        LA::store(gates + 2 * H + j, st.g, n);
        LA::store(gates + 3 * H + j, st.o, n);
        // The cell state carried on is the dtype's, as the plain LSTM's; LN_c reads it so
        // (c_hat holds c' until it is normalized below).
        LS::store(cy + b * H + j, st.c_new, n);
        LA::store(c_hat + j, LS::load(cy + b * H + j, n), n);
      }
      const RowStats<acc_t> c = normalize_row(c_hat, c_hat, H);
      for (int64_t j = 0; j < H; j += LA::kWidth) {
        const int64_t n = std::min(LA::kWidth, H - j);
        const Vec y = LA::load(c_hat + j, n) * LS::load(wc + j, n) + LS::load(bc + j, n);
        const int64_t u = b * H + j;
        const Vec h_new = layernorm_lstm_hidden(LA::load(gates + 3 * H + j, n), y);
        LS::store(hy + u, zone.h ? carried(h_new, hp_prev + u, zone.h + u, n) : h_new, n);
        // (cy holds c' until here.)
        if (zone.c) LS::store(cy + u, carried(LS::load(cy + u, n), cp + u, zone.c + u, n), n);
      }
      rstd[0] = ih.rstd;
      rstd[1] = hh.rstd;
      rstd[2] = c.rstd;
    }
  });
}

// GRU. Saved row: [r z n h_n (4H) | x_hat_ih (3H) | x_hat_hh (3H) | rstd ih, hh].
// Norms: ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias.
void layernorm_gru_forward(const StepTensors& t, const Tensor& h_proj, int64_t begin,
                           int64_t end) {
  const int64_t H = t.h_out.size(1), G = kGruGates;
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.h_out.scalar_type(), "layernorm_gru_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using LS = Lanes<scalar_t>;
    using LA = Lanes<acc_t>;
    using Vec = typename LA::Vec;
    const acc_t *xp = t.input_side.data_ptr<acc_t>(), *hp = h_proj.data_ptr<acc_t>();
    const scalar_t* h_p = t.h_prev.data_ptr<scalar_t>();
    const scalar_t *b_ih = data_or_null<scalar_t>(t.b_ih), *b_hh = data_or_null<scalar_t>(t.b_hh);
    const scalar_t *wi = t.norms[0].data_ptr<scalar_t>(), *bi = t.norms[1].data_ptr<scalar_t>();
    const scalar_t *wh = t.norms[2].data_ptr<scalar_t>(), *bh = t.norms[3].data_ptr<scalar_t>();
    scalar_t* hy = t.h_out.data_ptr<scalar_t>();
    acc_t* saved = t.saved.data_ptr<acc_t>();
    const int64_t columns = LayerNormGruCell::saved_columns(H);
    const auto zone = zoneout_units<scalar_t>(t.zoneout_h, Tensor());
    for (int64_t b = begin; b < end; ++b) {
      acc_t* row = saved + b * columns;
      acc_t *x_hat_ih = row + kGruSaved * H, *x_hat_hh = x_hat_ih + G * H;
      acc_t* rstd = row + kLayerNormGruSavedPerUnit * H;
      const RowStats<acc_t> ih = normalize_row(xp + b * G * H, x_hat_ih, G * H);
      const RowStats<acc_t> hh = normalize_row(hp + b * G * H, x_hat_hh, G * H);
      for (int64_t j = 0; j < H; j += LA::kWidth) {
        const int64_t n = std::min(LA::kWidth, H - j);
        Vec gx[kGruGates], gh[kGruGates];
        for (int64_t g = 0; g < G; ++g) {
          const int64_t k = g * H + j;
          gx[g] = LA::load(x_hat_ih + k, n) * LS::load(wi + k, n) + LS::load(bi + k, n);
          gh[g] = LA::load(x_hat_hh + k, n) * LS::load(wh + k, n) + LS::load(bh + k, n);
          if (b_ih) gx[g] = gx[g] + LS::load(b_ih + k, n);
          if (b_hh) gh[g] = gh[g] + LS::load(b_hh + k, n);
        }
        const auto st = gru_step_forward(gx[0], gx[1], gx[2], gh[0], gh[1], gh[2],
                                         LS::load(h_p + b * H + j, n));
        store_gru_saved(st, [&](int64_t k, const Vec& v) { LA::store(row + k * H + j, v, n); });
        const int64_t u = b * H + j;
        LS::store(hy + u, carried(st.h_new, h_p + u, zone.at(u).h, n), n);
      }
      rstd[0] = ih.rstd;
      rstd[1] = hh.rstd;
    }
  });
}

// The LN backward of one side of a row: from the pre-activations' gradient d (as LN's output
// gradient) and the side's x_hat, rstd and LN weight, writes the raw product's gradient.
template <typename acc_t, typename scalar_t>
void layer_norm_backward_row(int64_t n, const acc_t* d, const acc_t* x_hat, acc_t rstd,
                             const scalar_t* weight, acc_t* grad_raw) {
  using LS = Lanes<scalar_t>;
  using LA = Lanes<acc_t>;
  using Vec = typename LA::Vec;
  // Partial packs load zeros past n, which add nothing to the sums.
  Vec sums(acc_t(0)), sums_x_hat(acc_t(0));
  for (int64_t k = 0; k < n; k += LA::kWidth) {
    const int64_t count = std::min(LA::kWidth, n - k);
    const Vec dx_hat = LA::load(d + k, count) * LS::load(weight + k, count);
    sums = sums + dx_hat;
    sums_x_hat = at::vec::fmadd(dx_hat, LA::load(x_hat + k, count), sums_x_hat);
  }
  const Vec mean(at::vec::vec_reduce_all<acc_t>(std::plus<Vec>(), sums) / acc_t(n));
  const Vec mean_x_hat(at::vec::vec_reduce_all<acc_t>(std::plus<Vec>(), sums_x_hat) / acc_t(n));
  for (int64_t k = 0; k < n; k += LA::kWidth) {
    const int64_t count = std::min(LA::kWidth, n - k);
    LA::store(grad_raw + k,
              layer_norm_input_grad(LA::load(d + k, count) * LS::load(weight + k, count),
                                    LA::load(x_hat + k, count), Vec(rstd), mean, mean_x_hat),
              count);
  }
}

void layernorm_lstm_backward(const GateGradTensors& t, int64_t begin, int64_t end) {
  const int64_t H = t.grad_h.size(1), G = kLstmGates;
  const Tensor wi = t.norms[0].contiguous(), wh = t.norms[2].contiguous();
  const Tensor wc = t.norms[4].contiguous(), bc = t.norms[5].contiguous();
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.grad_h.scalar_type(), "layernorm_lstm_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using LS = Lanes<scalar_t>;
    using LA = Lanes<acc_t>;
    using Vec = typename LA::Vec;
    const acc_t* saved = t.saved.data_ptr<acc_t>();
    const scalar_t *dh = t.grad_h.data_ptr<scalar_t>(), *dc = t.grad_c.data_ptr<scalar_t>();
    const scalar_t* cp = t.c_prev.data_ptr<scalar_t>();
    const scalar_t *wi_p = wi.data_ptr<scalar_t>(), *wh_p = wh.data_ptr<scalar_t>();
    const scalar_t *wc_p = wc.data_ptr<scalar_t>(), *bc_p = bc.data_ptr<scalar_t>();
    acc_t* pre = t.grad_pre.data_ptr<acc_t>();
    acc_t *dx = t.grad_input_gates.data_ptr<acc_t>(), *dhp = t.grad_hidden_gates.data_ptr<acc_t>();
    scalar_t* dc_prev = t.grad_c_prev.data_ptr<scalar_t>();
    const int64_t columns = LayerNormLstmCell::saved_columns(H);
    const auto zone = zoneout_units<scalar_t>(t.zoneout_h, t.zoneout_c);
    scalar_t* direct = zone.h ? t.grad_h_direct.data_ptr<scalar_t>() : nullptr;
    // The gradients of a step's new h and c from the carried states' (zoneout: their share).
    const auto new_state_grad = [&](const scalar_t* grad, const scalar_t* weights, int64_t u,
                                    int64_t n) {
      ZoneoutGrad<Vec> d{LS::load(grad + u, n), Vec(acc_t(0))};
      if (weights) d = zoneout_backward(d.next, LS::load(weights + u, n));
      return d;
    };
    for (int64_t b = begin; b < end; ++b) {
      const acc_t* row = saved + b * columns;
      const acc_t *gates = row, *x_hat_ih = row + G * H, *x_hat_hh = row + 2 * G * H;
      const acc_t* c_hat = row + 3 * G * H;
      const acc_t* rstd = row + kLayerNormLstmSavedPerUnit * H;
      acc_t* d = pre + b * (G + 1) * H;
      acc_t* dy = d + G * H;
      // Through h' = o tanh(LN_c(c')): a_o's gradient and LN_c's output gradient (partial
      // packs load zeros past H, which add nothing to the sums).
      Vec sums(acc_t(0)), sums_c_hat(acc_t(0));
      for (int64_t j = 0; j < H; j += LA::kWidth) {
        const int64_t n = std::min(LA::kWidth, H - j);
        const Vec w = LS::load(wc_p + j, n), c_hat_j = LA::load(c_hat + j, n);
        const Vec y = c_hat_j * w + LS::load(bc_p + j, n);
        // grad_h_direct may be grad_h: these entries are read before they are written.
        const auto grad_h = new_state_grad(dh, zone.h, b * H + j, n);
        if (direct) LS::store(direct + b * H + j, grad_h.before, n);
        const auto out =
            layernorm_lstm_output_grad(LA::load(gates + 3 * H + j, n), y, grad_h.next);
        LA::store(dy + j, out.y, n);
        LA::store(d + 3 * H + j, out.a_o, n);
        const Vec dx_hat = out.y * w;
        sums = sums + dx_hat;
        sums_c_hat = at::vec::fmadd(dx_hat, c_hat_j, sums_c_hat);
      }
      const Vec mean(at::vec::vec_reduce_all<acc_t>(std::plus<Vec>(), sums) / acc_t(H));
      const Vec mean_c_hat(at::vec::vec_reduce_all<acc_t>(std::plus<Vec>(), sums_c_hat) /
                           acc_t(H));
      for (int64_t j = 0; j < H; j += LA::kWidth) {
        const int64_t n = std::min(LA::kWidth, H - j);
        // grad_c_prev may be grad_c: these entries are read before they are written.
        const auto carried_c = new_state_grad(dc, zone.c, b * H + j, n);
        const Vec grad_c =
            carried_c.next +
            layer_norm_input_grad(LA::load(dy + j, n) * LS::load(wc_p + j, n),
                                  LA::load(c_hat + j, n), Vec(rstd[2]), mean, mean_c_hat);
        const auto g = layernorm_lstm_cell_grad(LA::load(gates + j, n), LA::load(gates + H + j, n),
                                                LA::load(gates + 2 * H + j, n),
                                                LS::load(cp + b * H + j, n), grad_c);
        LA::store(d + j, g.a_i, n);
        LA::store(d + H + j, g.a_f, n);
        LA::store(d + 2 * H + j, g.a_g, n);
        LS::store(dc_prev + b * H + j, g.c + carried_c.before, n);
      }
      layer_norm_backward_row(G * H, d, x_hat_ih, rstd[0], wi_p, dx + b * G * H);
      layer_norm_backward_row(G * H, d, x_hat_hh, rstd[1], wh_p, dhp + b * G * H);
    }
  });
}

void layernorm_gru_backward(const GateGradTensors& t, int64_t begin, int64_t end) {
  const int64_t H = t.grad_h.size(1), G = kGruGates;
  const Tensor wi = t.norms[0].contiguous(), wh = t.norms[2].contiguous();
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.grad_h.scalar_type(), "layernorm_gru_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using LS = Lanes<scalar_t>;
    using LA = Lanes<acc_t>;
    using Vec = typename LA::Vec;
    const acc_t* saved = t.saved.data_ptr<acc_t>();
    const scalar_t *dh = t.grad_h.data_ptr<scalar_t>(), *h_p = t.h_prev.data_ptr<scalar_t>();
    const scalar_t *wi_p = wi.data_ptr<scalar_t>(), *wh_p = wh.data_ptr<scalar_t>();
    acc_t* pre = t.grad_pre.data_ptr<acc_t>();
    acc_t *dx = t.grad_input_gates.data_ptr<acc_t>(), *dhp = t.grad_hidden_gates.data_ptr<acc_t>();
    scalar_t* direct = t.grad_h_direct.data_ptr<scalar_t>();
    const int64_t columns = LayerNormGruCell::saved_columns(H);
    const scalar_t* zoneout_h = zoneout_units<scalar_t>(t.zoneout_h, Tensor()).h;
    for (int64_t b = begin; b < end; ++b) {
      const acc_t* row = saved + b * columns;
      const acc_t *x_hat_ih = row + kGruSaved * H, *x_hat_hh = x_hat_ih + G * H;
      const acc_t* rstd = row + kLayerNormGruSavedPerUnit * H;
      acc_t *dgx = pre + b * 2 * G * H, *dgh = dgx + G * H;
      for (int64_t j = 0; j < H; j += LA::kWidth) {
        const int64_t n = std::min(LA::kWidth, H - j);
        // grad_h_direct may be grad_h: these entries are read before they are written.
        // (Zoneout: the new h's share of the carried state's gradient, the rest straight to the
        // one before.)
        const int64_t u = b * H + j;
        ZoneoutGrad<Vec> grad_h{LS::load(dh + u, n), Vec(acc_t(0))};
        if (zoneout_h) grad_h = zoneout_backward(grad_h.next, LS::load(zoneout_h + u, n));
        const auto d = gru_step_backward<Vec>(
            [&](int64_t k) { return LA::load(row + k * H + j, n); }, LS::load(h_p + u, n),
            grad_h.next);
        store_gru_gate_grads(
            d, [&](int64_t g, const Vec& v) { LA::store(dgx + g * H + j, v, n); },
            [&](int64_t g, const Vec& v) { LA::store(dgh + g * H + j, v, n); });
        LS::store(direct + u, d.h + grad_h.before, n);
      }
      layer_norm_backward_row(G * H, dgx, x_hat_ih, rstd[0], wi_p, dx + b * G * H);
      layer_norm_backward_row(G * H, dgh, x_hat_hh, rstd[1], wh_p, dhp + b * G * H);
    }
  });
}

}  // namespace fused_rnn::cpu::CPU_CAPABILITY
