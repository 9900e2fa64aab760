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

// One step: on the fused recurrent step where prepare_recurrent packed W_hh for it, else the
// hidden product and then the cell's pointwise pass.
template <typename Cell>
void step_cpu(const StepTensors& t) {
  const auto& kernels = pointwise_kernels();
  const CellPointwise<Cell>& cell = cell_kernels<Cell>(kernels);
  const int64_t H = t.h_out.size(1);
  if (packed_in_panels(t.w_hh)) {
    RecurrentStep s = recurrent_step(t.h_prev, t.w_hh, t.input_side.data_ptr<float>(), t.h_out);
    if constexpr (Cell::kHasCellState) {
      s.c_prev = t.c_prev.data_ptr<float>();
      s.c_out = t.c_out.data_ptr<float>();
    }
    if constexpr (!Cell::kPreActivationsSumSides) {
      s.b_hh = t.b_hh.has_value() ? t.b_hh->data_ptr<float>() : nullptr;
      s.workspace = t.saved.data_ptr<float>();
    }
    s.zoneout_h = t.zoneout_h.defined() ? t.zoneout_h.data_ptr<float>() : nullptr;
    s.zoneout_c = t.zoneout_c.defined() ? t.zoneout_c.data_ptr<float>() : nullptr;
    over_panel_tasks(kernels.recurrent_tasks(s.rows, H, Cell::kGates),
                     product_fmas(t.h_prev, Cell::kGates * H),
                     [&](int64_t begin, int64_t end) { cell.forward_recurrent(s, begin, end); });
    return;
  }
  const Tensor hidden_side = linear_cpu(
      t.h_prev, t.w_hh, Cell::kPreActivationsSumSides ? OptionalTensor() : t.b_hh);
  over_units(t.h_out, [&](int64_t begin, int64_t end) {
    cell.forward(t, hidden_side, begin, end);
  });
}

template <typename Cell>
void gate_grads_cpu(const GateGradTensors& t) {
  const CellPointwise<Cell>& cell = cell_kernels<Cell>(pointwise_kernels());
  over_units(t.grad_h, [&](int64_t begin, int64_t end) { cell.backward(t, begin, end); });
}

// The CPU's kernels of a cell kind with fused steps.
template <typename Cell>
constexpr CellKernels<Cell> kCpuCellKernels{
    .prepare_recurrent = &prepare_recurrent_cpu<Cell>,
    .step = &step_cpu<Cell>,
    .gate_grads = &gate_grads_cpu<Cell>,
    .sequence = &sequence_cpu<Cell>,
    .sequence_from_input = &sequence_from_input_cpu<Cell>,
    .backward_sequence = &backward_sequence_cpu<Cell>,
};


}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  impl_lstm_cell<kCpuLinear, kCpuCellKernels<LstmCell>>(m);
  impl_lstm_ops<kCpuLinear, kCpuCellKernels<LstmCell>>(m);
  impl_gru_cell<kCpuLinear, kCpuCellKernels<GruCell>>(m);
  impl_gru_ops<kCpuLinear, kCpuCellKernels<GruCell>>(m);
}

}  // namespace fused_rnn::cpu
