// The instructions the tensor-core persistent kernels use beyond plain C++ (PTX: loads and stores
// with their memory-model semantics, barriers, distributed shared memory, mma.sync), each behind
// a small function. tests/emulator/emulated_device.h gives the same functions on the CPU, so the
// kernels' own source runs there under test (tensor_core_tiles.cuh includes this header unless
// FUSED_RNN_EMULATED_DEVICE says that one is in place).
#pragma once

#include <cooperative_groups.h>

#include <cstdint>

namespace fused_rnn::cuda {

// The block's dynamic shared memory (16-byte aligned).
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char shared[];
  return shared;
}

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

// Every thread of the (cooperative) launch meets here.
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }

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

// The warp's mma.sync (sm_80 and later), float accumulators d += a b: m16n8k16 with bfloat16 or
// float16 inputs (A: 4 registers, B: 2, each a pair of elements), m16n8k8 with TF32 inputs (A: 4,
// B: 2, one element a register). Fragments as csrc/mma_fragments.h places them.
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const uint32_t* a,
                                                  const uint32_t* b) {
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
__device__ __forceinline__ void mma_f16_m16n8k16(float (&d)[4], const uint32_t* a,
                                                 const uint32_t* b) {
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
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const uint32_t* a,
                                                 const uint32_t* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}
// float32 to TF32, rounded to nearest (ties away from zero), as cuBLAS rounds.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t y = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(y) : "f"(x));
#else
  __trap();
#endif
  return y;
}

}  // namespace fused_rnn::cuda
