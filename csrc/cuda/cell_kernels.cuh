// The CUDA cell kernels (cells_cuda.cu launches them): a cell op's step (the tiled kernel and a
// warp per hidden unit), a layer step's gate math after its hidden product (step_gates_kernel),
// and the gate gradients of a step; with the launch geometry the launchers and the CPU emulation
// (tests/emulator) share. The gate math is cell_math.h's.
#pragma once

#include "../cell_math.h"
#include "kernel_helpers.cuh"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>

namespace fused_rnn::cuda {

constexpr int kTileUnits = 32;  // threadIdx.x: one hidden unit per lane of a warp
constexpr int kTileBatch = 8;   // threadIdx.y: one batch row per warp
constexpr int kTileK = 32;      // reduction chunk staged in shared memory
constexpr int kThreads = kTileUnits * kTileBatch;

// Pointers and sizes of one cell step; every tensor is contiguous. Biases may be null.
template <typename scalar_t>
struct CellParams {
  const scalar_t* input;  // [B, I] (a cell op), or null
  const scalar_t* xproj;  // [B, G*H]: a layer step's input side, biases it holds included; or null
  const scalar_t* hproj;  // [B, G*H]: a layer step's hidden product (no bias); or null
  const scalar_t* hx;     // [B, P]
  const scalar_t* cx;     // [B, H] (LSTM only)
  const scalar_t* w_ih;   // [G*H, I] (a cell op), or null
  const scalar_t* w_hh;   // [G*H, P] (a cell op), or null
  const scalar_t* b_ih;   // [G*H] or null
  const scalar_t* b_hh;   // [G*H] or null
  scalar_t* hy;           // [B, H]
  scalar_t* cy;           // [B, H] (LSTM only)
  scalar_t* saved;        // LSTM: gates [B, 4H] (may be xproj itself); GRU: workspace [B, 4H]
  int64_t batch, input_size, hidden, state_size;  // B, I, H, P (P = H but for LSTM projections)
  // Zoneout's weights of the new h and c ([B, H]; P = H), or null: hy and cy receive the states
  // carried on.
  const scalar_t *zoneout_h, *zoneout_c;
};

// acc[g] += act[b, :] . w[g*H + j, :] for the block's tile, where (b, j) is this thread's unit.
// Every thread of the block must call it (it synchronises), in or out of range.
template <typename scalar_t, int G>
__device__ __forceinline__ void accumulate_gate_products(const scalar_t* __restrict__ act,
                                         const scalar_t* __restrict__ w, int64_t K, int64_t H,
                                         int64_t batch, int64_t b0, int64_t j0,
                                         at::opmath_type<scalar_t> (&acc)[G]) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t s_act[kTileBatch][kTileK];
  // +1 column: lanes read different units at the same k, so pad away bank conflicts.
  __shared__ acc_t s_w[G][kTileUnits][kTileK + 1];
  const int tid = threadIdx.y * kTileUnits + threadIdx.x;

  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    for (int e = tid; e < kTileBatch * kTileK; e += kThreads) {
      const int row = e / kTileK, kk = e % kTileK;
      const int64_t b = b0 + row, k = k0 + kk;
      s_act[row][kk] = (b < batch && k < K) ? static_cast<acc_t>(act[b * K + k]) : acc_t(0);
    }
    for (int e = tid; e < G * kTileUnits * kTileK; e += kThreads) {
      const int g = e / (kTileUnits * kTileK);
      const int jj = (e / kTileK) % kTileUnits, kk = e % kTileK;
      const int64_t j = j0 + jj, k = k0 + kk;
      s_w[g][jj][kk] = (j < H && k < K) ? static_cast<acc_t>(w[(g * H + j) * K + k]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTileK; ++kk) {
      const acc_t a = s_act[threadIdx.y][kk];
#pragma unroll
      for (int g = 0; g < G; ++g) acc[g] += a * s_w[g][threadIdx.x][kk];
    }
    __syncthreads();
  }
}

template <typename scalar_t>
__device__ at::opmath_type<scalar_t> load_bias(const scalar_t* b, int64_t row) {
  return b ? static_cast<at::opmath_type<scalar_t>>(b[row]) : at::opmath_type<scalar_t>(0);
}

// The cell kinds' step updates from their gates' two sides (x: input, h: hidden).
struct LstmUpdate {
  static constexpr int kGates = kLstmGates;
  template <typename scalar_t, typename acc_t>
  __device__ static void finish(const CellParams<scalar_t>& p, int64_t b, int64_t j,
                                const acc_t (&x)[kGates], const acc_t (&h)[kGates]) {
    const int64_t H = p.hidden;
    acc_t a[kGates];
#pragma unroll
    for (int g = 0; g < kGates; ++g) {
      a[g] = x[g] + load_bias(p.b_ih, g * H + j) + h[g] + load_bias(p.b_hh, g * H + j);
    }
    const int64_t u = b * H + j;
    const acc_t c = acc_t(p.cx[u]);
    const auto st = lstm_step_forward<acc_t>(a[0], a[1], a[2], a[3], c);
    scalar_t* saved = p.saved + b * kLstmSaved * H;
    store_lstm_saved(st, [&](int64_t k, acc_t v) { saved[k * H + j] = static_cast<scalar_t>(v); });
    p.cy[u] = static_cast<scalar_t>(
        p.zoneout_c ? zoneout(c, st.c_new, acc_t(p.zoneout_c[u])) : st.c_new);
    p.hy[u] = static_cast<scalar_t>(
        p.zoneout_h ? zoneout(acc_t(p.hx[u]), st.h_new, acc_t(p.zoneout_h[u])) : st.h_new);
  }
};

struct GruUpdate {
  static constexpr int kGates = kGruGates;
  template <typename scalar_t, typename acc_t>
  __device__ static void finish(const CellParams<scalar_t>& p, int64_t b, int64_t j,
                                const acc_t (&x)[kGates], const acc_t (&h)[kGates]) {
    const int64_t H = p.hidden;
    acc_t xb[kGates], hb[kGates];
#pragma unroll
    for (int g = 0; g < kGates; ++g) {
      xb[g] = x[g] + load_bias(p.b_ih, g * H + j);
      hb[g] = h[g] + load_bias(p.b_hh, g * H + j);
    }
    const int64_t u = b * H + j;  // a GRU's state is [B, H]: P = H
    const acc_t h_prev = acc_t(p.hx[u]);
    const auto st = gru_step_forward<acc_t>(xb[0], xb[1], xb[2], hb[0], hb[1], hb[2], h_prev);
    scalar_t* saved = p.saved + b * kGruSaved * H;
    store_gru_saved(st, [&](int64_t k, acc_t v) { saved[k * H + j] = static_cast<scalar_t>(v); });
    p.hy[u] = static_cast<scalar_t>(
        p.zoneout_h ? zoneout(h_prev, st.h_new, acc_t(p.zoneout_h[u])) : st.h_new);
  }
};

// A cell op's step at small batches: a warp per hidden unit, its lanes splitting K (coalesced
// reads of the unit's G rows of each weight, once per kUnitRowsPerPass batch rows), the sums
// reduced across the warp, lane r finishing row r of the pass. H warps keep the GPU's SMs busy
// where the tiled kernel's few blocks (B/8 x H/32) would leave most of them idle (at B=1 H=512:
// 16 blocks, each streaming 512 KB of weights through shared memory; NOTES entry 63).
constexpr int kUnitRowsPerPass = 8;

// acc[r][g] += act[b0 + r, :] . w[g*H + j, :] for the pass's rows r < rows, this lane's share of
// K (the warp's lanes sum to the whole).
template <typename scalar_t, int G, typename acc_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ void unit_products(const scalar_t* __restrict__ act,
                                              const scalar_t* __restrict__ w, int64_t K,
                                              int64_t H, int64_t j, int64_t b0, int rows,
                                              acc_t (&acc)[kUnitRowsPerPass][G]) {
  const int lane = threadIdx.x % 32;
#pragma unroll 2
  for (int64_t k = lane; k < K; k += 32) {
    acc_t weight[G];
#pragma unroll
    for (int g = 0; g < G; ++g) weight[g] = static_cast<acc_t>(w[(g * H + j) * K + k]);
#pragma unroll
    for (int r = 0; r < kUnitRowsPerPass; ++r) {
      if (r < rows) {
        const acc_t a = static_cast<acc_t>(act[(b0 + r) * K + k]);
#pragma unroll
        for (int g = 0; g < G; ++g) acc[r][g] += a * weight[g];
      }
    }
  }
}

// The warp's partial sums of rows r < rows, summed over its lanes (every lane gets the sums).
template <typename acc_t, int G>
__device__ __forceinline__ void warp_sums(acc_t (&acc)[kUnitRowsPerPass][G], int rows) {
#pragma unroll
  for (int r = 0; r < kUnitRowsPerPass; ++r) {
    if (r < rows) {
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) {
          acc[r][g] += __shfl_xor_sync(0xffffffffu, acc[r][g], offset);
        }
      }
    }
  }
}

template <typename Update, typename scalar_t>
__global__ void __launch_bounds__(kThreads) cell_forward_unit_kernel(const CellParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = Update::kGates;
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (j >= p.hidden) return;  // (a whole warp)
  const int lane = threadIdx.x % 32;
  for (int64_t b0 = 0; b0 < p.batch; b0 += kUnitRowsPerPass) {
    const int rows = static_cast<int>(std::min<int64_t>(kUnitRowsPerPass, p.batch - b0));
    acc_t x[kUnitRowsPerPass][G], h[kUnitRowsPerPass][G];
#pragma unroll
    for (int r = 0; r < kUnitRowsPerPass; ++r) {
#pragma unroll
      for (int g = 0; g < G; ++g) x[r][g] = h[r][g] = acc_t(0);
    }
    unit_products<scalar_t, G>(p.input, p.w_ih, p.input_size, p.hidden, j, b0, rows, x);
    unit_products<scalar_t, G>(p.hx, p.w_hh, p.state_size, p.hidden, j, b0, rows, h);
    warp_sums<acc_t, G>(x, rows);
    warp_sums<acc_t, G>(h, rows);
#pragma unroll
    for (int r = 0; r < kUnitRowsPerPass; ++r) {
      if (r < rows && lane == r) Update::finish(p, b0 + r, j, x[r], h[r]);
    }
  }
}

// A cell op's step. Grid: x over batch tiles, y over unit tiles. Block: kTileUnits x kTileBatch
// threads.
template <typename Update, typename scalar_t>
__global__ void __launch_bounds__(kThreads, 2) cell_forward_kernel(const CellParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = Update::kGates;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kTileBatch;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kTileUnits;
  const int64_t b = b0 + threadIdx.y, j = j0 + threadIdx.x;
  const bool in_range = b < p.batch && j < p.hidden;
  acc_t x[G], h[G];
#pragma unroll
  for (int g = 0; g < G; ++g) x[g] = h[g] = acc_t(0);
  accumulate_gate_products<scalar_t, G>(p.input, p.w_ih, p.input_size, p.hidden, p.batch, b0, j0,
                                        x);
  accumulate_gate_products<scalar_t, G>(p.hx, p.w_hh, p.state_size, p.hidden, p.batch, b0, j0, h);
  if (in_range) Update::finish(p, b, j, x, h);
}

constexpr int kPointwiseThreads = 256;

// A layer's step after its hidden product: one thread per unit (b, j), grid-stride, over p.xproj
// and p.hproj. The LSTM's saved is xproj itself: each thread reads its entries before it writes
// them.
template <typename Update, typename scalar_t>
__global__ void __launch_bounds__(kPointwiseThreads)
    step_gates_kernel(const CellParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = Update::kGates;
  const int64_t n = p.batch * p.hidden;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < n;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = u / p.hidden, j = u % p.hidden;
    acc_t x[G], h[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      x[g] = static_cast<acc_t>(p.xproj[(b * G + g) * p.hidden + j]);
      h[g] = static_cast<acc_t>(p.hproj[(b * G + g) * p.hidden + j]);
    }
    Update::finish(p, b, j, x, h);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward pointwise passes: one thread per unit (b, j), grid-stride. The previous state's
// gradient may be written over the incoming one (each thread reads its entry first), so those
// pointers are not __restrict__.

// With zoneout, c_new holds the carried state and c' is rebuilt from the gates; grad_h_direct
// (which may be grad_h) receives the part of grad_h that goes straight to the state before.
// grad_out (or null): the step's output gradient, added to grad_h here.
template <typename scalar_t>
__global__ void lstm_gate_grads_kernel(const scalar_t* grad_h,
                                       const scalar_t* __restrict__ grad_out,
                                       const scalar_t* grad_c,
                                       const scalar_t* __restrict__ gates,
                                       const scalar_t* __restrict__ c_prev,
                                       const scalar_t* __restrict__ c_new,
                                       scalar_t* __restrict__ grad_gates, scalar_t* grad_c_prev,
                                       const scalar_t* __restrict__ zoneout_h,
                                       const scalar_t* __restrict__ zoneout_c,
                                       scalar_t* grad_h_direct, int64_t batch, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = batch * H;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < n;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = u / H, j = u % H;
    const scalar_t* saved = gates + b * kLstmSaved * H;
    const auto gate = [&](int64_t k) { return acc_t(saved[k * H + j]); };
    const acc_t c = acc_t(c_prev[u]);
    const auto dh = new_state_grad<acc_t>(grad_h, zoneout_h, u, grad_out);
    const auto dc = new_state_grad<acc_t>(grad_c, zoneout_c, u);
    const acc_t c_out = zoneout_c ? lstm_new_cell_state(gate(0), gate(1), gate(2), c)
                                  : acc_t(c_new[u]);
    const auto d = lstm_step_backward<acc_t>(gate, c, c_out, dh.next, dc.next);
    scalar_t* grow = grad_gates + b * kLstmGates * H;
    store_lstm_gate_grads(d, [&](int64_t g, acc_t v) { grow[g * H + j] = static_cast<scalar_t>(v); });
    grad_c_prev[u] = static_cast<scalar_t>(d.c + dc.before);
    if (zoneout_h) grad_h_direct[u] = static_cast<scalar_t>(dh.before);
  }
}

template <typename scalar_t>
__global__ void gru_gate_grads_kernel(const scalar_t* grad_h,
                                      const scalar_t* __restrict__ grad_out,
                                      const scalar_t* __restrict__ h_prev,
                                      const scalar_t* __restrict__ workspace,
                                      scalar_t* __restrict__ grad_input_gates,
                                      scalar_t* __restrict__ grad_hidden_gates,
                                      scalar_t* grad_h_direct,
                                      const scalar_t* __restrict__ zoneout_h, int64_t batch,
                                      int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = batch * H;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < n;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = u / H, j = u % H;
    const scalar_t* ws = workspace + b * kGruSaved * H;
    const auto dh = new_state_grad<acc_t>(grad_h, zoneout_h, u, grad_out);
    const auto d = gru_step_backward<acc_t>([&](int64_t k) { return acc_t(ws[k * H + j]); },
                                            acc_t(h_prev[u]), dh.next);
    scalar_t* gi = grad_input_gates + b * kGruGates * H;
    scalar_t* gh = grad_hidden_gates + b * kGruGates * H;
    store_gru_gate_grads(
        d, [&](int64_t g, acc_t v) { gi[g * H + j] = static_cast<scalar_t>(v); },
        [&](int64_t g, acc_t v) { gh[g * H + j] = static_cast<scalar_t>(v); });
    grad_h_direct[u] = static_cast<scalar_t>(d.h + dh.before);
  }
}

// ---------------------------------------------------------------------------------------------
// Launch geometry.

// The pointwise kernels' blocks: enough to fill the GPU several times over; they stride over the
// rest.
inline unsigned pointwise_blocks(int64_t units, int64_t sm_count) {
  const int64_t wanted = (units + kPointwiseThreads - 1) / kPointwiseThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, sm_count * 32)));
}

// A cell op's launch: a warp per unit (cell_forward_unit_kernel, x blocks of kThreads) where the
// tiled kernel's tiles would be fewer than the SMs, else the tiled kernel (cell_forward_kernel;
// x over batch tiles, y over unit tiles, blocks of kTileUnits x kTileBatch).
struct CellStepGrid {
  bool unit_warps;
  int64_t x, y;
};
inline CellStepGrid cell_step_grid(int64_t batch, int64_t hidden, int64_t sm_count) {
  const int64_t batch_tiles = (batch + kTileBatch - 1) / kTileBatch;
  const int64_t unit_tiles = (hidden + kTileUnits - 1) / kTileUnits;
  if (batch_tiles * unit_tiles < sm_count) {
    return {true, (hidden * 32 + kThreads - 1) / kThreads, 1};
  }
  return {false, batch_tiles, unit_tiles};
}

}  // namespace fused_rnn::cuda
