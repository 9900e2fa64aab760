// Gate math of the LSTM and GRU cells: the one source of truth for the CPU and CUDA paths.
//
// Every function is a template over the arithmetic type T so that the same formula runs on a
// float/double scalar (CUDA threads, CPU tails) and on an at::vec::Vectorized lane pack (the CPU
// fast path). Half and bfloat16 data are computed in float: callers convert on load and store.
// The only operations T needs are + - * / and MathOps<T>::exp / ::tanh; the CPU file adds the
// MathOps specialisation for Vectorized.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSED_RNN_HD __host__ __device__ __forceinline__
#else
#define FUSED_RNN_HD inline
#endif

namespace fused_rnn {

template <typename T>
struct MathOps;

template <>
struct MathOps<float> {
  static FUSED_RNN_HD float exp(float x) { return ::expf(x); }
  static FUSED_RNN_HD float tanh(float x) { return ::tanhf(x); }
};

template <>
struct MathOps<double> {
  static FUSED_RNN_HD double exp(double x) { return ::exp(x); }
  static FUSED_RNN_HD double tanh(double x) { return ::tanh(x); }
};

// sigmoid as torch.nn computes it, 1 / (1 + e^-x): saturates to exactly 0 and 1 and keeps NaN.
template <typename T>
FUSED_RNN_HD T sigmoid(T x) {
  return T(1.0f) / (T(1.0f) + MathOps<T>::exp(T(0.0f) - x));
}

template <typename T>
FUSED_RNN_HD T tanh_act(T x) {
  return MathOps<T>::tanh(x);
}

// Derivatives written in terms of the activation's output, which is what the forward saves.
template <typename T>
FUSED_RNN_HD T sigmoid_grad_from_output(T y) {
  return y * (T(1.0f) - y);
}

template <typename T>
FUSED_RNN_HD T tanh_grad_from_output(T y) {
  return T(1.0f) - y * y;
}

// ---------------------------------------------------------------------------------------------
// LSTM, gate order i, f, g, o (PyTorch's): kLstmGates blocks of H rows in W_ih, W_hh and the biases.
//   i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
//   c' = f * c + i * g,  h' = o * tanh(c')
// where each a_* is the full pre-activation (W_i* x + b_i* + W_h* h + b_h*).

constexpr int64_t kLstmGates = 4;

template <typename T>
struct LstmStep {
  T i, f, g, o;  // activated gates, saved for the backward
  T c_new, h_new;
};

// What an LSTM step saves for its backward, per row: kLstmSaved blocks of H values, [i | f | g | o]
// (the gate order of the pre-activations). store(k, value) writes block k of a unit's row;
// every device (and the composite form) writes and reads them through these two functions.
constexpr int64_t kLstmSaved = 4;

template <typename T, typename Store>
FUSED_RNN_HD void store_lstm_saved(const LstmStep<T>& s, const Store& store) {
  store(0, s.i);
  store(1, s.f);
  store(2, s.g);
  store(3, s.o);
}

// c' from the activated gates and c (the layers rebuild it so where zoneout overwrote it).
template <typename T>
FUSED_RNN_HD T lstm_new_cell_state(const T& i, const T& f, const T& g, const T& c) {
  return f * c + i * g;
}

template <typename T>
FUSED_RNN_HD LstmStep<T> lstm_step_forward(T a_i, T a_f, T a_g, T a_o, T c) {
  LstmStep<T> s;
  s.i = sigmoid(a_i);
  s.f = sigmoid(a_f);
  s.g = tanh_act(a_g);
  s.o = sigmoid(a_o);
  s.c_new = lstm_new_cell_state(s.i, s.f, s.g, c);
  s.h_new = s.o * tanh_act(s.c_new);
  return s;
}

template <typename T>
struct LstmStepGrad {
  T a_i, a_f, a_g, a_o;  // gradients of the gate pre-activations
  T c;                   // gradient of the previous cell state
};

// grad_h_new and grad_c_new are the incoming gradients of h' and c'; saved(k) reads block k of
// what store_lstm_saved wrote.
template <typename T, typename Load>
FUSED_RNN_HD LstmStepGrad<T> lstm_step_backward(const Load& saved, T c, T c_new, T grad_h_new,
                                                T grad_c_new) {
  const T i = saved(0), f = saved(1), g = saved(2), o = saved(3);
  const T tanh_c_new = tanh_act(c_new);
  const T grad_c_total = grad_c_new + grad_h_new * o * tanh_grad_from_output(tanh_c_new);
  LstmStepGrad<T> d;
  d.a_i = grad_c_total * g * sigmoid_grad_from_output(i);
  d.a_f = grad_c_total * c * sigmoid_grad_from_output(f);
  d.a_g = grad_c_total * i * tanh_grad_from_output(g);
  d.a_o = grad_h_new * tanh_c_new * sigmoid_grad_from_output(o);
  d.c = grad_c_total * f;
  return d;
}

// The gradients of the pre-activations, block g of a row of G*H: store(g, value).
template <typename T, typename Store>
FUSED_RNN_HD void store_lstm_gate_grads(const LstmStepGrad<T>& d, const Store& store) {
  store(0, d.a_i);
  store(1, d.a_f);
  store(2, d.a_g);
  store(3, d.a_o);
}

// ---------------------------------------------------------------------------------------------
// GRU, gate order r, z, n (PyTorch's variant, reset applied after the hidden product):
//   r = sigmoid(x_r + h_r), z = sigmoid(x_z + h_z), n = tanh(x_n + r * h_n)
//   h' = (1 - z) * n + z * h
// where x_* = W_i* x + b_i* and h_* = W_h* h + b_h* (biases included).

constexpr int64_t kGruGates = 3;

template <typename T>
struct GruStep {
  T r, z, n, h_n;  // activated gates and the hidden part of n, saved for the backward
  T h_new;
};

// What a GRU step saves for its backward, per row: kGruSaved blocks of H values, [r | z | n | h_n]
// (as store_lstm_saved for the LSTM).
constexpr int64_t kGruSaved = 4;

template <typename T, typename Store>
FUSED_RNN_HD void store_gru_saved(const GruStep<T>& s, const Store& store) {
  store(0, s.r);
  store(1, s.z);
  store(2, s.n);
  store(3, s.h_n);
}

template <typename T>
FUSED_RNN_HD GruStep<T> gru_step_forward(T x_r, T x_z, T x_n, T h_r, T h_z, T h_n, T h) {
  GruStep<T> s;
  s.r = sigmoid(x_r + h_r);
  s.z = sigmoid(x_z + h_z);
  s.h_n = h_n;
  s.n = tanh_act(x_n + s.r * h_n);
  s.h_new = (T(1.0f) - s.z) * s.n + s.z * h;
  return s;
}

template <typename T>
struct GruStepGrad {
  T a_r, a_z;  // gradients of the r and z pre-activations (shared by the input and hidden side)
  T x_n;       // gradient of x_n (input side of the n gate)
  T h_n;       // gradient of h_n (hidden side of the n gate): x_n's gradient times r
  T h;         // the direct part of the gradient of h (through z * h), before W_hh
};

template <typename T, typename Load>
FUSED_RNN_HD GruStepGrad<T> gru_step_backward(const Load& saved, T h, T grad_h_new) {
  const T r = saved(0), z = saved(1), n = saved(2), h_n = saved(3);
  const T grad_n = grad_h_new * (T(1.0f) - z);
  const T grad_z = grad_h_new * (h - n);
  GruStepGrad<T> d;
  d.x_n = grad_n * tanh_grad_from_output(n);
  d.h_n = d.x_n * r;
  d.a_r = d.x_n * h_n * sigmoid_grad_from_output(r);
  d.a_z = grad_z * sigmoid_grad_from_output(z);
  d.h = grad_h_new * z;
  return d;
}

// The gradients of the input-side and hidden-side pre-activations, block g of rows of G*H:
// store_input(g, value), store_hidden(g, value) (r and z share theirs).
template <typename T, typename StoreInput, typename StoreHidden>
FUSED_RNN_HD void store_gru_gate_grads(const GruStepGrad<T>& d, const StoreInput& store_input,
                                       const StoreHidden& store_hidden) {
  store_input(0, d.a_r);
  store_input(1, d.a_z);
  store_input(2, d.x_n);
  store_hidden(0, d.a_r);
  store_hidden(1, d.a_z);
  store_hidden(2, d.h_n);
}

// ---------------------------------------------------------------------------------------------
// Zoneout (Krueger et al. 2016), on a state a cell carries (h; the LSTM's c): the state after a
// step is weight * its new value + (1 - weight) * the state before, the weight per row and unit
// (0/1 draws of Bernoulli(1 - p) in training, 1 - p in evaluation); written so that it is exact
// where the weight is 0 or 1, and without constants (T may be a tensor: the composite form).
template <typename T>
FUSED_RNN_HD T zoneout(const T& before, const T& next, const T& weight) {
  return weight * next - (weight * before - before);
}

// Its backward: of the carried state's gradient, weight * it reaches the new value, the rest the
// state before directly.
template <typename T>
struct ZoneoutGrad {
  T next, before;
};
template <typename T>
FUSED_RNN_HD ZoneoutGrad<T> zoneout_backward(const T& grad, const T& weight) {
  const T next = weight * grad;
  return {next, grad - next};
}

}  // namespace fused_rnn
