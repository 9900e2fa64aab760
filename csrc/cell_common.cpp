// Argument checks, the input projection, and the cell backward ops over a device's kernels.
#include "cell_ops.h"

#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

namespace fused_rnn {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Every tensor argument must share the device and dtype of `input`.
void check_like_input(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), op, ": expected ", name, " on ", input.device(),
              " (the device of input), got ", t.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": expected ", name, " of dtype ",
              input.scalar_type(), " (the dtype of input), got ", t.scalar_type());
}

void check_bias(const char* op, const char* name, const OptionalTensor& b, int64_t rows) {
  if (!b.has_value()) return;
  TORCH_CHECK(b->dim() == 1 && b->size(0) == rows, op, ": expected ", name, " of shape [", rows,
              "], got ", b->sizes());
}

// A state argument (hx, cx) against the batch and its size; `label` is torch.nn's name for it
// ("0" for h, "1" for c) and `name` ours.
void check_state(const char* op, int64_t batch, const Tensor& state, int64_t size,
                 const char* label, const char* name) {
  // torch.nn's checks, in its order and wording, so the drop-in modules raise what torch.nn does.
  if (state.dim() >= 1) {
    TORCH_CHECK(batch == state.size(0), "Input batch size ", batch, " doesn't match hidden", label,
                " batch size ", state.size(0));
  }
  if (state.dim() >= 2) {
    TORCH_CHECK(state.size(1) == size, "hidden", label, " has inconsistent hidden_size: got ",
                state.size(1), ", expected ", size);
  }
  TORCH_CHECK(state.dim() == 2, op, ": expected ", name, " to be 2-D [", batch, ", ", size,
              "], got ", state.sizes());
}

// The weights' shapes (w_ih [G*H,I], w_hh [G*H,P], biases [G*H], and for an LSTM with projections
// w_hr [P,H]; P = H without) against input [*, I]; returns I, H and P (batch left 0).
CellSizes check_weights(const char* op, int64_t gates, const Tensor& input, const Tensor& w_ih,
                        const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                        const OptionalTensor& w_hr) {
  TORCH_CHECK(is_supported_dtype(input.scalar_type()), op,
              ": expected input of dtype float32, float64, float16 or bfloat16, got ",
              input.scalar_type());
  int64_t hidden = 0, state = 0;
  if (w_hr.has_value()) {
    TORCH_CHECK(w_hr->dim() == 2, op, ": expected w_hr to be 2-D [P, H], got ", w_hr->sizes());
    hidden = w_hr->size(1);
    state = w_hr->size(0);
  } else {
    TORCH_CHECK(w_hh.dim() == 2, op, ": expected w_hh to be 2-D [", gates, "*H, H], got ",
                w_hh.sizes());
    hidden = state = w_hh.size(1);
  }
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * hidden && w_hh.size(1) == state, op,
              ": expected w_hh of shape [", gates * hidden, ", ", state, "] (", gates,
              " gates of H = ", hidden, " rows), got ", w_hh.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == gates * hidden, op,
              ": expected w_ih to be 2-D [", gates * hidden, ", I], got ", w_ih.sizes());
  TORCH_CHECK(input.dim() == 2, op, ": expected input to be 2-D [B, I], got ", input.sizes());
  TORCH_CHECK(input.size(1) == w_ih.size(1), "input has inconsistent input_size: got ",
              input.size(1), " expected ", w_ih.size(1));
  check_bias(op, "b_ih", b_ih, gates * hidden);
  check_bias(op, "b_hh", b_hh, gates * hidden);
  return {0, input.size(1), hidden, state};
}

}  // namespace

CellSizes check_forward_args(const char* op, int64_t gates, const Tensor& input, int64_t batch,
                             const Tensor& hx, const Tensor* cx, const Tensor& w_ih,
                             const Tensor& w_hh, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const OptionalTensor& w_hr) {
  CellSizes s = check_weights(op, gates, input, w_ih, w_hh, b_ih, b_hh, w_hr);
  s.batch = batch;
  check_state(op, batch, hx, s.state, "0", "hx");
  if (cx) check_state(op, batch, *cx, s.hidden, "1", "cx");
  // Devices and dtypes after every size, in torch.nn's order: it reports a wrong hidden size
  // before a wrong dtype.
  const auto optional = [](const OptionalTensor& t) { return t ? &*t : nullptr; };
  const std::pair<const char*, const Tensor*> tensors[] = {
      {"hx", &hx},     {"cx", cx},
      {"w_ih", &w_ih}, {"w_hh", &w_hh},
      {"b_ih", optional(b_ih)}, {"b_hh", optional(b_hh)}, {"w_hr", optional(w_hr)}};
  for (const auto& [name, t] : tensors) {
    if (t) check_like_input(op, name, *t, input);
  }
  return s;
}

CellSizes check_cell_forward_args(const char* op, int64_t gates, const Tensor& input,
                                  const Tensor& hx, const OptionalTensor& cx, const Tensor& w_ih,
                                  const Tensor& w_hh, const OptionalTensor& b_ih,
                                  const OptionalTensor& b_hh) {
  return check_forward_args(op, gates, input, input.dim() >= 1 ? input.size(0) : 0, hx,
                            cx ? &*cx : nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt);
}

OptionalTensor summed_biases(std::initializer_list<const OptionalTensor*> biases) {
  OptionalTensor bias;
  for (const OptionalTensor* b : biases) {
    if (b->has_value()) bias = bias.has_value() ? at::add(*bias, **b) : **b;
  }
  return bias;
}

Tensor input_projection(const DeviceKernels& k, const Tensor& input, const Tensor& w_ih,
                        std::initializer_list<const OptionalTensor*> biases) {
  return k.linear(input, k.prepare_linear(w_ih, input.size(0), 1), summed_biases(biases));
}

void check_saved(const char* op, const char* name, const Tensor& t, at::IntArrayRef sizes,
                 const Tensor& like) {
  check_like_input(op, name, t, like);
  TORCH_CHECK(t.sizes() == sizes, op, ": expected ", name, " of shape ", sizes, ", got ",
              t.sizes());
}

LstmCellGrads lstm_cell_backward(const DeviceKernels& k, const Tensor& grad_hy,
                                 const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
                                 const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                                 const Tensor& gates, const Tensor& cy,
                                 std::array<bool, 6> mask) {
  constexpr const char* op = "fused_rnn.lstm_cell_backward";
  const CellSizes s = check_cell_forward_args(op, kLstmGates, input, hx, cx, w_ih, w_hh,
                                              std::nullopt, std::nullopt);
  check_saved(op, "grad_hy", grad_hy, {s.batch, s.hidden}, input);
  check_saved(op, "grad_cy", grad_cy, {s.batch, s.hidden}, input);
  check_saved(op, "gates", gates, {s.batch, kLstmGates * s.hidden}, input);
  check_saved(op, "cy", cy, {s.batch, s.hidden}, input);

  Tensor grad_gates = at::empty({s.batch, kLstmGates * s.hidden}, input.options());
  Tensor grad_cx = at::empty({s.batch, s.hidden}, input.options());
  k.lstm_gate_grads(grad_hy.contiguous(), grad_cy.contiguous(), gates.contiguous(),
                    cx.contiguous(), cy.contiguous(), grad_gates, grad_cx);
  // Both biases enter the same pre-activation, so they share one gradient.
  return {mask[0] ? k.matmul(grad_gates, w_ih, std::nullopt) : Tensor(),
          mask[1] ? k.matmul(grad_gates, w_hh, std::nullopt) : Tensor(),
          mask[2] ? grad_cx : Tensor(),
          mask[3] ? k.matmul(grad_gates.t(), input, std::nullopt) : Tensor(),
          mask[4] ? k.matmul(grad_gates.t(), hx, std::nullopt) : Tensor(),
          mask[5] ? at::sum(grad_gates, 0) : Tensor()};
}

GruGrads gru_cell_backward(const DeviceKernels& k, const Tensor& grad_hy, const Tensor& input,
                           const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                           const Tensor& workspace, std::array<bool, 6> mask) {
  constexpr const char* op = "fused_rnn.gru_cell_backward";
  const CellSizes s = check_cell_forward_args(op, kGruGates, input, hx, std::nullopt, w_ih, w_hh,
                                              std::nullopt, std::nullopt);
  check_saved(op, "grad_hy", grad_hy, {s.batch, s.hidden}, input);
  check_saved(op, "workspace", workspace, {s.batch, kGruSavedPerUnit * s.hidden}, input);

  Tensor grad_input_gates = at::empty({s.batch, kGruGates * s.hidden}, input.options());
  Tensor grad_hidden_gates = at::empty({s.batch, kGruGates * s.hidden}, input.options());
  Tensor grad_hx_direct = at::empty({s.batch, s.hidden}, input.options());
  k.gru_gate_grads(grad_hy.contiguous(), hx.contiguous(), workspace.contiguous(),
                   grad_input_gates, grad_hidden_gates, grad_hx_direct);
  return {mask[0] ? k.matmul(grad_input_gates, w_ih, std::nullopt) : Tensor(),
          mask[1] ? k.matmul(grad_hidden_gates, w_hh, grad_hx_direct) : Tensor(),
          mask[2] ? k.matmul(grad_input_gates.t(), input, std::nullopt) : Tensor(),
          mask[3] ? k.matmul(grad_hidden_gates.t(), hx, std::nullopt) : Tensor(),
          mask[4] ? at::sum(grad_input_gates, 0) : Tensor(),
          mask[5] ? at::sum(grad_hidden_gates, 0) : Tensor()};
}

}  // namespace fused_rnn
