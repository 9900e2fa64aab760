// The tensor-core persistent forward and backward for float32, as TF32 (a file per dtype:
// they compile in parallel).
#include "tensor_core_launch.cuh"

namespace fused_rnn::cuda {
template void launch_tensor_core_layer<LstmSequence, float>(
    const SequenceParams<float>&, const TensorCorePlan&, PersistentBarrier,
    const StepSync&);
template void launch_tensor_core_layer<GruSequence, float>(
    const SequenceParams<float>&, const TensorCorePlan&, PersistentBarrier,
    const StepSync&);
template void launch_tensor_core_backward<LstmSequence, float>(
    const BackwardSequenceParams<float>&, const TensorCorePlan&, PersistentBarrier,
    const StepSync&);
template void launch_tensor_core_backward<GruSequence, float>(
    const BackwardSequenceParams<float>&, const TensorCorePlan&, PersistentBarrier,
    const StepSync&);
}  // namespace fused_rnn::cuda
