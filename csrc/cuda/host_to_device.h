// Values made on the host, as a device tensor, without waiting for the device.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include <algorithm>
#include <vector>

namespace fused_rnn::cuda {

// values as a 1-D tensor on like's device: through pinned memory, copied on the stream (from
// pageable memory the copy would wait for the stream's work); undefined while a CUDA graph is
// being captured, whose replays would copy from host memory freed since.
template <typename T>
at::Tensor on_device_async(const std::vector<T>& values, const at::Tensor& like) {
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    return at::Tensor();
  }
  at::Tensor host = at::empty({static_cast<int64_t>(values.size())},
                              at::TensorOptions(c10::CppTypeToScalarType<T>::value)
                                  .pinned_memory(true));
  std::copy(values.begin(), values.end(), host.data_ptr<T>());
  return host.to(like.device(), /*non_blocking=*/true);
}

}  // namespace fused_rnn::cuda
