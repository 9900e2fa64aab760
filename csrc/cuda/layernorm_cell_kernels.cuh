// The layer-normalized LSTM's and GRU's CUDA kernels (layernorm_cells_cuda.cu launches them; math
// in layernorm_cell_math.h): a step's gate math after its two products, and its gate gradients,
// each a block of kRowThreads per batch row, which reduces the row's statistics in shared memory.
#pragma once

#include "../layernorm_cell_ops.h"
#include "kernel_helpers.cuh"

#include <ATen/OpMathType.h>

#include <cstdint>

namespace fused_rnn::cuda {

constexpr int kRowThreads = 256;
constexpr int kRowWarps = kRowThreads / 32;

// The sum of v over the block's threads, returned to every thread. Every thread must call it;
// `scratch` holds kRowWarps values, and is free again when it returns.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = T(0);
  for (int w = 0; w < kRowWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// A row of n values' mean and rstd, two passes over it (every thread of the block).
template <typename T>
__device__ RowStats<T> block_row_stats(const T* v, int64_t n, T* scratch) {
  T sum = T(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) sum += v[k];
  const T mean = block_sum(sum, scratch) / T(n);
  T squares = T(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) squares += (v[k] - mean) * (v[k] - mean);
  return {mean, rstd_from(block_sum(squares, scratch), n)};
}

// The LN backward of one side of a row, from the pre-activations' gradient d, the side's x_hat,
// rstd and LN weight: writes the raw product's gradient.
template <typename acc_t, typename scalar_t>
__device__ void block_layer_norm_backward(int64_t n, const acc_t* d, const acc_t* x_hat,
                                          acc_t rstd, const scalar_t* weight, acc_t* grad_raw,
                                          acc_t* scratch) {
  acc_t sum = acc_t(0), sum_x_hat = acc_t(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const acc_t dx_hat = d[k] * acc_t(weight[k]);
    sum += dx_hat;
    sum_x_hat += dx_hat * x_hat[k];
  }
  const acc_t mean = block_sum(sum, scratch) / acc_t(n);
  const acc_t mean_x_hat = block_sum(sum_x_hat, scratch) / acc_t(n);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    grad_raw[k] =
        layer_norm_input_grad(d[k] * acc_t(weight[k]), x_hat[k], rstd, mean, mean_x_hat);
  }
}

// ---------------------------------------------------------------------------------------------
// LSTM. Saved row: [i f g o (4H) | x_hat_ih (4H) | x_hat_hh (4H) | c_hat (H) | rstd ih, hh, c].

template <typename scalar_t>
struct LstmForwardParams {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t *x_proj, *h_proj;  // [B, 4H] raw products
  const scalar_t* c_prev;        // [B, H]
  const scalar_t *b_ih, *b_hh;   // [4H] or null
  const scalar_t *wi, *bi, *wh, *bh, *wc, *bc;  // the norms
  scalar_t *h_out, *c_out;       // [B, H]
  acc_t* saved;                  // [B, 13H + 3]
  int64_t hidden;
  // Zoneout (StepTensors'): its weights of the new h and c, and h_prev [B, H]; or null.
  const scalar_t *zoneout_h = nullptr, *zoneout_c = nullptr, *h_prev = nullptr;
};

template <typename scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    layernorm_lstm_forward_kernel(const LstmForwardParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kRowWarps];
  const int64_t b = blockIdx.x, H = p.hidden, G = kLstmGates;
  const acc_t *x = p.x_proj + b * G * H, *h = p.h_proj + b * G * H;
  acc_t* row = p.saved + b * LayerNormLstmCell::saved_columns(H);
  acc_t *gates = row, *x_hat_ih = row + G * H, *x_hat_hh = row + 2 * G * H;
  acc_t* c_hat = row + 3 * G * H;
  acc_t* rstd = row + kLayerNormLstmSavedPerUnit * H;
  const RowStats<acc_t> ih = block_row_stats(x, G * H, scratch);
  const RowStats<acc_t> hh = block_row_stats(h, G * H, scratch);
  for (int64_t k = threadIdx.x; k < G * H; k += blockDim.x) {
    x_hat_ih[k] = (x[k] - ih.mean) * ih.rstd;
    x_hat_hh[k] = (h[k] - hh.mean) * hh.rstd;
  }
  __syncthreads();
  const auto pre = [&](int64_t k) {
    acc_t a = x_hat_ih[k] * acc_t(p.wi[k]) + acc_t(p.bi[k]) + x_hat_hh[k] * acc_t(p.wh[k]) +
              acc_t(p.bh[k]);
    if (p.b_ih) a += acc_t(p.b_ih[k]);
    if (p.b_hh) a += acc_t(p.b_hh[k]);
    return a;
  };
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const auto st = layernorm_lstm_gates<acc_t>(pre(j), pre(H + j), pre(2 * H + j),
                                                pre(3 * H + j), acc_t(p.c_prev[b * H + j]));
    gates[j] = st.i;
    gates[H + j] = st.f;
    gates[2 * H + j] = st.g;
    gates[3 * H + j] = st.o;
    // The cell state carried on is the dtype's; LN_c reads it so (c_hat holds c' for now).
    const scalar_t c_new = static_cast<scalar_t>(st.c_new);
    p.c_out[b * H + j] = c_new;
    c_hat[j] = acc_t(c_new);
  }
  __syncthreads();
  const RowStats<acc_t> c = block_row_stats(c_hat, H, scratch);
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    c_hat[j] = (c_hat[j] - c.mean) * c.rstd;
    const acc_t y = c_hat[j] * acc_t(p.wc[j]) + acc_t(p.bc[j]);
    const int64_t u = b * H + j;
    const acc_t h_new = layernorm_lstm_hidden(gates[3 * H + j], y);
    p.h_out[u] = static_cast<scalar_t>(
        p.zoneout_h ? zoneout(acc_t(p.h_prev[u]), h_new, acc_t(p.zoneout_h[u])) : h_new);
    // (c_out holds c' until here, written by this thread.)
    if (p.zoneout_c) {
      p.c_out[u] = static_cast<scalar_t>(
          zoneout(acc_t(p.c_prev[u]), acc_t(p.c_out[u]), acc_t(p.zoneout_c[u])));
    }
  }
  if (threadIdx.x == 0) {
    rstd[0] = ih.rstd;
    rstd[1] = hh.rstd;
    rstd[2] = c.rstd;
  }
}

template <typename scalar_t>
struct LstmBackwardParams {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* saved;
  const scalar_t *grad_h, *grad_c, *c_prev;  // [B, H]
  const scalar_t *wi, *wh, *wc, *bc;         // the norms the backward reads
  acc_t* grad_pre;                           // [B, 5H]: the pre-activations' | LN_c output's
  acc_t *grad_x_proj, *grad_h_proj;          // [B, 4H]
  scalar_t* grad_c_prev;                     // [B, H], may be grad_c
  int64_t hidden;
  // Zoneout (GateGradTensors'): its weights, and where the part of grad_h that goes straight
  // to the state before goes (may be grad_h); or null.
  const scalar_t *zoneout_h = nullptr, *zoneout_c = nullptr;
  scalar_t* grad_h_direct = nullptr;
};

template <typename scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    layernorm_lstm_backward_kernel(const LstmBackwardParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kRowWarps];
  const int64_t b = blockIdx.x, H = p.hidden, G = kLstmGates;
  const acc_t* row = p.saved + b * LayerNormLstmCell::saved_columns(H);
  const acc_t *gates = row, *x_hat_ih = row + G * H, *x_hat_hh = row + 2 * G * H;
  const acc_t* c_hat = row + 3 * G * H;
  const acc_t* rstd = row + kLayerNormLstmSavedPerUnit * H;
  acc_t* d = p.grad_pre + b * (G + 1) * H;
  acc_t* dy = d + G * H;
  acc_t sum = acc_t(0), sum_c_hat = acc_t(0);
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const acc_t y = c_hat[j] * acc_t(p.wc[j]) + acc_t(p.bc[j]);
    // grad_h_direct may be grad_h: this thread reads entry j before it writes it.
    const auto grad_h = new_state_grad<acc_t>(p.grad_h, p.zoneout_h, b * H + j);
    if (p.zoneout_h) p.grad_h_direct[b * H + j] = static_cast<scalar_t>(grad_h.before);
    const auto out = layernorm_lstm_output_grad(gates[3 * H + j], y, grad_h.next);
    dy[j] = out.y;
    d[3 * H + j] = out.a_o;
    const acc_t dx_hat = out.y * acc_t(p.wc[j]);
    sum += dx_hat;
    sum_c_hat += dx_hat * c_hat[j];
  }
  const acc_t mean = block_sum(sum, scratch) / acc_t(H);
  const acc_t mean_c_hat = block_sum(sum_c_hat, scratch) / acc_t(H);
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    // grad_c_prev may be grad_c: this thread reads entry j before it writes it.
    const auto carried_c = new_state_grad<acc_t>(p.grad_c, p.zoneout_c, b * H + j);
    const acc_t grad_c = carried_c.next + layer_norm_input_grad(dy[j] * acc_t(p.wc[j]), c_hat[j],
                                                                rstd[2], mean, mean_c_hat);
    const auto g = layernorm_lstm_cell_grad(gates[j], gates[H + j], gates[2 * H + j],
                                            acc_t(p.c_prev[b * H + j]), grad_c);
    d[j] = g.a_i;
    d[H + j] = g.a_f;
    d[2 * H + j] = g.a_g;
    p.grad_c_prev[b * H + j] = static_cast<scalar_t>(g.c + carried_c.before);
  }
  __syncthreads();
  block_layer_norm_backward(G * H, d, x_hat_ih, rstd[0], p.wi, p.grad_x_proj + b * G * H,
                            scratch);
  block_layer_norm_backward(G * H, d, x_hat_hh, rstd[1], p.wh, p.grad_h_proj + b * G * H,
                            scratch);
}

// ---------------------------------------------------------------------------------------------
// GRU. Saved row: [r z n h_n (4H) | x_hat_ih (3H) | x_hat_hh (3H) | rstd ih, hh].

template <typename scalar_t>
struct GruForwardParams {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t *x_proj, *h_proj;  // [B, 3H]
  const scalar_t* h_prev;        // [B, H]
  const scalar_t *b_ih, *b_hh;
  const scalar_t *wi, *bi, *wh, *bh;
  scalar_t* h_out;
  acc_t* saved;                  // [B, 10H + 2]
  int64_t hidden;
  const scalar_t* zoneout_h = nullptr;  // zoneout's weights of the new h, or null
};

template <typename scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    layernorm_gru_forward_kernel(const GruForwardParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kRowWarps];
  const int64_t b = blockIdx.x, H = p.hidden, G = kGruGates;
  const acc_t *x = p.x_proj + b * G * H, *h = p.h_proj + b * G * H;
  acc_t* row = p.saved + b * LayerNormGruCell::saved_columns(H);
  acc_t *x_hat_ih = row + kGruSaved * H, *x_hat_hh = x_hat_ih + G * H;
  acc_t* rstd = row + kLayerNormGruSavedPerUnit * H;
  const RowStats<acc_t> ih = block_row_stats(x, G * H, scratch);
  const RowStats<acc_t> hh = block_row_stats(h, G * H, scratch);
  for (int64_t k = threadIdx.x; k < G * H; k += blockDim.x) {
    x_hat_ih[k] = (x[k] - ih.mean) * ih.rstd;
    x_hat_hh[k] = (h[k] - hh.mean) * hh.rstd;
  }
  __syncthreads();
  const auto gx = [&](int64_t k) {
    const acc_t v = x_hat_ih[k] * acc_t(p.wi[k]) + acc_t(p.bi[k]);
    return p.b_ih ? v + acc_t(p.b_ih[k]) : v;
  };
  const auto gh = [&](int64_t k) {
    const acc_t v = x_hat_hh[k] * acc_t(p.wh[k]) + acc_t(p.bh[k]);
    return p.b_hh ? v + acc_t(p.b_hh[k]) : v;
  };
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const auto st = gru_step_forward<acc_t>(gx(j), gx(H + j), gx(2 * H + j), gh(j), gh(H + j),
                                            gh(2 * H + j), acc_t(p.h_prev[b * H + j]));
    store_gru_saved(st, [&](int64_t k, acc_t v) { row[k * H + j] = v; });
    const int64_t u = b * H + j;
    p.h_out[u] = static_cast<scalar_t>(
        p.zoneout_h ? zoneout(acc_t(p.h_prev[u]), st.h_new, acc_t(p.zoneout_h[u])) : st.h_new);
  }
  if (threadIdx.x == 0) {
    rstd[0] = ih.rstd;
    rstd[1] = hh.rstd;
  }
}

template <typename scalar_t>
struct GruBackwardParams {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* saved;
  const scalar_t *grad_h, *h_prev;   // [B, H]
  const scalar_t *wi, *wh;
  acc_t* grad_pre;                   // [B, 6H]: the input side's after LN | the hidden side's
  acc_t *grad_x_proj, *grad_h_proj;  // [B, 3H]
  scalar_t* grad_h_direct;           // [B, H], may be grad_h
  int64_t hidden;
  const scalar_t* zoneout_h = nullptr;  // zoneout's weights of the new h, or null
};

template <typename scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    layernorm_gru_backward_kernel(const GruBackwardParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kRowWarps];
  const int64_t b = blockIdx.x, H = p.hidden, G = kGruGates;
  const acc_t* row = p.saved + b * LayerNormGruCell::saved_columns(H);
  const acc_t *x_hat_ih = row + kGruSaved * H, *x_hat_hh = x_hat_ih + G * H;
  const acc_t* rstd = row + kLayerNormGruSavedPerUnit * H;
  acc_t *dgx = p.grad_pre + b * 2 * G * H, *dgh = dgx + G * H;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    // grad_h_direct may be grad_h: this thread reads entry j before it writes it.
    const auto grad_h = new_state_grad<acc_t>(p.grad_h, p.zoneout_h, b * H + j);
    const auto d = gru_step_backward<acc_t>([&](int64_t k) { return row[k * H + j]; },
                                            acc_t(p.h_prev[b * H + j]), grad_h.next);
    store_gru_gate_grads(
        d, [&](int64_t g, acc_t v) { dgx[g * H + j] = v; },
        [&](int64_t g, acc_t v) { dgh[g * H + j] = v; });
    p.grad_h_direct[b * H + j] = static_cast<scalar_t>(d.h + grad_h.before);
  }
  __syncthreads();
  block_layer_norm_backward(G * H, dgx, x_hat_ih, rstd[0], p.wi, p.grad_x_proj + b * G * H,
                            scratch);
  block_layer_norm_backward(G * H, dgh, x_hat_hh, rstd[1], p.wh, p.grad_h_proj + b * G * H,
                            scratch);
}

}  // namespace fused_rnn::cuda
