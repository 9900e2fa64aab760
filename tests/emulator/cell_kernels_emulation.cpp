// The step-wise CUDA kernels (csrc/cuda/cell_kernels.cuh, layernorm_cell_kernels.cuh) and loops
// (stepwise_loops.cuh), their own source, run on the CPU under emulated_device.h: a test-only
// extension (tests/test_cell_kernels_emulation.py builds and calls it). Each function takes the
// tensors the launcher in cells_cuda.cu or layernorm_cells_cuda.cu would hand its kernel and
// launches it with that launcher's geometry for an H200 (132 SMs), or over the blocks asked for
// (a grid-stride kernel given fewer blocks than its units strides over the rest); the loops run
// with EmulatedStepOps in place of the CUDA stream and cuBLAS.
#include <torch/extension.h>

#include "emulated_device.h"

#include "cuda/cell_kernels.cuh"
#include "cuda/layernorm_cell_kernels.cuh"
#include "cuda/stepwise_loops.cuh"

#include <cstring>

#include <optional>
#include <string>

namespace {

using namespace fused_rnn::cuda;
using Optional = std::optional<torch::Tensor>;

constexpr int64_t kH200Sms = 132;

template <typename T>
T* data(const torch::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
template <typename T>
T* data(const Optional& t) {
  return t.has_value() && t->defined() ? data<T>(*t) : nullptr;
}

// Calls run(scalar_t{}) for x's dtype.
template <typename Run>
void with_dtype(const torch::Tensor& x, const Run& run) {
  switch (x.scalar_type()) {
    case torch::kDouble:
      return run(double());
    case torch::kFloat:
      return run(float());
    case torch::kBFloat16:
      return run(c10::BFloat16());
    case torch::kHalf:
      return run(c10::Half());
    default:
      TORCH_CHECK(false, "no emulated kernel for ", x.scalar_type());
  }
}

template <typename Run>
void with_update(const std::string& cell, const Run& run) {
  if (cell == "lstm") return run(LstmUpdate());
  TORCH_CHECK(cell == "gru", "cell: expected lstm or gru, got ", cell);
  run(GruUpdate());
}

// The pointwise kernels' blocks: the launchers' for an H200 where blocks is 0.
unsigned pointwise_grid(int64_t units, int64_t blocks) {
  return blocks > 0 ? static_cast<unsigned>(blocks) : pointwise_blocks(units, kH200Sms);
}

// A cell op's step (launch_cell_forward): both products and the gate math, on the kernel
// cell_step_grid picks for sm_count SMs. Returns whether it took a warp per unit, and the grid.
std::vector<int64_t> cell_forward(const std::string& cell, torch::Tensor input, torch::Tensor hx,
                                  Optional cx, torch::Tensor w_ih, torch::Tensor w_hh,
                                  Optional b_ih, Optional b_hh, torch::Tensor hy, Optional cy,
                                  torch::Tensor saved, int64_t sm_count) {
  const int64_t B = hy.size(0), H = hy.size(1);
  const CellStepGrid grid = cell_step_grid(B, H, sm_count);
  with_update(cell, [&](auto update) {
    using Update = decltype(update);
    with_dtype(hy, [&](auto scalar) {
      using scalar_t = decltype(scalar);
      CellParams<scalar_t> p{};
      p.input = data<scalar_t>(input);
      p.hx = data<scalar_t>(hx);
      p.cx = data<scalar_t>(cx);
      p.w_ih = data<scalar_t>(w_ih);
      p.w_hh = data<scalar_t>(w_hh);
      p.b_ih = data<scalar_t>(b_ih);
      p.b_hh = data<scalar_t>(b_hh);
      p.hy = data<scalar_t>(hy);
      p.cy = data<scalar_t>(cy);
      p.saved = data<scalar_t>(saved);
      p.batch = B;
      p.input_size = input.size(1);
      p.hidden = H;
      p.state_size = hx.size(1);
      const dim3 blocks(static_cast<unsigned>(grid.x), static_cast<unsigned>(grid.y));
      if (grid.unit_warps) {
        emu::launch(&cell_forward_unit_kernel<Update, scalar_t>, blocks, kThreads, 1, 0, p);
      } else {
        emu::launch(&cell_forward_kernel<Update, scalar_t>, blocks, dim3(kTileUnits, kTileBatch),
                    1, 0, p);
      }
    });
  });
  return {grid.unit_warps, grid.x, grid.y};
}

// A layer's step after its hidden product (launch_layer_step, stepwise_sequence): the gate math
// over xproj (the input side, its biases included) and hproj. Returns the blocks launched.
int64_t step_gates(const std::string& cell, torch::Tensor xproj, torch::Tensor hproj,
                   torch::Tensor hx, Optional cx, Optional b_hh, torch::Tensor hy, Optional cy,
                   torch::Tensor saved, Optional zoneout_h, Optional zoneout_c, int64_t blocks) {
  const int64_t B = hy.size(0), H = hy.size(1);
  const unsigned grid = pointwise_grid(B * H, blocks);
  with_update(cell, [&](auto update) {
    using Update = decltype(update);
    with_dtype(hy, [&](auto scalar) {
      using scalar_t = decltype(scalar);
      CellParams<scalar_t> p{};
      p.xproj = data<scalar_t>(xproj);
      p.hproj = data<scalar_t>(hproj);
      p.hx = data<scalar_t>(hx);
      p.cx = data<scalar_t>(cx);
      p.b_hh = data<scalar_t>(b_hh);
      p.hy = data<scalar_t>(hy);
      p.cy = data<scalar_t>(cy);
      p.saved = data<scalar_t>(saved);
      p.batch = B;
      p.hidden = H;
      p.state_size = hx.size(1);
      p.zoneout_h = data<scalar_t>(zoneout_h);
      p.zoneout_c = data<scalar_t>(zoneout_c);
      emu::launch(&step_gates_kernel<Update, scalar_t>, grid, kPointwiseThreads, 1, 0, p);
    });
  });
  return grid;
}

// The LSTM's gate gradients of a step (lstm_gate_grads_cuda, stepwise_backward_sequence);
// grad_c_prev may be grad_c, grad_h_direct grad_h. Returns the blocks launched.
int64_t lstm_gate_grads(torch::Tensor grad_h, Optional grad_out, torch::Tensor grad_c,
                        torch::Tensor gates, torch::Tensor c_prev, torch::Tensor c_new,
                        torch::Tensor grad_gates, torch::Tensor grad_c_prev, Optional zoneout_h,
                        Optional zoneout_c, Optional grad_h_direct, int64_t blocks) {
  const int64_t B = c_new.size(0), H = c_new.size(1);
  const unsigned grid = pointwise_grid(B * H, blocks);
  with_dtype(grad_h, [&](auto scalar) {
    using scalar_t = decltype(scalar);
    emu::launch(&lstm_gate_grads_kernel<scalar_t>, grid, kPointwiseThreads, 1, 0,
                data<const scalar_t>(grad_h), data<const scalar_t>(grad_out),
                data<const scalar_t>(grad_c), data<const scalar_t>(gates),
                data<const scalar_t>(c_prev), data<const scalar_t>(c_new),
                data<scalar_t>(grad_gates), data<scalar_t>(grad_c_prev),
                data<const scalar_t>(zoneout_h), data<const scalar_t>(zoneout_c),
                data<scalar_t>(grad_h_direct), B, H);
  });
  return grid;
}

// The GRU's gate gradients of a step (gru_gate_grads_cuda, stepwise_backward_sequence);
// grad_h_direct may be grad_h. Returns the blocks launched.
int64_t gru_gate_grads(torch::Tensor grad_h, Optional grad_out, torch::Tensor h_prev,
                       torch::Tensor workspace, torch::Tensor grad_input_gates,
                       torch::Tensor grad_hidden_gates, torch::Tensor grad_h_direct,
                       Optional zoneout_h, int64_t blocks) {
  const int64_t B = h_prev.size(0), H = h_prev.size(1);
  const unsigned grid = pointwise_grid(B * H, blocks);
  with_dtype(grad_h, [&](auto scalar) {
    using scalar_t = decltype(scalar);
    emu::launch(&gru_gate_grads_kernel<scalar_t>, grid, kPointwiseThreads, 1, 0,
                data<const scalar_t>(grad_h), data<const scalar_t>(grad_out),
                data<const scalar_t>(h_prev), data<const scalar_t>(workspace),
                data<scalar_t>(grad_input_gates), data<scalar_t>(grad_hidden_gates),
                data<scalar_t>(grad_h_direct), data<const scalar_t>(zoneout_h), B, H);
  });
  return grid;
}

// The step-wise loops' operations (stepwise_loops.cuh) on the host: copies, a product with
// cuBLAS's arithmetic (the op-math type's sums, rounded once to the dtype), the emulated kernels
// on the grid the CUDA loops launch (blocks).
struct EmulatedStepOps {
  unsigned blocks;

  template <typename scalar_t>
  void copy(scalar_t* dst, const scalar_t* src, int64_t count) const {
    std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(scalar_t));
  }
  template <typename scalar_t>
  void product(int64_t M, int64_t N, int64_t K, const scalar_t* a, bool a_t, int64_t lda,
               const scalar_t* b, bool b_t, int64_t ldb, scalar_t* out, int64_t ldo,
               double beta) const {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        acc_t sum = beta == 0 ? acc_t(0) : acc_t(beta) * acc_t(out[m * ldo + n]);
        for (int64_t k = 0; k < K; ++k) {
          sum += acc_t(a_t ? a[k * lda + m] : a[m * lda + k]) *
                 acc_t(b_t ? b[n * ldb + k] : b[k * ldb + n]);
        }
        out[m * ldo + n] = static_cast<scalar_t>(sum);
      }
    }
  }
  template <typename Update, typename scalar_t>
  void step_gates(const CellParams<scalar_t>& p) const {
    emu::launch(&step_gates_kernel<Update, scalar_t>, blocks, kPointwiseThreads, 1, 0, p);
  }
  template <typename scalar_t, typename... Args>
  void lstm_gate_grads(const scalar_t* grad_h, Args... args) const {
    emu::launch(&lstm_gate_grads_kernel<scalar_t>, blocks, kPointwiseThreads, 1, 0, grad_h,
                args...);
  }
  template <typename scalar_t, typename... Args>
  void gru_gate_grads(const scalar_t* grad_h, Args... args) const {
    emu::launch(&gru_gate_grads_kernel<scalar_t>, blocks, kPointwiseThreads, 1, 0, grad_h,
                args...);
  }
};

// The steps in run order ((first row, rows) each; none for a padded batch).
std::vector<fused_rnn::SequenceStep> steps_of(const torch::Tensor& packed_steps) {
  std::vector<fused_rnn::SequenceStep> steps;
  const auto table = packed_steps.accessor<int64_t, 2>();
  for (int64_t i = 0; i < packed_steps.size(0); ++i) steps.push_back({table[i][0], table[i][1]});
  return steps;
}

// A layer's step-wise forward (cells_cuda.cu's stepwise_sequence): SequenceTensors over these
// tensors, saved being xproj itself for the LSTM. Returns whether the loop took it.
bool stepwise_forward_layer(const std::string& cell, torch::Tensor xproj, torch::Tensor h0,
                            Optional c0, torch::Tensor w_hh, Optional b_hh,
                            torch::Tensor output, Optional cell_states, torch::Tensor saved,
                            torch::Tensor packed_steps, bool reverse) {
  fused_rnn::SequenceTensors t{xproj, h0, c0.value_or(torch::Tensor()), w_hh, std::nullopt,
                               b_hh, {}, output, cell_states.value_or(torch::Tensor()), saved,
                               reverse};
  t.packed_steps = steps_of(packed_steps);
  bool applies = false;
  with_update(cell, [&](auto update) {
    using Update = decltype(update);
    applies = stepwise_forward_applies(t, Update::kGates);
    if (!applies) return;
    const EmulatedStepOps ops{pointwise_blocks(h0.size(0) * h0.size(1), kH200Sms)};
    with_dtype(output, [&](auto scalar) { stepwise_forward<Update, decltype(scalar)>(t, ops); });
  });
  return applies;
}

// A layer's step-wise backward (stepwise_backward_sequence): BackwardSequenceTensors over these
// tensors. Returns whether the loop took it.
bool stepwise_backward_layer(const std::string& cell, torch::Tensor grad_output,
                             torch::Tensor saved, Optional h_before, Optional c_before,
                             Optional cell_states, torch::Tensor w_hh, torch::Tensor grad_h,
                             Optional grad_c, torch::Tensor grad_input_gates,
                             torch::Tensor grad_hidden_gates, torch::Tensor packed_steps,
                             bool reverse) {
  const auto or_none = [](const Optional& x) { return x.value_or(torch::Tensor()); };
  fused_rnn::BackwardSequenceTensors t{grad_output,       saved,  or_none(h_before),
                                       or_none(c_before), or_none(cell_states), w_hh,
                                       grad_h,            or_none(grad_c), grad_input_gates,
                                       grad_hidden_gates, reverse};
  t.packed_steps = steps_of(packed_steps);
  bool applies = false;
  with_update(cell, [&](auto update) {
    using Update = decltype(update);
    applies = stepwise_backward_applies(t, Update::kGates);
    if (!applies) return;
    const EmulatedStepOps ops{pointwise_blocks(grad_h.size(0) * grad_h.size(1), kH200Sms)};
    with_dtype(grad_h, [&](auto scalar) { stepwise_backward<Update, decltype(scalar)>(t, ops); });
  });
  return applies;
}

// The layer-normalized kernels: a block of kRowThreads per batch row, as launch_rows launches
// them. norms: ln_ih weight and bias, ln_hh's, (LSTM) ln_c's.
template <typename Kernel, typename Params>
void launch_rows(Kernel kernel, int64_t rows, const Params& p) {
  emu::launch(kernel, static_cast<unsigned>(rows), kRowThreads, 1, 0, p);
}

void layernorm_lstm_forward(torch::Tensor x_proj, torch::Tensor h_proj, torch::Tensor c_prev,
                            Optional b_ih, Optional b_hh, std::vector<torch::Tensor> norms,
                            torch::Tensor h_out, torch::Tensor c_out, torch::Tensor saved,
                            Optional zoneout_h, Optional zoneout_c, Optional h_prev) {
  with_dtype(h_out, [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    LstmForwardParams<scalar_t> p{
        data<acc_t>(x_proj),      data<acc_t>(h_proj),      data<scalar_t>(c_prev),
        data<scalar_t>(b_ih),     data<scalar_t>(b_hh),     data<scalar_t>(norms.at(0)),
        data<scalar_t>(norms[1]), data<scalar_t>(norms[2]), data<scalar_t>(norms[3]),
        data<scalar_t>(norms[4]), data<scalar_t>(norms[5]), data<scalar_t>(h_out),
        data<scalar_t>(c_out),    data<acc_t>(saved),       h_out.size(1)};
    p.zoneout_h = data<scalar_t>(zoneout_h);
    p.zoneout_c = data<scalar_t>(zoneout_c);
    p.h_prev = data<scalar_t>(h_prev);
    launch_rows(&layernorm_lstm_forward_kernel<scalar_t>, h_out.size(0), p);
  });
}

void layernorm_lstm_backward(torch::Tensor saved, torch::Tensor grad_h, torch::Tensor grad_c,
                             torch::Tensor c_prev, std::vector<torch::Tensor> norms,
                             torch::Tensor grad_pre, torch::Tensor grad_x_proj,
                             torch::Tensor grad_h_proj, torch::Tensor grad_c_prev,
                             Optional zoneout_h, Optional zoneout_c, Optional grad_h_direct) {
  with_dtype(grad_h, [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    // (The norms the backward reads: ln_ih's and ln_hh's weights, ln_c's weight and bias.)
    LstmBackwardParams<scalar_t> p{
        data<acc_t>(saved),          data<scalar_t>(grad_h),      data<scalar_t>(grad_c),
        data<scalar_t>(c_prev),      data<scalar_t>(norms.at(0)), data<scalar_t>(norms.at(2)),
        data<scalar_t>(norms.at(4)), data<scalar_t>(norms.at(5)), data<acc_t>(grad_pre),
        data<acc_t>(grad_x_proj),    data<acc_t>(grad_h_proj),    data<scalar_t>(grad_c_prev),
        grad_h.size(1)};
    p.zoneout_h = data<scalar_t>(zoneout_h);
    p.zoneout_c = data<scalar_t>(zoneout_c);
    p.grad_h_direct = data<scalar_t>(grad_h_direct);
    launch_rows(&layernorm_lstm_backward_kernel<scalar_t>, grad_h.size(0), p);
  });
}

void layernorm_gru_forward(torch::Tensor x_proj, torch::Tensor h_proj, torch::Tensor h_prev,
                           Optional b_ih, Optional b_hh, std::vector<torch::Tensor> norms,
                           torch::Tensor h_out, torch::Tensor saved, Optional zoneout_h) {
  with_dtype(h_out, [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    GruForwardParams<scalar_t> p{
        data<acc_t>(x_proj),         data<acc_t>(h_proj),         data<scalar_t>(h_prev),
        data<scalar_t>(b_ih),        data<scalar_t>(b_hh),        data<scalar_t>(norms.at(0)),
        data<scalar_t>(norms.at(1)), data<scalar_t>(norms.at(2)), data<scalar_t>(norms.at(3)),
        data<scalar_t>(h_out),       data<acc_t>(saved),          h_out.size(1)};
    p.zoneout_h = data<scalar_t>(zoneout_h);
    launch_rows(&layernorm_gru_forward_kernel<scalar_t>, h_out.size(0), p);
  });
}

void layernorm_gru_backward(torch::Tensor saved, torch::Tensor grad_h, torch::Tensor h_prev,
                            std::vector<torch::Tensor> norms, torch::Tensor grad_pre,
                            torch::Tensor grad_x_proj, torch::Tensor grad_h_proj,
                            torch::Tensor grad_h_direct, Optional zoneout_h) {
  with_dtype(grad_h, [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    // (The norms the backward reads: ln_ih's and ln_hh's weights.)
    GruBackwardParams<scalar_t> p{
        data<acc_t>(saved),          data<scalar_t>(grad_h),      data<scalar_t>(h_prev),
        data<scalar_t>(norms.at(0)), data<scalar_t>(norms.at(2)), data<acc_t>(grad_pre),
        data<acc_t>(grad_x_proj),    data<acc_t>(grad_h_proj),    data<scalar_t>(grad_h_direct),
        grad_h.size(1)};
    p.zoneout_h = data<scalar_t>(zoneout_h);
    launch_rows(&layernorm_gru_backward_kernel<scalar_t>, grad_h.size(0), p);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cell_forward", &cell_forward);
  m.def("step_gates", &step_gates);
  m.def("lstm_gate_grads", &lstm_gate_grads);
  m.def("gru_gate_grads", &gru_gate_grads);
  m.def("stepwise_forward_layer", &stepwise_forward_layer);
  m.def("stepwise_backward_layer", &stepwise_backward_layer);
  m.def("layernorm_lstm_forward", &layernorm_lstm_forward);
  m.def("layernorm_lstm_backward", &layernorm_lstm_backward);
  m.def("layernorm_gru_forward", &layernorm_gru_forward);
  m.def("layernorm_gru_backward", &layernorm_gru_backward);
}
