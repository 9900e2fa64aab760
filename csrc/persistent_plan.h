// Whether a layer's forward may run as one persistent CUDA kernel, and with which tiling: a pure
// function of the shape and the device's limits, so the CPU build and its tests can ask it too.
//
// The persistent kernel (csrc/cuda/persistent_layer.cu) runs the whole time loop in one
// cooperative launch: block k owns `units` consecutive hidden units, keeps their G gate rows of
// W_hh in shared memory for every step, and the blocks meet at one grid-wide barrier per step.
// So all blocks must be resident at once (one per SM at most here) and each block's shared memory
// must hold its W_hh slice, the previous h of the whole batch and, for the LSTM, its own units'
// cell states.
#pragma once

#include <cstdint>
#include <string>

namespace fused_rnn {

struct PersistentPlan {
  bool runs;           // the persistent kernel applies
  std::string reason;  // why not, when it does not
  int64_t units;       // hidden units per block
  int64_t blocks;      // grid size
  int64_t shared_bytes;
};

// gates: 4 (LSTM) or 3 (GRU); elem_bytes: the dtype's size (W_hh is kept in it); acc_bytes: its
// accumulation type's size (h and c are kept in it). Inputs that are not one uniform batch or
// that carry a projection are the caller's to rule out.
inline PersistentPlan plan_persistent_layer(int64_t batch, int64_t hidden, int64_t gates,
                                            int64_t elem_bytes, int64_t acc_bytes,
                                            int64_t sm_count, int64_t shared_limit) {
  PersistentPlan plan{false, "", 0, 0, 0};
  if (batch < 1 || hidden < 1) {
    plan.reason = "empty batch or hidden size";
    return plan;
  }
  // One block per SM, each owning an equal share of the units.
  plan.units = (hidden + sm_count - 1) / sm_count;
  plan.blocks = (hidden + plan.units - 1) / plan.units;
  const int64_t weights = gates * plan.units * hidden * elem_bytes;
  const int64_t states = (batch * hidden + (gates == 4 ? batch * plan.units : 0)) * acc_bytes;
  plan.shared_bytes = (weights + 15) / 16 * 16 + states;
  if (plan.shared_bytes > shared_limit) {
    plan.reason = "W_hh slice and states need " + std::to_string(plan.shared_bytes) +
                  " bytes of shared memory per block, over the device's " +
                  std::to_string(shared_limit);
    return plan;
  }
  plan.runs = true;
  return plan;
}

}  // namespace fused_rnn
