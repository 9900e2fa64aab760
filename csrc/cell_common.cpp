// Argument checks, the input projection, and the cell ops over a device's kernels, once for
// every cell kind.
#include "cell_ops.h"
#include "layernorm_cell_ops.h"

#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include <string>

namespace fused_rnn {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Every tensor argument must share the device and dtype of `input`.
void check_like_input(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), op, ": expected ", name, " on ", input.device(),
              " (the device of input), got ", t.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": expected ", name, " of dtype ",
              input.scalar_type(), " (the dtype of input), got ", t.scalar_type());
}

void check_bias(const char* op, const char* name, const OptionalTensor& b, int64_t rows) {
  if (!b.has_value()) return;
  TORCH_CHECK(b->dim() == 1 && b->size(0) == rows, op, ": expected ", name, " of shape [", rows,
              "], got ", b->sizes());
}

// A state argument (hx, cx) against the batch and its size; `label` is torch.nn's name for it
// ("0" for h, "1" for c) and `name` ours.
void check_state(const char* op, int64_t batch, const Tensor& state, int64_t size,
                 const char* label, const char* name) {
  // torch.nn's checks, in its order and wording, so the drop-in modules raise what torch.nn does.
  if (state.dim() >= 1) {
    TORCH_CHECK(batch == state.size(0), "Input batch size ", batch, " doesn't match hidden", label,
                " batch size ", state.size(0));
  }
  if (state.dim() >= 2) {
    TORCH_CHECK(state.size(1) == size, "hidden", label, " has inconsistent hidden_size: got ",
                state.size(1), ", expected ", size);
  }
  TORCH_CHECK(state.dim() == 2, op, ": expected ", name, " to be 2-D [", batch, ", ", size,
              "], got ", state.sizes());
}

// The weights' shapes (w_ih [G*H,I], w_hh [G*H,P], biases [G*H], and for an LSTM with projections
// w_hr [P,H]; P = H without) against input [*, I]; returns I, H and P (batch left 0).
CellSizes check_weights(const char* op, int64_t gates, const Tensor& input, const Tensor& w_ih,
                        const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                        const OptionalTensor& w_hr) {
  TORCH_CHECK(is_supported_dtype(input.scalar_type()), op,
              ": expected input of dtype float32, float64, float16 or bfloat16, got ",
              input.scalar_type());
  int64_t hidden = 0, state = 0;
  if (w_hr.has_value()) {
    TORCH_CHECK(w_hr->dim() == 2, op, ": expected w_hr to be 2-D [P, H], got ", w_hr->sizes());
    hidden = w_hr->size(1);
    state = w_hr->size(0);
  } else {
    TORCH_CHECK(w_hh.dim() == 2, op, ": expected w_hh to be 2-D [", gates, "*H, H], got ",
                w_hh.sizes());
    hidden = state = w_hh.size(1);
  }
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * hidden && w_hh.size(1) == state, op,
              ": expected w_hh of shape [", gates * hidden, ", ", state, "] (", gates,
              " gates of H = ", hidden, " rows), got ", w_hh.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == gates * hidden, op,
              ": expected w_ih to be 2-D [", gates * hidden, ", I], got ", w_ih.sizes());
  TORCH_CHECK(input.dim() == 2, op, ": expected input to be 2-D [B, I], got ", input.sizes());
  TORCH_CHECK(input.size(1) == w_ih.size(1), "input has inconsistent input_size: got ",
              input.size(1), " expected ", w_ih.size(1));
  check_bias(op, "b_ih", b_ih, gates * hidden);
  check_bias(op, "b_hh", b_hh, gates * hidden);
  return {0, input.size(1), hidden, state};
}

}  // namespace

CellSizes check_forward_args(const char* op, int64_t gates, const Tensor& input, int64_t batch,
                             const Tensor& hx, const Tensor* cx, const Tensor& w_ih,
                             const Tensor& w_hh, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const OptionalTensor& w_hr) {
  CellSizes s = check_weights(op, gates, input, w_ih, w_hh, b_ih, b_hh, w_hr);
  s.batch = batch;
  check_state(op, batch, hx, s.state, "0", "hx");
  if (cx) check_state(op, batch, *cx, s.hidden, "1", "cx");
  // Devices and dtypes after every size, in torch.nn's order: it reports a wrong hidden size
  // before a wrong dtype.
  const auto optional = [](const OptionalTensor& t) { return t ? &*t : nullptr; };
  const std::pair<const char*, const Tensor*> tensors[] = {
      {"hx", &hx},     {"cx", cx},
      {"w_ih", &w_ih}, {"w_hh", &w_hh},
      {"b_ih", optional(b_ih)}, {"b_hh", optional(b_hh)}, {"w_hr", optional(w_hr)}};
  for (const auto& [name, t] : tensors) {
    if (t) check_like_input(op, name, *t, input);
  }
  return s;
}

CellSizes check_cell_forward_args(const char* op, int64_t gates, const Tensor& input,
                                  const Tensor& hx, const OptionalTensor& cx, const Tensor& w_ih,
                                  const Tensor& w_hh, const OptionalTensor& b_ih,
                                  const OptionalTensor& b_hh) {
  return check_forward_args(op, gates, input, input.dim() >= 1 ? input.size(0) : 0, hx,
                            cx ? &*cx : nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt);
}

OptionalTensor summed_biases(std::initializer_list<const OptionalTensor*> biases) {
  OptionalTensor bias;
  for (const OptionalTensor* b : biases) {
    if (b->has_value()) bias = bias.has_value() ? at::add(*bias, **b) : **b;
  }
  return bias;
}

Tensor input_projection(const LinearKernels& k, const Tensor& input, const Tensor& w_ih,
                        const OptionalTensor& bias) {
  return k.linear(input, k.prepare_linear(w_ih, input.size(0), 1), bias);
}

void check_saved(const char* op, const char* name, const Tensor& t, at::IntArrayRef sizes,
                 const Tensor& like) {
  check_like_input(op, name, t, like);
  TORCH_CHECK(t.sizes() == sizes, op, ": expected ", name, " of shape ", sizes, ", got ",
              t.sizes());
}

namespace {

// The op names of a cell kind's cell ops, for messages (built once).
template <typename Cell>
struct CellOpNames {
  const std::string cell = std::string("fused_rnn.") + Cell::kName + "_cell";
  const std::string cell_backward = cell + "_backward";
};
template <typename Cell>
const CellOpNames<Cell>& cell_op_names() {
  static const CellOpNames<Cell> names;
  return names;
}

OptionalTensor optional_if(bool given, const Tensor& t) {
  return given ? OptionalTensor(t) : std::nullopt;
}

}  // namespace

template <typename Cell>
CellForward cell_forward(const LinearKernels& lin, const CellKernels<Cell>& k,
                         const Tensor& input, const Tensor& hx, const OptionalTensor& cx,
                         const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                         const OptionalTensor& b_hh, at::ArrayRef<Tensor> norms) {
  constexpr bool kCell = Cell::kHasCellState;
  const CellSizes s = check_cell_forward_args(cell_op_names<Cell>().cell.c_str(), Cell::kGates,
                                              input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  if constexpr (Cell::kNorms > 0) {
    Cell::check_norms(cell_op_names<Cell>().cell.c_str(), norms, s.hidden, input);
  }
  const auto state = [&] { return at::empty({s.batch, s.hidden}, input.options()); };
  StepTensors st;
  st.input_side = input_projection(lin, in_saved_type<Cell>(input), in_saved_type<Cell>(w_ih),
                                   input_side_bias<Cell>(b_ih, b_hh));
  st.h_prev = hx.contiguous();
  st.w_hh = k.prepare_recurrent(in_saved_type<Cell>(w_hh), s.batch, 1);
  st.h_out = state();
  if constexpr (kCell) {
    st.c_prev = cx->contiguous();
    st.c_out = state();
  }
  if (Cell::kInputSideBiases < 1) st.b_ih = b_ih;
  if (Cell::kInputSideBiases < 2) st.b_hh = b_hh;
  st.norms = norms;
  // Where the pre-activations sum the sides, the input projection becomes the activations in
  // place.
  st.saved = Cell::kPreActivationsSumSides
                 ? st.input_side
                 : at::empty({s.batch, Cell::saved_columns(s.hidden)},
                             input.options().dtype(saved_type<Cell>(input.scalar_type())));
  k.step(st);
  return {st.h_out, st.c_out, st.saved};
}

template <typename Cell>
Grads cell_backward(const LinearKernels& lin, const CellKernels<Cell>& k, const Tensor& grad_hy,
                    const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
                    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                    const Tensor& saved, const Tensor& cy, const GradMask& mask,
                    at::ArrayRef<Tensor> norms) {
  constexpr bool kCell = Cell::kHasCellState;
  const char* op = cell_op_names<Cell>().cell_backward.c_str();
  const CellSizes s = check_cell_forward_args(op, Cell::kGates, input, hx, optional_if(kCell, cx),
                                              w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t B = s.batch, H = s.hidden;
  const auto grad_options = input.options().dtype(saved_type<Cell>(input.scalar_type()));
  if constexpr (Cell::kNorms > 0) Cell::check_norms(op, norms, H, input);
  check_saved(op, "grad_hy", grad_hy, {B, H}, input);
  if (kCell) check_saved(op, "grad_cy", grad_cy, {B, H}, input);
  check_saved(op, Cell::kSavedName, saved, {B, Cell::saved_columns(H)},
              Cell::kSavedInOpMath ? at::empty({0}, grad_options) : input);
  if (kCell) check_saved(op, "cy", cy, {B, H}, input);

  // The gate gradients in the saved type; the carried states' in the dtype.
  const auto empty = [&](int64_t columns, const at::TensorOptions& options) {
    return at::empty({B, columns}, options);
  };
  GateGradTensors gg;
  gg.grad_h = grad_hy.contiguous();
  gg.saved = saved.contiguous();
  if (Cell::kGateGradsReadHPrev) gg.h_prev = hx.contiguous();
  if constexpr (kCell) {
    gg.grad_c = grad_cy.contiguous();
    gg.c_prev = cx.contiguous();
    gg.c_out = cy.contiguous();
    gg.grad_c_prev = empty(H, input.options());
  }
  gg.grad_input_gates = empty(Cell::kGates * H, grad_options);
  gg.grad_hidden_gates = Cell::kPreActivationsSumSides ? gg.grad_input_gates
                                                       : empty(Cell::kGates * H, grad_options);
  if (Cell::kDirectStateGrad) gg.grad_h_direct = empty(H, input.options());
  gg.norms = norms;
  if constexpr (Cell::kNorms > 0) gg.grad_pre = empty(Cell::pre_grad_columns(H), grad_options);
  k.gate_grads(gg);
  const Tensor& gi = gg.grad_input_gates;
  const Tensor& gh = gg.grad_hidden_gates;
  // The products in the gradients' type, the results in the dtype.
  const auto product = [&](const Tensor& a, const Tensor& b, const OptionalTensor& add) {
    if constexpr (Cell::kSavedInOpMath) {
      const at::ScalarType t = gi.scalar_type();
      const OptionalTensor add_t = add.has_value() ? OptionalTensor(add->to(t)) : std::nullopt;
      return lin.matmul(a, b.to(t), add_t).to(input.scalar_type());
    }
    return lin.matmul(a, b, add);
  };
  Grads g;
  if (mask.input) g.input = product(gi, w_ih, std::nullopt);
  if (mask.hx) g.hx = product(gh, w_hh, optional_if(Cell::kDirectStateGrad, gg.grad_h_direct));
  if (mask.cx) g.cx = gg.grad_c_prev;
  if (mask.w_ih) g.w_ih = product(gi.t(), input, std::nullopt);
  if (mask.w_hh) g.w_hh = product(gh.t(), hx, std::nullopt);
  if constexpr (Cell::kNorms > 0) {
    const std::vector<Tensor> sums = Cell::parameter_sums(H, grad_options);
    Cell::add_parameter_sums(lin, gg.grad_pre, gg.saved, H, sums);
    Cell::parameter_grads(sums, mask, g, input.scalar_type());
  } else {
    // Where the pre-activations sum the sides, both biases share b_ih's gradient.
    if (mask.b_ih) g.b_ih = at::sum(gi, 0);
    if (mask.b_hh) g.b_hh = at::sum(gh, 0);
  }
  return g;
}

#define FUSED_RNN_INSTANTIATE_CELL_OPS(Cell)                                                    \
  template CellForward cell_forward<Cell>(const LinearKernels&, const CellKernels<Cell>&,      \
                                          const Tensor&, const Tensor&, const OptionalTensor&, \
                                          const Tensor&, const Tensor&, const OptionalTensor&, \
                                          const OptionalTensor&, at::ArrayRef<Tensor>);        \
  template Grads cell_backward<Cell>(const LinearKernels&, const CellKernels<Cell>&,           \
                                     const Tensor&, const Tensor&, const Tensor&, const Tensor&, \
                                     const Tensor&, const Tensor&, const Tensor&, const Tensor&, \
                                     const Tensor&, const GradMask&, at::ArrayRef<Tensor>);
FUSED_RNN_INSTANTIATE_CELL_OPS(LstmCell)
FUSED_RNN_INSTANTIATE_CELL_OPS(GruCell)
FUSED_RNN_INSTANTIATE_CELL_OPS(LayerNormLstmCell)
FUSED_RNN_INSTANTIATE_CELL_OPS(LayerNormGruCell)

}  // namespace fused_rnn
