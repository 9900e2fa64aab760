// The launch of the tensor-core persistent kernels (persistent_tensor_core.cuh: forward;
// persistent_tensor_core_backward.cuh: backward): one cooperative launch on the current stream,
// of the kernel built for the plan's k-tiles, barrier and cluster split. Included by one
// instantiation file per dtype (persistent_tensor_core_{half,bfloat16,float}.cu: they compile in
// parallel); persistent_layer.cu chooses and calls the launchers.
#pragma once

#include "persistent_tensor_core.cuh"
#include "persistent_tensor_core_backward.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <mutex>
#include <tuple>

namespace fused_rnn::cuda {

// Blocks of `kernel` resident at once on the current device with `config` (clusters of
// `cluster_split` blocks where more than 1), asked of the driver once per kernel, device and
// launch shape: the occupancy queries take host time on every layer call otherwise, and their
// answer depends on nothing else.
inline int resident_blocks(const void* kernel, const cudaLaunchConfig_t& config,
                           int64_t cluster_split) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  using Key = std::tuple<const void*, int, unsigned, size_t, int64_t>;
  static std::mutex mutex;
  static std::map<Key, int> known;
  const Key key{kernel, device, config.blockDim.x, config.dynamicSmemBytes, cluster_split};
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(key);
  if (found != known.end()) return found->second;
  int resident = 0;
  if (cluster_split > 1) {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&resident, kernel, &config));
    resident *= static_cast<int>(cluster_split);
  } else {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &resident, kernel, static_cast<int>(config.blockDim.x), config.dynamicSmemBytes));
    int sm_count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
    resident *= sm_count;
  }
  known.emplace(key, resident);
  return resident;
}

// One cooperative launch of kernel(args...) on the current stream, its grid, block, shared
// memory and clusters (plan.cluster_split blocks; none where 1) as the plan says.
template <typename... KernelParams, typename... Args>
void launch_persistent(void (*kernel)(KernelParams...), const TensorCorePlan& plan,
                       Args... args) {
  const int shared_bytes = static_cast<int>(plan.shared_bytes);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      shared_bytes));
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeCooperative;
  attributes[0].val.cooperative = 1;
  attributes[1].id = cudaLaunchAttributeClusterDimension;
  attributes[1].val.clusterDim.x = static_cast<unsigned>(plan.cluster_split);
  attributes[1].val.clusterDim.y = 1;
  attributes[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(plan.blocks));
  config.blockDim = dim3(static_cast<unsigned>(plan.threads));
  config.dynamicSmemBytes = static_cast<size_t>(shared_bytes);
  config.stream = c10::cuda::getCurrentCUDAStream();
  config.attrs = attributes;
  config.numAttrs = plan.cluster_split > 1 ? 2 : 1;
  // Every block must be resident at once (the plan counted one an SM, or one cluster a pair).
  const int resident =
      resident_blocks(reinterpret_cast<const void*>(kernel), config, plan.cluster_split);
  TORCH_CHECK(resident >= plan.blocks, "fused_rnn: a tensor-core persistent kernel (",
              plan.blocks, " blocks of ", plan.threads, " threads, ", shared_bytes,
              " bytes of shared memory, clusters of ", plan.cluster_split, ") fits only ",
              resident, " blocks on the device at once");
  void* pointers[] = {static_cast<void*>(&args)...};
  C10_CUDA_CHECK(cudaLaunchKernelExC(&config, reinterpret_cast<const void*>(kernel), pointers));
}

template <PersistentBarrier kBarrier>
using Barrier = std::integral_constant<PersistentBarrier, kBarrier>;

// Launches the kernel kernel_for(bound, barrier, split) returns for the plan's k-tile bound (among
// those kRegisterBudget allows), the barrier asked for and the plan's cluster split, with params,
// the plan's tiling and what the barrier keeps on the device (sync).
template <typename scalar_t, int64_t kRegisterBudget, typename KernelFor, typename Params>
void launch_tensor_core(const KernelFor& kernel_for, const Params& params,
                        const TensorCorePlan& plan, PersistentBarrier barrier,
                        const StepSync& sync) {
  const TensorCoreTiling tiling{static_cast<int>(plan.k_tiles), static_cast<int>(plan.batch_pad),
                                static_cast<int>(plan.h_pitch), static_cast<int>(plan.part_pitch)};
  const auto launch = [&](auto bound, auto split) {
    switch (barrier) {
      case PersistentBarrier::kGrid:
        return launch_persistent(kernel_for(bound, Barrier<PersistentBarrier::kGrid>(), split),
                                 plan, params, tiling, sync);
      case PersistentBarrier::kFlags:
        return launch_persistent(kernel_for(bound, Barrier<PersistentBarrier::kFlags>(), split),
                                 plan, params, tiling, sync);
      case PersistentBarrier::kTagged:
        return launch_persistent(kernel_for(bound, Barrier<PersistentBarrier::kTagged>(), split),
                                 plan, params, tiling, sync);
    }
  };
  with_k_tile_bound<scalar_t, kRegisterBudget>(plan.k_tile_bound, [&](auto bound) {
    TORCH_CHECK(plan.cluster_split == 1 || plan.cluster_split == 2,
                "fused_rnn: no tensor-core kernel for a cluster split of ", plan.cluster_split);
    if (plan.cluster_split == 2) {
      launch(bound, std::integral_constant<int, 2>());
    } else {
      launch(bound, std::integral_constant<int, 1>());
    }
  });
}

template <typename Cell, typename scalar_t>
void launch_tensor_core_layer(const SequenceParams<scalar_t>& p, const TensorCorePlan& plan,
                              PersistentBarrier barrier, const StepSync& sync) {
  const auto kernel_for = [](auto bound, auto barrier, auto split) {
    return &tensor_core_layer_kernel<Cell, scalar_t, decltype(bound)::value,
                                     decltype(barrier)::value, decltype(split)::value>;
  };
  constexpr int64_t kBudget = kTensorCoreWeightRegisters;
  launch_tensor_core<scalar_t, kBudget>(kernel_for, p, plan, barrier, sync);
}

template <typename Cell, typename scalar_t>
void launch_tensor_core_backward(const BackwardSequenceParams<scalar_t>& p,
                                 const TensorCorePlan& plan, PersistentBarrier barrier,
                                 const StepSync& sync) {
  const auto kernel_for = [](auto bound, auto barrier, auto split) {
    return &tensor_core_backward_kernel<Cell, scalar_t, decltype(bound)::value,
                                        backward_barrier(decltype(barrier)::value),
                                        decltype(split)::value>;
  };
  constexpr int64_t kBudget = kTensorCoreBackwardWeightRegisters;
  launch_tensor_core<scalar_t, kBudget>(kernel_for, p, plan, barrier, sync);
}

}  // namespace fused_rnn::cuda
