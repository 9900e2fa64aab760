// Device-agnostic parts of the cell ops: argument checks and the backward's matrix products.
#include "cell_ops.h"

#include <ATen/ops/addmm.h>
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

void check_hidden(const char* op, const Tensor& input, const Tensor& hx, int64_t hidden_size,
                  const char* label, const char* name) {
  check_like_input(op, name, hx, input);
  // torch.nn's checks, in its order and wording, so the drop-in modules raise what torch.nn does.
  if (hx.dim() >= 1) {
    TORCH_CHECK(input.size(0) == hx.size(0), "Input batch size ", input.size(0),
                " doesn't match hidden", label, " batch size ", hx.size(0));
  }
  if (hx.dim() >= 2) {
    TORCH_CHECK(hx.size(1) == hidden_size, "hidden", label,
                " has inconsistent hidden_size: got ", hx.size(1), ", expected ", hidden_size);
  }
  TORCH_CHECK(hx.dim() == 2, op, ": expected ", name, " to be 2-D [B, H] = [", input.size(0),
              ", ", hidden_size, "], got ", hx.sizes());
}

void check_bias(const char* op, const char* name, const OptionalTensor& b, int64_t rows,
                const Tensor& input) {
  if (!b.has_value()) return;
  check_like_input(op, name, *b, input);
  TORCH_CHECK(b->dim() == 1 && b->size(0) == rows, op, ": expected ", name, " of shape [", rows,
              "], got ", b->sizes());
}

}  // namespace

CellSizes check_cell_forward_args(const char* op, int64_t gates, const Tensor& input,
                                  const Tensor& hx, const OptionalTensor& cx, const Tensor& w_ih,
                                  const Tensor& w_hh, const OptionalTensor& b_ih,
                                  const OptionalTensor& b_hh) {
  TORCH_CHECK(is_supported_dtype(input.scalar_type()), op,
              ": expected input of dtype float32, float64, float16 or bfloat16, got ",
              input.scalar_type());
  TORCH_CHECK(w_hh.dim() == 2, op, ": expected w_hh to be 2-D [", gates, "*H, H], got ",
              w_hh.sizes());
  const int64_t hidden = w_hh.size(1);
  TORCH_CHECK(w_hh.size(0) == gates * hidden, op, ": expected w_hh of shape [", gates * hidden,
              ", ", hidden, "] (", gates, " gates of H = ", hidden, " rows), got ", w_hh.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == gates * hidden, op,
              ": expected w_ih to be 2-D [", gates * hidden, ", I], got ", w_ih.sizes());
  TORCH_CHECK(input.dim() == 2, op, ": expected input to be 2-D [B, I], got ", input.sizes());
  TORCH_CHECK(input.size(1) == w_ih.size(1), "input has inconsistent input_size: got ",
              input.size(1), " expected ", w_ih.size(1));
  check_like_input(op, "w_ih", w_ih, input);
  check_like_input(op, "w_hh", w_hh, input);
  check_hidden(op, input, hx, hidden, "0", "hx");
  if (cx.has_value()) check_hidden(op, input, *cx, hidden, "1", "cx");
  check_bias(op, "b_ih", b_ih, gates * hidden, input);
  check_bias(op, "b_hh", b_hh, gates * hidden, input);
  return {input.size(0), input.size(1), hidden};
}

void check_saved(const char* op, const char* name, const Tensor& t, at::IntArrayRef sizes,
                 const Tensor& like) {
  check_like_input(op, name, t, like);
  TORCH_CHECK(t.sizes() == sizes, op, ": expected ", name, " of shape ", sizes, ", got ",
              t.sizes());
}

LstmGrads lstm_cell_backward_with(LstmGateGradsFn gate_grads, const Tensor& grad_hy,
                                  const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
                                  const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                                  const Tensor& gates, const Tensor& cy, LstmGradMask mask) {
  constexpr const char* op = "fused_rnn.lstm_cell_backward";
  const CellSizes s = check_cell_forward_args(op, kLstmGates, input, hx, cx, w_ih, w_hh,
                                              std::nullopt, std::nullopt);
  check_saved(op, "grad_hy", grad_hy, {s.batch, s.hidden}, input);
  check_saved(op, "grad_cy", grad_cy, {s.batch, s.hidden}, input);
  check_saved(op, "gates", gates, {s.batch, kLstmGates * s.hidden}, input);
  check_saved(op, "cy", cy, {s.batch, s.hidden}, input);

  auto [grad_gates, grad_cx] = gate_grads(grad_hy.contiguous(), grad_cy.contiguous(),
                                          gates.contiguous(), cx.contiguous(), cy.contiguous());
  // Both biases enter the same pre-activation, so they share one gradient.
  return {mask[0] ? at::mm(grad_gates, w_ih) : Tensor(),
          mask[1] ? at::mm(grad_gates, w_hh) : Tensor(),
          mask[2] ? grad_cx : Tensor(),
          mask[3] ? at::mm(grad_gates.t(), input) : Tensor(),
          mask[4] ? at::mm(grad_gates.t(), hx) : Tensor(),
          mask[5] ? at::sum(grad_gates, 0) : Tensor()};
}

GruGrads gru_cell_backward_with(GruGateGradsFn gate_grads, const Tensor& grad_hy,
                                const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                const Tensor& w_hh, const Tensor& workspace, GruGradMask mask) {
  constexpr const char* op = "fused_rnn.gru_cell_backward";
  const CellSizes s = check_cell_forward_args(op, kGruGates, input, hx, std::nullopt, w_ih, w_hh,
                                              std::nullopt, std::nullopt);
  check_saved(op, "grad_hy", grad_hy, {s.batch, s.hidden}, input);
  check_saved(op, "workspace", workspace, {s.batch, kGruSavedPerUnit * s.hidden}, input);

  auto [grad_input_gates, grad_hidden_gates, grad_hx_direct] =
      gate_grads(grad_hy.contiguous(), hx.contiguous(), workspace.contiguous());
  return {mask[0] ? at::mm(grad_input_gates, w_ih) : Tensor(),
          mask[1] ? at::addmm(grad_hx_direct, grad_hidden_gates, w_hh) : Tensor(),
          mask[2] ? at::mm(grad_input_gates.t(), input) : Tensor(),
          mask[3] ? at::mm(grad_hidden_gates.t(), hx) : Tensor(),
          mask[4] ? at::sum(grad_input_gates, 0) : Tensor(),
          mask[5] ? at::sum(grad_hidden_gates, 0) : Tensor()};
}

}  // namespace fused_rnn
