// The schemas of every fused_rnn op: the one TORCH_LIBRARY block. Device implementations are
// registered beside their kernels (csrc/cpu, csrc/cuda), autograd in csrc/autograd.cpp, fake
// implementations in fused_rnn/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(fused_rnn, m) {
  // One LSTM cell step, gate order i, f, g, o. input [B,I], hx and cx [B,H], w_ih [4H,I],
  // w_hh [4H,H], biases [4H]. Returns hy, cy [B,H] and gates [B,4H]: the activated gates, which
  // the backward reads.
  m.def(
      "lstm_cell(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor hy, Tensor cy, Tensor gates)");
  // Backward of lstm_cell from the incoming grad_hy and grad_cy and what the forward saved.
  // output_mask picks the gradients to compute (input, hx, cx, w_ih, w_hh, bias); the others come
  // back undefined (None). The bias gradient serves b_ih and b_hh alike.
  m.def(
      "lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, Tensor cx, "
      "Tensor w_ih, Tensor w_hh, Tensor gates, Tensor cy, bool[6] output_mask) -> (Tensor "
      "grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor "
      "grad_bias)");
  // One GRU cell step, gate order r, z, n (n = tanh(x_n + r * h_n)). input [B,I], hx [B,H],
  // w_ih [3H,I], w_hh [3H,H], biases [3H]. Returns hy [B,H] and workspace [B,4H]: r, z, n and h_n,
  // which the backward reads.
  m.def(
      "gru_cell(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> "
      "(Tensor hy, Tensor workspace)");
  // Backward of gru_cell; output_mask orders input, hx, w_ih, w_hh, b_ih, b_hh.
  m.def(
      "gru_cell_backward(Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor workspace, bool[6] output_mask) -> (Tensor grad_input, Tensor grad_hx, Tensor "
      "grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");

  // One layer-normalized LSTM cell step (csrc/layernorm_cell_math.h): a = LN_ih(x w_ih^T) +
  // LN_hh(hx w_hh^T) + b_ih + b_hh, gates i, f, g, o; cy = sigmoid(f) cx + sigmoid(i) tanh(g);
  // hy = sigmoid(o) tanh(LN_c(cy)). ln_ih_* and ln_hh_* [4H], ln_c_* [H]; the rest as
  // lstm_cell. saved [B, 13H+3] in the op-math dtype (float for the half types): the activated
  // gates, the normalized products and cell state, and the three rows' rstd.
  m.def(
      "layernorm_lstm_cell(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? "
      "b_ih, Tensor? b_hh, Tensor ln_ih_weight, Tensor ln_ih_bias, Tensor ln_hh_weight, Tensor "
      "ln_hh_bias, Tensor ln_c_weight, Tensor ln_c_bias) -> (Tensor hy, Tensor cy, Tensor saved)");
  // Backward of layernorm_lstm_cell; output_mask orders input, hx, cx, w_ih, w_hh, bias (shared
  // by b_ih and b_hh), ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_c_weight,
  // ln_c_bias.
  m.def(
      "layernorm_lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, "
      "Tensor cx, Tensor w_ih, Tensor w_hh, Tensor ln_ih_weight, Tensor ln_ih_bias, Tensor "
      "ln_hh_weight, Tensor ln_hh_bias, Tensor ln_c_weight, Tensor ln_c_bias, Tensor saved, "
      "Tensor cy, bool[12] output_mask) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias, Tensor grad_ln_ih_weight, Tensor "
      "grad_ln_ih_bias, Tensor grad_ln_hh_weight, Tensor grad_ln_hh_bias, Tensor "
      "grad_ln_c_weight, Tensor grad_ln_c_bias)");
  // One layer-normalized GRU cell step: gx = LN_ih(x w_ih^T) + b_ih, gh = LN_hh(hx w_hh^T) +
  // b_hh, then the GRU's gates on gx and gh. ln_* [3H]. saved [B, 10H+2] in the op-math dtype:
  // r, z, n, h_n, the normalized products and the two rows' rstd.
  m.def(
      "layernorm_gru_cell(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor ln_ih_weight, Tensor ln_ih_bias, Tensor ln_hh_weight, Tensor "
      "ln_hh_bias) -> (Tensor hy, Tensor saved)");
  // Backward of layernorm_gru_cell; output_mask orders input, hx, w_ih, w_hh, b_ih, b_hh,
  // ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias.
  m.def(
      "layernorm_gru_cell_backward(Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih, Tensor "
      "w_hh, Tensor ln_ih_weight, Tensor ln_ih_bias, Tensor ln_hh_weight, Tensor ln_hh_bias, "
      "Tensor saved, bool[10] output_mask) -> (Tensor grad_input, Tensor grad_hx, Tensor "
      "grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor "
      "grad_ln_ih_weight, Tensor grad_ln_ih_bias, Tensor grad_ln_hh_weight, Tensor "
      "grad_ln_hh_bias)");
  // One layer-normalized LSTM layer in one direction over a whole (packed) sequence, laid out as
  // lstm_layer (no projection), with layernorm_lstm_cell's norms. Returns output [N,H], hy, cy
  // [B,H], and for the backward saved [N, 13H+3] (op-math dtype) and cell_states [N,H];
  // keep_saved as for lstm_layer.
  m.def(
      "layernorm_lstm_layer(Tensor input, Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor ln_ih_weight, Tensor ln_ih_bias, Tensor "
      "ln_hh_weight, Tensor ln_hh_bias, Tensor ln_c_weight, Tensor ln_c_bias, bool reverse, bool "
      "keep_saved=True, Tensor? resets=None, Tensor? zoneout=None) -> (Tensor output, Tensor hy, "
      "Tensor cy, Tensor saved, Tensor cell_states)");
  // Backpropagation through time for layernorm_lstm_layer; output_mask as
  // layernorm_lstm_cell_backward's.
  m.def(
      "layernorm_lstm_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor "
      "input, Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor "
      "ln_ih_weight, Tensor ln_ih_bias, Tensor ln_hh_weight, Tensor ln_hh_bias, Tensor "
      "ln_c_weight, Tensor ln_c_bias, Tensor output, Tensor saved, Tensor cell_states, bool "
      "reverse, bool[12] output_mask, Tensor? resets=None, Tensor? zoneout=None) -> (Tensor "
      "grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor "
      "grad_bias, Tensor grad_ln_ih_weight, Tensor grad_ln_ih_bias, Tensor grad_ln_hh_weight, "
      "Tensor grad_ln_hh_bias, Tensor grad_ln_c_weight, Tensor grad_ln_c_bias)");
  // One layer-normalized GRU layer, laid out as gru_layer, with layernorm_gru_cell's norms.
  // Returns output [N,H], hy [B,H] and saved [N, 10H+2] (op-math dtype).
  m.def(
      "layernorm_gru_layer(Tensor input, Tensor batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor ln_ih_weight, Tensor ln_ih_bias, Tensor ln_hh_weight, "
      "Tensor ln_hh_bias, bool reverse, bool keep_saved=True, Tensor? resets=None, Tensor? "
      "zoneout=None) -> (Tensor output, Tensor hy, Tensor saved)");
  // Backpropagation through time for layernorm_gru_layer; output_mask as
  // layernorm_gru_cell_backward's.
  m.def(
      "layernorm_gru_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor "
      "batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor ln_ih_weight, Tensor ln_ih_bias, "
      "Tensor ln_hh_weight, Tensor ln_hh_bias, Tensor output, Tensor saved, bool reverse, "
      "bool[10] output_mask, Tensor? resets=None, Tensor? zoneout=None) -> (Tensor grad_input, "
      "Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, "
      "Tensor grad_ln_ih_weight, Tensor grad_ln_ih_bias, Tensor grad_ln_hh_weight, Tensor "
      "grad_ln_hh_bias)");

  // Zoneout's training weights [size] in dtype: 1 with probability keep, else 0, independently per
  // element, drawn from seed (an int64 scalar tensor the caller drew from torch's generator of
  // the device); CPU only (csrc/cpu/zoneout_draws.cpp).
  m.def("bernoulli_weights(Tensor seed, int[] size, float keep, ScalarType dtype) -> Tensor");

  // One LSTM layer in one direction over a whole (packed) sequence. input [N,I]: the steps one
  // after another, step t being batch_sizes[t] rows (batch_sizes: int64 on the CPU,
  // non-increasing, batch_sizes[0] = B); a padded [T,B,I] batch is batch_sizes = [B]*T. hx [B,P],
  // cx [B,H]; w_ih [4H,I], w_hh [4H,P], biases [4H]; w_hr [P,H] for projections (P = H without).
  // reverse runs the steps last to first. Returns output [N,P], hy [B,P] and cy [B,H] (each
  // sequence's state after its last step), and for the backward: gates [N,4H] (activated),
  // cell_states [N,H], and hidden_pre_proj [N,H] (o * tanh(c) before w_hr; [0,H] without it).
  // keep_saved=False: the caller wants only output, hy and cy, and the three tensors for the
  // backward come back with 0 rows (the layer then skips writing what it can), unless autograd
  // records the call, whose backward needs them. resets [N] bool (a row per input row, on its
  // device): where true, an episode starts at that row's step: the state entering it is hx/cx's
  // row (in reverse, the state entering the step run after it), no gradient crossing; every
  // layer op takes it, its backward too. zoneout [K,N,H] (input's dtype and device; K = 2: h's
  // then c's; no projection): the weight of each step's new state per row and unit, the state
  // carried on (and output) being zoneout * new + (1 - zoneout) * the state before (Krueger et
  // al. 2016: 0/1 draws in training, 1 - p in evaluation); every layer op takes it (the GRU's:
  // K = 1), its backward the same tensor.
  m.def(
      "lstm_layer(Tensor input, Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor "
      "w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, bool keep_saved=True, "
      "Tensor? resets=None, Tensor? zoneout=None) -> (Tensor output, Tensor hy, Tensor cy, Tensor "
      "gates, Tensor cell_states, Tensor hidden_pre_proj)");
  // Backpropagation through time for lstm_layer. output_mask orders input, hx, cx, w_ih, w_hh,
  // bias (shared by b_ih and b_hh), w_hr.
  m.def(
      "lstm_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, "
      "Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor "
      "output, Tensor gates, Tensor cell_states, Tensor hidden_pre_proj, bool reverse, bool[7] "
      "output_mask, Tensor? resets=None, Tensor? zoneout=None) -> (Tensor grad_input, Tensor "
      "grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias, Tensor "
      "grad_w_hr)");
  // One GRU layer in one direction over a whole (packed) sequence, laid out as for lstm_layer;
  // hx [B,H], w_ih [3H,I], w_hh [3H,H], biases [3H]. Returns output [N,H], hy [B,H] and the
  // workspace [N,4H] (r, z, n, h_n per step) for the backward; keep_saved as for lstm_layer.
  m.def(
      "gru_layer(Tensor input, Tensor batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? "
      "b_ih, Tensor? b_hh, bool reverse, bool keep_saved=True, Tensor? resets=None, Tensor? "
      "zoneout=None) -> (Tensor output, Tensor hy, Tensor workspace)");
  // Backpropagation through time for gru_layer; output_mask orders input, hx, w_ih, w_hh, b_ih,
  // b_hh.
  m.def(
      "gru_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor batch_sizes, "
      "Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse, "
      "bool[6] output_mask, Tensor? resets=None, Tensor? zoneout=None) -> (Tensor grad_input, "
      "Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
}
