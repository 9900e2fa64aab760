// Gate math of the layer-normalized LSTM and GRU cells (Ba et al. 2016): the one source for every
// device, as cell_math.h is for the plain cells. Layer normalization's row reductions (a row's
// mean and reciprocal standard deviation, and the two sums its backward needs) are each device's
// own; everything per unit is here, as __host__ __device__ templates over the arithmetic type.
//
// LN(v; w, b) = (v - mean(v)) * rstd * w + b, rstd = 1 / sqrt(var(v) + kLayerNormEps), var
// biased, over a row: the G*H gate rows of one side (input, hidden) of a step, or the H units of
// the LSTM's cell state.
#pragma once

#include "cell_math.h"

namespace fused_rnn {

constexpr double kLayerNormEps = 1e-5;

// ---------------------------------------------------------------------------------------------
// Layer normalization.

// A row's statistics, from its sum and its sum of squared deviations over n values.
template <typename T>
struct RowStats {
  T mean, rstd;
};
FUSED_RNN_HD float reciprocal_sqrt(float x) { return 1.0f / ::sqrtf(x); }
FUSED_RNN_HD double reciprocal_sqrt(double x) { return 1.0 / ::sqrt(x); }
template <typename T>
FUSED_RNN_HD T rstd_from(T squared_deviations, int64_t n) {
  return reciprocal_sqrt(squared_deviations / T(n) + T(kLayerNormEps));
}

// The gradient of LN's input from the gradient of its normalized value (dx_hat = dy * w), where
// mean_dx_hat and mean_dx_hat_x_hat are the row's means of dx_hat and of dx_hat * x_hat.
template <typename T>
FUSED_RNN_HD T layer_norm_input_grad(T dx_hat, T x_hat, T rstd, T mean_dx_hat,
                                     T mean_dx_hat_x_hat) {
  return rstd * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat);
}

// ---------------------------------------------------------------------------------------------
// The layer-normalized LSTM, gate order i, f, g, o:
//   a = LN_ih(x W_ih^T) + LN_hh(h W_hh^T) + b_ih + b_hh
//   c' = sigmoid(a_f) c + sigmoid(a_i) tanh(a_g),  h' = sigmoid(a_o) tanh(LN_c(c'))
// A step saves, per row: the activated gates [i | f | g | o], the normalized input and hidden
// products x_hat_ih, x_hat_hh [4H each], the normalized cell state c_hat [H], and the three rows'
// rstd (the saved row's last three values).

constexpr int64_t kLayerNormLstmSavedPerUnit = 4 + 4 + 4 + 1;
constexpr int64_t kLayerNormLstmSavedPerRow = 3;

template <typename T>
struct LayerNormLstmGates {
  T i, f, g, o, c_new;
};

// From the pre-activations (both sides normalized, the biases added) and the previous cell
// state.
template <typename T>
FUSED_RNN_HD LayerNormLstmGates<T> layernorm_lstm_gates(T a_i, T a_f, T a_g, T a_o, T c) {
  LayerNormLstmGates<T> s;
  s.i = sigmoid(a_i);
  s.f = sigmoid(a_f);
  s.g = tanh_act(a_g);
  s.o = sigmoid(a_o);
  s.c_new = s.f * c + s.i * s.g;
  return s;
}

// h' from o and the normalized cell state's LN output y = c_hat * w + b.
template <typename T>
FUSED_RNN_HD T layernorm_lstm_hidden(T o, T y) {
  return o * tanh_act(y);
}

// The step's gradients through h' = o tanh(y): of y (LN_c's output) and of a_o.
template <typename T>
struct LayerNormLstmOutputGrad {
  T y, a_o;
};
template <typename T>
FUSED_RNN_HD LayerNormLstmOutputGrad<T> layernorm_lstm_output_grad(T o, T y, T grad_h) {
  const T t = tanh_act(y);
  return {grad_h * o * tanh_grad_from_output(t), grad_h * t * sigmoid_grad_from_output(o)};
}

// The gate pre-activations' gradients a_i, a_f, a_g (a_o's comes from the output) and the
// previous cell state's, from grad_c, the whole gradient of c' (its own and through LN_c).
template <typename T>
struct LayerNormLstmCellGrad {
  T a_i, a_f, a_g, c;
};
template <typename T>
FUSED_RNN_HD LayerNormLstmCellGrad<T> layernorm_lstm_cell_grad(T i, T f, T g, T c, T grad_c) {
  return {grad_c * g * sigmoid_grad_from_output(i), grad_c * c * sigmoid_grad_from_output(f),
          grad_c * i * tanh_grad_from_output(g), grad_c * f};
}

// ---------------------------------------------------------------------------------------------
// The layer-normalized GRU: gx = LN_ih(x W_ih^T) + b_ih, gh = LN_hh(h W_hh^T) + b_hh, then the
// GRU's gate math of cell_math.h on gx and gh (gru_step_forward / gru_step_backward). A step
// saves, per row: the GRU's [r | z | n | h_n] (h_n: gh's n part), x_hat_ih and x_hat_hh [3H each],
// and the two rows' rstd.

constexpr int64_t kLayerNormGruSavedPerUnit = 4 + 3 + 3;
constexpr int64_t kLayerNormGruSavedPerRow = 2;

}  // namespace fused_rnn
