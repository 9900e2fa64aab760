// The tensor-core persistent forward for bfloat16 (its own file: the dtypes compile in parallel).
#include "persistent_tensor_core.cuh"

namespace fused_rnn::cuda {
template void launch_tensor_core_layer<LstmSequence, c10::BFloat16>(
    const SequenceParams<c10::BFloat16>&, const TensorCorePlan&, bool, const at::Tensor&);
template void launch_tensor_core_layer<GruSequence, c10::BFloat16>(
    const SequenceParams<c10::BFloat16>&, const TensorCorePlan&, bool, const at::Tensor&);
}  // namespace fused_rnn::cuda
