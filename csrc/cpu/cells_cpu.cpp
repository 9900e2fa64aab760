// CPU implementations of the cell ops: the matrix products through ATen (MKL/oneDNN), then one
// fused, vectorised, parallel pass of the gate math over the [B, H] units (pointwise.h), in the
// variant built for this CPU's instruction set.
#include "../cell_ops.h"
#include "pointwise.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

namespace fused_rnn {
namespace cpu {

const PointwiseKernels& pointwise_kernels() {
  // ATen's choice for this CPU ("AVX512", "AVX2", "DEFAULT", ...), which ATEN_CPU_CAPABILITY can
  // lower; read once, as ATen does.
  static const PointwiseKernels& chosen = [] () -> const PointwiseKernels& {
#ifdef FUSED_RNN_CPU_X86_VARIANTS
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512") return AVX512::kKernels;
    if (capability == "AVX2") return AVX2::kKernels;
#endif
    return DEFAULT::kKernels;
  }();
  return chosen;
}

const char* pointwise_isas_built() {
#ifdef FUSED_RNN_CPU_X86_VARIANTS
  return "DEFAULT;AVX2;AVX512";
#else
  return "DEFAULT";
#endif
}

}  // namespace cpu

namespace {

// Units per parallel task: enough work to amortise a task, small enough to spread B*H over cores.
constexpr int64_t kGrainUnits = 4096;

// Runs pass(begin, end) over the units of a [B, H] grid, split over ATen's threads.
template <typename Pass>
void over_units(int64_t batch, int64_t hidden, const Pass& pass) {
  at::parallel_for(0, batch * hidden, kGrainUnits, pass);
}

// The given biases summed in the op-math dtype (float for the half types, so no rounding), or
// zeros: one code path whatever the bias arguments (adding zero changes no nonzero value).
Tensor summed_bias(std::initializer_list<const OptionalTensor*> biases, int64_t rows,
                   const Tensor& input) {
  const auto t = input.scalar_type();
  const auto acc = (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
  Tensor sum = at::zeros({rows}, input.options().dtype(acc));
  for (const OptionalTensor* b : biases) {
    if (b->has_value()) sum.add_(**b);
  }
  return sum;
}

std::tuple<Tensor, Tensor, Tensor> lstm_cell_cpu(const Tensor& input, const Tensor& hx,
                                                 const Tensor& cx, const Tensor& w_ih,
                                                 const Tensor& w_hh, const OptionalTensor& b_ih,
                                                 const OptionalTensor& b_hh) {
  const CellSizes s = check_cell_forward_args("fused_rnn.lstm_cell", kLstmGates, input, hx, cx,
                                              w_ih, w_hh, b_ih, b_hh);
  const int64_t H = s.hidden;
  // gates holds the pre-activations, then is overwritten in place by the activated gates that the
  // backward needs.
  Tensor gates = at::mm(input, w_ih.t());
  gates.addmm_(hx, w_hh.t());
  const Tensor bias = summed_bias({&b_ih, &b_hh}, kLstmGates * H, input);
  Tensor hy = at::empty({s.batch, H}, input.options());
  Tensor cy = at::empty({s.batch, H}, input.options());
  const Tensor c = cx.contiguous();
  over_units(s.batch, H, [&](int64_t begin, int64_t end) {
    cpu::pointwise_kernels().lstm_forward(gates, bias, c, hy, cy, begin, end);
  });
  return {hy, cy, gates};
}

std::tuple<Tensor, Tensor> lstm_gate_grads_cpu(const Tensor& grad_hy, const Tensor& grad_cy,
                                               const Tensor& gates, const Tensor& cx,
                                               const Tensor& cy) {
  const int64_t B = cx.size(0), H = cx.size(1);
  Tensor grad_gates = at::empty({B, kLstmGates * H}, gates.options());
  Tensor grad_cx = at::empty({B, H}, cx.options());
  over_units(B, H, [&](int64_t begin, int64_t end) {
    cpu::pointwise_kernels().lstm_backward(grad_hy, grad_cy, gates, cx, cy, grad_gates, grad_cx,
                                           begin, end);
  });
  return {grad_gates, grad_cx};
}

std::tuple<Tensor, Tensor> gru_cell_cpu(const Tensor& input, const Tensor& hx,
                                        const Tensor& w_ih, const Tensor& w_hh,
                                        const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  const CellSizes s = check_cell_forward_args("fused_rnn.gru_cell", kGruGates, input, hx,
                                              std::nullopt, w_ih, w_hh, b_ih, b_hh);
  const int64_t H = s.hidden;
  // The n gate needs its input and hidden parts apart, so the two products stay separate.
  const Tensor gx = at::mm(input, w_ih.t());
  const Tensor gh = at::mm(hx, w_hh.t());
  const Tensor bias_ih = summed_bias({&b_ih}, kGruGates * H, input);
  const Tensor bias_hh = summed_bias({&b_hh}, kGruGates * H, input);
  Tensor hy = at::empty({s.batch, H}, input.options());
  Tensor workspace = at::empty({s.batch, kGruSavedPerUnit * H}, input.options());
  const Tensor h = hx.contiguous();
  over_units(s.batch, H, [&](int64_t begin, int64_t end) {
    cpu::pointwise_kernels().gru_forward(gx, gh, bias_ih, bias_hh, h, hy, workspace, begin, end);
  });
  return {hy, workspace};
}

std::tuple<Tensor, Tensor, Tensor> gru_gate_grads_cpu(const Tensor& grad_hy, const Tensor& hx,
                                                      const Tensor& workspace) {
  const int64_t B = hx.size(0), H = hx.size(1);
  Tensor grad_input_gates = at::empty({B, kGruGates * H}, hx.options());
  Tensor grad_hidden_gates = at::empty({B, kGruGates * H}, hx.options());
  Tensor grad_hx_direct = at::empty({B, H}, hx.options());
  over_units(B, H, [&](int64_t begin, int64_t end) {
    cpu::pointwise_kernels().gru_backward(grad_hy, hx, workspace, grad_input_gates,
                                          grad_hidden_gates, grad_hx_direct, begin, end);
  });
  return {grad_input_gates, grad_hidden_gates, grad_hx_direct};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("lstm_cell", &lstm_cell_cpu);
  m.impl("lstm_cell_backward", &lstm_cell_backward<lstm_gate_grads_cpu>);
  m.impl("gru_cell", &gru_cell_cpu);
  m.impl("gru_cell_backward", &gru_cell_backward<gru_gate_grads_cpu>);
}

}  // namespace fused_rnn
