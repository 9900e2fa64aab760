// What the tensor-core persistent kernels (persistent_tensor_core.cuh: forward;
// persistent_tensor_core_backward.cuh: backward) share: how a dtype's operands sit in mma.sync
// fragments and in tagged words (TileFormat), the end of a step at each barrier, and the choice of
// the kernel built for a plan's k-tiles. Device code on device_primitives.cuh's instructions (or
// the CPU emulator's, tests/emulator); their launch: tensor_core_launch.cuh.
#pragma once

#include "../mma_fragments.h"
#include "../persistent_plan.h"
#include "persistent_tensor_core.h"
#ifndef FUSED_RNN_EMULATED_DEVICE
#include "device_primitives.cuh"
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace fused_rnn::cuda {

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
    mma_bf16_m16n8k16(d, a, b);
  }
};

template <>
struct TileFormat<c10::Half> : PairFormat<c10::Half> {
  __device__ static void mma(float (&d)[4], const uint32_t* a, const uint32_t* b) {
    mma_f16_m16n8k16(d, a, b);
  }
};

// float32 as TF32 (rounded to nearest, as cuBLAS rounds): two m16n8k8 a k-tile, one element a
// register. W_hh is rounded as it is loaded, B as it is staged or loaded.
template <>
struct TileFormat<float> {
  static constexpr int kARegs = 8, kBRegs = 4;
  __device__ static int a_col(int lane, int r) { return mma::tf32_a_col(lane, r); }
  __device__ static int b_row(int lane, int r) { return mma::tf32_b_row(lane, r); }
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
    mma_tf32_m16n8k8(d, a, b);
    mma_tf32_m16n8k8(d, a + 4, b + 2);
  }
};

// The end of a block's step i (from 0), after its writes: they are published (flags: a release
// of the block's step count once all its threads are done; tagged words: already, by their own
// stores) or every block meets (grid.sync()). Either way the block's threads are done with its
// shared memory.
template <PersistentBarrier kBarrier>
__device__ __forceinline__ void end_step(const StepSync& sync, int64_t i) {
  if constexpr (kBarrier == PersistentBarrier::kGrid) {
    grid_sync();
  } else {
    __syncthreads();
    if (kBarrier == PersistentBarrier::kFlags && threadIdx.x == 0) {
      publish_steps(sync.flags + blockIdx.x, static_cast<unsigned>(i + 1));
    }
  }
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

}  // namespace fused_rnn::cuda
