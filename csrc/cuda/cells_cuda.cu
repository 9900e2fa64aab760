// CUDA implementations of the cell ops.
//
// Forward: one launch per step. A block owns a tile of kTileUnits hidden units for kTileBatch batch
// rows; it computes every gate row of those units (the products with w_ih and w_hh, through shared
// memory tiles), adds the biases, applies the gate math of cell_math.h and writes the new state, so
// no gate pre-activation ever reaches global memory. Backward: one fused pointwise launch for the
// gate gradients; the matrix products around it are cuBLAS calls through ATen (cell_common.cpp).
#include "../cell_math.h"
#include "../cell_ops.h"

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

namespace fused_rnn {
namespace {

constexpr int kTileUnits = 32;  // threadIdx.x: one hidden unit per lane of a warp
constexpr int kTileBatch = 8;   // threadIdx.y: one batch row per warp
constexpr int kTileK = 32;      // reduction chunk staged in shared memory
constexpr int kThreads = kTileUnits * kTileBatch;

// Pointers and sizes of one cell step; every tensor is contiguous. Biases may be null.
template <typename scalar_t>
struct CellParams {
  const scalar_t* input;  // [B, I]
  const scalar_t* hx;     // [B, H]
  const scalar_t* cx;     // [B, H] (LSTM only)
  const scalar_t* w_ih;   // [G*H, I]
  const scalar_t* w_hh;   // [G*H, H]
  const scalar_t* b_ih;   // [G*H] or null
  const scalar_t* b_hh;   // [G*H] or null
  scalar_t* hy;           // [B, H]
  scalar_t* cy;           // [B, H] (LSTM only)
  scalar_t* saved;        // LSTM: gates [B, 4H]; GRU: workspace [B, 4H]
  int64_t batch, input_size, hidden;
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

struct LstmCell {
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
    const auto st = lstm_step_forward<acc_t>(a[0], a[1], a[2], a[3], acc_t(p.cx[u]));
    scalar_t* gates = p.saved + b * kGates * H;
    gates[0 * H + j] = static_cast<scalar_t>(st.i);
    gates[1 * H + j] = static_cast<scalar_t>(st.f);
    gates[2 * H + j] = static_cast<scalar_t>(st.g);
    gates[3 * H + j] = static_cast<scalar_t>(st.o);
    p.cy[u] = static_cast<scalar_t>(st.c_new);
    p.hy[u] = static_cast<scalar_t>(st.h_new);
  }
};

struct GruCell {
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
    const int64_t u = b * H + j;
    const auto st =
        gru_step_forward<acc_t>(xb[0], xb[1], xb[2], hb[0], hb[1], hb[2], acc_t(p.hx[u]));
    scalar_t* ws = p.saved + b * kGruSavedPerUnit * H;
    ws[0 * H + j] = static_cast<scalar_t>(st.r);
    ws[1 * H + j] = static_cast<scalar_t>(st.z);
    ws[2 * H + j] = static_cast<scalar_t>(st.n);
    ws[3 * H + j] = static_cast<scalar_t>(st.h_n);
    p.hy[u] = static_cast<scalar_t>(st.h_new);
  }
};

// Grid: x over batch tiles, y over unit tiles. Block: kTileUnits x kTileBatch threads.
template <typename Cell, typename scalar_t>
__global__ void __launch_bounds__(kThreads) cell_forward_kernel(const CellParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = Cell::kGates;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kTileBatch;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kTileUnits;
  acc_t x[G], h[G];
#pragma unroll
  for (int g = 0; g < G; ++g) x[g] = h[g] = acc_t(0);
  accumulate_gate_products<scalar_t, G>(p.input, p.w_ih, p.input_size, p.hidden, p.batch, b0, j0,
                                        x);
  accumulate_gate_products<scalar_t, G>(p.hx, p.w_hh, p.hidden, p.hidden, p.batch, b0, j0, h);
  const int64_t b = b0 + threadIdx.y, j = j0 + threadIdx.x;
  if (b < p.batch && j < p.hidden) Cell::finish(p, b, j, x, h);
}

template <typename scalar_t>
const scalar_t* data_or_null(const OptionalTensor& t) {
  return t.has_value() ? t->data_ptr<scalar_t>() : nullptr;
}

template <typename Cell>
void launch_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& cx,
                         const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                         const OptionalTensor& b_hh, const Tensor& hy, const Tensor& cy,
                         const Tensor& saved) {
  const int64_t B = input.size(0), H = hx.size(1);
  if (B == 0 || H == 0) return;
  const dim3 grid(static_cast<unsigned>((B + kTileBatch - 1) / kTileBatch),
                  static_cast<unsigned>((H + kTileUnits - 1) / kTileUnits));
  TORCH_CHECK(grid.y <= 65535, "fused_rnn: hidden size ", H, " exceeds the CUDA kernel's limit");
  const dim3 block(kTileUnits, kTileBatch);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cell_forward_cuda", [&] {
    CellParams<scalar_t> p;
    p.input = input.data_ptr<scalar_t>();
    p.hx = hx.data_ptr<scalar_t>();
    p.cx = cx.defined() ? cx.data_ptr<scalar_t>() : nullptr;
    p.w_ih = w_ih.data_ptr<scalar_t>();
    p.w_hh = w_hh.data_ptr<scalar_t>();
    p.b_ih = data_or_null<scalar_t>(b_ih);
    p.b_hh = data_or_null<scalar_t>(b_hh);
    p.hy = hy.data_ptr<scalar_t>();
    p.cy = cy.defined() ? cy.data_ptr<scalar_t>() : nullptr;
    p.saved = saved.data_ptr<scalar_t>();
    p.batch = B;
    p.input_size = input.size(1);
    p.hidden = H;
    cell_forward_kernel<Cell, scalar_t>
        <<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

OptionalTensor contiguous_or_none(const OptionalTensor& t) {
  return t.has_value() ? OptionalTensor(t->contiguous()) : std::nullopt;
}

std::tuple<Tensor, Tensor, Tensor> lstm_cell_cuda(const Tensor& input, const Tensor& hx,
                                                  const Tensor& cx, const Tensor& w_ih,
                                                  const Tensor& w_hh, const OptionalTensor& b_ih,
                                                  const OptionalTensor& b_hh) {
  const CellSizes s = check_cell_forward_args("fused_rnn.lstm_cell", kLstmGates, input, hx, cx,
                                              w_ih, w_hh, b_ih, b_hh);
  const c10::cuda::CUDAGuard guard(input.device());
  Tensor hy = at::empty({s.batch, s.hidden}, input.options());
  Tensor cy = at::empty({s.batch, s.hidden}, input.options());
  Tensor gates = at::empty({s.batch, kLstmGates * s.hidden}, input.options());
  launch_cell_forward<LstmCell>(input.contiguous(), hx.contiguous(), cx.contiguous(),
                                w_ih.contiguous(), w_hh.contiguous(), contiguous_or_none(b_ih),
                                contiguous_or_none(b_hh), hy, cy, gates);
  return {hy, cy, gates};
}

std::tuple<Tensor, Tensor> gru_cell_cuda(const Tensor& input, const Tensor& hx,
                                         const Tensor& w_ih, const Tensor& w_hh,
                                         const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  const CellSizes s = check_cell_forward_args("fused_rnn.gru_cell", kGruGates, input, hx,
                                              std::nullopt, w_ih, w_hh, b_ih, b_hh);
  const c10::cuda::CUDAGuard guard(input.device());
  Tensor hy = at::empty({s.batch, s.hidden}, input.options());
  Tensor workspace = at::empty({s.batch, kGruSavedPerUnit * s.hidden}, input.options());
  launch_cell_forward<GruCell>(input.contiguous(), hx.contiguous(), Tensor(), w_ih.contiguous(),
                               w_hh.contiguous(), contiguous_or_none(b_ih),
                               contiguous_or_none(b_hh), hy, Tensor(), workspace);
  return {hy, workspace};
}

// ---------------------------------------------------------------------------------------------
// Backward pointwise passes: one thread per unit (b, j), grid-stride.

constexpr int kPointwiseThreads = 256;

template <typename scalar_t>
__global__ void lstm_gate_grads_kernel(const scalar_t* __restrict__ grad_hy,
                                       const scalar_t* __restrict__ grad_cy,
                                       const scalar_t* __restrict__ gates,
                                       const scalar_t* __restrict__ cx,
                                       const scalar_t* __restrict__ cy,
                                       scalar_t* __restrict__ grad_gates,
                                       scalar_t* __restrict__ grad_cx, int64_t batch,
                                       int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = batch * H;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < n;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = u / H, j = u % H;
    const scalar_t* row = gates + b * kLstmGates * H;
    const auto d = lstm_step_backward<acc_t>(acc_t(row[0 * H + j]), acc_t(row[1 * H + j]),
                                             acc_t(row[2 * H + j]), acc_t(row[3 * H + j]),
                                             acc_t(cx[u]), acc_t(cy[u]), acc_t(grad_hy[u]),
                                             acc_t(grad_cy[u]));
    scalar_t* grow = grad_gates + b * kLstmGates * H;
    grow[0 * H + j] = static_cast<scalar_t>(d.a_i);
    grow[1 * H + j] = static_cast<scalar_t>(d.a_f);
    grow[2 * H + j] = static_cast<scalar_t>(d.a_g);
    grow[3 * H + j] = static_cast<scalar_t>(d.a_o);
    grad_cx[u] = static_cast<scalar_t>(d.c);
  }
}

template <typename scalar_t>
__global__ void gru_gate_grads_kernel(const scalar_t* __restrict__ grad_hy,
                                      const scalar_t* __restrict__ hx,
                                      const scalar_t* __restrict__ workspace,
                                      scalar_t* __restrict__ grad_input_gates,
                                      scalar_t* __restrict__ grad_hidden_gates,
                                      scalar_t* __restrict__ grad_hx_direct, int64_t batch,
                                      int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = batch * H;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < n;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = u / H, j = u % H;
    const scalar_t* ws = workspace + b * kGruSavedPerUnit * H;
    const auto d = gru_step_backward<acc_t>(acc_t(ws[0 * H + j]), acc_t(ws[1 * H + j]),
                                            acc_t(ws[2 * H + j]), acc_t(ws[3 * H + j]),
                                            acc_t(hx[u]), acc_t(grad_hy[u]));
    scalar_t* gi = grad_input_gates + b * kGruGates * H;
    scalar_t* gh = grad_hidden_gates + b * kGruGates * H;
    gi[0 * H + j] = gh[0 * H + j] = static_cast<scalar_t>(d.a_r);
    gi[1 * H + j] = gh[1 * H + j] = static_cast<scalar_t>(d.a_z);
    gi[2 * H + j] = static_cast<scalar_t>(d.x_n);
    gh[2 * H + j] = static_cast<scalar_t>(d.h_n);
    grad_hx_direct[u] = static_cast<scalar_t>(d.h);
  }
}

// Enough blocks to fill the GPU several times over; the kernels stride over the rest.
unsigned pointwise_blocks(int64_t units) {
  const int64_t wanted = (units + kPointwiseThreads - 1) / kPointwiseThreads;
  const int64_t cap =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, cap)));
}

std::tuple<Tensor, Tensor> lstm_gate_grads_cuda(const Tensor& grad_hy, const Tensor& grad_cy,
                                                const Tensor& gates, const Tensor& cx,
                                                const Tensor& cy) {
  const c10::cuda::CUDAGuard guard(cx.device());
  const int64_t B = cx.size(0), H = cx.size(1);
  Tensor grad_gates = at::empty({B, kLstmGates * H}, gates.options());
  Tensor grad_cx = at::empty({B, H}, cx.options());
  if (B * H == 0) return {grad_gates, grad_cx};
  FUSED_RNN_DISPATCH_FLOATING_TYPES(cx.scalar_type(), "lstm_gate_grads_cuda", [&] {
    lstm_gate_grads_kernel<scalar_t>
        <<<pointwise_blocks(B * H), kPointwiseThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad_hy.data_ptr<scalar_t>(), grad_cy.data_ptr<scalar_t>(),
            gates.data_ptr<scalar_t>(), cx.data_ptr<scalar_t>(), cy.data_ptr<scalar_t>(),
            grad_gates.data_ptr<scalar_t>(), grad_cx.data_ptr<scalar_t>(), B, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_gates, grad_cx};
}

std::tuple<Tensor, Tensor, Tensor> gru_gate_grads_cuda(const Tensor& grad_hy, const Tensor& hx,
                                                       const Tensor& workspace) {
  const c10::cuda::CUDAGuard guard(hx.device());
  const int64_t B = hx.size(0), H = hx.size(1);
  Tensor grad_input_gates = at::empty({B, kGruGates * H}, hx.options());
  Tensor grad_hidden_gates = at::empty({B, kGruGates * H}, hx.options());
  Tensor grad_hx_direct = at::empty({B, H}, hx.options());
  if (B * H == 0) return {grad_input_gates, grad_hidden_gates, grad_hx_direct};
  FUSED_RNN_DISPATCH_FLOATING_TYPES(hx.scalar_type(), "gru_gate_grads_cuda", [&] {
    gru_gate_grads_kernel<scalar_t>
        <<<pointwise_blocks(B * H), kPointwiseThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad_hy.data_ptr<scalar_t>(), hx.data_ptr<scalar_t>(),
            workspace.data_ptr<scalar_t>(), grad_input_gates.data_ptr<scalar_t>(),
            grad_hidden_gates.data_ptr<scalar_t>(), grad_hx_direct.data_ptr<scalar_t>(), B, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_input_gates, grad_hidden_gates, grad_hx_direct};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("lstm_cell", &lstm_cell_cuda);
  m.impl("lstm_cell_backward", &lstm_cell_backward<lstm_gate_grads_cuda>);
  m.impl("gru_cell", &gru_cell_cuda);
  m.impl("gru_cell_backward", &gru_cell_backward<gru_gate_grads_cuda>);
}

}  // namespace fused_rnn
