// The tensor-core persistent forward for float32 as TF32 (its own file: the dtypes compile in
// parallel).
#include "persistent_tensor_core.cuh"

namespace fused_rnn::cuda {
template void launch_tensor_core_layer<LstmSequence, float>(
    const SequenceParams<float>&, const TensorCorePlan&, bool, const at::Tensor&);
template void launch_tensor_core_layer<GruSequence, float>(
    const SequenceParams<float>&, const TensorCorePlan&, bool, const at::Tensor&);
}  // namespace fused_rnn::cuda
