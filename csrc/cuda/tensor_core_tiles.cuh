// What the tensor-core persistent kernels (persistent_tensor_core.cuh: forward;
// persistent_tensor_core_backward.cuh: backward) share: loads through L2, how a dtype's operands
// sit in mma.sync fragments and in tagged words (TileFormat), the barriers between steps, the
// cluster barrier and distributed shared memory, and their launch.
#pragma once

#include "../mma_fragments.h"
#include "../persistent_plan.h"
#include "persistent_tensor_core.h"

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cooperative_groups.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

namespace fused_rnn::cuda {

// Loads through L2 (ld.global.cg: data other SMs wrote in this launch) that the compiler may
// schedule freely, batching them ahead of the mma that use them (__ldcg is volatile, which pins
// each load next to its use and serializes their latency). Being free to move, they must take
// their address from launder() after the barrier that orders them, or they could move above it.
template <typename T>
__device__ __forceinline__ T* launder(T* p) {
  asm volatile("" : "+l"(p)::"memory");
  return p;
}
__device__ __forceinline__ uint32_t load_l2(const uint32_t* p) {
  uint32_t v;
  asm("ld.global.cg.b32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 load_l2(const uint4* p) {
  uint4 v;
  asm("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// The tagged words' accesses (PersistentBarrier::kTagged): relaxed at GPU scope, so a reader
// polling a word sees another SM's store of it (each 32-bit word single-copy atomic: its value and
// tag arrive together). volatile: a poll must not be merged with the one before.
__device__ __forceinline__ void store_relaxed(uint32_t* p, uint32_t v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ uint4 load_relaxed(const uint4* p) {
  uint4 v{};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ld.relaxed.gpu.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
#else
  __trap();
#endif
  return v;
}
// Whether the four words all carry `tag` (tensor_core_step_tag, persistent_plan.h).
__device__ __forceinline__ bool tags_are(uint4 words, uint32_t tag, uint32_t mask) {
  return (((words.x ^ tag) | (words.y ^ tag) | (words.z ^ tag) | (words.w ^ tag)) & mask) == 0;
}

// How a warp's operands of one k-tile (16 columns of K) sit in registers and are multiplied, per
// dtype: kARegs registers of W_hh (A; rows mma::a_row, columns a_col), kBRegs of h or of the gate
// gradients (B; rows b_row, column mma::b_col), and the mma.sync instructions (float
// accumulation; sm_80 and later, which the plan requires).
template <typename scalar_t>
struct TileFormat;

// 16-bit inputs: one m16n8k16 a k-tile, each register a pair of elements along K.
template <typename scalar_t>
struct PairFormat {
  static constexpr int kARegs = 4, kBRegs = 2;
  __device__ static int a_col(int lane, int r) { return mma::a_col(lane, r); }
  __device__ static int b_row(int lane, int r) { return mma::b_row(lane, r); }
  // A register of W_hh: the elements at p and p + stride (the next along K), low half first.
  __device__ static uint32_t load_a(const scalar_t* p, int64_t stride) {
    return static_cast<uint32_t>(p[0].x) | static_cast<uint32_t>(p[stride].x) << 16;
  }
  // A register of B from shared memory (staged) or, through L2 (load_l2), from global memory:
  // the pair at p (4-byte aligned: even offsets of 4-byte aligned rows).
  __device__ static uint32_t load_b(const scalar_t* p) {
    return *reinterpret_cast<const uint32_t*>(p);
  }
  __device__ static uint32_t load_b_global(const scalar_t* p) {
    return load_l2(reinterpret_cast<const uint32_t*>(p));
  }
  __device__ static uint4 staged(uint4 v) { return v; }
  // Tagged words (kTagged): the value's 16 bits high, the tag low. Four consecutive elements of
  // h as staged (Quad), from four words or from h0.
  static constexpr uint32_t kTagMask = kTagMask16Bit;
  using Quad = uint2;
  __device__ static uint32_t tagged(scalar_t h, uint32_t tag) {
    return static_cast<uint32_t>(h.x) << 16 | tag;
  }
  __device__ static Quad untagged(uint4 words) {
    return {__byte_perm(words.x, words.y, 0x7632), __byte_perm(words.z, words.w, 0x7632)};
  }
  __device__ static Quad quad(const scalar_t* p) { return *reinterpret_cast<const uint2*>(p); }
};

template <>
struct TileFormat<c10::BFloat16> : PairFormat<c10::BFloat16> {
  __device__ static void mma(float (&d)[4], const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
  }
};

template <>
struct TileFormat<c10::Half> : PairFormat<c10::Half> {
  __device__ static void mma(float (&d)[4], const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
  }
};

// float32 as TF32 (rounded to nearest, as cuBLAS rounds): two m16n8k8 a k-tile, one element a
// register. W_hh is rounded as it is loaded, B as it is staged or loaded.
template <>
struct TileFormat<float> {
  static constexpr int kARegs = 8, kBRegs = 4;
  __device__ static int a_col(int lane, int r) { return mma::tf32_a_col(lane, r); }
  __device__ static int b_row(int lane, int r) { return mma::tf32_b_row(lane, r); }
  __device__ static uint32_t to_tf32(float x) {
    uint32_t y = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(y) : "f"(x));
#else
    __trap();
#endif
    return y;
  }
  __device__ static uint32_t load_a(const float* p, int64_t /*stride*/) { return to_tf32(*p); }
  __device__ static uint32_t load_b(const float* p) {
    return *reinterpret_cast<const uint32_t*>(p);
  }
  __device__ static uint32_t load_b_global(const float* p) {
    return to_tf32(__uint_as_float(load_l2(reinterpret_cast<const uint32_t*>(p))));
  }
  __device__ static uint4 staged(uint4 v) {
    return {to_tf32(__uint_as_float(v.x)), to_tf32(__uint_as_float(v.y)),
            to_tf32(__uint_as_float(v.z)), to_tf32(__uint_as_float(v.w))};
  }
  // Tagged words: the TF32 value in the high 19 bits, the tag in the 13 that TF32 leaves out.
  static constexpr uint32_t kTagMask = kTagMaskTf32;
  using Quad = uint4;
  __device__ static uint32_t tagged(float h, uint32_t tag) { return (to_tf32(h) & ~kTagMask) | tag; }
  __device__ static Quad untagged(uint4 words) {
    return {words.x & ~kTagMask, words.y & ~kTagMask, words.z & ~kTagMask, words.w & ~kTagMask};
  }
  __device__ static Quad quad(const float* p) {
    return staged(*reinterpret_cast<const uint4*>(p));
  }
  __device__ static void mma(float (&d)[4], const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      asm volatile(
          "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
          "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[4 * half]), "r"(a[4 * half + 1]), "r"(a[4 * half + 2]), "r"(a[4 * half + 3]),
            "r"(b[2 * half]), "r"(b[2 * half + 1]));
    }
#else
    __trap();
#endif
  }
};

// A release store of a step count by one thread, after the block's writes (a __syncthreads()
// before it orders them first: release is cumulative), and the acquire load that polls it (PTX
// memory model, gpu scope; the waiting threads meet the poller at a barrier after it).
__device__ __forceinline__ void publish_steps(unsigned* flag, unsigned steps) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flag), "r"(steps) : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ unsigned published_steps(const unsigned* flag) {
  unsigned steps = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(steps) : "l"(flag) : "memory");
#else
  __trap();
#endif
  return steps;
}
// The end of a block's step i (from 0), after its writes: they are published (flags: a release
// of the block's step count once all its threads are done; tagged words: already, by their own
// stores) or every block meets (grid.sync()). Either way the block's threads are done with its
// shared memory.
template <PersistentBarrier kBarrier>
__device__ __forceinline__ void end_step(const StepSync& sync, int64_t i) {
  if constexpr (kBarrier == PersistentBarrier::kGrid) {
    cooperative_groups::this_grid().sync();
  } else {
    __syncthreads();
    if (kBarrier == PersistentBarrier::kFlags && threadIdx.x == 0) {
      publish_steps(sync.flags + blockIdx.x, static_cast<unsigned>(i + 1));
    }
  }
}

// Thread-block clusters (sm_90): the barrier every thread of a cluster's blocks meets at, in its
// two halves (arrive releases this thread's writes, wait acquires everyone's; a thread alternates
// them), and a peer block's address of a shared-memory location (distributed shared memory, read
// by plain loads).
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#else
  __trap();
#endif
}
template <typename T>
__device__ __forceinline__ const T* cluster_peer(const T* p, unsigned rank) {
  uint64_t peer = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm("mapa.u64 %0, %1, %2;" : "=l"(peer) : "l"(reinterpret_cast<uint64_t>(p)), "r"(rank));
#else
  __trap();
#endif
  return reinterpret_cast<const T*>(peer);
}

// bar.sync on barrier `id` (1-15; 0 is __syncthreads()) for `threads` threads, whole warps.
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// The plan's sizes the kernel reads at run time.
struct TensorCoreTiling {
  int k_tiles, batch_pad, h_pitch, part_pitch;
};

// Calls launch(std::integral_constant<int, bound>()) for the k-tile bound the plan chose, among
// the multiples of 4 that kRegisterBudget registers of the dtype's A fragments allow (the
// plan's limit): the kernels built.
template <int kBound, int kMaxBound, typename Launch>
void with_bound_from(int64_t bound, const Launch& launch) {
  if (bound == kBound) return launch(std::integral_constant<int, kBound>());
  if constexpr (kBound + 4 <= kMaxBound) {
    with_bound_from<kBound + 4, kMaxBound>(bound, launch);
  } else {
    TORCH_CHECK(false, "fused_rnn: no tensor-core kernel for ", bound, " k-tiles");
  }
}
template <typename scalar_t, int64_t kRegisterBudget, typename Launch>
void with_k_tile_bound(int64_t bound, const Launch& launch) {
  with_bound_from<4, kRegisterBudget / TileFormat<scalar_t>::kARegs>(bound, launch);
}

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

}  // namespace fused_rnn::cuda
