// The layer-normalized LSTM's and GRU's CUDA launchers (CellKernels, layernorm_cell_ops.h; the
// kernels in layernorm_cell_kernels.cuh, math in layernorm_cell_math.h): a step is the hidden
// product (cuBLAS through ATen, in the op-math type) and one launch with a block per batch row,
// which reduces the row's statistics in shared memory, normalizes both products, runs the gate
// math and (LSTM) normalizes the new cell state; the gate gradients, one launch likewise. The
// layer loops, BPTT and the cell ops are the shared ones.
//
// Unverified on a GPU when written (2026-12-01): compiled for sm_80 and sm_90, the kernels run
// under the CPU emulation (tests/test_cell_kernels_emulation.py); the CUDA cases of
// tests/test_layernorm_cells.py and test_layernorm_sequence.py check it where a GPU is.
#include "../layernorm_cell_ops.h"
#include "cuda_tables.h"
#include "kernel_helpers.cuh"
#include "layernorm_cell_kernels.cuh"

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>

namespace fused_rnn {
namespace {

using namespace cuda;  // the kernels (layernorm_cell_kernels.cuh), data_or_null

// ---------------------------------------------------------------------------------------------
// Launchers.

Tensor prepare_recurrent_layernorm_cuda(const Tensor& w_hh, int64_t /*rows*/, int64_t /*uses*/) {
  return w_hh.contiguous();
}

// The norms made contiguous.
template <int N>
std::array<Tensor, N> contiguous_norms(at::ArrayRef<Tensor> norms) {
  std::array<Tensor, N> out;
  for (int k = 0; k < N; ++k) out[k] = norms[k].contiguous();
  return out;
}

// One block per batch row; nothing to launch for an empty batch or H = 0.
template <typename Launch>
void launch_rows(const Tensor& like, int64_t rows, int64_t hidden, const Launch& launch) {
  if (rows == 0 || hidden == 0) return;
  TORCH_CHECK(rows <= int64_t{2147483647}, "fused_rnn: batch of ", rows,
              " rows exceeds the CUDA grid");
  const c10::cuda::CUDAGuard guard(like.device());
  launch(dim3(static_cast<unsigned>(rows)), dim3(kRowThreads),
         at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void layernorm_lstm_step_cuda(const StepTensors& t) {
  const int64_t B = t.h_out.size(0), H = t.h_out.size(1);
  const auto n = contiguous_norms<6>(t.norms);
  const Tensor h_proj = at::mm(t.h_prev.to(t.saved.scalar_type()), t.w_hh.t());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.h_out.scalar_type(), "layernorm_lstm_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    LstmForwardParams<scalar_t> p{
        t.input_side.data_ptr<acc_t>(), h_proj.data_ptr<acc_t>(), t.c_prev.data_ptr<scalar_t>(),
        data_or_null<scalar_t>(t.b_ih), data_or_null<scalar_t>(t.b_hh),
        n[0].data_ptr<scalar_t>(), n[1].data_ptr<scalar_t>(), n[2].data_ptr<scalar_t>(),
        n[3].data_ptr<scalar_t>(), n[4].data_ptr<scalar_t>(), n[5].data_ptr<scalar_t>(),
        t.h_out.data_ptr<scalar_t>(), t.c_out.data_ptr<scalar_t>(), t.saved.data_ptr<acc_t>(), H};
    if (t.zoneout_h.defined()) {
      p.zoneout_h = t.zoneout_h.data_ptr<scalar_t>();
      p.zoneout_c = t.zoneout_c.data_ptr<scalar_t>();
      p.h_prev = t.h_prev.data_ptr<scalar_t>();
    }
    launch_rows(t.h_out, B, H, [&](dim3 grid, dim3 block, cudaStream_t stream) {
      layernorm_lstm_forward_kernel<scalar_t><<<grid, block, 0, stream>>>(p);
    });
  });
}

void layernorm_lstm_gate_grads_cuda(const GateGradTensors& t) {
  const int64_t B = t.grad_h.size(0), H = t.grad_h.size(1);
  const auto n = contiguous_norms<6>(t.norms);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.grad_h.scalar_type(), "layernorm_lstm_gate_grads_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    LstmBackwardParams<scalar_t> p{
        t.saved.data_ptr<acc_t>(), t.grad_h.data_ptr<scalar_t>(), t.grad_c.data_ptr<scalar_t>(),
        t.c_prev.data_ptr<scalar_t>(), n[0].data_ptr<scalar_t>(), n[2].data_ptr<scalar_t>(),
        n[4].data_ptr<scalar_t>(), n[5].data_ptr<scalar_t>(), t.grad_pre.data_ptr<acc_t>(),
        t.grad_input_gates.data_ptr<acc_t>(), t.grad_hidden_gates.data_ptr<acc_t>(),
        t.grad_c_prev.data_ptr<scalar_t>(), H};
    if (t.zoneout_h.defined()) {
      p.zoneout_h = t.zoneout_h.data_ptr<scalar_t>();
      p.zoneout_c = t.zoneout_c.data_ptr<scalar_t>();
      p.grad_h_direct = t.grad_h_direct.data_ptr<scalar_t>();
    }
    launch_rows(t.grad_h, B, H, [&](dim3 grid, dim3 block, cudaStream_t stream) {
      layernorm_lstm_backward_kernel<scalar_t><<<grid, block, 0, stream>>>(p);
    });
  });
}

void layernorm_gru_step_cuda(const StepTensors& t) {
  const int64_t B = t.h_out.size(0), H = t.h_out.size(1);
  const auto n = contiguous_norms<4>(t.norms);
  const Tensor h_proj = at::mm(t.h_prev.to(t.saved.scalar_type()), t.w_hh.t());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.h_out.scalar_type(), "layernorm_gru_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    GruForwardParams<scalar_t> p{
        t.input_side.data_ptr<acc_t>(), h_proj.data_ptr<acc_t>(), t.h_prev.data_ptr<scalar_t>(),
        data_or_null<scalar_t>(t.b_ih), data_or_null<scalar_t>(t.b_hh),
        n[0].data_ptr<scalar_t>(), n[1].data_ptr<scalar_t>(), n[2].data_ptr<scalar_t>(),
        n[3].data_ptr<scalar_t>(), t.h_out.data_ptr<scalar_t>(), t.saved.data_ptr<acc_t>(), H};
    if (t.zoneout_h.defined()) p.zoneout_h = t.zoneout_h.data_ptr<scalar_t>();
    launch_rows(t.h_out, B, H, [&](dim3 grid, dim3 block, cudaStream_t stream) {
      layernorm_gru_forward_kernel<scalar_t><<<grid, block, 0, stream>>>(p);
    });
  });
}

void layernorm_gru_gate_grads_cuda(const GateGradTensors& t) {
  const int64_t B = t.grad_h.size(0), H = t.grad_h.size(1);
  const auto n = contiguous_norms<4>(t.norms);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(t.grad_h.scalar_type(), "layernorm_gru_gate_grads_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    GruBackwardParams<scalar_t> p{
        t.saved.data_ptr<acc_t>(), t.grad_h.data_ptr<scalar_t>(), t.h_prev.data_ptr<scalar_t>(),
        n[0].data_ptr<scalar_t>(), n[2].data_ptr<scalar_t>(), t.grad_pre.data_ptr<acc_t>(),
        t.grad_input_gates.data_ptr<acc_t>(), t.grad_hidden_gates.data_ptr<acc_t>(),
        t.grad_h_direct.data_ptr<scalar_t>(), H};
    if (t.zoneout_h.defined()) p.zoneout_h = t.zoneout_h.data_ptr<scalar_t>();
    launch_rows(t.grad_h, B, H, [&](dim3 grid, dim3 block, cudaStream_t stream) {
      layernorm_gru_backward_kernel<scalar_t><<<grid, block, 0, stream>>>(p);
    });
  });
}

constexpr CellKernels<LayerNormLstmCell> kCudaLayerNormLstm{
    .prepare_recurrent = &prepare_recurrent_layernorm_cuda,
    .step = &layernorm_lstm_step_cuda,
    .gate_grads = &layernorm_lstm_gate_grads_cuda,
    .sequence = nullptr,
    .sequence_from_input = nullptr,
    .backward_sequence = nullptr,
};

constexpr CellKernels<LayerNormGruCell> kCudaLayerNormGru{
    .prepare_recurrent = &prepare_recurrent_layernorm_cuda,
    .step = &layernorm_gru_step_cuda,
    .gate_grads = &layernorm_gru_gate_grads_cuda,
    .sequence = nullptr,
    .sequence_from_input = nullptr,
    .backward_sequence = nullptr,
};

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  impl_layernorm_lstm_ops<kCudaLinear, kCudaLayerNormLstm>(m);
  impl_layernorm_gru_ops<kCudaLinear, kCudaLayerNormGru>(m);
}

}  // namespace fused_rnn
