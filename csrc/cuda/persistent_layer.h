// The persistent whole-sequence forward kernels of the CUDA layers (persistent_layer.cu): entry
// points for the layer ops (through kCudaKernels) and for Python (python_module.cpp).
#pragma once

#include "../cell_ops.h"
#include "../persistent_plan.h"

#include <string>

namespace fused_rnn::cuda {

// When the persistent kernels run: kMeasured (the default) where the table of measured paths puts
// them first (persistent_plan.h: measured_point); kOn wherever they apply (the tensor-core
// forward and backward first, else the SIMT forward); kSimt the SIMT forward wherever it fits
// (benchmarks: the paths measured one by one); kOff never.
enum class PersistentMode { kMeasured, kOn, kSimt, kOff };
void set_persistent_mode(PersistentMode mode);
PersistentMode persistent_mode();

// How the tensor-core kernels' blocks wait for each step's results (persistent_tensor_core.cuh):
// "flags" (each group of warps for its producers; the default), "grid" (grid.sync()) or "tagged"
// (the forward's groups poll h itself, as tagged words; the backward waits at flags).
void set_persistent_barrier(const std::string& barrier);

// Blocks a group of 16 units of the tensor-core kernels (persistent_plan.h): 0 (the default)
// chooses, 1 or 2 asks for that split (tests and benchmarks; a plan that cannot take it says so).
void set_persistent_cluster_split(int64_t split);

// What the tensor-core plans know of CUDA device `device` (its cluster room measured once).
TensorCoreDevice tensor_core_device(int64_t device);

// Which forward (backward) path a layer of this shape runs on CUDA device `device` (a uniform
// batch, no projection), for a dtype of elem_bytes with accumulation in acc_bytes: "persistent
// (tensor cores", "persistent (tensor cores, clusters of 2", "persistent (SIMT" (forward), each
// followed by why (the measured point in the default mode), or "step-wise: <why>".
std::string layer_path(int64_t gates, int64_t batch, int64_t hidden, int64_t elem_bytes,
                       int64_t acc_bytes, int64_t device, bool backward);

// Run the whole forward time loop of one layer in one launch and return true, where the path is
// "persistent"; else return false and touch nothing (CellKernels::sequence; tensors as
// SequenceTensors documents them).
bool lstm_sequence(const SequenceTensors& t);
bool gru_sequence(const SequenceTensors& t);

// Run the whole backward time loop of one layer in one launch and return true, where the
// backward path is "persistent (tensor cores)"; else return false and touch nothing
// (CellKernels::backward_sequence; tensors as BackwardSequenceTensors documents them).
bool lstm_backward_sequence(const BackwardSequenceTensors& t);
bool gru_backward_sequence(const BackwardSequenceTensors& t);

}  // namespace fused_rnn::cuda
