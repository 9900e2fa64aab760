// The tensor-core persistent forward of the LSTM and GRU layers: one cooperative launch runs every
// step, each block keeping its share of W_hh in registers as mma.sync A fragments for the whole
// sequence (tiling and shared-memory layout: plan_tensor_core_layer, persistent_plan.h).
//
// Per step a block (i) stages the previous h of the whole batch from L2 into shared memory,
// (ii) has each warp multiply its tile of gate rows by its K share of h on tensor cores (float
// accumulation), n-tile by n-tile, writing the partial sums to shared memory, (iii) sums the K
// shares of each (unit, batch row) pair and finishes it with the cell's gate math
// (persistent_cells.cuh), and (iv) publishes the h it wrote. The LSTM's cell states of its units
// stay in shared memory.
//
// Two ways to wait for h (PersistentBarrier, chosen at run time so both can be measured):
// - kGrid: grid.sync() after (iii), every block waiting for the slowest.
// - kFlags: block k owns units [16k, 16k+16), which are k-tile k of every K share, so the warps
//   sharing a K share (a group of G warps) need h from just the blocks of their k-tiles. Each
//   block publishes a step by a release store of its flag (steps done); each group polls its
//   producers' flags with acquire loads, stages its own columns of h and meets at a named barrier
//   of its G warps, so groups start as soon as their producers are done and no block writes a
//   shared counter. Nothing is overwritten that a slower block still reads: each step's h has its
//   own rows of the output.
// Included by one instantiation file per dtype; persistent_layer.cu chooses and calls it.
#pragma once

#include "../mma_fragments.h"
#include "persistent_tensor_core.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cooperative_groups.h>

namespace fused_rnn::cuda {

// How a warp's operands of one k-tile (16 columns of K) sit in registers and are multiplied, per
// dtype: kARegs registers of W_hh (A; rows mma::a_row, columns a_col), kBRegs of h (B; rows
// b_row, column mma::b_col), and the mma.sync instructions (float accumulation; sm_80 and later,
// which the plan requires).
template <typename scalar_t>
struct TileFormat;

// 16-bit inputs: one m16n8k16 a k-tile, each register a pair of elements along K.
template <typename scalar_t>
struct PairFormat {
  static constexpr int kARegs = 4, kBRegs = 2;
  __device__ static int a_col(int lane, int r) { return mma::a_col(lane, r); }
  __device__ static int b_row(int lane, int r) { return mma::b_row(lane, r); }
  // (4-byte aligned: even offsets of 4-byte aligned rows.)
  __device__ static uint32_t load_a(const scalar_t* p) {
    return *reinterpret_cast<const uint32_t*>(p);
  }
  __device__ static uint32_t load_b(const scalar_t* p) { return load_a(p); }
  __device__ static uint4 staged(uint4 v) { return v; }
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
// register. W_hh is rounded as it is loaded, h as it is staged.
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
  __device__ static uint32_t load_a(const float* p) { return to_tf32(*p); }
  __device__ static uint32_t load_b(const float* p) {
    return *reinterpret_cast<const uint32_t*>(p);
  }
  __device__ static uint4 staged(uint4 v) {
    return {to_tf32(__uint_as_float(v.x)), to_tf32(__uint_as_float(v.y)),
            to_tf32(__uint_as_float(v.z)), to_tf32(__uint_as_float(v.w))};
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

enum class PersistentBarrier { kGrid, kFlags };

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
// bar.sync on barrier `id` (1-15; 0 is __syncthreads()) for `threads` threads, whole warps.
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// The plan's sizes the kernel reads at run time.
struct TensorCoreTiling {
  int k_tiles, batch_pad, h_pitch, part_pitch;
};

// flags: one per block, zero at launch (kFlags).
template <typename Cell, typename scalar_t, int kKTileBound, PersistentBarrier kBarrier>
__global__ void __launch_bounds__(32 * Cell::kGates * kTensorCoreKSplits, 1)
    tensor_core_layer_kernel(const SequenceParams<scalar_t> p, const TensorCoreTiling tiling,
                             unsigned* flags) {
  using Format = TileFormat<scalar_t>;
  constexpr int G = Cell::kGates, kSplits = kTensorCoreKSplits, kUnits = kTensorCoreUnits;
  constexpr int kThreads = 32 * G * kSplits;
  constexpr int kPerVector = 16 / sizeof(scalar_t);  // h is staged 16 bytes at a time
  extern __shared__ __align__(16) unsigned char shared[];
  const int H = static_cast<int>(p.hidden), B = static_cast<int>(p.batch);
  const int pitch = tiling.h_pitch, part_pitch = tiling.part_pitch;
  const int n_tiles = tiling.batch_pad / 8;
  scalar_t* s_h = reinterpret_cast<scalar_t*>(shared);            // [batch_pad][pitch]
  float* s_part = reinterpret_cast<float*>(s_h + tiling.batch_pad * pitch);
  float* s_c = s_part + kSplits * G * kUnits * part_pitch;        // [B][kUnits] (LSTM)
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int tile = warp % G, split = warp / G;
  const int j0 = blockIdx.x * kUnits;
  const int k_tile0 = split * tiling.k_tiles;
  const int k_tile_count = min(tiling.k_tiles, H / 16 - k_tile0);  // <= 0: this warp adds zeros

  // This warp's tile of W_hh over its K share, for every step.
  uint32_t a[kKTileBound][Format::kARegs];
#pragma unroll
  for (int kt = 0; kt < kKTileBound; ++kt) {
#pragma unroll
    for (int r = 0; r < Format::kARegs; ++r) {
      const TileRow row = tensor_core_tile_row(G, tile, mma::a_row(lane, r));
      const int64_t w_row = static_cast<int64_t>(row.gate) * H + j0 + row.unit;
      a[kt][r] = kt < k_tile_count ? Format::load_a(p.w_hh + w_row * H + 16 * (k_tile0 + kt) +
                                                    Format::a_col(lane, r))
                                   : 0u;
    }
  }
  // The padding rows of h stay zero; their columns of the products are never read.
  for (int e = B * pitch + tid; e < tiling.batch_pad * pitch; e += kThreads) {
    s_h[e] = scalar_t(0.0f);
  }
  if constexpr (Cell::kCarriesCell) {
    for (int e = tid; e < B * kUnits; e += kThreads) {
      s_c[e] = static_cast<float>(p.c0[(e / kUnits) * H + j0 + e % kUnits]);
    }
  }
  __syncthreads();  // (the flag barrier's groups meet only at their own barriers before (ii))

  for (int64_t i = 0; i < p.steps; ++i) {
    const int64_t t = p.reverse ? p.steps - 1 - i : i;
    const scalar_t* h_prev = i == 0 ? p.h0 : p.output + (p.reverse ? t + 1 : t - 1) * B * H;
    // (i) h, 8 elements (16 bytes) at a time, through L2: other SMs wrote it. With flags, each
    // group of warps sharing a K share waits for its producers and stages its own columns.
    if constexpr (kBarrier == PersistentBarrier::kFlags) {
      const int group_threads = 32 * G, group_tid = tid - split * group_threads;
      if (i > 0 && tile == 0) {
        for (int q = k_tile0 + lane; q < k_tile0 + k_tile_count; q += 32) {
          while (published_steps(flags + q) < static_cast<unsigned>(i)) {
          }
        }
        __syncwarp();
      }
      named_barrier(1 + split, group_threads);
      const int vectors = 16 / kPerVector * max(k_tile_count, 0);
      for (int e = group_tid; e < B * vectors; e += group_threads) {
        const int b = e / vectors, k = 16 * k_tile0 + kPerVector * (e % vectors);
        *reinterpret_cast<uint4*>(s_h + b * pitch + k) = Format::staged(
            __ldcg(reinterpret_cast<const uint4*>(h_prev + static_cast<int64_t>(b) * H + k)));
      }
      named_barrier(1 + split, group_threads);
    } else {
      const int vectors = H / kPerVector;
      for (int e = tid; e < B * vectors; e += kThreads) {
        const int b = e / vectors, k = kPerVector * (e % vectors);
        *reinterpret_cast<uint4*>(s_h + b * pitch + k) = Format::staged(
            __ldcg(reinterpret_cast<const uint4*>(h_prev + static_cast<int64_t>(b) * H + k)));
      }
      __syncthreads();
    }

    // (ii) Two n-tiles at a time: two independent accumulator chains.
    for (int nt0 = 0; nt0 < n_tiles; nt0 += 2) {
      const bool second = nt0 + 1 < n_tiles;
      float acc[2][4] = {};
#pragma unroll
      for (int kt = 0; kt < kKTileBound; ++kt) {
        if (kt < k_tile_count) {
          const int k = 16 * (k_tile0 + kt);
#pragma unroll
          for (int n = 0; n < 2; ++n) {
            if (n == 0 || second) {
              const scalar_t* column = s_h + (8 * (nt0 + n) + mma::b_col(lane)) * pitch + k;
              uint32_t b[Format::kBRegs];
#pragma unroll
              for (int r = 0; r < Format::kBRegs; ++r) {
                b[r] = Format::load_b(column + Format::b_row(lane, r));
              }
              Format::mma(acc[n], a[kt], b);
            }
          }
        }
      }
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        if (n == 0 || second) {
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int row = (split * G + tile) * 16 + mma::c_row(lane, c);
            s_part[row * part_pitch + 8 * (nt0 + n) + mma::c_col(lane, c)] = acc[n][c];
          }
        }
      }
    }
    __syncthreads();

    // (iii) Consecutive threads take consecutive units of a row: the stores of h, c and the
    // saved activations coalesce.
    for (int e = tid; e < B * kUnits; e += kThreads) {
      const int b = e / kUnits, u = e % kUnits;
      float hidden_side[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int row = tensor_core_block_row(G, u, g);
        float sum = 0.0f;
#pragma unroll
        for (int s = 0; s < kSplits; ++s) sum += s_part[(s * G * 16 + row) * part_pitch + b];
        hidden_side[g] = sum;
      }
      // (From global memory, not s_h, which holds TF32-rounded floats: this block's own units,
      // written by this SM, or h0.)
      const float h_prev_value = static_cast<float>(h_prev[static_cast<int64_t>(b) * H + j0 + u]);
      if constexpr (Cell::kCarriesCell) {
        Cell::finish(p, t, b, j0 + u, hidden_side, h_prev_value, s_c[e]);
      } else {
        float no_cell = 0.0f;
        Cell::finish(p, t, b, j0 + u, hidden_side, h_prev_value, no_cell);
      }
    }
    // (iv) Every block's h of this step is written and visible before any block stages it; the
    // barrier also keeps s_h and s_part until this block's threads are done with them.
    if constexpr (kBarrier == PersistentBarrier::kFlags) {
      __syncthreads();
      if (tid == 0) publish_steps(flags + blockIdx.x, static_cast<unsigned>(i + 1));
    } else {
      cooperative_groups::this_grid().sync();
    }
  }
}

template <typename Cell, typename scalar_t, int kKTileBound, PersistentBarrier kBarrier>
void launch_bounded(const SequenceParams<scalar_t>& p, const TensorCorePlan& plan,
                    unsigned* flags) {
  auto* kernel = &tensor_core_layer_kernel<Cell, scalar_t, kKTileBound, kBarrier>;
  const int shared_bytes = static_cast<int>(plan.shared_bytes);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      shared_bytes));
  int blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks_per_sm, kernel, static_cast<int>(plan.threads), shared_bytes));
  TORCH_CHECK(blocks_per_sm >= 1, "fused_rnn: the tensor-core persistent kernel (", plan.threads,
              " threads, ", shared_bytes, " bytes of shared memory) does not fit on an SM");
  SequenceParams<scalar_t> params = p;
  TensorCoreTiling tiling{static_cast<int>(plan.k_tiles), static_cast<int>(plan.batch_pad),
                          static_cast<int>(plan.h_pitch), static_cast<int>(plan.part_pitch)};
  void* args[] = {&params, &tiling, &flags};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(kernel), dim3(static_cast<unsigned>(plan.blocks)),
      dim3(static_cast<unsigned>(plan.threads)), args, plan.shared_bytes,
      at::cuda::getCurrentCUDAStream()));
}

template <typename Cell, typename scalar_t, PersistentBarrier kBarrier>
void launch_with_barrier(const SequenceParams<scalar_t>& p, const TensorCorePlan& plan,
                         unsigned* flags) {
  // The bounds the dtype's registers allow (plan_tensor_core_layer's limit).
  constexpr int kMaxBound = kTensorCoreWeightRegisters / TileFormat<scalar_t>::kARegs;
  static_assert(kMaxBound == 8 || kMaxBound == 16, "one case per bound below");
  switch (plan.k_tile_bound) {
    case 4: return launch_bounded<Cell, scalar_t, 4, kBarrier>(p, plan, flags);
    case 8: return launch_bounded<Cell, scalar_t, 8, kBarrier>(p, plan, flags);
  }
  if constexpr (kMaxBound == 16) {
    switch (plan.k_tile_bound) {
      case 12: return launch_bounded<Cell, scalar_t, 12, kBarrier>(p, plan, flags);
      case 16: return launch_bounded<Cell, scalar_t, 16, kBarrier>(p, plan, flags);
    }
  }
  TORCH_CHECK(false, "fused_rnn: no tensor-core kernel for ", plan.k_tile_bound, " k-tiles");
}

template <typename Cell, typename scalar_t>
void launch_tensor_core_layer(const SequenceParams<scalar_t>& p, const TensorCorePlan& plan,
                              bool flag_barrier, const at::Tensor& flags) {
  if (flag_barrier) {
    launch_with_barrier<Cell, scalar_t, PersistentBarrier::kFlags>(
        p, plan, reinterpret_cast<unsigned*>(flags.data_ptr<int32_t>()));
  } else {
    launch_with_barrier<Cell, scalar_t, PersistentBarrier::kGrid>(p, plan, nullptr);
  }
}

}  // namespace fused_rnn::cuda
