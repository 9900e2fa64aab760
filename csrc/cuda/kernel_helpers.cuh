// Small pieces both CUDA cell files (cells_cuda.cu, layernorm_cells_cuda.cu) use: optional
// tensors as kernel pointers, and the zoneout split of a carried state's gradient.
#pragma once

#include "../cell_math.h"
#include "../cell_ops.h"

namespace fused_rnn::cuda {

template <typename scalar_t>
const scalar_t* data_or_null(const OptionalTensor& t) {
  return t.has_value() ? t->data_ptr<scalar_t>() : nullptr;
}
template <typename scalar_t>
const scalar_t* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

// Zoneout (GateGradTensors): the new state's and the state before's shares of the carried
// state's gradient at u (all of it the new state's without zoneout, weights null); with `also`,
// that gradient is grad[u] + also[u] (a step's output gradient, added by the kernel itself).
template <typename acc_t, typename scalar_t>
__device__ ZoneoutGrad<acc_t> new_state_grad(const scalar_t* grad, const scalar_t* weights,
                                             int64_t u, const scalar_t* also = nullptr) {
  const acc_t g = also ? acc_t(grad[u]) + acc_t(also[u]) : acc_t(grad[u]);
  return weights ? zoneout_backward(g, acc_t(weights[u])) : ZoneoutGrad<acc_t>{g, acc_t(0)};
}

}  // namespace fused_rnn::cuda
