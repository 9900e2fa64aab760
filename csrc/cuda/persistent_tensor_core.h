// The tensor-core persistent forward (persistent_tensor_core.cuh) and backward
// (persistent_tensor_core_backward.cuh), as persistent_layer.cu calls them: built once per dtype
// (persistent_tensor_core_{half,bfloat16,float}.cu).
#pragma once

#include "../persistent_plan.h"
#include "persistent_cells.cuh"

#include <ATen/core/Tensor.h>

namespace fused_rnn::cuda {

// Runs the whole forward time loop of one layer in one cooperative launch on the current stream,
// tiled as `plan` says (plan.runs); the blocks wait for each step's h at flags (flag_barrier:
// `flags` int32 [plan.blocks], zeros, on the device) or at grid.sync(). Cell: LstmSequence or
// GruSequence; scalar_t: c10::Half, c10::BFloat16 or float (as TF32).
template <typename Cell, typename scalar_t>
void launch_tensor_core_layer(const SequenceParams<scalar_t>& p, const TensorCorePlan& plan,
                              bool flag_barrier, const at::Tensor& flags);

// The whole backward time loop likewise (plan: the backward's).
template <typename Cell, typename scalar_t>
void launch_tensor_core_backward(const BackwardSequenceParams<scalar_t>& p,
                                 const TensorCorePlan& plan, bool flag_barrier,
                                 const at::Tensor& flags);

}  // namespace fused_rnn::cuda
