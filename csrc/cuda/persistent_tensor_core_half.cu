// The tensor-core persistent forward and backward for float16 (a file per dtype: they compile
// in parallel).
#include "tensor_core_launch.cuh"

namespace fused_rnn::cuda {
template void launch_tensor_core_layer<LstmSequence, c10::Half>(
    const SequenceParams<c10::Half>&, const TensorCorePlan&, PersistentBarrier,
    const StepSync&);
template void launch_tensor_core_layer<GruSequence, c10::Half>(
    const SequenceParams<c10::Half>&, const TensorCorePlan&, PersistentBarrier,
    const StepSync&);
template void launch_tensor_core_backward<LstmSequence, c10::Half>(
    const BackwardSequenceParams<c10::Half>&, const TensorCorePlan&, PersistentBarrier,
    const StepSync&);
template void launch_tensor_core_backward<GruSequence, c10::Half>(
    const BackwardSequenceParams<c10::Half>&, const TensorCorePlan&, PersistentBarrier,
    const StepSync&);
}  // namespace fused_rnn::cuda
