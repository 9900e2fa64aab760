// What the persistent kernels (persistent_layer.cu: SIMT; persistent_tensor_core.cuh: tensor
// cores) share: the sequence's tensors as pointers, and how a step of each cell finishes one
// (row, unit) pair from its hidden-side sums with the gate math of cell_math.h. The results, saved
// tensors included, are those of the step-wise path, so the backward is unchanged. The backward's
// likewise (persistent_tensor_core_backward.cuh): the gate gradients of one (row, unit) pair of a
// step from the gradient of its h, written as the step-wise backward writes them.
#pragma once

#include "../cell_math.h"

#include <cstdint>

namespace fused_rnn::cuda {

// Every tensor is contiguous; t indexes steps in sequence order (the reverse direction walks them
// backwards, its "previous" step being t + 1).
template <typename scalar_t>
struct SequenceParams {
  scalar_t* xproj;              // [T*B, G*H] input projection; the LSTM writes its gates here
  const scalar_t* h0;           // [B, H]
  const scalar_t* c0;           // [B, H] (LSTM)
  const scalar_t* w_hh;         // [G*H, H]
  const scalar_t* b_hh;         // [G*H] or null (GRU)
  scalar_t* output;             // [T*B, H]
  scalar_t* cell_states;        // [T*B, H] (LSTM)
  scalar_t* workspace;          // [T*B, 4H] (GRU), or [B, 4H] reused by every step
  bool workspace_per_step;
  int64_t steps, batch, hidden, units;
  bool reverse;
  const int* packed_steps;      // [steps][2] (first row, rows) in run order, or null (padded)
};

// Step i of the forward's run order: from the packed table where given (sequences of several
// lengths), else a padded batch's (t * batch onwards; the reverse direction runs t backwards).
struct RunStep {
  int64_t offset, rows;
};
__device__ __forceinline__ RunStep run_step(const int* packed_steps, int64_t i, int64_t steps,
                                            int64_t batch, bool reverse) {
  if (packed_steps) return {packed_steps[2 * i], packed_steps[2 * i + 1]};
  return {(reverse ? steps - 1 - i : i) * batch, batch};
}

// The backward's tensors (BackwardSequenceTensors), contiguous; rows t * batch + b.
template <typename scalar_t>
struct BackwardSequenceParams {
  const scalar_t* grad_output;  // [T*B, H]
  const scalar_t* saved;        // [T*B, S*H]
  const scalar_t* h_before;     // [T*B, H] (GRU)
  const scalar_t* c_before;     // [T*B, H] (LSTM)
  const scalar_t* cell_states;  // [T*B, H] (LSTM)
  const scalar_t* w_hh;         // [G*H, H]
  scalar_t* grad_h;             // [B, H]: in, the final h's gradient; out, the initial h's
  scalar_t* grad_c;             // [B, H] likewise (LSTM)
  scalar_t* grad_input_gates;   // [T*B, G*H] out; the LSTM's hidden side too
  scalar_t* grad_hidden_gates;  // [T*B, G*H] out (GRU)
  int64_t steps, batch, hidden;
  bool reverse;
  const int* packed_steps;      // as SequenceParams' (the forward's run order)
};

// What a (row, unit) pair's step reads that does not depend on the recurrence: the tensor-core
// kernels read it ahead, before they wait for the step's h (or gate gradients), so that the loads'
// latency passes during the wait instead of after it (NOTES entry 75). Forward: the input side
// of each gate (input_side); backward (Cell::BackwardInputs): the saved values and states, and
// h's gradient from the output.
template <int G, typename acc_t>
struct InputSide {
  acc_t x[G];
};
// Unit j's input side at packed row `row`: xproj's G values of it (each cell's gate order).
template <int G, typename acc_t, typename scalar_t>
__device__ InputSide<G, acc_t> input_side(const SequenceParams<scalar_t>& p, int64_t row,
                                          int64_t j) {
  const int64_t H = p.hidden;
  const scalar_t* x = p.xproj + row * G * H;
  InputSide<G, acc_t> in;
#pragma unroll
  for (int g = 0; g < G; ++g) in.x[g] = static_cast<acc_t>(x[g * H + j]);
  return in;
}

struct LstmSequence {
  static constexpr int kGates = kLstmGates;
  static constexpr bool kCarriesCell = true;
  // The LSTM update of unit j of packed row `row` (batch row b) from its input side (read by
  // input_side) and hidden side, whose previous h is h_prev; c is that unit's cell state,
  // carried on chip. Returns the new h as written to the output.
  template <typename scalar_t, typename acc_t>
  __device__ static scalar_t finish(const SequenceParams<scalar_t>& p, int64_t row, int64_t /*b*/,
                                    int64_t j, const InputSide<kGates, acc_t>& in,
                                    const acc_t (&hidden_side)[kGates], acc_t /*h_prev*/,
                                    acc_t& c) {
    const int64_t H = p.hidden;
    acc_t a[kGates];
#pragma unroll
    for (int g = 0; g < kGates; ++g) a[g] = in.x[g] + hidden_side[g];
    const auto s = lstm_step_forward<acc_t>(a[0], a[1], a[2], a[3], c);
    // The activations go over the input side, whose row this unit has read.
    scalar_t* gates = p.xproj + row * kGates * H;
    store_lstm_saved(s, [&](int64_t k, acc_t v) { gates[k * H + j] = static_cast<scalar_t>(v); });
    // Carry c as the step-wise path does: rounded to the dtype between steps.
    const scalar_t c_new = static_cast<scalar_t>(s.c_new);
    c = static_cast<acc_t>(c_new);
    p.cell_states[row * H + j] = c_new;
    const scalar_t h_new = static_cast<scalar_t>(s.h_new);
    p.output[row * H + j] = h_new;
    return h_new;
  }
  // The backward's reads of unit j at packed row `row`: the saved gates, c and c'.
  struct BackwardInputs {
    float saved[kLstmSaved];
    float c, c_new;
  };
  template <typename scalar_t>
  __device__ static BackwardInputs backward_inputs(const BackwardSequenceParams<scalar_t>& p,
                                                   int64_t row, int64_t j) {
    const int64_t H = p.hidden;
    const scalar_t* saved = p.saved + row * kLstmSaved * H;
    BackwardInputs in;
#pragma unroll
    for (int k = 0; k < kLstmSaved; ++k) in.saved[k] = static_cast<float>(saved[k * H + j]);
    in.c = static_cast<float>(p.c_before[row * H + j]);
    in.c_new = static_cast<float>(p.cell_states[row * H + j]);
    return in;
  }
  // The gate gradients of unit j of packed row `row` from its backward inputs and grad_h, the
  // gradient of its h'; carried_c comes in as the gradient of c' and leaves as c's, carried_h
  // leaves as the part of h's gradient that does not go through W_hh (none).
  template <typename scalar_t>
  __device__ static void finish_backward(const BackwardSequenceParams<scalar_t>& p, int64_t row,
                                         int64_t j, const BackwardInputs& in, float grad_h,
                                         float& carried_h, float& carried_c) {
    const int64_t H = p.hidden;
    const auto d = lstm_step_backward<float>([&](int64_t k) { return in.saved[k]; }, in.c,
                                             in.c_new, grad_h, carried_c);
    scalar_t* grads = p.grad_input_gates + row * kGates * H;
    store_lstm_gate_grads(d,
                          [&](int64_t g, float v) { grads[g * H + j] = static_cast<scalar_t>(v); });
    carried_h = 0.0f;
    carried_c = d.c;
  }
};

struct GruSequence {
  static constexpr int kGates = kGruGates;
  static constexpr bool kCarriesCell = false;
  template <typename scalar_t, typename acc_t>
  __device__ static scalar_t finish(const SequenceParams<scalar_t>& p, int64_t row, int64_t b,
                                    int64_t j, const InputSide<kGates, acc_t>& in,
                                    const acc_t (&hidden_side)[kGates], acc_t h_prev,
                                    acc_t& /*c*/) {
    const int64_t H = p.hidden;
    acc_t gh[kGates];
#pragma unroll
    for (int g = 0; g < kGates; ++g) {
      gh[g] = hidden_side[g] + (p.b_hh ? static_cast<acc_t>(p.b_hh[g * H + j]) : acc_t(0));
    }
    const auto s =
        gru_step_forward<acc_t>(in.x[0], in.x[1], in.x[2], gh[0], gh[1], gh[2], h_prev);
    scalar_t* ws = p.workspace + (p.workspace_per_step ? row : b) * kGruSaved * H;
    store_gru_saved(s, [&](int64_t k, acc_t v) { ws[k * H + j] = static_cast<scalar_t>(v); });
    const scalar_t h_new = static_cast<scalar_t>(s.h_new);
    p.output[row * H + j] = h_new;
    return h_new;
  }
  // The backward's reads: the saved values and h before the step.
  struct BackwardInputs {
    float saved[kGruSaved];
    float h;
  };
  template <typename scalar_t>
  __device__ static BackwardInputs backward_inputs(const BackwardSequenceParams<scalar_t>& p,
                                                   int64_t row, int64_t j) {
    const int64_t H = p.hidden;
    const scalar_t* saved = p.saved + row * kGruSaved * H;
    BackwardInputs in;
#pragma unroll
    for (int k = 0; k < kGruSaved; ++k) in.saved[k] = static_cast<float>(saved[k * H + j]);
    in.h = static_cast<float>(p.h_before[row * H + j]);
    return in;
  }
  // As LstmSequence's: carried_h leaves as the part of h's gradient through z * h.
  template <typename scalar_t>
  __device__ static void finish_backward(const BackwardSequenceParams<scalar_t>& p, int64_t row,
                                         int64_t j, const BackwardInputs& in, float grad_h,
                                         float& carried_h, float& /*carried_c*/) {
    const int64_t H = p.hidden;
    const auto d = gru_step_backward<float>([&](int64_t k) { return in.saved[k]; }, in.h, grad_h);
    scalar_t* input_grads = p.grad_input_gates + row * kGates * H;
    scalar_t* hidden_grads = p.grad_hidden_gates + row * kGates * H;
    store_gru_gate_grads(
        d, [&](int64_t g, float v) { input_grads[g * H + j] = static_cast<scalar_t>(v); },
        [&](int64_t g, float v) { hidden_grads[g * H + j] = static_cast<scalar_t>(v); });
    carried_h = d.h;
  }
};

}  // namespace fused_rnn::cuda
