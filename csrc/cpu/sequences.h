// The CPU's whole-sequence kernels (CellKernels' sequence, sequence_from_input and
// backward_sequence): a padded sequence's forward or backward on the fused steps (pointwise.h)
// in one OpenMP parallel region, where path_choice.h says they pay off.
#pragma once

#include "../cell_ops.h"
#include "pointwise.h"

namespace fused_rnn::cpu {

// A step's rows as the fused recurrent step takes them (gates: null where the step computes its
// input side and keeps no gates).
RecurrentStep recurrent_step(const Tensor& h_prev, const Tensor& w_packed, float* gates,
                             const Tensor& h_out);

// The CellKernels entries of a cell kind with fused steps (CellPointwise::forward_recurrent,
// backward_gates, backward_product); instantiated for the LSTM and the GRU.
template <typename Cell>
bool sequence_cpu(const SequenceTensors& t);
template <typename Cell>
bool sequence_from_input_cpu(const InputSequenceTensors& t, InputSequenceSaved& out);
template <typename Cell>
bool backward_sequence_cpu(const BackwardSequenceTensors& t);

}  // namespace fused_rnn::cpu
