// The CPU's kernel tables (LinearKernels, CellKernels per cell kind) and its op registration:
// the ops are the device-agnostic ones of cell_ops.h over these tables. The step kernels live
// here; the products in linear.cpp, the whole-sequence kernels in sequences.cpp, the choices
// between paths in path_choice.h.
#include "../cell_ops.h"
#include "linear.h"
#include "path_choice.h"
#include "pointwise.h"
#include "sequences.h"

#include <torch/library.h>

namespace fused_rnn::cpu {
namespace {

template <typename Cell>
Tensor prepare_recurrent_cpu(const Tensor& w_hh, int64_t rows, int64_t uses) {
  return panels_pay_off(w_hh, rows, uses)
             ? pointwise_kernels().pack_recurrent_weight(w_hh, Cell::kGates)
             : prepare_linear_cpu(w_hh, rows, uses);
}

// The LSTM's activations are written over its input side (t.saved is t.input_side).
void lstm_step_cpu(const StepTensors& t) {
  const Tensor &gates = t.input_side, &h_prev = t.h_prev, &c_prev = t.c_prev, &w_hh = t.w_hh;
  const Tensor &h_out = t.h_out, &c_out = t.c_out;
  const auto& kernels = pointwise_kernels();
  if (packed_in_panels(w_hh)) {
    RecurrentStep s = recurrent_step(h_prev, w_hh, gates.data_ptr<float>(), h_out);
    s.c_prev = c_prev.data_ptr<float>();
    s.c_out = c_out.data_ptr<float>();
    over_panel_tasks(kernels.recurrent_tasks(s.rows, s.hidden, kLstmGates),
                     product_fmas(h_prev, kLstmGates * s.hidden), [&](int64_t begin, int64_t end) {
                       kernels.lstm_forward_recurrent(s, begin, end);
                     });
    return;
  }
  const Tensor gates_h = linear_cpu(h_prev, w_hh, std::nullopt);
  over_units(c_out, [&](int64_t begin, int64_t end) {
    kernels.lstm_forward(gates, gates_h, c_prev, h_out, c_out, begin, end);
  });
}

void gru_step_cpu(const StepTensors& t) {
  const Tensor &gx = t.input_side, &h_prev = t.h_prev, &w_hh = t.w_hh, &h_out = t.h_out;
  const Tensor& workspace = t.saved;
  const OptionalTensor& b_hh = t.b_hh;
  const auto& kernels = pointwise_kernels();
  if (packed_in_panels(w_hh)) {
    RecurrentStep s = recurrent_step(h_prev, w_hh, gx.data_ptr<float>(), h_out);
    s.b_hh = b_hh.has_value() ? b_hh->data_ptr<float>() : nullptr;
    s.workspace = workspace.data_ptr<float>();
    over_panel_tasks(kernels.recurrent_tasks(s.rows, s.hidden, kGruGates),
                     product_fmas(h_prev, kGruGates * s.hidden), [&](int64_t begin, int64_t end) {
                       kernels.gru_forward_recurrent(s, begin, end);
                     });
    return;
  }
  const Tensor gh = linear_cpu(h_prev, w_hh, b_hh);
  over_units(h_out, [&](int64_t begin, int64_t end) {
    kernels.gru_forward(gx, gh, h_prev, h_out, workspace, begin, end);
  });
}

void lstm_gate_grads_cpu(const GateGradTensors& t) {
  over_units(t.c_out, [&](int64_t begin, int64_t end) {
    pointwise_kernels().lstm_backward(t.grad_h, t.grad_c, t.saved, t.c_prev, t.c_out,
                                           t.grad_input_gates, t.grad_c_prev, begin, end);
  });
}

void gru_gate_grads_cpu(const GateGradTensors& t) {
  over_units(t.h_prev, [&](int64_t begin, int64_t end) {
    pointwise_kernels().gru_backward(t.grad_h, t.h_prev, t.saved, t.grad_input_gates,
                                          t.grad_hidden_gates, t.grad_h_direct, begin, end);
  });
}

// Designated: each kernel named by its entry (one out of order does not compile).
constexpr LinearKernels kCpuLinear{
    .prepare_linear = &prepare_linear_cpu,
    .linear = &linear_cpu,
    .matmul = &matmul_cpu,
    .prepare_step_weight = &prepare_step_weight_cpu,
    .step_linear = &step_linear_cpu,
    .projection_chunk_bytes = kProjectionChunkBytes,
};

constexpr CellKernels<LstmCell> kCpuLstm{
    .prepare_recurrent = &prepare_recurrent_cpu<LstmCell>,
    .step = &lstm_step_cpu,
    .gate_grads = &lstm_gate_grads_cpu,
    .sequence = &lstm_sequence_cpu,
    .sequence_from_input = &lstm_sequence_from_input_cpu,
    .backward_sequence = &lstm_backward_sequence_cpu,
};

constexpr CellKernels<GruCell> kCpuGru{
    .prepare_recurrent = &prepare_recurrent_cpu<GruCell>,
    .step = &gru_step_cpu,
    .gate_grads = &gru_gate_grads_cpu,
    .sequence = &gru_sequence_cpu,
    .sequence_from_input = &gru_sequence_from_input_cpu,
    .backward_sequence = &gru_backward_sequence_cpu,
};

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  impl_lstm_cell<kCpuLinear, kCpuLstm>(m);
  impl_lstm_ops<kCpuLinear, kCpuLstm>(m);
  impl_gru_cell<kCpuLinear, kCpuGru>(m);
  impl_gru_ops<kCpuLinear, kCpuGru>(m);
}

}  // namespace fused_rnn::cpu
