// The gate passes: the LSTM's and GRU's forward and backward over the units of a step, with the
// products done (the cell math of cell_math.h on lane packs).
// Compiled per instruction set: included only by pointwise_kernels.h (which see).
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY and include this through pointwise_kernels.h"
#endif

#include "../cell_ops.h"
#include "pointwise.h"
#include "vec_math.h"

namespace fused_rnn::cpu::CPU_CAPABILITY {

// Zoneout's weights of a step's new h and c ([B, H] like h_out, from the first unit or from a
// given one), or null where the layer has none.
template <typename scalar_t>
struct ZoneoutUnits {
  const scalar_t *h = nullptr, *c = nullptr;
  ZoneoutUnits at(int64_t u) const { return {h ? h + u : nullptr, c ? c + u : nullptr}; }
};

// A step's (StepTensors::zoneout_h, zoneout_c; GateGradTensors').
template <typename scalar_t>
ZoneoutUnits<scalar_t> zoneout_units(const Tensor& h, const Tensor& c) {
  return {h.defined() ? h.data_ptr<scalar_t>() : nullptr,
          c.defined() ? c.data_ptr<scalar_t>() : nullptr};
}

// The state a step carries on: its new value, or zoneout's blend of it with `before` (cell_math.h)
// where `weights` is not null (all at the row's unit).
template <typename scalar_t, typename Vec>
inline Vec carried(const Vec& next, const scalar_t* before, const scalar_t* weights, int64_t n) {
  using L = Lanes<scalar_t>;
  return weights ? zoneout(L::load(before, n), next, L::load(weights, n)) : next;
}

// The LSTM update of the n units j.. of one row, from a_h, their hidden-side pre-activations, and
// input_row, the row's input side ([4H], read at g * H + j: a row of the input projection, or the
// biases where the step computed x @ W_ih^T into a_h): the activated gates go to gates_row (which
// may be input_row) where it is not null; c and h point at the row's unit j, as h_prev (read
// with zoneout only) and zoneout's weights.
template <typename scalar_t, typename Vec>
inline void lstm_units(const scalar_t* input_row, scalar_t* gates_row,
                       const Vec (&a_h)[kLstmGates], const scalar_t* c_prev, scalar_t* c_out,
                       scalar_t* h_out, int64_t H, int64_t j, int64_t n,
                       const scalar_t* h_prev = nullptr, ZoneoutUnits<scalar_t> zone = {}) {
  using L = Lanes<scalar_t>;
  Vec a[kLstmGates];
  for (int64_t g = 0; g < kLstmGates; ++g) a[g] = L::load(input_row + g * H + j, n) + a_h[g];
  const auto s = lstm_step_forward(a[0], a[1], a[2], a[3], L::load(c_prev, n));
  L::store(c_out, carried(s.c_new, c_prev, zone.c, n), n);
  L::store(h_out, carried(s.h_new, h_prev, zone.h, n), n);
  if (!gates_row) return;
  store_lstm_saved(s, [&](int64_t k, const Vec& v) { L::store(gates_row + k * H + j, v, n); });
}

// The LSTM's activations go over its input side (t.saved is t.input_side).
void lstm_forward(const StepTensors& t, const Tensor& gates_h, int64_t begin, int64_t end) {
  const Tensor &gates = t.input_side, &c_prev = t.c_prev, &h_out = t.h_out, &c_out = t.c_out;
  const int64_t H = c_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(c_prev.scalar_type(), "lstm_forward_cpu", [&] {
    using L = Lanes<scalar_t>;
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    const scalar_t* gates_h_p = gates_h.data_ptr<scalar_t>();
    const scalar_t* c_p = c_prev.data_ptr<scalar_t>();
    scalar_t* h_out_p = h_out.data_ptr<scalar_t>();
    scalar_t* c_out_p = c_out.data_ptr<scalar_t>();
    const auto zone = zoneout_units<scalar_t>(t.zoneout_h, t.zoneout_c);
    const scalar_t* h_p = zone.h ? t.h_prev.data_ptr<scalar_t>() : nullptr;  // [B, H] then
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      const scalar_t* hrow = gates_h_p + b * kLstmGates * H;
      typename L::Vec a_h[kLstmGates];
      for (int64_t g = 0; g < kLstmGates; ++g) a_h[g] = L::load(hrow + g * H + j, n);
      const int64_t u = b * H + j;
      scalar_t* row = gates_p + b * kLstmGates * H;
      lstm_units(row, row, a_h, c_p + u, c_out_p + u, h_out_p + u, H, j, n,
                 h_p ? h_p + u : nullptr, zone.at(u));
    });
  });
}

// The LSTM backward of the n units j.. of row b ([B, H] grids, [B, 4H] gate rows): writes their
// gate gradients and grad_c_prev, which may alias grad_c. With zoneout (weights of [B, H], as
// the forward's), grad_h and grad_c are the carried states' gradients, grad_h_direct (which may
// alias grad_h) receives the part of grad_h that goes straight to the state before, and c' is
// rebuilt from the gates and c_prev (c_new, the carried state where zone.c, is not read).
template <typename scalar_t>
inline void lstm_backward_units(const scalar_t* grad_h, const scalar_t* grad_c,
                                const scalar_t* gates, const scalar_t* c_prev,
                                const scalar_t* c_new, scalar_t* grad_gates,
                                scalar_t* grad_c_prev, int64_t H, int64_t b, int64_t j,
                                int64_t n, ZoneoutUnits<scalar_t> zone = {},
                                scalar_t* grad_h_direct = nullptr) {
  using L = Lanes<scalar_t>;
  using Vec = typename L::Vec;
  const scalar_t* row = gates + b * kLstmSaved * H;
  const int64_t u = b * H + j;
  ZoneoutGrad<Vec> dh{L::load(grad_h + u, n), Vec(0.0f)}, dc{L::load(grad_c + u, n), Vec(0.0f)};
  if (zone.h) dh = zoneout_backward(dh.next, L::load(zone.h + u, n));
  if (zone.c) dc = zoneout_backward(dc.next, L::load(zone.c + u, n));
  const auto gate = [&](int64_t k) { return L::load(row + k * H + j, n); };
  const Vec c = L::load(c_prev + u, n);
  const Vec c_out = zone.c ? lstm_new_cell_state(gate(0), gate(1), gate(2), c)
                           : L::load(c_new + u, n);
  const auto d = lstm_step_backward(gate, c, c_out, dh.next, dc.next);
  scalar_t* grow = grad_gates + b * kLstmGates * H;
  store_lstm_gate_grads(d, [&](int64_t g, const Vec& v) { L::store(grow + g * H + j, v, n); });
  L::store(grad_c_prev + u, zone.c ? d.c + dc.before : d.c, n);
  if (zone.h) L::store(grad_h_direct + u, dh.before, n);
}

void lstm_backward(const GateGradTensors& t, int64_t begin, int64_t end) {
  const Tensor &grad_h = t.grad_h, &grad_c = t.grad_c, &gates = t.saved, &c_prev = t.c_prev;
  const Tensor &c_new = t.c_out, &grad_gates = t.grad_input_gates, &grad_c_prev = t.grad_c_prev;
  const int64_t H = c_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(c_prev.scalar_type(), "lstm_backward_cpu", [&] {
    const auto zone = zoneout_units<scalar_t>(t.zoneout_h, t.zoneout_c);
    scalar_t* direct = zone.h ? t.grad_h_direct.data_ptr<scalar_t>() : nullptr;
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      lstm_backward_units(grad_h.data_ptr<scalar_t>(), grad_c.data_ptr<scalar_t>(),
                          gates.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(),
                          c_new.data_ptr<scalar_t>(), grad_gates.data_ptr<scalar_t>(),
                          grad_c_prev.data_ptr<scalar_t>(), H, b, j, n, zone, direct);
    });
  });
}

// The GRU update of the n units j.. of one row, from gx and gh, their input-side and hidden-side
// products (b_ih and b_hh included): writes h and the row's workspace. zoneout_h: zoneout's
// weights at the row's unit j, or null.
template <typename scalar_t, typename Vec>
inline void gru_units(const Vec (&gx)[kGruGates], const Vec (&gh)[kGruGates],
                      const scalar_t* h_prev, scalar_t* h_out, scalar_t* ws_row, int64_t H,
                      int64_t j, int64_t n, const scalar_t* zoneout_h = nullptr) {
  using L = Lanes<scalar_t>;
  const auto s = gru_step_forward(gx[0], gx[1], gx[2], gh[0], gh[1], gh[2], L::load(h_prev, n));
  store_gru_saved(s, [&](int64_t k, const Vec& v) { L::store(ws_row + k * H + j, v, n); });
  L::store(h_out, carried(s.h_new, h_prev, zoneout_h, n), n);
}

void gru_forward(const StepTensors& t, const Tensor& gh, int64_t begin, int64_t end) {
  const Tensor &gx = t.input_side, &h_prev = t.h_prev, &h_out = t.h_out, &workspace = t.saved;
  const int64_t H = h_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(h_prev.scalar_type(), "gru_forward_cpu", [&] {
    using L = Lanes<scalar_t>;
    const scalar_t* gx_p = gx.data_ptr<scalar_t>();
    const scalar_t* gh_p = gh.data_ptr<scalar_t>();
    const scalar_t* h_p = h_prev.data_ptr<scalar_t>();
    scalar_t* h_out_p = h_out.data_ptr<scalar_t>();
    scalar_t* ws_p = workspace.data_ptr<scalar_t>();
    const auto zone = zoneout_units<scalar_t>(t.zoneout_h, Tensor());
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      const scalar_t* xrow = gx_p + b * kGruGates * H;
      const scalar_t* hrow = gh_p + b * kGruGates * H;
      typename L::Vec a_x[kGruGates], a_h[kGruGates];
      for (int64_t g = 0; g < kGruGates; ++g) {
        a_x[g] = L::load(xrow + g * H + j, n);
        a_h[g] = L::load(hrow + g * H + j, n);
      }
      const int64_t u = b * H + j;
      gru_units(a_x, a_h, h_p + u, h_out_p + u, ws_p + b * kGruSaved * H, H, j, n,
                zone.at(u).h);
    });
  });
}

// The GRU backward of the n units j.. of row b ([B, H] grids, [B, 4H] workspace rows, [B, 3H]
// gate rows): writes their input-side and hidden-side gate gradients and the direct part of
// grad_h_prev, which may alias grad_h. With zoneout (weights of [B, H]), grad_h is the carried
// state's gradient and the direct part includes what goes straight to the state before.
template <typename scalar_t>
inline void gru_backward_units(const scalar_t* grad_h, const scalar_t* h_prev,
                               const scalar_t* workspace, scalar_t* grad_input_gates,
                               scalar_t* grad_hidden_gates, scalar_t* grad_h_direct, int64_t H,
                               int64_t b, int64_t j, int64_t n,
                               const scalar_t* zoneout_h = nullptr) {
  using L = Lanes<scalar_t>;
  using Vec = typename L::Vec;
  const scalar_t* ws = workspace + b * kGruSaved * H;
  const int64_t u = b * H + j;
  ZoneoutGrad<Vec> dh{L::load(grad_h + u, n), Vec(0.0f)};
  if (zoneout_h) dh = zoneout_backward(dh.next, L::load(zoneout_h + u, n));
  const auto d = gru_step_backward([&](int64_t k) { return L::load(ws + k * H + j, n); },
                                   L::load(h_prev + u, n), dh.next);
  scalar_t* gi = grad_input_gates + b * kGruGates * H;
  scalar_t* gh = grad_hidden_gates + b * kGruGates * H;
  store_gru_gate_grads(
      d, [&](int64_t g, const Vec& v) { L::store(gi + g * H + j, v, n); },
      [&](int64_t g, const Vec& v) { L::store(gh + g * H + j, v, n); });
  L::store(grad_h_direct + u, zoneout_h ? d.h + dh.before : d.h, n);
}

void gru_backward(const GateGradTensors& t, int64_t begin, int64_t end) {
  const Tensor &grad_h = t.grad_h, &h_prev = t.h_prev, &workspace = t.saved;
  const Tensor &grad_input_gates = t.grad_input_gates, &grad_hidden_gates = t.grad_hidden_gates;
  const Tensor& grad_h_direct = t.grad_h_direct;
  const int64_t H = h_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(h_prev.scalar_type(), "gru_backward_cpu", [&] {
    const auto zone = zoneout_units<scalar_t>(t.zoneout_h, Tensor());
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      gru_backward_units(grad_h.data_ptr<scalar_t>(), h_prev.data_ptr<scalar_t>(),
                         workspace.data_ptr<scalar_t>(), grad_input_gates.data_ptr<scalar_t>(),
                         grad_hidden_gates.data_ptr<scalar_t>(),
                         grad_h_direct.data_ptr<scalar_t>(), H, b, j, n, zone.h);
    });
  });
}

}  // namespace fused_rnn::cpu::CPU_CAPABILITY
