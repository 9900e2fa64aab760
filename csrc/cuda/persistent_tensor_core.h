// The tensor-core persistent forward (persistent_tensor_core.cuh) and backward
// (persistent_tensor_core_backward.cuh), as persistent_layer.cu calls them: built once per dtype
// (persistent_tensor_core_{half,bfloat16,float}.cu).
#pragma once

#include "../persistent_plan.h"
#include "persistent_cells.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

namespace fused_rnn::cuda {

// How the blocks wait for each step's results (chosen at run time, so that one run measures
// each; tensor_core_tiles.cuh): at grid.sync(); at flags, each block's count of steps done; or,
// in the forward, by polling h itself, written as tagged words (a value and its step in each 32-bit
// word). The backward waits at flags where kTagged is asked.
enum class PersistentBarrier { kGrid, kFlags, kTagged };

// What the barriers keep on the device, zeros at launch: flags, int32 [plan.blocks] (kFlags, and
// kTagged's backward); words, int32 [kTaggedSlots, batch, hidden] (kTagged's forward); null where
// unused.
struct StepSync {
  unsigned* flags;
  uint32_t* words;
};

// What a tensor-core kernel's barrier keeps on the device (StepSync), zeros, as tensors (kept
// until the launch is queued): the flags (kFlags; kTagged's backward), the forward's tagged words
// [kTaggedSlots, batch, hidden] (kTagged).
struct StepSyncTensors {
  at::Tensor flags, words;
  StepSync pointers() const {
    const auto data = [](const at::Tensor& x) {
      return x.defined() ? reinterpret_cast<uint32_t*>(x.data_ptr<int32_t>()) : nullptr;
    };
    return {data(flags), data(words)};
  }
};
inline StepSyncTensors step_sync(PersistentBarrier barrier, const TensorCorePlan& plan,
                                 bool backward, int64_t batch, int64_t hidden,
                                 const at::Tensor& like) {
  const auto options = like.options().dtype(at::kInt);
  StepSyncTensors sync;
  if (barrier == PersistentBarrier::kFlags || (barrier == PersistentBarrier::kTagged && backward)) {
    sync.flags = at::zeros({plan.blocks}, options);
  }
  if (barrier == PersistentBarrier::kTagged && !backward) {
    sync.words = at::zeros({kTaggedSlots, batch, hidden}, options);
  }
  return sync;
}

// Runs the whole forward time loop of one layer in one cooperative launch on the current stream,
// tiled as `plan` says (plan.runs); the blocks wait for each step's h as `barrier` says. Cell:
// LstmSequence or GruSequence; scalar_t: c10::Half, c10::BFloat16 or float (as TF32).
template <typename Cell, typename scalar_t>
void launch_tensor_core_layer(const SequenceParams<scalar_t>& p, const TensorCorePlan& plan,
                              PersistentBarrier barrier, const StepSync& sync);

// The whole backward time loop likewise (plan: the backward's).
template <typename Cell, typename scalar_t>
void launch_tensor_core_backward(const BackwardSequenceParams<scalar_t>& p,
                                 const TensorCorePlan& plan, PersistentBarrier barrier,
                                 const StepSync& sync);

}  // namespace fused_rnn::cuda
