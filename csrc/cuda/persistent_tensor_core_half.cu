// The tensor-core persistent forward for float16 (its own file: the dtypes compile in parallel).
#include "persistent_tensor_core.cuh"

namespace fused_rnn::cuda {
template void launch_tensor_core_layer<LstmSequence, c10::Half>(
    const SequenceParams<c10::Half>&, const TensorCorePlan&, bool, const at::Tensor&);
template void launch_tensor_core_layer<GruSequence, c10::Half>(
    const SequenceParams<c10::Half>&, const TensorCorePlan&, bool, const at::Tensor&);
}  // namespace fused_rnn::cuda
