// The persistent kernels (csrc/cuda/persistent_tensor_core.cuh,
// persistent_tensor_core_backward.cuh, persistent_simt.cuh), their own source, run on the CPU
// under emulated_device.h: a test-only extension (tests/test_tensor_core_emulation.py builds and
// calls it). Its functions take the tensors persistent_layer.cu would hand the kernels and plan
// the launch as it does for an H200 (132 SMs, 227 KB of shared memory a block, 66 clusters of 2):
// the tensor-core kernels with the barrier and cluster split asked for, built for 4 k-tiles a
// warp (the plan must need no more: hidden sizes up to 256 in one block a group).
#include <torch/extension.h>

#include "emulated_device.h"

#include "cuda/persistent_tensor_core.cuh"
#include "cuda/persistent_tensor_core_backward.cuh"
#include "cuda/persistent_simt.cuh"

#include <optional>
#include <string>

namespace {

using fused_rnn::TensorCoreDevice;
using fused_rnn::TensorCorePlan;
using namespace fused_rnn::cuda;

constexpr int kBound = 4;
const TensorCoreDevice kH200{132, 232448, 66};

PersistentBarrier barrier_named(const std::string& name) {
  if (name == "grid") return PersistentBarrier::kGrid;
  if (name == "flags") return PersistentBarrier::kFlags;
  TORCH_CHECK(name == "tagged", "barrier: expected grid, flags or tagged, got ", name);
  return PersistentBarrier::kTagged;
}

TensorCorePlan plan_for(int64_t gates, int64_t batch, int64_t hidden, int64_t elem_bytes,
                        bool backward, int64_t split) {
  const TensorCorePlan plan = fused_rnn::plan_tensor_core_layer(batch, hidden, gates, elem_bytes,
                                                                true, kH200, backward, split);
  TORCH_CHECK(plan.runs, "the tensor-core plan does not run: ", plan.reason);
  TORCH_CHECK(plan.k_tile_bound == kBound, "the emulation runs the kernel built for ", kBound,
              " k-tiles; the plan needs ", plan.k_tile_bound);
  return plan;
}

TensorCoreTiling tiling_of(const TensorCorePlan& plan) {
  return {static_cast<int>(plan.k_tiles), static_cast<int>(plan.batch_pad),
          static_cast<int>(plan.h_pitch), static_cast<int>(plan.part_pitch)};
}

// Calls run(barrier constant, split constant) for the barrier and split asked for.
template <typename Run>
void with_barrier_and_split(PersistentBarrier barrier, int64_t split, const Run& run) {
  const auto with_split = [&](auto b) {
    if (split == 2) {
      run(b, std::integral_constant<int, 2>());
    } else {
      run(b, std::integral_constant<int, 1>());
    }
  };
  switch (barrier) {
    case PersistentBarrier::kGrid:
      return with_split(std::integral_constant<PersistentBarrier, PersistentBarrier::kGrid>());
    case PersistentBarrier::kFlags:
      return with_split(std::integral_constant<PersistentBarrier, PersistentBarrier::kFlags>());
    case PersistentBarrier::kTagged:
      return with_split(std::integral_constant<PersistentBarrier, PersistentBarrier::kTagged>());
  }
}

template <typename scalar_t>
scalar_t* data(const std::optional<torch::Tensor>& t) {
  return t.has_value() && t->defined() ? reinterpret_cast<scalar_t*>(t->data_ptr()) : nullptr;
}

// Calls run(scalar_t{}) for x's dtype among the tensor-core kernels' three (and float64, the
// SIMT kernel's too, where kWithDouble).
template <bool kWithDouble = false, typename Run>
void with_dtype(const torch::Tensor& x, const Run& run) {
  switch (x.scalar_type()) {
    case torch::kDouble:
      if constexpr (kWithDouble) return run(double());
      break;
    case torch::kBFloat16:
      return run(c10::BFloat16());
    case torch::kHalf:
      return run(c10::Half());
    case torch::kFloat:
      return run(float());
    default:
      break;
  }
  TORCH_CHECK(false, "no emulated kernel for ", x.scalar_type());
}

template <typename Run>
void with_cell(const std::string& cell, const Run& run) {
  if (cell == "lstm") return run(LstmSequence());
  TORCH_CHECK(cell == "gru", "cell: expected lstm or gru, got ", cell);
  run(GruSequence());
}

// The forward (SequenceParams; xproj, output, cell_states and workspace written), returning the
// plan's blocks and cluster split.
std::vector<int64_t> forward(const std::string& cell, torch::Tensor xproj, torch::Tensor h0,
                             std::optional<torch::Tensor> c0, torch::Tensor w_hh,
                             std::optional<torch::Tensor> b_hh, torch::Tensor output,
                             std::optional<torch::Tensor> cell_states,
                             std::optional<torch::Tensor> workspace, bool workspace_per_step,
                             int64_t steps, bool reverse,
                             std::optional<torch::Tensor> packed_steps,
                             const std::string& barrier_name, int64_t split) {
  const PersistentBarrier barrier = barrier_named(barrier_name);
  const int64_t B = h0.size(0), H = h0.size(1);
  TensorCorePlan plan;
  with_cell(cell, [&](auto cell_kind) {
    using Cell = decltype(cell_kind);
    plan = plan_for(Cell::kGates, B, H, xproj.element_size(), false, split);
    const StepSyncTensors sync = step_sync(barrier, plan, false, B, H, xproj);
    with_dtype(xproj, [&](auto scalar) {
      using scalar_t = decltype(scalar);
      const SequenceParams<scalar_t> p{data<scalar_t>(xproj),       data<scalar_t>(h0),
                                       data<scalar_t>(c0),          data<scalar_t>(w_hh),
                                       data<scalar_t>(b_hh),        data<scalar_t>(output),
                                       data<scalar_t>(cell_states), data<scalar_t>(workspace),
                                       workspace_per_step,          steps,
                                       B,                           H,
                                       fused_rnn::kTensorCoreUnits, reverse,
                                       data<int>(packed_steps)};
      with_barrier_and_split(barrier, plan.cluster_split, [&](auto b, auto s) {
        emu::launch(&tensor_core_layer_kernel<Cell, scalar_t, kBound, decltype(b)::value,
                                              decltype(s)::value>,
                    plan.blocks, plan.threads, plan.cluster_split, plan.shared_bytes, p,
                    tiling_of(plan), sync.pointers());
      });
    });
  });
  return {plan.blocks, plan.cluster_split};
}

// The backward (BackwardSequenceParams; grad_h, grad_c and the gate gradients written).
std::vector<int64_t> backward(const std::string& cell, torch::Tensor grad_output,
                              torch::Tensor saved, std::optional<torch::Tensor> h_before,
                              std::optional<torch::Tensor> c_before,
                              std::optional<torch::Tensor> cell_states, torch::Tensor w_hh,
                              torch::Tensor grad_h, std::optional<torch::Tensor> grad_c,
                              torch::Tensor grad_input_gates,
                              std::optional<torch::Tensor> grad_hidden_gates, int64_t steps,
                              bool reverse, std::optional<torch::Tensor> packed_steps,
                              const std::string& barrier_name, int64_t split) {
  const PersistentBarrier barrier = barrier_named(barrier_name);
  const int64_t B = grad_h.size(0), H = grad_h.size(1);
  TensorCorePlan plan;
  with_cell(cell, [&](auto cell_kind) {
    using Cell = decltype(cell_kind);
    plan = plan_for(Cell::kGates, B, H, grad_output.element_size(), true, split);
    const StepSyncTensors sync = step_sync(barrier, plan, true, B, H, grad_output);
    with_dtype(grad_output, [&](auto scalar) {
      using scalar_t = decltype(scalar);
      const BackwardSequenceParams<scalar_t> p{data<scalar_t>(grad_output),
                                               data<scalar_t>(saved),
                                               data<scalar_t>(h_before),
                                               data<scalar_t>(c_before),
                                               data<scalar_t>(cell_states),
                                               data<scalar_t>(w_hh),
                                               data<scalar_t>(grad_h),
                                               data<scalar_t>(grad_c),
                                               data<scalar_t>(grad_input_gates),
                                               data<scalar_t>(grad_hidden_gates),
                                               steps,
                                               B,
                                               H,
                                               reverse,
                                               data<int>(packed_steps)};
      with_barrier_and_split(barrier, plan.cluster_split, [&](auto b, auto s) {
        emu::launch(&tensor_core_backward_kernel<Cell, scalar_t, kBound,
                                                 backward_barrier(decltype(b)::value),
                                                 decltype(s)::value>,
                    plan.blocks, plan.threads, plan.cluster_split, plan.shared_bytes, p,
                    tiling_of(plan), sync.pointers());
      });
    });
  });
  return {plan.blocks, plan.cluster_split};
}

// The SIMT kernel's forward (padded batches; SequenceParams as forward's), returning the plan's
// blocks and units a block.
std::vector<int64_t> simt_forward(const std::string& cell, torch::Tensor xproj, torch::Tensor h0,
                                  std::optional<torch::Tensor> c0, torch::Tensor w_hh,
                                  std::optional<torch::Tensor> b_hh, torch::Tensor output,
                                  std::optional<torch::Tensor> cell_states,
                                  std::optional<torch::Tensor> workspace, int64_t steps,
                                  bool reverse) {
  const int64_t B = h0.size(0), H = h0.size(1);
  fused_rnn::PersistentPlan plan;
  with_cell(cell, [&](auto cell_kind) {
    using Cell = decltype(cell_kind);
    const int64_t acc_bytes = xproj.scalar_type() == torch::kDouble ? 8 : 4;
    plan = fused_rnn::plan_persistent_layer(B, H, Cell::kGates, xproj.element_size(), acc_bytes,
                                            kH200.sm_count, kH200.shared_limit);
    TORCH_CHECK(plan.runs, "the SIMT plan does not run: ", plan.reason);
    with_dtype<true>(xproj, [&](auto scalar) {
      using scalar_t = decltype(scalar);
      const SequenceParams<scalar_t> p{data<scalar_t>(xproj),       data<scalar_t>(h0),
                                       data<scalar_t>(c0),          data<scalar_t>(w_hh),
                                       data<scalar_t>(b_hh),        data<scalar_t>(output),
                                       data<scalar_t>(cell_states), data<scalar_t>(workspace),
                                       true,                        steps,
                                       B,                           H,
                                       plan.units,                  reverse,
                                       nullptr};
      emu::launch(&persistent_layer_kernel<Cell, scalar_t>, plan.blocks, kSimtThreads, 1,
                  plan.shared_bytes, p);
    });
  });
  return {plan.blocks, plan.units};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("simt_forward", &simt_forward);
}
