// CUDA implementations: the cell forward ops, and the kernel tables (LinearKernels, CellKernels)
// under the device-agnostic backward and layer ops of cell_ops.h.
//
// A cell op's forward: one launch. A block owns a tile of kTileUnits hidden units for kTileBatch
// batch rows; it computes every gate row of those units (the products with w_ih and w_hh, through
// shared memory tiles), adds the biases, applies the gate math of cell_math.h and writes the new
// state, so no gate pre-activation reaches global memory. Where those tiles would be fewer than
// the SMs (small batches), a warp per hidden unit does the same for all the batch's rows. A
// layer's step (the step-wise path): the hidden product on cuBLAS through ATen, then one
// pointwise launch for the gate math over the input projection and that product (the tiled
// in-kernel product left most SMs idle at small batches: ~50 us a step at B=1 H=512 on an H200,
// NOTES entry 15); over a padded or packed batch without resets or zoneout, the whole time loop
// on raw pointers and cuBLAS directly (stepwise_sequence). Backward: one fused pointwise launch
// for the gate gradients; the matrix products around it are cuBLAS calls (directly in that
// loop's backward, stepwise_backward_sequence; through ATen otherwise).
#include "../cell_math.h"
#include "../cell_ops.h"
#include "cuda_tables.h"
#include "host_to_device.h"
#include "kernel_helpers.cuh"
#include "persistent_layer.h"

#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

namespace fused_rnn {
namespace {

using cuda::data_or_null;
using cuda::new_state_grad;

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

// Enough blocks to fill the GPU several times over; the kernels stride over the rest.
unsigned pointwise_blocks(int64_t units) {
  const int64_t wanted = (units + kPointwiseThreads - 1) / kPointwiseThreads;
  const int64_t cap =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, cap)));
}

// The step's tensors as the kernels take them: the states and biases (cx, cy, the LSTM's;
// undefined for the GRU), the saved values, zoneout's weights (where defined); the products'
// operands are the caller's to fill. Every tensor is contiguous.
template <typename scalar_t>
CellParams<scalar_t> cell_params(const Tensor& hx, const Tensor& cx, const OptionalTensor& b_ih,
                                 const OptionalTensor& b_hh, const Tensor& hy, const Tensor& cy,
                                 const Tensor& saved, const Tensor& zoneout_h,
                                 const Tensor& zoneout_c) {
  CellParams<scalar_t> p{};
  p.hx = hx.data_ptr<scalar_t>();
  p.cx = data_or_null<scalar_t>(cx);
  p.b_ih = data_or_null<scalar_t>(b_ih);
  p.b_hh = data_or_null<scalar_t>(b_hh);
  p.hy = hy.data_ptr<scalar_t>();
  p.cy = cy.defined() ? cy.data_ptr<scalar_t>() : nullptr;
  p.saved = saved.data_ptr<scalar_t>();
  p.batch = hy.size(0);
  p.hidden = hy.size(1);
  p.state_size = hx.size(1);
  p.zoneout_h = data_or_null<scalar_t>(zoneout_h);
  p.zoneout_c = data_or_null<scalar_t>(zoneout_c);
  return p;
}

// Whether a cell op's step takes a warp per unit (cell_forward_unit_kernel) rather than the
// tiled kernel: where the tiles would be fewer than the SMs.
bool cell_step_takes_unit_warps(int64_t batch, int64_t hidden, int64_t sm_count) {
  const int64_t tiles =
      (batch + kTileBatch - 1) / kTileBatch * ((hidden + kTileUnits - 1) / kTileUnits);
  return tiles < sm_count;
}

// A cell op's step: both products and the gate math in one launch.
template <typename Update>
void launch_cell_forward(const Tensor& input, const Tensor& w_ih, const Tensor& hx,
                         const Tensor& cx, const Tensor& w_hh, const OptionalTensor& b_ih,
                         const OptionalTensor& b_hh, const Tensor& hy, const Tensor& cy,
                         const Tensor& saved) {
  const int64_t B = hy.size(0), H = hy.size(1);
  if (B == 0 || H == 0) return;
  const c10::cuda::CUDAGuard guard(hy.device());
  const int64_t sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const bool unit_warps = cell_step_takes_unit_warps(B, H, sm_count);
  const dim3 grid(static_cast<unsigned>((B + kTileBatch - 1) / kTileBatch),
                  static_cast<unsigned>((H + kTileUnits - 1) / kTileUnits));
  TORCH_CHECK(unit_warps || grid.y <= 65535, "fused_rnn: hidden size ", H,
              " exceeds the CUDA kernel's limit");
  FUSED_RNN_DISPATCH_FLOATING_TYPES(hy.scalar_type(), "cell_forward_cuda", [&] {
    CellParams<scalar_t> p =
        cell_params<scalar_t>(hx, cx, b_ih, b_hh, hy, cy, saved, Tensor(), Tensor());
    p.input = input.data_ptr<scalar_t>();
    p.input_size = input.size(1);
    p.w_ih = w_ih.data_ptr<scalar_t>();
    p.w_hh = w_hh.data_ptr<scalar_t>();
    if (unit_warps) {
      const auto blocks = static_cast<unsigned>((H * 32 + kThreads - 1) / kThreads);
      cell_forward_unit_kernel<Update, scalar_t>
          <<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
    } else {
      cell_forward_kernel<Update, scalar_t>
          <<<grid, dim3(kTileUnits, kTileBatch), 0, at::cuda::getCurrentCUDAStream()>>>(p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---------------------------------------------------------------------------------------------
// The products. The layers' float32 follows torch.nn's rule for its RNNs: TF32 tensor cores where
// torch.backends.cudnn.allow_tf32 is True (the default, cuDNN's), full float32 otherwise. at::mm
// and ATen's cuBLAS handle read torch.backends.cuda.matmul's flag instead, so the layers' float32
// products go to cuBLAS directly, on a handle whose math mode is set for them (blas_handle). The
// cells' backward products go through ATen, as torch.nn's cells' do (kCudaCellLinear).
bool tf32_products(const Tensor& t) {
  return t.scalar_type() == at::kFloat && at::globalContext().allowTF32CuDNN();
}

// ATen's cuBLAS handle for products of x's dtype. ATen sets its math mode as it hands it out,
// TF32 where torch.backends.cuda.matmul.allow_tf32 is on, which would turn a float32 compute type
// into TF32: where float32 is to be full (tf32_products false), it is handed out under
// NoTF32Guard, which keeps the default math mode.
cublasHandle_t blas_handle(const Tensor& x) {
  if (x.scalar_type() != at::kFloat || tf32_products(x)) {
    return at::cuda::getCurrentCUDABlasHandle();
  }
  const at::NoTF32Guard full_float32;
  return at::cuda::getCurrentCUDABlasHandle();
}

// A matrix [R, C] as a cuBLAS operand of a column-major product: row-major as it lies (op N on
// the column-major view, which is its transpose) or the transpose of a row-major one (op T);
// copied row-major otherwise.
struct BlasOperand {
  Tensor t;
  cublasOperation_t op;
  int64_t ld;
};
BlasOperand blas_operand(const Tensor& x) {
  const int64_t rows = std::max<int64_t>(1, x.size(0)), columns = std::max<int64_t>(1, x.size(1));
  if (x.stride(1) == 1 && x.stride(0) >= columns) return {x, CUBLAS_OP_N, x.stride(0)};
  if (x.stride(0) == 1 && x.stride(1) >= rows) return {x, CUBLAS_OP_T, x.stride(1)};
  return {x.contiguous(), CUBLAS_OP_N, columns};
}

// cuBLAS's element type, compute type and scale type for a dtype's products (float32 on TF32
// tensor cores where tf32_products says so).
template <typename scalar_t>
struct BlasTypes;
template <>
struct BlasTypes<float> {
  using Scale = float;
  static constexpr cudaDataType_t kData = CUDA_R_32F;
  static cublasComputeType_t compute(bool tf32) {
    return tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  }
};
template <>
struct BlasTypes<double> {
  using Scale = double;
  static constexpr cudaDataType_t kData = CUDA_R_64F;
  static cublasComputeType_t compute(bool) { return CUBLAS_COMPUTE_64F; }
};
template <>
struct BlasTypes<c10::Half> {
  using Scale = float;
  static constexpr cudaDataType_t kData = CUDA_R_16F;
  static cublasComputeType_t compute(bool) { return CUBLAS_COMPUTE_32F; }
};
template <>
struct BlasTypes<c10::BFloat16> {
  using Scale = float;
  static constexpr cudaDataType_t kData = CUDA_R_16BF;
  static cublasComputeType_t compute(bool) { return CUBLAS_COMPUTE_32F; }
};

// out [M, N] (rows ldo apart) = a [M, K] @ b [K, N] + beta * out, each operand as cuBLAS takes
// it (BlasOperand's op and leading dimension). Row-major out is the column-major out^T = b^T a^T.
template <typename scalar_t>
void gemm(cublasHandle_t handle, cublasComputeType_t compute, int M, int N, int K,
          const scalar_t* a, cublasOperation_t op_a, int lda, const scalar_t* b,
          cublasOperation_t op_b, int ldb, scalar_t* out, int ldo,
          typename BlasTypes<scalar_t>::Scale beta) {
  using Types = BlasTypes<scalar_t>;
  const typename Types::Scale alpha = 1;
  TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, op_b, op_a, N, M, K, &alpha, b, Types::kData, ldb, a,
                                    Types::kData, lda, &beta, out, Types::kData, ldo, compute,
                                    CUBLAS_GEMM_DEFAULT_TENSOR_OP));
}

// out [M, N] (rows of stride out.stride(0), columns contiguous) = a [M, K] @ b [K, N] + beta *
// out, in float32 by the rule above (on TF32 tensor cores with float32 accumulation, or full).
void float32_gemm(const Tensor& a, const Tensor& b, const Tensor& out, float beta) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // (an empty buffer may hold NaNs: zeroed, not scaled, where beta is 0)
    beta == 0.0f ? out.zero_() : out.mul_(beta);
    return;
  }
  TORCH_CHECK(std::max({M, N, K}) < (int64_t{1} << 31), "fused_rnn: product of ", M, "x", K, "x",
              N, " exceeds cuBLAS's sizes");
  const BlasOperand lhs = blas_operand(a), rhs = blas_operand(b);
  gemm<float>(blas_handle(a), BlasTypes<float>::compute(tf32_products(a)),
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
              lhs.t.data_ptr<float>(), lhs.op, static_cast<int>(lhs.ld), rhs.t.data_ptr<float>(),
              rhs.op, static_cast<int>(rhs.ld), out.data_ptr<float>(),
              static_cast<int>(out.stride(0)), beta);
}

// a @ b (+ add, broadcast to the product's shape), on the product rule above.
Tensor product(const Tensor& a, const Tensor& b, const OptionalTensor& add = std::nullopt) {
  if (a.scalar_type() != at::kFloat) {
    return add.has_value() ? at::addmm(*add, a, b) : at::mm(a, b);
  }
  const std::array<int64_t, 2> shape{a.size(0), b.size(1)};
  Tensor out = add.has_value() ? add->expand(shape).contiguous() : at::empty(shape, a.options());
  float32_gemm(a, b, out, add.has_value() ? 1.0f : 0.0f);
  return out;
}

// A layer's step (StepTensors): h_prev @ W_hh^T on cuBLAS (tensor cores for the half types, and
// for float32 by the rule above), then the gate math in one pointwise launch.
template <typename Update>
void launch_layer_step(const StepTensors& t) {
  const int64_t B = t.h_out.size(0), H = t.h_out.size(1);
  if (B == 0 || H == 0) return;
  const c10::cuda::CUDAGuard guard(t.h_out.device());
  const Tensor hidden = product(t.h_prev, t.w_hh.t());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.h_out.scalar_type(), "layer_step_cuda", [&] {
    CellParams<scalar_t> p = cell_params<scalar_t>(t.h_prev, t.c_prev, std::nullopt, t.b_hh,
                                                   t.h_out, t.c_out, t.saved, t.zoneout_h,
                                                   t.zoneout_c);
    p.xproj = t.input_side.data_ptr<scalar_t>();
    p.hproj = hidden.data_ptr<scalar_t>();
    step_gates_kernel<Update, scalar_t>
        <<<pointwise_blocks(B * H), kPointwiseThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Step i of a layer's steps in the order the forward runs them: packed_steps[i], or for a padded
// batch (packed empty) the B rows of step i from the end where reverse.
SequenceStep run_order_step(const std::vector<SequenceStep>& packed, int64_t i, int64_t steps,
                            int64_t B, bool reverse) {
  if (!packed.empty()) return packed[static_cast<size_t>(i)];
  return {(reverse ? steps - 1 - i : i) * B, B};
}

// The state [step.rows, X] a step starts from: the initial state's (init [B, X]) for the first
// step run; else the rows of states [N, X] of the step run before it, `before`, where it ran all
// of this step's; else (the batch grew: packed sequences in the reverse direction) those
// followed by the initial state's next rows, gathered into scratch [B, X] on the stream.
template <typename scalar_t>
const scalar_t* state_before(const scalar_t* states, const scalar_t* init, scalar_t* scratch,
                             bool first, SequenceStep step, SequenceStep before, int64_t X,
                             cudaStream_t stream) {
  if (first) return init;
  const scalar_t* carried = states + before.offset * X;
  if (step.rows <= before.rows) return carried;
  const size_t row_bytes = static_cast<size_t>(X) * sizeof(scalar_t);
  C10_CUDA_CHECK(cudaMemcpyAsync(scratch, carried, before.rows * row_bytes,
                                 cudaMemcpyDeviceToDevice, stream));
  C10_CUDA_CHECK(cudaMemcpyAsync(scratch + before.rows * X, init + before.rows * X,
                                 (step.rows - before.rows) * row_bytes, cudaMemcpyDeviceToDevice,
                                 stream));
  return scratch;
}

// A layer's step-wise forward (SequenceTensors, padded or packed; no episode starts, no zoneout:
// those take the step loop of layer_common.cpp) in one host loop over raw pointers: each step is
// launch_layer_step's cuBLAS product into one buffer and pointwise launch, without the views and
// the product's tensor that the generic loop makes for every step, whose host time paces the
// small layers (NOTES entries 64, 67).
template <typename Update>
bool stepwise_sequence(const SequenceTensors& t) {
  if (!t.starts.empty() || !t.zoneout.empty()) return false;
  const int64_t B = t.h0.size(0), H = t.h0.size(1), N = t.input_side.size(0);
  constexpr int64_t G = Update::kGates;
  const bool cell = t.cell_states.defined(), packed = !t.packed_steps.empty();
  const bool dense = t.input_side.is_contiguous() && t.h0.is_contiguous() &&
                     t.w_hh.is_contiguous() && t.output.is_contiguous() &&
                     t.saved.is_contiguous() && (!cell || t.c0.is_contiguous()) &&
                     (!cell || t.cell_states.is_contiguous());
  if (B == 0 || H == 0 || (!packed && N % B != 0) || !dense || t.output.size(1) != H ||
      std::max(B, G * H) >= (int64_t{1} << 31)) {
    return false;
  }
  const int64_t steps = packed ? static_cast<int64_t>(t.packed_steps.size()) : N / B;
  const bool saved_per_step = t.saved.size(0) == N;
  const c10::cuda::CUDAGuard guard(t.output.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const cublasHandle_t handle = blas_handle(t.output);
  const Tensor hidden = at::empty({B, G * H}, t.output.options());
  // (Grid-stride launches: sized for B rows, they serve a packed step's fewer.)
  const unsigned blocks = pointwise_blocks(B * H);
  // Where a step's batch grows (packed, reverse), its states gathered (state_before).
  const Tensor h_scratch = packed ? at::empty_like(t.h0) : Tensor();
  const Tensor c_scratch = packed && cell ? at::empty_like(t.c0) : Tensor();
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.output.scalar_type(), "stepwise_sequence_cuda", [&] {
    const cublasComputeType_t compute =
        BlasTypes<scalar_t>::compute(tf32_products(t.output));
    const auto rows = [&](const Tensor& x, SequenceStep step) {
      return x.data_ptr<scalar_t>() + step.offset * x.size(1);
    };
    // (The sizes from h0; the batch, state and saved pointers are set for each step.)
    CellParams<scalar_t> p = cell_params<scalar_t>(t.h0, t.c0, std::nullopt, t.b_hh, t.h0, t.c0,
                                                   t.saved, Tensor(), Tensor());
    scalar_t* const product = hidden.data_ptr<scalar_t>();
    p.hproj = product;
    scalar_t* const h_gathered = h_scratch.defined() ? h_scratch.data_ptr<scalar_t>() : nullptr;
    scalar_t* const c_gathered = c_scratch.defined() ? c_scratch.data_ptr<scalar_t>() : nullptr;
    SequenceStep before{0, 0};
    for (int64_t i = 0; i < steps; ++i) {
      const SequenceStep step = run_order_step(t.packed_steps, i, steps, B, t.reverse);
      p.hx = state_before(t.output.data_ptr<scalar_t>(), t.h0.data_ptr<scalar_t>(),
                          h_gathered, i == 0, step, before, H, stream);
      if (cell) {
        p.cx = state_before(t.cell_states.data_ptr<scalar_t>(), t.c0.data_ptr<scalar_t>(),
                            c_gathered, i == 0, step, before, H, stream);
        p.cy = rows(t.cell_states, step);
      }
      before = step;
      if (step.rows == 0) continue;
      // h_prev [rows, H] @ W_hh^T, W_hh [G H, H] read transposed.
      gemm<scalar_t>(handle, compute, static_cast<int>(step.rows), static_cast<int>(G * H),
                     static_cast<int>(H), p.hx, CUBLAS_OP_N, static_cast<int>(H),
                     t.w_hh.data_ptr<scalar_t>(), CUBLAS_OP_T, static_cast<int>(H), product,
                     static_cast<int>(G * H), 0);
      p.batch = step.rows;
      p.hy = rows(t.output, step);
      p.xproj = rows(t.input_side, step);
      p.saved = saved_per_step ? rows(t.saved, step) : t.saved.data_ptr<scalar_t>();
      step_gates_kernel<Update, scalar_t><<<blocks, kPointwiseThreads, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return true;
}

// The whole-sequence forwards (CellKernels::sequence): the persistent kernels where they are
// chosen (persistent_layer.cu), else the step-wise loop above.
bool lstm_sequence_cuda(const SequenceTensors& t) {
  return cuda::lstm_sequence(t) || stepwise_sequence<LstmUpdate>(t);
}
bool gru_sequence_cuda(const SequenceTensors& t) {
  return cuda::gru_sequence(t) || stepwise_sequence<GruUpdate>(t);
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
  Tensor hy = at::empty({s.batch, s.hidden}, input.options());
  Tensor cy = at::empty({s.batch, s.hidden}, input.options());
  Tensor gates = at::empty({s.batch, kLstmGates * s.hidden}, input.options());
  launch_cell_forward<LstmUpdate>(input.contiguous(), w_ih.contiguous(), hx.contiguous(),
                                  cx.contiguous(), w_hh.contiguous(), contiguous_or_none(b_ih),
                                  contiguous_or_none(b_hh), hy, cy, gates);
  return {hy, cy, gates};
}

std::tuple<Tensor, Tensor> gru_cell_cuda(const Tensor& input, const Tensor& hx,
                                         const Tensor& w_ih, const Tensor& w_hh,
                                         const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  const CellSizes s = check_cell_forward_args("fused_rnn.gru_cell", kGruGates, input, hx,
                                              std::nullopt, w_ih, w_hh, b_ih, b_hh);
  Tensor hy = at::empty({s.batch, s.hidden}, input.options());
  Tensor workspace = at::empty({s.batch, kGruSaved * s.hidden}, input.options());
  launch_cell_forward<GruUpdate>(input.contiguous(), w_ih.contiguous(), hx.contiguous(), Tensor(),
                                 w_hh.contiguous(), contiguous_or_none(b_ih),
                                 contiguous_or_none(b_hh), hy, Tensor(), workspace);
  return {hy, workspace};
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

void lstm_gate_grads_cuda(const GateGradTensors& t) {
  const Tensor &grad_h = t.grad_h, &grad_c = t.grad_c, &gates = t.saved, &c_prev = t.c_prev;
  const Tensor &c_new = t.c_out, &grad_gates = t.grad_input_gates, &grad_c_prev = t.grad_c_prev;
  const int64_t B = c_new.size(0), H = c_new.size(1);
  if (B * H == 0) return;
  const c10::cuda::CUDAGuard guard(c_new.device());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(c_new.scalar_type(), "lstm_gate_grads_cuda", [&] {
    lstm_gate_grads_kernel<scalar_t>
        <<<pointwise_blocks(B * H), kPointwiseThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad_h.data_ptr<scalar_t>(), nullptr, grad_c.data_ptr<scalar_t>(),
            gates.data_ptr<scalar_t>(),
            c_prev.data_ptr<scalar_t>(), c_new.data_ptr<scalar_t>(),
            grad_gates.data_ptr<scalar_t>(), grad_c_prev.data_ptr<scalar_t>(),
            data_or_null<scalar_t>(t.zoneout_h), data_or_null<scalar_t>(t.zoneout_c),
            t.zoneout_h.defined() ? t.grad_h_direct.data_ptr<scalar_t>() : nullptr, B, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void gru_gate_grads_cuda(const GateGradTensors& t) {
  const Tensor &grad_h = t.grad_h, &h_prev = t.h_prev, &workspace = t.saved;
  const Tensor &grad_input_gates = t.grad_input_gates, &grad_hidden_gates = t.grad_hidden_gates;
  const Tensor& grad_h_direct = t.grad_h_direct;
  const int64_t B = h_prev.size(0), H = h_prev.size(1);
  if (B * H == 0) return;
  const c10::cuda::CUDAGuard guard(h_prev.device());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(h_prev.scalar_type(), "gru_gate_grads_cuda", [&] {
    gru_gate_grads_kernel<scalar_t>
        <<<pointwise_blocks(B * H), kPointwiseThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad_h.data_ptr<scalar_t>(), nullptr, h_prev.data_ptr<scalar_t>(),
            workspace.data_ptr<scalar_t>(), grad_input_gates.data_ptr<scalar_t>(),
            grad_hidden_gates.data_ptr<scalar_t>(), grad_h_direct.data_ptr<scalar_t>(),
            data_or_null<scalar_t>(t.zoneout_h), B, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// A layer's step-wise backward (BackwardSequenceTensors, padded or packed; no resets, no zoneout:
// those take layer_common.cpp's step loop) in one host loop over raw pointers, as
// stepwise_sequence is the forward's: per step, last first, the gate-gradient launch (adding the
// step's output gradient itself) and cuBLAS's product carrying the state's gradient to the step
// before (the LSTM's written over it; the GRU's added to the direct part the launch wrote). A
// step's rows are the first of grad_h's (and grad_c's); the rows past them hold their final
// state's gradient until the step they ran last, or leave as the initial state's.
template <typename Update>
bool stepwise_backward_sequence(const BackwardSequenceTensors& t) {
  if (!t.starts.empty() || !t.zoneout.empty()) return false;
  constexpr bool kLstm = Update::kGates == kLstmGates;
  constexpr int64_t G = Update::kGates;
  const int64_t B = t.grad_h.size(0), H = t.grad_h.size(1), N = t.grad_output.size(0);
  const bool packed = !t.packed_steps.empty();
  const Tensor& state_before = kLstm ? t.c_before : t.h_before;
  const auto dense = [](const Tensor& x) { return x.defined() && x.is_contiguous(); };
  const bool all_dense = dense(t.grad_output) && dense(t.saved) && dense(t.w_hh) &&
                         dense(t.grad_h) && dense(t.grad_input_gates) &&
                         dense(t.grad_hidden_gates) && dense(state_before) &&
                         (!kLstm || (dense(t.cell_states) && dense(t.grad_c)));
  if (B == 0 || H == 0 || (!packed && N % B != 0) || !all_dense ||
      t.grad_output.size(1) != H || std::max(B, G * H) >= (int64_t{1} << 31)) {
    return false;
  }
  const int64_t steps = packed ? static_cast<int64_t>(t.packed_steps.size()) : N / B;
  const c10::cuda::CUDAGuard guard(t.grad_h.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const cublasHandle_t handle = blas_handle(t.grad_h);
  const unsigned blocks = pointwise_blocks(B * H);  // (as stepwise_sequence's)
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.grad_h.scalar_type(), "stepwise_backward_cuda", [&] {
    const cublasComputeType_t compute =
        BlasTypes<scalar_t>::compute(tf32_products(t.grad_h));
    const auto rows = [&](const Tensor& x, SequenceStep step) {
      return x.data_ptr<scalar_t>() + step.offset * x.size(1);
    };
    scalar_t* const grad_h = t.grad_h.data_ptr<scalar_t>();
    for (int64_t i = steps - 1; i >= 0; --i) {  // (i: the forward's run order)
      const SequenceStep step = run_order_step(t.packed_steps, i, steps, B, t.reverse);
      if (step.rows == 0) continue;
      scalar_t* const hidden_grads = rows(t.grad_hidden_gates, step);
      if constexpr (kLstm) {
        scalar_t* const grad_c = t.grad_c.data_ptr<scalar_t>();
        lstm_gate_grads_kernel<scalar_t><<<blocks, kPointwiseThreads, 0, stream>>>(
            grad_h, rows(t.grad_output, step), grad_c, rows(t.saved, step),
            rows(t.c_before, step), rows(t.cell_states, step), hidden_grads, grad_c, nullptr,
            nullptr, nullptr, step.rows, H);
      } else {
        gru_gate_grads_kernel<scalar_t><<<blocks, kPointwiseThreads, 0, stream>>>(
            grad_h, rows(t.grad_output, step), rows(t.h_before, step), rows(t.saved, step),
            rows(t.grad_input_gates, step), hidden_grads, grad_h, nullptr, step.rows, H);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // The step's hidden-side gate gradients [rows, G H] @ W_hh [G H, H].
      gemm<scalar_t>(handle, compute, static_cast<int>(step.rows), static_cast<int>(H),
                     static_cast<int>(G * H), hidden_grads, CUBLAS_OP_N, static_cast<int>(G * H),
                     t.w_hh.data_ptr<scalar_t>(), CUBLAS_OP_N, static_cast<int>(H), grad_h,
                     static_cast<int>(H), kLstm ? 0 : 1);
    }
  });
  return true;
}

// The whole-sequence backwards (CellKernels::backward_sequence): the tensor-core kernel where it
// is chosen (persistent_layer.cu), else the step-wise loop above.
bool lstm_backward_sequence_cuda(const BackwardSequenceTensors& t) {
  return cuda::lstm_backward_sequence(t) || stepwise_backward_sequence<LstmUpdate>(t);
}
bool gru_backward_sequence_cuda(const BackwardSequenceTensors& t) {
  return cuda::gru_backward_sequence(t) || stepwise_backward_sequence<GruUpdate>(t);
}

void lstm_step_cuda(const StepTensors& t) { launch_layer_step<LstmUpdate>(t); }

void gru_step_cuda(const StepTensors& t) { launch_layer_step<GruUpdate>(t); }

Tensor prepare_linear_cuda(const Tensor& w, int64_t /*rows*/, int64_t /*uses*/) {
  return w.contiguous();
}

void step_linear_cuda(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate) {
  if (x.scalar_type() != out.scalar_type()) {
    // The layer-normalized cells' gradients (float) into a half type's carried state.
    const Tensor result = product(x, w.t());
    accumulate ? out.add_(result) : out.copy_(result);
    return;
  }
  if (x.scalar_type() == at::kFloat) {
    float32_gemm(x, w.t(), out, accumulate ? 1.0f : 0.0f);
    return;
  }
  Tensor result = out;  // a view of the caller's buffer, written in place by cuBLAS
  if (accumulate) {
    result.addmm_(x, w.t());
  } else {
    at::mm_out(result, x, w.t());
  }
}

Tensor linear_cuda(const Tensor& x, const Tensor& w, const OptionalTensor& bias) {
  return product(x, w.t(), bias);
}

Tensor matmul_cuda(const Tensor& a, const Tensor& b, const OptionalTensor& add) {
  return product(a, b, add);
}

Tensor empty_buffer_cuda(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);
}

Tensor row_indices_cuda(const std::vector<int64_t>& values, const Tensor& like) {
  return cuda::on_device_async(values, like);
}

void add_row_sums_cuda(const Tensor& d, const Tensor& x, const Tensor& sums) {
  sums[0].add_(at::sum(d, 0));
  sums[1].add_(at::sum(at::mul(d, x), 0));
}

}  // namespace

// Designated: each kernel named by its entry; the CPU-only whole-sequence entries stay null.
extern const LinearKernels kCudaLinear{
    .prepare_linear = &prepare_linear_cuda,
    .linear = &linear_cuda,
    .matmul = &matmul_cuda,
    .prepare_step_weight = &prepare_linear_cuda,
    .step_linear = &step_linear_cuda,
    .add_row_sums = &add_row_sums_cuda,
    // The caching allocator reuses its blocks: the whole sequence's projection at once.
    .projection_chunk_bytes = 0,
    .empty_buffer = &empty_buffer_cuda,
    .row_indices = &row_indices_cuda,
};

namespace {

// The cell ops' backward products (cell_backward's only ones), as torch.nn's cells take theirs:
// through ATen, whose float32 follows torch.backends.cuda.matmul.allow_tf32 (off by default), not
// cuDNN's flag (the cells' forward kernels compute in full float32).
Tensor cell_matmul_cuda(const Tensor& a, const Tensor& b, const OptionalTensor& add) {
  return add.has_value() ? at::addmm(*add, a, b) : at::mm(a, b);
}
const LinearKernels kCudaCellLinear = [] {
  LinearKernels cell = kCudaLinear;
  cell.matmul = &cell_matmul_cuda;
  return cell;
}();

constexpr CellKernels<LstmCell> kCudaLstm{
    .prepare_recurrent = &prepare_linear_cuda,
    .step = &lstm_step_cuda,
    .gate_grads = &lstm_gate_grads_cuda,
    .sequence = &lstm_sequence_cuda,
    .sequence_from_input = nullptr,
    .backward_sequence = &lstm_backward_sequence_cuda,
};

constexpr CellKernels<GruCell> kCudaGru{
    .prepare_recurrent = &prepare_linear_cuda,
    .step = &gru_step_cuda,
    .gate_grads = &gru_gate_grads_cuda,
    .sequence = &gru_sequence_cuda,
    .sequence_from_input = nullptr,
    .backward_sequence = &gru_backward_sequence_cuda,
};

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("lstm_cell", &lstm_cell_cuda);
  m.impl("gru_cell", &gru_cell_cuda);
  impl_lstm_ops<kCudaLinear, kCudaLstm, kCudaCellLinear>(m);
  impl_gru_ops<kCudaLinear, kCudaGru, kCudaCellLinear>(m);
}

}  // namespace fused_rnn
