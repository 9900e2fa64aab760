// The step-wise layer loops (NOTES entries 64, 67): a layer's whole forward or backward as one
// host loop over raw pointers, each step a product and a pointwise launch, without the views and
// tensors the generic loop of layer_common.cpp makes for every step, whose host time paces the
// small layers. Written once over the operations they issue (Ops below): cells_cuda.cu runs them
// on a CUDA stream with cuBLAS, the CPU emulation (tests/emulator) with a plain product and the
// emulated kernels, so the loops' own source runs under the CPU tests.
//
// Ops, each issued in order (on CUDA: on the current stream):
//   copy(dst, src, count)                          count elements, device to device
//   product(M, N, K, a, a_t, lda, b, b_t, ldb, out, ldo, beta)
//       out [M, N] (rows ldo apart) = A [M, K] B [K, N] + beta out; A is a's rows (lda apart),
//       or with a_t the transpose of a [K, M]; B likewise
//   step_gates<Update>(p)                          step_gates_kernel over CellParams p
//   lstm_gate_grads(...), gru_gate_grads(...)      the gate-gradient kernels, their arguments
#pragma once

#include "../cell_ops.h"
#include "cell_kernels.cuh"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <vector>

namespace fused_rnn::cuda {

// The step's tensors as the kernels take them: the states and biases (cx, cy, the LSTM's;
// undefined for the GRU), the saved values, zoneout's weights (where defined); the products'
// operands are the caller's to fill. Every tensor is contiguous.
template <typename scalar_t>
CellParams<scalar_t> cell_params(const Tensor& hx, const Tensor& cx, const OptionalTensor& b_ih,
                                 const OptionalTensor& b_hh, const Tensor& hy, const Tensor& cy,
                                 const Tensor& saved, const Tensor& zoneout_h,
                                 const Tensor& zoneout_c) {
  CellParams<scalar_t> p{};
  p.hx = hx.data_ptr<scalar_t>();
  p.cx = data_or_null<scalar_t>(cx);
  p.b_ih = data_or_null<scalar_t>(b_ih);
  p.b_hh = data_or_null<scalar_t>(b_hh);
  p.hy = hy.data_ptr<scalar_t>();
  p.cy = cy.defined() ? cy.data_ptr<scalar_t>() : nullptr;
  p.saved = saved.data_ptr<scalar_t>();
  p.batch = hy.size(0);
  p.hidden = hy.size(1);
  p.state_size = hx.size(1);
  p.zoneout_h = data_or_null<scalar_t>(zoneout_h);
  p.zoneout_c = data_or_null<scalar_t>(zoneout_c);
  return p;
}

// Step i of a layer's steps in the order the forward runs them: packed[i], or for a padded
// batch (packed empty) the B rows of step i from the end where reverse.
inline SequenceStep run_order_step(const std::vector<SequenceStep>& packed, int64_t i,
                                   int64_t steps, int64_t B, bool reverse) {
  if (!packed.empty()) return packed[static_cast<size_t>(i)];
  return {(reverse ? steps - 1 - i : i) * B, B};
}

// The state [step.rows, X] a step starts from: the initial state's (init [B, X]) for the first
// step run; else the rows of states [N, X] of the step run before it, `before`, where it ran all
// of this step's; else (the batch grew: packed sequences in the reverse direction) those
// followed by the initial state's next rows, gathered into scratch [B, X].
template <typename scalar_t, typename Ops>
const scalar_t* state_before(const scalar_t* states, const scalar_t* init, scalar_t* scratch,
                             bool first, SequenceStep step, SequenceStep before, int64_t X,
                             const Ops& ops) {
  if (first) return init;
  const scalar_t* carried = states + before.offset * X;
  if (step.rows <= before.rows) return carried;
  ops.copy(scratch, carried, before.rows * X);
  ops.copy(scratch + before.rows * X, init + before.rows * X, (step.rows - before.rows) * X);
  return scratch;
}

// Whether stepwise_forward takes t: no episode starts, no zoneout (those take layer_common.cpp's
// loop), dense tensors, no projection, sizes within a product's.
inline bool stepwise_forward_applies(const SequenceTensors& t, int64_t G) {
  const int64_t B = t.h0.size(0), H = t.h0.size(1), N = t.input_side.size(0);
  const bool cell = t.cell_states.defined(), packed = !t.packed_steps.empty();
  const bool dense = t.input_side.is_contiguous() && t.h0.is_contiguous() &&
                     t.w_hh.is_contiguous() && t.output.is_contiguous() &&
                     t.saved.is_contiguous() && (!cell || t.c0.is_contiguous()) &&
                     (!cell || t.cell_states.is_contiguous());
  return t.starts.empty() && t.zoneout.empty() && B > 0 && H > 0 && (packed || N % B == 0) &&
         dense && t.output.size(1) == H && std::max(B, G * H) < (int64_t{1} << 31);
}

// A layer's step-wise forward (SequenceTensors, padded or packed; stepwise_forward_applies):
// per step, h_prev @ W_hh^T into one buffer, then step_gates over it and the step's input side.
template <typename Update, typename scalar_t, typename Ops>
void stepwise_forward(const SequenceTensors& t, const Ops& ops) {
  const int64_t B = t.h0.size(0), H = t.h0.size(1), N = t.input_side.size(0);
  constexpr int64_t G = Update::kGates;
  const bool cell = t.cell_states.defined(), packed = !t.packed_steps.empty();
  const int64_t steps = packed ? static_cast<int64_t>(t.packed_steps.size()) : N / B;
  const bool saved_per_step = t.saved.size(0) == N;
  const Tensor hidden = at::empty({B, G * H}, t.output.options());
  // Where a step's batch grows (packed, reverse), its states gathered (state_before).
  const Tensor h_scratch = packed ? at::empty_like(t.h0) : Tensor();
  const Tensor c_scratch = packed && cell ? at::empty_like(t.c0) : Tensor();
  const auto rows = [&](const Tensor& x, SequenceStep step) {
    return x.data_ptr<scalar_t>() + step.offset * x.size(1);
  };
  // (The sizes from h0; the batch, state and saved pointers are set for each step.)
  CellParams<scalar_t> p = cell_params<scalar_t>(t.h0, t.c0, std::nullopt, t.b_hh, t.h0, t.c0,
                                                 t.saved, Tensor(), Tensor());
  scalar_t* const product = hidden.data_ptr<scalar_t>();
  p.hproj = product;
  scalar_t* const h_gathered = h_scratch.defined() ? h_scratch.data_ptr<scalar_t>() : nullptr;
  scalar_t* const c_gathered = c_scratch.defined() ? c_scratch.data_ptr<scalar_t>() : nullptr;
  SequenceStep before{0, 0};
  for (int64_t i = 0; i < steps; ++i) {
    const SequenceStep step = run_order_step(t.packed_steps, i, steps, B, t.reverse);
    p.hx = state_before(t.output.data_ptr<scalar_t>(), t.h0.data_ptr<scalar_t>(), h_gathered,
                        i == 0, step, before, H, ops);
    if (cell) {
      p.cx = state_before(t.cell_states.data_ptr<scalar_t>(), t.c0.data_ptr<scalar_t>(),
                          c_gathered, i == 0, step, before, H, ops);
      p.cy = rows(t.cell_states, step);
    }
    before = step;
    if (step.rows == 0) continue;
    // h_prev [rows, H] @ W_hh^T, W_hh [G H, H] read transposed.
    ops.product(step.rows, G * H, H, p.hx, false, H, t.w_hh.data_ptr<scalar_t>(), true, H,
                product, G * H, 0);
    p.batch = step.rows;
    p.hy = rows(t.output, step);
    p.xproj = rows(t.input_side, step);
    p.saved = saved_per_step ? rows(t.saved, step) : t.saved.data_ptr<scalar_t>();
    ops.template step_gates<Update>(p);
  }
}

// Whether stepwise_backward takes t: no episode starts, no zoneout, dense tensors, sizes within
// a product's.
inline bool stepwise_backward_applies(const BackwardSequenceTensors& t, int64_t G) {
  const bool lstm = G == kLstmGates;
  const int64_t B = t.grad_h.size(0), H = t.grad_h.size(1), N = t.grad_output.size(0);
  const bool packed = !t.packed_steps.empty();
  const Tensor& state_before = lstm ? t.c_before : t.h_before;
  const auto dense = [](const Tensor& x) { return x.defined() && x.is_contiguous(); };
  const bool all_dense = dense(t.grad_output) && dense(t.saved) && dense(t.w_hh) &&
                         dense(t.grad_h) && dense(t.grad_input_gates) &&
                         dense(t.grad_hidden_gates) && dense(state_before) &&
                         (!lstm || (dense(t.cell_states) && dense(t.grad_c)));
  return t.starts.empty() && t.zoneout.empty() && B > 0 && H > 0 && (packed || N % B == 0) &&
         all_dense && t.grad_output.size(1) == H && std::max(B, G * H) < (int64_t{1} << 31);
}

// A layer's step-wise backward (BackwardSequenceTensors, padded or packed;
// stepwise_backward_applies): per step, last first, the gate-gradient launch (adding the step's
// output gradient itself) and the product carrying the state's gradient to the step before (the
// LSTM's written over it; the GRU's added to the direct part the launch wrote). A step's rows are
// the first of grad_h's (and grad_c's); the rows past them hold their final state's gradient
// until the step they ran last, or leave as the initial state's.
template <typename Update, typename scalar_t, typename Ops>
void stepwise_backward(const BackwardSequenceTensors& t, const Ops& ops) {
  constexpr bool kLstm = Update::kGates == kLstmGates;
  constexpr int64_t G = Update::kGates;
  const int64_t B = t.grad_h.size(0), H = t.grad_h.size(1), N = t.grad_output.size(0);
  const bool packed = !t.packed_steps.empty();
  const int64_t steps = packed ? static_cast<int64_t>(t.packed_steps.size()) : N / B;
  const auto rows = [&](const Tensor& x, SequenceStep step) {
    return x.data_ptr<scalar_t>() + step.offset * x.size(1);
  };
  scalar_t* const grad_h = t.grad_h.data_ptr<scalar_t>();
  for (int64_t i = steps - 1; i >= 0; --i) {  // (i: the forward's run order)
    const SequenceStep step = run_order_step(t.packed_steps, i, steps, B, t.reverse);
    if (step.rows == 0) continue;
    scalar_t* const hidden_grads = rows(t.grad_hidden_gates, step);
    if constexpr (kLstm) {
      scalar_t* const grad_c = t.grad_c.data_ptr<scalar_t>();
      ops.lstm_gate_grads(grad_h, rows(t.grad_output, step), grad_c, rows(t.saved, step),
                          rows(t.c_before, step), rows(t.cell_states, step), hidden_grads,
                          grad_c, static_cast<const scalar_t*>(nullptr),
                          static_cast<const scalar_t*>(nullptr), static_cast<scalar_t*>(nullptr),
                          step.rows, H);
    } else {
      ops.gru_gate_grads(grad_h, rows(t.grad_output, step), rows(t.h_before, step),
                         rows(t.saved, step), rows(t.grad_input_gates, step), hidden_grads,
                         grad_h, static_cast<const scalar_t*>(nullptr), step.rows, H);
    }
    // The step's hidden-side gate gradients [rows, G H] @ W_hh [G H, H].
    ops.product(step.rows, H, G * H, hidden_grads, false, G * H, t.w_hh.data_ptr<scalar_t>(),
                false, H, grad_h, H, kLstm ? 0 : 1);
  }
}

}  // namespace fused_rnn::cuda
