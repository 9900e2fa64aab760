// CUDA implementations: the cell forward ops, and the kernel tables (LinearKernels, CellKernels)
// under the device-agnostic backward and layer ops of cell_ops.h; the kernels they launch are in
// cell_kernels.cuh, the step-wise loops in stepwise_loops.cuh.
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
#include "cell_kernels.cuh"
#include "cuda_tables.h"
#include "host_to_device.h"
#include "kernel_helpers.cuh"
#include "persistent_layer.h"
#include "stepwise_loops.cuh"

#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>

namespace fused_rnn {
namespace {

using namespace cuda;  // the kernels and their geometry (cell_kernels.cuh), data_or_null

int64_t sm_count() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
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
  const CellStepGrid grid = cell_step_grid(B, H, sm_count());
  TORCH_CHECK(grid.x <= std::numeric_limits<int32_t>::max() && grid.y <= 65535,
              "fused_rnn: hidden size ", H, " or batch size ", B,
              " exceeds the CUDA kernel's grid limit");
  FUSED_RNN_DISPATCH_FLOATING_TYPES(hy.scalar_type(), "cell_forward_cuda", [&] {
    CellParams<scalar_t> p =
        cell_params<scalar_t>(hx, cx, b_ih, b_hh, hy, cy, saved, Tensor(), Tensor());
    p.input = input.data_ptr<scalar_t>();
    p.input_size = input.size(1);
    p.w_ih = w_ih.data_ptr<scalar_t>();
    p.w_hh = w_hh.data_ptr<scalar_t>();
    const dim3 blocks(static_cast<unsigned>(grid.x), static_cast<unsigned>(grid.y));
    if (grid.unit_warps) {
      cell_forward_unit_kernel<Update, scalar_t>
          <<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
    } else {
      cell_forward_kernel<Update, scalar_t>
          <<<blocks, dim3(kTileUnits, kTileBatch), 0, at::cuda::getCurrentCUDAStream()>>>(p);
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
        <<<pointwise_blocks(B * H, sm_count()), kPointwiseThreads, 0,
           at::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The step-wise loops' operations (stepwise_loops.cuh) on the current stream: device copies,
// cuBLAS's products (float32 by the rule above), the pointwise kernels over `blocks` blocks
// (grid-stride: sized for the batch, they serve a packed step's fewer rows).
struct CudaStepOps {
  cudaStream_t stream;
  cublasHandle_t handle;
  bool tf32;
  unsigned blocks;

  template <typename scalar_t>
  void copy(scalar_t* dst, const scalar_t* src, int64_t count) const {
    C10_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * sizeof(scalar_t),
                                   cudaMemcpyDeviceToDevice, stream));
  }
  template <typename scalar_t>
  void product(int64_t M, int64_t N, int64_t K, const scalar_t* a, bool a_t, int64_t lda,
               const scalar_t* b, bool b_t, int64_t ldb, scalar_t* out, int64_t ldo,
               double beta) const {
    using Types = BlasTypes<scalar_t>;
    gemm<scalar_t>(handle, Types::compute(tf32), static_cast<int>(M), static_cast<int>(N),
                   static_cast<int>(K), a, a_t ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(lda),
                   b, b_t ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(ldb), out,
                   static_cast<int>(ldo), static_cast<typename Types::Scale>(beta));
  }
  template <typename Update, typename scalar_t>
  void step_gates(const CellParams<scalar_t>& p) const {
    step_gates_kernel<Update, scalar_t><<<blocks, kPointwiseThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename scalar_t, typename... Args>
  void lstm_gate_grads(const scalar_t* grad_h, Args... args) const {
    lstm_gate_grads_kernel<scalar_t><<<blocks, kPointwiseThreads, 0, stream>>>(grad_h, args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename scalar_t, typename... Args>
  void gru_gate_grads(const scalar_t* grad_h, Args... args) const {
    gru_gate_grads_kernel<scalar_t><<<blocks, kPointwiseThreads, 0, stream>>>(grad_h, args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// The step-wise loops on CUDA, where they apply.
template <typename Update>
bool stepwise_sequence(const SequenceTensors& t) {
  if (!stepwise_forward_applies(t, Update::kGates)) return false;
  const c10::cuda::CUDAGuard guard(t.output.device());
  const CudaStepOps ops{at::cuda::getCurrentCUDAStream(), blas_handle(t.output),
                        tf32_products(t.output),
                        pointwise_blocks(t.h0.size(0) * t.h0.size(1), sm_count())};
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.output.scalar_type(), "stepwise_sequence_cuda", [&] {
    stepwise_forward<Update, scalar_t>(t, ops);
  });
  return true;
}
template <typename Update>
bool stepwise_backward_sequence(const BackwardSequenceTensors& t) {
  if (!stepwise_backward_applies(t, Update::kGates)) return false;
  const c10::cuda::CUDAGuard guard(t.grad_h.device());
  const CudaStepOps ops{at::cuda::getCurrentCUDAStream(), blas_handle(t.grad_h),
                        tf32_products(t.grad_h),
                        pointwise_blocks(t.grad_h.size(0) * t.grad_h.size(1), sm_count())};
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.grad_h.scalar_type(), "stepwise_backward_cuda", [&] {
    stepwise_backward<Update, scalar_t>(t, ops);
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

void lstm_gate_grads_cuda(const GateGradTensors& t) {
  const Tensor &grad_h = t.grad_h, &grad_c = t.grad_c, &gates = t.saved, &c_prev = t.c_prev;
  const Tensor &c_new = t.c_out, &grad_gates = t.grad_input_gates, &grad_c_prev = t.grad_c_prev;
  const int64_t B = c_new.size(0), H = c_new.size(1);
  if (B * H == 0) return;
  const c10::cuda::CUDAGuard guard(c_new.device());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(c_new.scalar_type(), "lstm_gate_grads_cuda", [&] {
    lstm_gate_grads_kernel<scalar_t>
        <<<pointwise_blocks(B * H, sm_count()), kPointwiseThreads, 0,
           at::cuda::getCurrentCUDAStream()>>>(
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
        <<<pointwise_blocks(B * H, sm_count()), kPointwiseThreads, 0,
           at::cuda::getCurrentCUDAStream()>>>(
            grad_h.data_ptr<scalar_t>(), nullptr, h_prev.data_ptr<scalar_t>(),
            workspace.data_ptr<scalar_t>(), grad_input_gates.data_ptr<scalar_t>(),
            grad_hidden_gates.data_ptr<scalar_t>(), grad_h_direct.data_ptr<scalar_t>(),
            data_or_null<scalar_t>(t.zoneout_h), B, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
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
