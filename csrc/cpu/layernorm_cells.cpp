// The layer-normalized LSTM's and GRU's CPU kernels (CellKernels, layernorm_cell_ops.h): a step
// is the hidden product (linear.h), then the cell's forward pass over the batch rows, in the
// variant built for this CPU (CellPointwise, layernorm_passes.h); the gate gradients, its
// backward pass. The layer loops, BPTT and the cell ops are the shared ones.
#include "../layernorm_cell_ops.h"
#include "linear.h"
#include "path_choice.h"
#include "pointwise.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>

namespace fused_rnn::cpu {
namespace {

// Runs pass(begin, end) over the rows [0, rows) over ATen's threads, a few rows a task.
template <typename Pass>
void over_rows(int64_t rows, int64_t row_work, const Pass& pass) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainUnits / std::max<int64_t>(1, row_work)),
                   pass);
}

// W_hh for the steps' products, packed for oneDNN or as it lies (path_choice.h).
Tensor prepare_recurrent_layernorm(const Tensor& w_hh, int64_t rows, int64_t uses) {
  return layernorm_step_weight_packed(rows, uses) ? prepare_linear_cpu(w_hh, rows, uses)
                                                  : w_hh.contiguous();
}

// A cell's norms made contiguous, and a copy of t pointing at them.
template <typename Cell, typename Tensors>
struct WithContiguousNorms {
  std::array<Tensor, Cell::kNorms> norms;
  Tensors tensors;
  explicit WithContiguousNorms(const Tensors& t) : tensors(t) {
    for (int k = 0; k < Cell::kNorms; ++k) norms[k] = t.norms[k].contiguous();
    tensors.norms = norms;
  }
};

// The step: h_prev @ W_hh^T in the saved type (W_hh is in it already, prepare_recurrent having
// readied it), then the forward pass over the rows.
template <typename Cell>
void layernorm_step_cpu(const StepTensors& t) {
  const WithContiguousNorms<Cell, StepTensors> c(t);
  const Tensor h_proj =
      linear_cpu(t.h_prev.to(t.saved.scalar_type()), t.w_hh, std::nullopt).contiguous();
  const auto& cell = cell_kernels<Cell>(pointwise_kernels());
  over_rows(t.h_out.size(0), 4 * Cell::kGates * t.h_out.size(1),
            [&](int64_t begin, int64_t end) { cell.forward(c.tensors, h_proj, begin, end); });
}

template <typename Cell>
void layernorm_gate_grads_cpu(const GateGradTensors& t) {
  const WithContiguousNorms<Cell, GateGradTensors> c(t);
  const auto& cell = cell_kernels<Cell>(pointwise_kernels());
  over_rows(t.grad_h.size(0), 6 * Cell::kGates * t.grad_h.size(1),
            [&](int64_t begin, int64_t end) { cell.backward(c.tensors, begin, end); });
}

// No fused whole-sequence kernels: the steps' norms need each product's whole row.
template <typename Cell>
constexpr CellKernels<Cell> kCpuLayerNormKernels{
    .prepare_recurrent = &prepare_recurrent_layernorm,
    .step = &layernorm_step_cpu<Cell>,
    .gate_grads = &layernorm_gate_grads_cpu<Cell>,
    .sequence = nullptr,
    .sequence_from_input = nullptr,
    .backward_sequence = nullptr,
};

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  impl_layernorm_lstm_ops<kCpuLinear, kCpuLayerNormKernels<LayerNormLstmCell>>(m);
  impl_layernorm_gru_ops<kCpuLinear, kCpuLayerNormKernels<LayerNormGruCell>>(m);
}

}  // namespace fused_rnn::cpu
