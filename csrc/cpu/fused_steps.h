// The fused steps of a sequence: the recurrent forward step (the hidden product and the gate
// math in registers, pointwise.h's RecurrentStep) and the backward step (BackwardStep).
// Compiled per instruction set: included only by pointwise_kernels.h (which see).
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY and include this through pointwise_kernels.h"
#endif

#include "gate_passes.h"
#include "tiled_product.h"

namespace fused_rnn::cpu::CPU_CAPABILITY {

// W_hh [G*H, K]: block b's panel holds the G gate rows of units b * kLanes onwards.
Tensor pack_recurrent_weight(const Tensor& w_hh, int64_t gates) {
  const int64_t H = w_hh.size(0) / gates;
  return pack_panels(w_hh, gates, (H + kLanes - 1) / kLanes,
                     [&](int64_t block, int64_t g) {
                       const int64_t j = block * kLanes;
                       return std::pair{g * H + j, std::min(kLanes, H - j)};
                     });
}

// Zoneout's weights of a step at unit u of its [B, H] grid (none: null).
inline ZoneoutUnits<float> zoneout_units(const RecurrentStep& s, int64_t u) {
  return ZoneoutUnits<float>{s.zoneout_h, s.zoneout_c}.at(u);
}

void lstm_forward_recurrent(const RecurrentStep& s, int64_t begin, int64_t end) {
  const int64_t H = s.hidden;
  for_each_panel_task<kLstmGates>(
      s.h_prev, s.rows, s.state, s.w_packed, begin, end,
      [&](int64_t b, int64_t block, const FloatVec(&a)[kLstmGates]) {
        const int64_t j = block * kLanes, n = std::min(kLanes, H - j), u = b * H + j;
        float* gates_row = s.gates ? s.gates + b * kLstmGates * H : nullptr;
        lstm_units(s.x ? s.bias : gates_row, gates_row, a, s.c_prev + u, s.c_out + u,
                   s.h_out + u, H, j, n, s.zoneout_h ? s.h_prev + u : nullptr,
                   zoneout_units(s, u));
      },
      s.x, s.input, s.w_ih_packed);
}

// The GRU step's update of row b, units of `block`, from its hidden-side products (acc_h, b_hh
// not included) and its input side: the gx row's, or where the step computed x @ W_ih^T itself,
// acc_x plus b_ih.
inline void gru_finish(const RecurrentStep& s, int64_t b, int64_t block,
                       const FloatVec (&acc_h)[kGruGates], const FloatVec* acc_x) {
  using L = Lanes<float>;
  const int64_t H = s.hidden, j = block * kLanes, n = std::min(kLanes, H - j);
  const float* x_side = acc_x ? s.bias : s.gates + b * kGruGates * H;
  FloatVec gx[kGruGates], gh[kGruGates];
  for (int64_t g = 0; g < kGruGates; ++g) {
    gx[g] = L::load(x_side + g * H + j, n);
    if (acc_x) gx[g] = gx[g] + acc_x[g];
    gh[g] = s.b_hh ? acc_h[g] + L::load(s.b_hh + g * H + j, n) : acc_h[g];
  }
  const int64_t u = b * H + j;
  gru_units<float>(gx, gh, s.h_prev + u, s.h_out + u, s.workspace + b * kGruSaved * H, H,
                   j, n, zoneout_units(s, u).h);
}

void gru_forward_recurrent(const RecurrentStep& s, int64_t begin, int64_t end) {
  if (!s.x) {
    for_each_panel_task<kGruGates>(
        s.h_prev, s.rows, s.state, s.w_packed, begin, end,
        [&](int64_t b, int64_t block, const FloatVec(&acc)[kGruGates]) {
          gru_finish(s, b, block, acc, nullptr);
        });
    return;
  }
  // With its input side: both products of a row in registers at once (kGruPacksWithInput packs
  // a row). The hidden side's r and z carry on as the input side's accumulators.
  for_each_task<kGruPacksWithInput>(s.rows, begin, end, [&](int64_t block, int64_t row0,
                                                             auto row_count) {
    constexpr int kRows = decltype(row_count)::value;
    const int64_t h_panel = block * s.state * kGruGates * kLanes;
    const int64_t x_panel = block * s.input * kGruGates * kLanes;
    FloatVec acc_h[kRows][kGruGates], acc_x[kRows][kGruGates];
    recurrent_product<kGruGates, kRows>(s.h_prev + row0 * s.state, s.w_packed + h_panel,
                                        s.state, acc_h);
    for (int r = 0; r < kRows; ++r) {
      acc_x[r][0] = acc_h[r][0];
      acc_x[r][1] = acc_h[r][1];
      acc_x[r][2] = FloatVec(0.0f);
      acc_h[r][0] = acc_h[r][1] = FloatVec(0.0f);
    }
    recurrent_product<kGruGates, kRows, true>(s.x + row0 * s.input, s.w_ih_packed + x_panel,
                                              s.input, acc_x);
    for (int r = 0; r < kRows; ++r) gru_finish(s, row0 + r, block, acc_h[r], acc_x[r]);
  });
}


// The backward sequence's step (pointwise.h, BackwardStep): the gate gradients of a task's
// units, the same units as its product's output columns (linear_tasks(rows, hidden)).
template <typename Units>
void for_each_task_pack(const BackwardStep& s, int64_t begin, int64_t end, const Units& units) {
  constexpr int64_t kBlockColumns = kLinearGroups * kLanes;
  for (int64_t task = begin; task < end; ++task) {
    const auto [block, row0, row_end] = panel_task<kLinearGroups>(task, s.rows);
    const int64_t j_end = std::min(s.hidden, (block + 1) * kBlockColumns);
    for (int64_t b = row0; b < row_end; ++b) {
      for (int64_t j = block * kBlockColumns; j < j_end; j += kLanes) {
        // The state's gradient from the later steps plus this step's output gradient.
        const int64_t u = b * s.hidden + j, n = std::min(kLanes, j_end - j);
        Lanes<float>::store(s.grad_h + u,
                            Lanes<float>::load(s.grad_h + u, n) +
                                Lanes<float>::load(s.grad_out + u, n),
                            n);
        units(b, j, n);
      }
    }
  }
}

// With zoneout the LSTM's gate gradients leave in grad_h the part going straight to the state
// before, which its product then adds to.
void lstm_backward_gates(const BackwardStep& s, int64_t begin, int64_t end) {
  for_each_task_pack(s, begin, end, [&](int64_t b, int64_t j, int64_t n) {
    lstm_backward_units<float>(s.grad_h, s.grad_c, s.saved, s.state_before, s.c_new,
                               s.grad_gates, s.grad_c, s.hidden, b, j, n,
                               {s.zoneout_h, s.zoneout_c}, s.grad_h);
  });
}

void gru_backward_gates(const BackwardStep& s, int64_t begin, int64_t end) {
  for_each_task_pack(s, begin, end, [&](int64_t b, int64_t j, int64_t n) {
    gru_backward_units<float>(s.grad_h, s.state_before, s.saved, s.grad_gates,
                              s.grad_hidden_gates, s.grad_h, s.hidden, b, j, n, s.zoneout_h);
  });
}

void lstm_backward_product(const BackwardStep& s, int64_t begin, int64_t end) {
  packed_product(s.grad_gates, s.rows, kLstmGates * s.hidden, s.w_packed, s.grad_h, s.hidden,
                 s.zoneout_h != nullptr, begin, end);
}

void gru_backward_product(const BackwardStep& s, int64_t begin, int64_t end) {
  packed_product(s.grad_hidden_gates, s.rows, kGruGates * s.hidden, s.w_packed, s.grad_h,
                 s.hidden, true, begin, end);
}

}  // namespace fused_rnn::cpu::CPU_CAPABILITY
