// Every forward op written with differentiable ATen operations, as one more implementation of
// its schema: what autograd differentiates where the fused kernels' hand-written backward cannot
// serve. The autograd kernels (autograd.cpp) take it under torch.func transforms and forward-mode
// AD, and recompute through it in a backward that must itself be differentiable (create_graph,
// double backward). Same arguments and results as the ops (csrc/fused_rnn.cpp); the saved
// activations come back detached, as the ops mark them non-differentiable.
#pragma once

#include "cell_ops.h"

namespace fused_rnn::composite {

std::tuple<Tensor, Tensor, Tensor> lstm_cell(const Tensor& input, const Tensor& hx,
                                             const Tensor& cx, const Tensor& w_ih,
                                             const Tensor& w_hh, const OptionalTensor& b_ih,
                                             const OptionalTensor& b_hh);

std::tuple<Tensor, Tensor> gru_cell(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                    const Tensor& w_hh, const OptionalTensor& b_ih,
                                    const OptionalTensor& b_hh);

LstmLayerOutputs lstm_layer(const Tensor& input, const Tensor& batch_sizes, const Tensor& hx,
                            const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                            const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                            const OptionalTensor& w_hr, bool reverse, bool keep_saved,
                            const OptionalTensor& resets, const OptionalTensor& zoneout);

GruLayerOutputs gru_layer(const Tensor& input, const Tensor& batch_sizes, const Tensor& hx,
                          const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                          const OptionalTensor& b_hh, bool reverse, bool keep_saved,
                          const OptionalTensor& resets, const OptionalTensor& zoneout);

}  // namespace fused_rnn::composite
