// Persistent whole-sequence kernels for the LSTM and GRU layers (see persistent_plan.h): the
// choice between them and their launch.
//
// One cooperative launch runs every step. float16, bfloat16 and (as TF32, where
// torch.backends.cudnn.allow_tf32) float32 at hidden sizes that are multiples of 16 take the
// tensor-core kernels (persistent_tensor_core.cuh, persistent_tensor_core_backward.cuh: W_hh in
// registers as mma.sync fragments; a cluster of two blocks per group of units where one block
// cannot hold its share), forward and backward. Any other forward that fits takes the
// SIMT kernel (persistent_simt.cuh: W_hh's rows of a block's units in shared memory, a warp per
// (row, unit) pair, grid.sync() between steps).
//
// By default (PersistentMode::kMeasured) a layer takes the path measured fastest near its shape
// (default_paths.h: the table csrc/measured_paths.h, from a sweep on the GPU; so far only the
// SIMT forward at batch 1, benchmarks/NOTES.md entries 15 and 61); the other modes force paths
// for tests and benchmarks. choose_path makes the choice, for the launches and for
// fused_rnn.cuda_layer_path alike.
#include "../cell_ops.h"
#include "../default_paths.h"
#include "../persistent_plan.h"
#include "persistent_cells.cuh"
#include "persistent_simt.cuh"
#include "host_to_device.h"
#include "persistent_layer.h"
#include "persistent_tensor_core.h"

#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <array>
#include <atomic>
#include <mutex>

namespace fused_rnn::cuda {
namespace {

std::atomic<PersistentMode> g_persistent_mode{PersistentMode::kMeasured};
std::atomic<PersistentBarrier> g_barrier{PersistentBarrier::kFlags};
std::atomic<int64_t> g_cluster_split{0};

PersistentPlan plan_for(int64_t gates, int64_t batch, int64_t hidden, int64_t elem_bytes,
                        int64_t acc_bytes, int64_t device) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  if (!prop->cooperativeLaunch) {
    return {false, "the device has no cooperative launch", 0, 0, 0};
  }
  return plan_persistent_layer(batch, hidden, gates, elem_bytes, acc_bytes,
                               prop->multiProcessorCount,
                               static_cast<int64_t>(prop->sharedMemPerBlockOptin));
}

// An empty kernel whose clusters of 2 blocks the occupancy query counts.
__global__ void cluster_probe_kernel() {}

// Clusters of 2 blocks, one an SM, resident at once on `device` (0 before sm_90): the tensor-core
// kernels' registers and shared memory keep them to one block an SM, and so does the probe's
// shared memory.
int64_t measure_cluster_pairs(int64_t device) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  if (prop->major < 9) return 0;
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const int shared_bytes = static_cast<int>(prop->sharedMemPerBlockOptin);
  C10_CUDA_CHECK(cudaFuncSetAttribute(&cluster_probe_kernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes));
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = 2;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(2 * prop->multiProcessorCount));
  config.blockDim = dim3(static_cast<unsigned>(32 * kTensorCoreBackwardWarps));
  config.dynamicSmemBytes = static_cast<size_t>(shared_bytes);
  config.attrs = &cluster;
  config.numAttrs = 1;
  int clusters = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, &cluster_probe_kernel, &config));
  return clusters;
}

}  // namespace

TensorCoreDevice tensor_core_device(int64_t device) {
  constexpr int kDevices = 64;
  // Measured once a device (a launch configuration query), on its first use.
  static std::once_flag measured[kDevices];
  static int64_t cluster_pairs[kDevices];
  const int64_t devices = std::min<int64_t>(kDevices, at::cuda::device_count());
  TORCH_CHECK(device >= 0 && device < devices, "fused_rnn: expected a CUDA device index in [0, ",
              devices, "), got ", device);
  std::call_once(measured[device],
                 [device] { cluster_pairs[device] = measure_cluster_pairs(device); });
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  return {prop->multiProcessorCount, static_cast<int64_t>(prop->sharedMemPerBlockOptin),
          cluster_pairs[device]};
}

namespace {

// float32 runs as TF32 where torch.nn's cuDNN would (torch.backends.cudnn.allow_tf32).
TensorCorePlan tensor_core_plan_for(int64_t gates, int64_t batch, int64_t hidden,
                                    int64_t elem_bytes, int64_t device, bool backward = false) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  if (!prop->cooperativeLaunch) {
    return {false, "the device has no cooperative launch", 0, 0, 0, 0, 0, 0, 0, 0, 0};
  }
  if (prop->major < 8) {
    return {false, "mma.sync of 16-bit types needs sm_80 or later", 0, 0, 0, 0, 0, 0, 0, 0, 0};
  }
  return plan_tensor_core_layer(batch, hidden, gates, elem_bytes,
                                at::globalContext().allowTF32CuDNN(), tensor_core_device(device),
                                backward, g_cluster_split);
}

template <typename scalar_t>
SequenceParams<scalar_t> sequence_params(const at::Tensor& xproj, const at::Tensor& h0,
                                         const at::Tensor& c0, const at::Tensor& w_hh,
                                         const std::optional<at::Tensor>& b_hh,
                                         const at::Tensor& output, const at::Tensor& cell_states,
                                         const at::Tensor& workspace, int64_t steps,
                                         int64_t units, bool reverse,
                                         const at::Tensor& packed_table) {
  return {xproj.data_ptr<scalar_t>(),
          h0.data_ptr<scalar_t>(),
          c0.defined() ? c0.data_ptr<scalar_t>() : nullptr,
          w_hh.data_ptr<scalar_t>(),
          b_hh.has_value() ? b_hh->data_ptr<scalar_t>() : nullptr,
          output.data_ptr<scalar_t>(),
          cell_states.defined() ? cell_states.data_ptr<scalar_t>() : nullptr,
          workspace.defined() ? workspace.data_ptr<scalar_t>() : nullptr,
          workspace.defined() && workspace.size(0) == xproj.size(0),
          steps,
          h0.size(0),
          h0.size(1),
          units,
          reverse,
          packed_table.defined() ? packed_table.data_ptr<int>() : nullptr};
}

// The tensor-core kernel reads h 16 bytes and W_hh 4 bytes at a time: tensors that are views at
// odd offsets take the SIMT kernel.
bool aligned_for_tensor_cores(const at::Tensor& h0, const at::Tensor& output,
                              const at::Tensor& w_hh) {
  const auto address = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.data_ptr());
  };
  return address(h0) % 16 == 0 && address(output) % 16 == 0 && address(w_hh) % 4 == 0;
}

// Packed sequences' steps (SequenceTensors::packed_steps) as the kernels read them: [steps][2]
// (first row, rows) on the device (on_device_async); an empty tensor for a padded batch. False
// where the table cannot be made: while a CUDA graph is being captured.
bool packed_table(const std::vector<SequenceStep>& packed, const at::Tensor& like,
                  at::Tensor& table) {
  if (packed.empty()) return true;
  std::vector<int> values;
  for (const SequenceStep& step : packed) {
    values.push_back(static_cast<int>(step.offset));
    values.push_back(static_cast<int>(step.rows));
  }
  table = on_device_async(values, like);
  return table.defined();
}

// The paths a layer tries in the present mode, in order (the first that applies runs; step-wise
// ends every order), and in the default mode the measured point that ordered them (null where
// nothing near the shape was measured: step-wise).
struct PathOrder {
  std::array<CudaPath, 3> paths;
  const MeasuredPoint* point;
};
PathOrder path_order(int64_t gates, int64_t batch, int64_t hidden, int64_t elem_bytes,
                     bool backward) {
  constexpr CudaPath kStep = CudaPath::kStepwise;
  switch (persistent_mode()) {
    case PersistentMode::kOn:
      return {{CudaPath::kTensorCores, CudaPath::kSimt, kStep}, nullptr};
    case PersistentMode::kSimt:
      return {{CudaPath::kSimt, kStep, kStep}, nullptr};
    case PersistentMode::kOff:
      return {{kStep, kStep, kStep}, nullptr};
    case PersistentMode::kMeasured:
      break;
  }
  const MeasuredPoint* point =
      elem_bytes > 4 ? nullptr
                     : measured_point(static_cast<int>(gates), static_cast<int>(elem_bytes),
                                      backward, batch, hidden);
  if (point == nullptr) return {{kStep, kStep, kStep}, nullptr};
  return {{point->order[0], point->order[1], point->order[2]}, point};
}

// A layer's path: the first of path_order's that applies to the shape, with its plan; where that
// is step-wise, why (the last path tried that did not apply, or the mode).
struct PathChoice {
  CudaPath path = CudaPath::kStepwise;
  TensorCorePlan tensor_core{};
  PersistentPlan simt{};
  const MeasuredPoint* point = nullptr;
  std::string why_not;  // the last path tried that does not apply: why
};
// packed: sequences of several lengths (the SIMT kernel runs a uniform batch only); aligned:
// whether the tensors suit the tensor-core kernel's loads (aligned_for_tensor_cores).
PathChoice choose_path(int64_t gates, int64_t batch, int64_t hidden, int64_t elem_bytes,
                       int64_t acc_bytes, int64_t device, bool backward, bool packed,
                       bool aligned) {
  const PathOrder order = path_order(gates, batch, hidden, elem_bytes, backward);
  PathChoice choice;
  choice.point = order.point;
  for (const CudaPath path : order.paths) {
    if (path == CudaPath::kStepwise) break;
    if (path == CudaPath::kTensorCores) {
      choice.tensor_core = tensor_core_plan_for(gates, batch, hidden, elem_bytes, device, backward);
      if (choice.tensor_core.runs && aligned) {
        choice.path = path;
        return choice;
      }
      choice.why_not = choice.tensor_core.runs
                           ? "tensors at offsets the tensor-core kernel cannot load"
                           : choice.tensor_core.reason;
    } else if (backward) {  // (a tensor-core path tried before says why not first)
      if (choice.why_not.empty()) choice.why_not = "the SIMT kernel runs the forward only";
    } else {
      if (packed) {
        choice.why_not = "the SIMT kernel runs a uniform batch only";
        continue;
      }
      choice.simt = plan_for(gates, batch, hidden, elem_bytes, acc_bytes, device);
      if (choice.simt.runs) {
        choice.path = path;
        return choice;
      }
      choice.why_not = choice.simt.reason;
    }
  }
  return choice;
}

template <typename Cell>
bool launch_sequence(const at::Tensor& xproj, const at::Tensor& h0, const at::Tensor& c0,
                     const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh,
                     const at::Tensor& output, const at::Tensor& cell_states,
                     const at::Tensor& workspace, bool reverse,
                     const std::vector<SequenceStep>& packed) {
  if (persistent_mode() == PersistentMode::kOff) return false;
  const int64_t B = h0.size(0), H = h0.size(1);
  const int64_t steps =
      !packed.empty() ? static_cast<int64_t>(packed.size()) : B == 0 ? 0 : xproj.size(0) / B;
  if (steps < 2) return false;
  const int64_t device = xproj.get_device();
  const PathChoice choice =
      choose_path(Cell::kGates, B, H, xproj.element_size(),
                  xproj.scalar_type() == at::kDouble ? 8 : 4, device, false, !packed.empty(),
                  aligned_for_tensor_cores(h0, output, w_hh));
  if (choice.path == CudaPath::kStepwise) return false;
  const c10::cuda::CUDAGuard guard(xproj.device());
  at::Tensor table;
  if (!packed_table(packed, xproj, table)) return false;
  FUSED_RNN_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "persistent_layer", [&] {
    const SequenceParams<scalar_t> p =
        sequence_params<scalar_t>(xproj, h0, c0, w_hh, b_hh, output, cell_states, workspace,
                                  steps, choice.simt.units, reverse, table);
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (choice.path == CudaPath::kTensorCores) {
        const PersistentBarrier barrier = g_barrier;
        const StepSyncTensors sync = step_sync(barrier, choice.tensor_core, false, B, H, xproj);
        launch_tensor_core_layer<Cell, scalar_t>(p, choice.tensor_core, barrier,
                                                 sync.pointers());
        return;
      }
    }
    const PersistentPlan& plan = choice.simt;
    auto* kernel = &persistent_layer_kernel<Cell, scalar_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(plan.shared_bytes)));
    SequenceParams<scalar_t> params = p;
    void* args[] = {&params};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(
        reinterpret_cast<const void*>(kernel), dim3(plan.blocks), dim3(kSimtThreads), args,
        plan.shared_bytes, at::cuda::getCurrentCUDAStream()));
  });
  return true;
}

// The whole backward time loop on the tensor-core kernel, where it applies (float32 only as TF32;
// no episode starts, no zoneout: the step-wise loop handles those).
template <typename Cell>
bool launch_backward(const BackwardSequenceTensors& t) {
  if (persistent_mode() == PersistentMode::kOff || !t.starts.empty() || !t.zoneout.empty()) {
    return false;
  }
  const int64_t B = t.grad_h.size(0), H = t.grad_h.size(1);
  const int64_t steps = !t.packed_steps.empty() ? static_cast<int64_t>(t.packed_steps.size())
                        : B == 0                 ? 0
                                                 : t.grad_output.size(0) / B;
  if (steps < 2 || t.grad_output.scalar_type() == at::kDouble) return false;
  const PathChoice choice =
      choose_path(Cell::kGates, B, H, t.grad_output.element_size(), 4,
                  t.grad_output.get_device(), true, !t.packed_steps.empty(), true);
  if (choice.path != CudaPath::kTensorCores) return false;
  const TensorCorePlan& plan = choice.tensor_core;
  const at::Tensor w_hh = t.w_hh.contiguous();
  const c10::cuda::CUDAGuard guard(t.grad_output.device());
  at::Tensor table;
  if (!packed_table(t.packed_steps, w_hh, table)) return false;
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.grad_output.scalar_type(), "persistent_backward", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      const auto data = [](const at::Tensor& x) {
        return x.defined() ? x.data_ptr<scalar_t>() : nullptr;
      };
      const BackwardSequenceParams<scalar_t> p{data(t.grad_output),
                                               data(t.saved),
                                               data(t.h_before),
                                               data(t.c_before),
                                               data(t.cell_states),
                                               data(w_hh),
                                               data(t.grad_h),
                                               data(t.grad_c),
                                               data(t.grad_input_gates),
                                               data(t.grad_hidden_gates),
                                               steps,
                                               B,
                                               H,
                                               t.reverse,
                                               table.defined() ? table.data_ptr<int>() : nullptr};
      const PersistentBarrier barrier = g_barrier;
      const StepSyncTensors sync = step_sync(barrier, plan, true, B, H, w_hh);
      launch_tensor_core_backward<Cell, scalar_t>(p, plan, barrier, sync.pointers());
    }
  });
  return true;
}

}  // namespace

void set_persistent_mode(PersistentMode mode) { g_persistent_mode = mode; }
PersistentMode persistent_mode() { return g_persistent_mode; }

constexpr std::array<std::pair<PersistentBarrier, const char*>, 3> kBarrierNames{
    {{PersistentBarrier::kFlags, "flags"},
     {PersistentBarrier::kGrid, "grid"},
     {PersistentBarrier::kTagged, "tagged"}}};

void set_persistent_barrier(const std::string& barrier) {
  for (const auto& [value, name] : kBarrierNames) {
    if (barrier == name) {
      g_barrier = value;
      return;
    }
  }
  TORCH_CHECK(false, "fused_rnn: expected the persistent barrier \"flags\", \"grid\" or "
              "\"tagged\", got \"", barrier, "\"");
}

void set_persistent_cluster_split(int64_t split) {
  TORCH_CHECK(split >= 0 && split <= kTensorCoreMaxClusterSplit,
              "fused_rnn: expected the cluster split 0 (chosen), 1 or 2, got ", split);
  g_cluster_split = split;
}

std::string layer_path(int64_t gates, int64_t batch, int64_t hidden, int64_t elem_bytes,
                       int64_t acc_bytes, int64_t device, bool backward) {
  const PersistentMode mode = persistent_mode();
  if (mode == PersistentMode::kOff) return "step-wise: persistent kernels are off";
  const PathChoice choice =
      choose_path(gates, batch, hidden, elem_bytes, acc_bytes, device, backward, false, true);
  // Why this path, after its name: in the default mode, the measured point that ordered the
  // paths.
  std::string measured;
  if (mode == PersistentMode::kMeasured) {
    if (choice.point == nullptr) {
      return "step-wise: the persistent kernels run by default only where measured faster, and "
             "nothing near this shape was measured; use_persistent_kernels(True) takes them "
             "wherever they apply";
    }
    measured = "at batch " + std::to_string(choice.point->batch) + ", hidden " +
               std::to_string(choice.point->hidden);
  }
  const std::string why = measured.empty() ? "" : "measured fastest " + measured;
  switch (choice.path) {
    case CudaPath::kTensorCores: {
      const std::string name = choice.tensor_core.cluster_split > 1
                                   ? "persistent (tensor cores, clusters of 2"
                                   : "persistent (tensor cores";
      return name + (why.empty() ? ")" : "; " + why + ")");
    }
    case CudaPath::kSimt:
      if (mode == PersistentMode::kOn) {
        return "persistent (SIMT; no tensor cores: " + choice.why_not + ")";
      }
      return why.empty() ? "persistent (SIMT)" : "persistent (SIMT; " + why + ")";
    case CudaPath::kStepwise:
      break;
  }
  if (choice.why_not.empty()) return "step-wise: " + why;
  return "step-wise: " + choice.why_not +
         (measured.empty() ? "" : " (the paths ordered as measured " + measured + ")");
}

// (Episode starts, zoneout: the step-wise loop restarts the rows and zones out.)
bool lstm_sequence(const SequenceTensors& t) {
  if (!t.starts.empty() || !t.zoneout.empty()) return false;
  return launch_sequence<LstmSequence>(t.input_side, t.h0, t.c0, t.w_hh, std::nullopt, t.output,
                                       t.cell_states, at::Tensor(), t.reverse, t.packed_steps);
}

bool gru_sequence(const SequenceTensors& t) {
  if (!t.starts.empty() || !t.zoneout.empty()) return false;
  return launch_sequence<GruSequence>(t.input_side, t.h0, at::Tensor(), t.w_hh, t.b_hh, t.output,
                                      at::Tensor(), t.saved, t.reverse, t.packed_steps);
}

bool lstm_backward_sequence(const BackwardSequenceTensors& t) {
  return launch_backward<LstmSequence>(t);
}

bool gru_backward_sequence(const BackwardSequenceTensors& t) {
  return launch_backward<GruSequence>(t);
}

}  // namespace fused_rnn::cuda
