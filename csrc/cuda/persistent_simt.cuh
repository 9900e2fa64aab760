// The SIMT persistent forward of the LSTM and GRU layers (persistent_plan.h's
// plan_persistent_layer; persistent_layer.cu chooses and launches it): block k owns hidden units
// [k*U, (k+1)*U), keeps their G gate rows of W_hh in shared memory for the whole sequence, and per
// step stages the previous h of the whole batch in shared memory, computes its units' hidden-side
// products (one warp per (row, unit) pair, the lanes splitting the reduction), finishes them with
// the cell's step (persistent_cells.cuh) and meets the other blocks at grid.sync() before the next
// step reads the new h. The LSTM's cell states of its units stay in shared memory. Device code on
// device_primitives.cuh (or the CPU emulator's, tests/emulator).
#pragma once

#include "persistent_cells.cuh"
#ifndef FUSED_RNN_EMULATED_DEVICE
#include "device_primitives.cuh"
#endif

#include <ATen/OpMathType.h>

#include <cstdint>

namespace fused_rnn::cuda {

constexpr int kSimtThreads = 256;

template <typename Cell, typename scalar_t>
__global__ void __launch_bounds__(kSimtThreads, 1)
    persistent_layer_kernel(const SequenceParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = Cell::kGates;
  constexpr int kWarps = kSimtThreads / 32;
  unsigned char* shared = dynamic_shared_memory();
  const int64_t H = p.hidden, B = p.batch, U = p.units;
  const int64_t j0 = blockIdx.x * U;
  const int64_t units = U < H - j0 ? U : H - j0;
  // Layout (persistent_plan.h): W_hh slice [G][U][H] in the dtype, 16-byte aligned, then the
  // previous h [B][H] and (LSTM) the cell states [B][U] in the accumulation type.
  scalar_t* s_w = reinterpret_cast<scalar_t*>(shared);
  acc_t* s_h = reinterpret_cast<acc_t*>(shared + (G * U * H * sizeof(scalar_t) + 15) / 16 * 16);
  acc_t* s_c = s_h + B * H;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  for (int64_t e = tid; e < G * units * H; e += kSimtThreads) {
    const int64_t g = e / (units * H), u = (e / H) % units, k = e % H;
    s_w[(g * U + u) * H + k] = p.w_hh[(g * H + j0 + u) * H + k];
  }
  if constexpr (Cell::kCarriesCell) {
    for (int64_t e = tid; e < B * units; e += kSimtThreads) {
      s_c[(e / units) * U + e % units] = static_cast<acc_t>(p.c0[(e / units) * H + j0 + e % units]);
    }
  }

  for (int64_t i = 0; i < p.steps; ++i) {
    const int64_t t = p.reverse ? p.steps - 1 - i : i;
    // The previous step's h, written by every block before the barrier. Each step reads rows no
    // block of this launch has read before, so no stale line can sit in an SM's L1.
    const scalar_t* h_prev =
        i == 0 ? p.h0 : p.output + (p.reverse ? t + 1 : t - 1) * B * H;
    for (int64_t e = tid; e < B * H; e += kSimtThreads) s_h[e] = static_cast<acc_t>(h_prev[e]);
    __syncthreads();

    for (int64_t pair = warp; pair < B * units; pair += kWarps) {
      const int64_t b = pair / units, u = pair % units;
      acc_t acc[G];
#pragma unroll
      for (int g = 0; g < G; ++g) acc[g] = acc_t(0);
      for (int64_t k = lane; k < H; k += 32) {
        const acc_t h = s_h[b * H + k];
#pragma unroll
        for (int g = 0; g < G; ++g) acc[g] += h * static_cast<acc_t>(s_w[(g * U + u) * H + k]);
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) {
          acc[g] += __shfl_xor_sync(0xffffffffu, acc[g], offset);
        }
      }
      if (lane == 0) {
        const int64_t row = t * B + b;
        const auto in = input_side<G, acc_t>(p, row, j0 + u);
        if constexpr (Cell::kCarriesCell) {
          Cell::finish(p, row, b, j0 + u, in, acc, s_h[b * H + j0 + u], s_c[b * U + u]);
        } else {
          acc_t no_cell = acc_t(0);
          Cell::finish(p, row, b, j0 + u, in, acc, s_h[b * H + j0 + u], no_cell);
        }
      }
    }
    // Every block's h of this step is written (and visible) before any block reads it; the
    // barrier also keeps this block's s_h until all its warps are done with it.
    grid_sync();
  }
}

}  // namespace fused_rnn::cuda
