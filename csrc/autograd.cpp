// Autograd for the forward ops, registered in C++ so a call pays no Python on its way: each
// forward op saves what its backward op needs, and its backward calls that registered op (so
// torch.compile and opcheck see through it), asking only for the gradients autograd needs.
// Where autograd must differentiate more than that first-order backward (torch.func transforms,
// forward-mode AD, a backward with create_graph), the ops' composite form (composite.h) serves.
#include "cell_ops.h"
#include "composite.h"
#include "layernorm_cell_ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fused_rnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

OptionalTensor or_none(const Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }

// Autograd numbers its input edges over the tensors actually given; absent optional tensors and
// non-tensor arguments have none. Records, per argument, its edge (-1: none), so the backward can
// ask needs_input_grad per argument.
void record_edges(AutogradContext* ctx, const std::vector<bool>& has_edge) {
  std::vector<int64_t> edges;
  int64_t next = 0;
  for (bool present : has_edge) edges.push_back(present ? next++ : -1);
  ctx->saved_data["edges"] = edges;
}

// Whether autograd needs the gradient of argument `arg`: need(arg). The edges are read once per
// backward (each read copies them out of the context).
class Needs {
 public:
  explicit Needs(AutogradContext* ctx)
      : ctx_(ctx), edges_(ctx->saved_data["edges"].toIntVector()) {}
  bool operator()(size_t arg) const {
    const int64_t edge = edges_[arg];
    return edge >= 0 && ctx_->needs_input_grad(static_cast<size_t>(edge));
  }

 private:
  AutogradContext* ctx_;
  std::vector<int64_t> edges_;
};

// Whether autograd records a call on these arguments (as Function::apply decides), so that its
// backward will need the saved tensors.
bool records_graph(std::initializer_list<const Tensor*> tensors,
                   std::initializer_list<const OptionalTensor*> optional) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : tensors) {
    if (t->requires_grad()) return true;
  }
  for (const OptionalTensor* t : optional) {
    if (t->has_value() && (*t)->requires_grad()) return true;
  }
  return false;
}

// Whether `t` carries a forward-mode tangent at any level. Read from its autograd metadata
// directly: Tensor::_fw_grad is a dispatched op, about 0.15 us a tensor (NOTES entry 45).
bool has_tangent(const Tensor& t) {
  const auto* meta = torch::autograd::impl::get_autograd_meta(t);
  return meta != nullptr && meta->fw_grad_ != nullptr && !meta->fw_grad_->empty();
}

// Whether a call must run the composite form: under a torch.func transform (grad, vjp, jvp, vmap
// over our autograd), which cannot see into a C++ autograd Function, or where a tensor carries a
// forward-mode tangent, which its backward cannot propagate.
bool takes_composite(std::initializer_list<const Tensor*> tensors,
                     std::initializer_list<const OptionalTensor*> optional) {
  // functorch includes this key for as long as any transform is active.
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) {
    return true;
  }
  for (const Tensor* t : tensors) {
    if (has_tangent(*t)) return true;
  }
  for (const OptionalTensor* t : optional) {
    if (t->has_value() && has_tangent(**t)) return true;
  }
  return false;
}

// A backward asked to record its own graph (create_graph=True; autograd then runs it in grad
// mode): the gradients of `outputs` (recomputed by the composite form from the saved inputs)
// with respect to the forward's arguments `args` wanted, as autograd derives them, so that they
// can be differentiated again. One result per argument, undefined where not wanted.
variable_list recomputed_grads(const variable_list& outputs, const variable_list& grads,
                               const variable_list& args, const std::vector<bool>& wanted) {
  variable_list reached, grads_in, inputs;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (grads[i].defined()) {
      reached.push_back(outputs[i]);
      grads_in.push_back(grads[i]);
    }
  }
  for (size_t j = 0; j < args.size(); ++j) {
    if (wanted[j]) inputs.push_back(args[j]);
  }
  variable_list result(args.size());
  if (reached.empty() || inputs.empty()) return result;
  const variable_list got = torch::autograd::grad(reached, inputs, grads_in, /*retain_graph=*/true,
                                                  /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t j = 0, k = 0; j < args.size(); ++j) {
    if (wanted[j]) result[j] = got[k++];
  }
  return result;
}

// Autograd would fill a zero gradient for every output a loss does not reach, the saved
// activations among them ([N, 4H] per layer call); the forwards turn that off, and the backward
// ops get zeros only for the gradients they read.
Tensor or_zeros(const Tensor& grad, const Tensor& like) {
  return grad.defined() ? grad : at::zeros_like(like);
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using LstmCellOutputs = std::tuple<Tensor, Tensor, Tensor>;
using GruCellOutputs = std::tuple<Tensor, Tensor>;

// The forward ops, called below autograd: by the Functions' forwards, and directly where autograd
// does not record a call (no grad mode, or nothing requiring grad), which Function::apply would
// give a node and a context all the same: a few us of host time, and a cell step's time on a GPU
// is its host's (benchmarks/NOTES.md entry 72).
const auto& lstm_cell_op() {
  static const auto handle =
      op<LstmCellOutputs(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor&, const OptionalTensor&, const OptionalTensor&)>(
          "fused_rnn::lstm_cell");
  return handle;
}

const auto& gru_cell_op() {
  static const auto handle =
      op<GruCellOutputs(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        const OptionalTensor&, const OptionalTensor&)>("fused_rnn::gru_cell");
  return handle;
}

const auto& lstm_layer_op() {
  static const auto handle =
      op<LstmLayerOutputs(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          const Tensor&, const Tensor&, const OptionalTensor&,
                          const OptionalTensor&, const OptionalTensor&, bool, bool,
                          const OptionalTensor&, const OptionalTensor&)>("fused_rnn::lstm_layer");
  return handle;
}

const auto& gru_layer_op() {
  static const auto handle =
      op<GruLayerOutputs(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor&, const OptionalTensor&, const OptionalTensor&, bool, bool,
                         const OptionalTensor&, const OptionalTensor&)>("fused_rnn::gru_layer");
  return handle;
}

template <typename Handle, typename... Args>
auto below_autograd(const Handle& handle, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return handle.call(args...);
}

struct LstmCellFn : torch::autograd::Function<LstmCellFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx,
                               const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                               const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    record_edges(ctx, {true, true, true, true, true, b_ih.has_value(), b_hh.has_value()});
    auto [hy, cy, gates] = lstm_cell_op().call(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
    ctx->save_for_backward({input, hx, cx, w_ih, w_hh, gates, cy, b_ih.value_or(Tensor()),
                            b_hh.value_or(Tensor())});
    ctx->mark_non_differentiable({gates});
    return {hy, cy, gates};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        op<LstmCellGrads(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor&, std::array<bool, 6>)>("fused_rnn::lstm_cell_backward");
    const auto saved = ctx->get_saved_variables();
    const Needs need(ctx);
    if (at::GradMode::is_enabled()) {
      auto [hy, cy, gates] = composite::lstm_cell(saved[0], saved[1], saved[2], saved[3],
                                                  saved[4], or_none(saved[7]), or_none(saved[8]));
      return recomputed_grads({hy, cy}, {grads[0], grads[1]},
                              {saved[0], saved[1], saved[2], saved[3], saved[4], saved[7],
                               saved[8]},
                              {need(0), need(1), need(2), need(3), need(4), need(5), need(6)});
    }
    auto [g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias] = backward_op.call(
        or_zeros(grads[0], saved[1]), or_zeros(grads[1], saved[2]), saved[0], saved[1], saved[2],
        saved[3], saved[4], saved[5], saved[6],
        {need(0), need(1), need(2), need(3), need(4), need(5) || need(6)});
    return {g_input, g_hx, g_cx, g_w_ih, g_w_hh, need(5) ? g_bias : Tensor(),
            need(6) ? g_bias : Tensor()};
  }
};

struct GruCellFn : torch::autograd::Function<GruCellFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx,
                               const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    record_edges(ctx, {true, true, true, true, b_ih.has_value(), b_hh.has_value()});
    auto [hy, workspace] = gru_cell_op().call(input, hx, w_ih, w_hh, b_ih, b_hh);
    ctx->save_for_backward({input, hx, w_ih, w_hh, workspace, b_ih.value_or(Tensor()),
                            b_hh.value_or(Tensor())});
    ctx->mark_non_differentiable({workspace});
    return {hy, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        op<GruGrads(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, std::array<bool, 6>)>("fused_rnn::gru_cell_backward");
    const auto saved = ctx->get_saved_variables();
    const Needs need(ctx);
    if (at::GradMode::is_enabled()) {
      auto [hy, workspace] = composite::gru_cell(saved[0], saved[1], saved[2], saved[3],
                                                 or_none(saved[5]), or_none(saved[6]));
      return recomputed_grads({hy}, {grads[0]},
                              {saved[0], saved[1], saved[2], saved[3], saved[5], saved[6]},
                              {need(0), need(1), need(2), need(3), need(4), need(5)});
    }
    auto [a, b, c, d, e, f] =
        backward_op.call(or_zeros(grads[0], saved[1]), saved[0], saved[1], saved[2], saved[3],
                         saved[4], {need(0), need(1), need(2), need(3), need(4), need(5)});
    return {a, b, c, d, e, f};
  }
};

struct LstmLayerFn : torch::autograd::Function<LstmLayerFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
                               const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const OptionalTensor& w_hr,
                               bool reverse, bool keep_saved, const OptionalTensor& resets,
                               const OptionalTensor& zoneout) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    record_edges(ctx, {true, true, true, true, true, true, b_ih.has_value(), b_hh.has_value(),
                       w_hr.has_value(), false, false, resets.has_value(), zoneout.has_value()});
    auto [output, hy, cy, gates, cells, pre_proj] =
        lstm_layer_op().call(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                             keep_saved, resets, zoneout);
    ctx->save_for_backward({input, batch_sizes, hx, cx, w_ih, w_hh, w_hr.value_or(Tensor()),
                            output, gates, cells, pre_proj, b_ih.value_or(Tensor()),
                            b_hh.value_or(Tensor()), resets.value_or(Tensor()),
                            zoneout.value_or(Tensor())});
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({gates, cells, pre_proj});
    return {output, hy, cy, gates, cells, pre_proj};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        op<LstmLayerGrads(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          const Tensor&, const OptionalTensor&, const Tensor&, const Tensor&,
                          const Tensor&, const Tensor&, bool, std::array<bool, 7>,
                          const OptionalTensor&, const OptionalTensor&)>(
            "fused_rnn::lstm_layer_backward");
    const auto s = ctx->get_saved_variables();
    const Needs need(ctx);
    const bool reverse = ctx->saved_data["reverse"].toBool();
    if (at::GradMode::is_enabled()) {
      auto [output, hy, cy, gates, cells, pre_proj] =
          composite::lstm_layer(s[0], s[1], s[2], s[3], s[4], s[5], or_none(s[11]),
                                or_none(s[12]), or_none(s[6]), reverse, false, or_none(s[13]),
                                or_none(s[14]));
      return recomputed_grads(
          {output, hy, cy}, {grads[0], grads[1], grads[2]},
          {s[0], Tensor(), s[2], s[3], s[4], s[5], s[11], s[12], s[6], Tensor(), Tensor(),
           Tensor(), Tensor()},
          {need(0), false, need(2), need(3), need(4), need(5), need(6), need(7), need(8), false,
           false, false, false});
    }
    auto [g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias, g_w_hr] = backward_op.call(
        or_zeros(grads[0], s[7]), or_zeros(grads[1], s[2]), or_zeros(grads[2], s[3]), s[0], s[1],
        s[2], s[3], s[4], s[5], or_none(s[6]), s[7], s[8], s[9], s[10], reverse,
        {need(0), need(2), need(3), need(4), need(5), need(6) || need(7), need(8)},
        or_none(s[13]), or_none(s[14]));
    return {g_input, Tensor(), g_hx, g_cx, g_w_ih, g_w_hh, need(6) ? g_bias : Tensor(),
            need(7) ? g_bias : Tensor(), g_w_hr, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct GruLayerFn : torch::autograd::Function<GruLayerFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const Tensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
                               const Tensor& w_hh, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, bool reverse, bool keep_saved,
                               const OptionalTensor& resets, const OptionalTensor& zoneout) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    record_edges(ctx, {true, true, true, true, true, b_ih.has_value(), b_hh.has_value(), false,
                       false, resets.has_value(), zoneout.has_value()});
    auto [output, hy, workspace] = gru_layer_op().call(input, batch_sizes, hx, w_ih, w_hh, b_ih,
                                                       b_hh, reverse, keep_saved, resets, zoneout);
    ctx->save_for_backward({input, batch_sizes, hx, w_ih, w_hh, output, workspace,
                            b_ih.value_or(Tensor()), b_hh.value_or(Tensor()),
                            resets.value_or(Tensor()), zoneout.value_or(Tensor())});
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({workspace});
    return {output, hy, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        op<GruGrads(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
                    std::array<bool, 6>, const OptionalTensor&, const OptionalTensor&)>(
            "fused_rnn::gru_layer_backward");
    const auto s = ctx->get_saved_variables();
    const Needs need(ctx);
    const bool reverse = ctx->saved_data["reverse"].toBool();
    if (at::GradMode::is_enabled()) {
      auto [output, hy, workspace] =
          composite::gru_layer(s[0], s[1], s[2], s[3], s[4], or_none(s[7]), or_none(s[8]),
                               reverse, false, or_none(s[9]), or_none(s[10]));
      return recomputed_grads(
          {output, hy}, {grads[0], grads[1]},
          {s[0], Tensor(), s[2], s[3], s[4], s[7], s[8], Tensor(), Tensor(), Tensor(), Tensor()},
          {need(0), false, need(2), need(3), need(4), need(5), need(6), false, false, false,
           false});
    }
    auto [g_input, g_hx, g_w_ih, g_w_hh, g_b_ih, g_b_hh] = backward_op.call(
        or_zeros(grads[0], s[5]), or_zeros(grads[1], s[2]), s[0], s[1], s[2], s[3], s[4], s[5],
        s[6], reverse, {need(0), need(2), need(3), need(4), need(5), need(6)}, or_none(s[9]),
        or_none(s[10]));
    return {g_input, Tensor(), g_hx, g_w_ih, g_w_hh, g_b_ih, g_b_hh, Tensor(), Tensor(),
            Tensor(), Tensor()};
  }
};

// The layer-normalized layers (layernorm_cell_ops.h), one Function for both: its backward is not
// itself differentiable (they have no composite form), so a backward asked for its own graph
// fails at once, saying so. The op is called boxed: the two schemas differ in their states and
// norms, a handful of arguments against a whole sequence's work. Arguments, flattened as
// autograd numbers them: input, batch_sizes, the states (hx, and cx for the LSTM), w_ih, w_hh,
// b_ih, b_hh, the norms, reverse, keep_saved, resets, zoneout.
template <typename Cell>
struct LayerNormLayerFn : torch::autograd::Function<LayerNormLayerFn<Cell>> {
  static constexpr bool kCell = Cell::kHasCellState;
  static constexpr size_t kStates = kCell ? 2 : 1;
  static constexpr size_t kBiasesAt = 2 + kStates + 2, kNormsAt = kBiasesAt + 2;
  static constexpr size_t kArgs = kNormsAt + Cell::kNorms + 4;

  static const std::string& op_name(bool backward) {
    static const std::string forward = std::string("fused_rnn::") + Cell::kName + "_layer";
    static const std::string back = forward + "_backward";
    return backward ? back : forward;
  }

  // The forward op's results: output, hy, (cy,) saved, (cell_states).
  static variable_list call_forward(const Tensor& input, const Tensor& batch_sizes,
                                    at::TensorList states, const Tensor& w_ih, const Tensor& w_hh,
                                    const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                                    at::TensorList norms, bool reverse, bool keep_saved,
                                    const OptionalTensor& resets, const OptionalTensor& zoneout) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow(op_name(false).c_str(), "");
    torch::jit::Stack stack{input, batch_sizes};
    for (const Tensor& state : states) stack.emplace_back(state);
    stack.insert(stack.end(), {w_ih, w_hh, b_ih, b_hh});
    for (const Tensor& norm : norms) stack.emplace_back(norm);
    stack.insert(stack.end(), {reverse, keep_saved, resets, zoneout});
    op.callBoxed(&stack);
    variable_list out;
    for (const c10::IValue& value : stack) out.push_back(value.toTensor());
    return out;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const Tensor& batch_sizes, at::TensorList states,
                               const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, at::TensorList norms, bool reverse,
                               bool keep_saved, const OptionalTensor& resets,
                               const OptionalTensor& zoneout) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    std::vector<bool> edges(kArgs, true);
    edges[kBiasesAt] = b_ih.has_value();
    edges[kBiasesAt + 1] = b_hh.has_value();
    edges[kArgs - 4] = edges[kArgs - 3] = false;  // reverse, keep_saved
    edges[kArgs - 2] = resets.has_value();
    edges[kArgs - 1] = zoneout.has_value();
    record_edges(ctx, edges);
    const variable_list out = call_forward(input, batch_sizes, states, w_ih, w_hh, b_ih, b_hh,
                                           norms, reverse, keep_saved, resets, zoneout);
    const Tensor& saved = out[kCell ? 3 : 2];
    const Tensor cells = kCell ? out[4] : Tensor();
    std::vector<Tensor> to_save{input, batch_sizes};
    to_save.insert(to_save.end(), states.begin(), states.end());
    to_save.insert(to_save.end(), {w_ih, w_hh});
    to_save.insert(to_save.end(), norms.begin(), norms.end());
    to_save.insert(to_save.end(), {out[0], saved, cells, resets.value_or(Tensor()),
                                   zoneout.value_or(Tensor())});
    ctx->save_for_backward(to_save);
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable(kCell ? variable_list{saved, cells} : variable_list{saved});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK_NOT_IMPLEMENTED(
        !at::GradMode::is_enabled(), op_name(false),
        ": double backward (a backward with create_graph=True, as torch.func's grad and vjp run) "
        "is not supported yet by the layer-normalized cells and layers");
    const auto s = ctx->get_saved_variables();
    const Needs need(ctx);
    // Saved: input, batch_sizes, states, w_ih, w_hh, norms, output, saved, cell_states, resets,
    // zoneout.
    const size_t norms_at = 2 + kStates + 2, output_at = norms_at + Cell::kNorms;
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow(op_name(true).c_str(), "");
    torch::jit::Stack stack{or_zeros(grads[0], s[output_at]), or_zeros(grads[1], s[2])};
    if (kCell) stack.emplace_back(or_zeros(grads[2], s[3]));
    for (size_t k = 0; k < output_at; ++k) stack.emplace_back(s[k]);
    stack.emplace_back(s[output_at]);      // output
    stack.emplace_back(s[output_at + 1]);  // saved
    if (kCell) stack.emplace_back(s[output_at + 2]);
    stack.emplace_back(ctx->saved_data["reverse"].toBool());
    // The backward op's output_mask: input, the states, w_ih, w_hh, the biases (the LSTM's one
    // gradient serves both), the norms.
    c10::List<bool> mask;
    for (size_t arg = 0; arg < kBiasesAt; ++arg) {
      if (arg != 1) mask.push_back(need(arg));  // (batch_sizes)
    }
    if (kCell) {
      mask.push_back(need(kBiasesAt) || need(kBiasesAt + 1));
    } else {
      mask.push_back(need(kBiasesAt));
      mask.push_back(need(kBiasesAt + 1));
    }
    for (size_t k = 0; k < Cell::kNorms; ++k) mask.push_back(need(kNormsAt + k));
    stack.emplace_back(mask);
    stack.emplace_back(or_none(s[output_at + 3]));  // resets
    stack.emplace_back(or_none(s[output_at + 4]));  // zoneout
    op.callBoxed(&stack);
    // The gradients in the forward's argument order.
    variable_list g(kArgs);
    size_t next = 0;
    for (size_t arg = 0; arg < kBiasesAt; ++arg) {
      if (arg != 1) g[arg] = stack[next++].toTensor();
    }
    if (kCell) {
      const Tensor bias = stack[next++].toTensor();
      g[kBiasesAt] = need(kBiasesAt) ? bias : Tensor();
      g[kBiasesAt + 1] = need(kBiasesAt + 1) ? bias : Tensor();
    } else {
      g[kBiasesAt] = stack[next++].toTensor();
      g[kBiasesAt + 1] = stack[next++].toTensor();
    }
    for (size_t k = 0; k < Cell::kNorms; ++k) g[kNormsAt + k] = stack[next++].toTensor();
    return g;
  }
};

std::tuple<Tensor, Tensor, Tensor> lstm_cell_autograd(const Tensor& input, const Tensor& hx,
                                                      const Tensor& cx, const Tensor& w_ih,
                                                      const Tensor& w_hh,
                                                      const OptionalTensor& b_ih,
                                                      const OptionalTensor& b_hh) {
  if (takes_composite({&input, &hx, &cx, &w_ih, &w_hh}, {&b_ih, &b_hh})) {
    return composite::lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  }
  if (!records_graph({&input, &hx, &cx, &w_ih, &w_hh}, {&b_ih, &b_hh})) {
    return below_autograd(lstm_cell_op(), input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  }
  auto out = LstmCellFn::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  return {out[0], out[1], out[2]};
}

std::tuple<Tensor, Tensor> gru_cell_autograd(const Tensor& input, const Tensor& hx,
                                             const Tensor& w_ih, const Tensor& w_hh,
                                             const OptionalTensor& b_ih,
                                             const OptionalTensor& b_hh) {
  if (takes_composite({&input, &hx, &w_ih, &w_hh}, {&b_ih, &b_hh})) {
    return composite::gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh);
  }
  if (!records_graph({&input, &hx, &w_ih, &w_hh}, {&b_ih, &b_hh})) {
    return below_autograd(gru_cell_op(), input, hx, w_ih, w_hh, b_ih, b_hh);
  }
  auto out = GruCellFn::apply(input, hx, w_ih, w_hh, b_ih, b_hh);
  return {out[0], out[1]};
}

LstmLayerOutputs lstm_layer_autograd(const Tensor& input, const Tensor& batch_sizes,
                                     const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                                     const Tensor& w_hh, const OptionalTensor& b_ih,
                                     const OptionalTensor& b_hh, const OptionalTensor& w_hr,
                                     bool reverse, bool keep_saved, const OptionalTensor& resets,
                                     const OptionalTensor& zoneout) {
  if (takes_composite({&input, &hx, &cx, &w_ih, &w_hh}, {&b_ih, &b_hh, &w_hr})) {
    return composite::lstm_layer(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                 reverse, keep_saved, resets, zoneout);
  }
  if (!records_graph({&input, &hx, &cx, &w_ih, &w_hh}, {&b_ih, &b_hh, &w_hr})) {
    return below_autograd(lstm_layer_op(), input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh,
                          w_hr, reverse, keep_saved, resets, zoneout);
  }
  // A recorded call keeps its saved tensors whatever the caller asked: its backward needs them.
  auto out = LstmLayerFn::apply(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                                true, resets, zoneout);
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

GruLayerOutputs gru_layer_autograd(const Tensor& input, const Tensor& batch_sizes,
                                   const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                   const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                                   bool reverse, bool keep_saved, const OptionalTensor& resets,
                                   const OptionalTensor& zoneout) {
  if (takes_composite({&input, &hx, &w_ih, &w_hh}, {&b_ih, &b_hh})) {
    return composite::gru_layer(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse,
                                keep_saved, resets, zoneout);
  }
  if (!records_graph({&input, &hx, &w_ih, &w_hh}, {&b_ih, &b_hh})) {
    return below_autograd(gru_layer_op(), input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse,
                          keep_saved, resets, zoneout);
  }
  // (As for the LSTM: a recorded call keeps its saved tensors.)
  auto out = GruLayerFn::apply(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, true,
                               resets, zoneout);
  return {out[0], out[1], out[2]};
}

// Where no torch.func transform needs their gradients the layer-normalized layers run below
// autograd (vmap's fallback included); a transform that does fails, saying so.
template <typename Cell>
variable_list layernorm_layer_autograd(const Tensor& input, const Tensor& batch_sizes,
                                       at::TensorList states, const Tensor& w_ih,
                                       const Tensor& w_hh, const OptionalTensor& b_ih,
                                       const OptionalTensor& b_hh, at::TensorList norms,
                                       bool reverse, bool keep_saved,
                                       const OptionalTensor& resets,
                                       const OptionalTensor& zoneout) {
  std::vector<const Tensor*> tensors{&input, &w_ih, &w_hh};
  for (const Tensor& t : states) tensors.push_back(&t);
  for (const Tensor& t : norms) tensors.push_back(&t);
  bool grad = at::GradMode::is_enabled() &&
              std::any_of(tensors.begin(), tensors.end(),
                          [](const Tensor* t) { return t->requires_grad(); });
  grad = grad || (at::GradMode::is_enabled() &&
                  ((b_ih.has_value() && b_ih->requires_grad()) ||
                   (b_hh.has_value() && b_hh->requires_grad())));
  TORCH_CHECK_NOT_IMPLEMENTED(
      !grad || !c10::impl::tls_is_dispatch_key_included(
                   c10::DispatchKey::FuncTorchDynamicLayerFrontMode),
      "fused_rnn.", Cell::kName, "_layer: torch.func's gradient transforms are not supported yet "
      "by the layer-normalized layers");
  if (!grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return LayerNormLayerFn<Cell>::call_forward(input, batch_sizes, states, w_ih, w_hh, b_ih,
                                                b_hh, norms, reverse, keep_saved, resets,
                                                zoneout);
  }
  // A recorded call keeps its saved tensors whatever the caller asked: its backward needs them.
  return LayerNormLayerFn<Cell>::apply(input, batch_sizes, states, w_ih, w_hh, b_ih, b_hh, norms,
                                       reverse, true, resets, zoneout);
}

LayerNormLstmLayerOutputs layernorm_lstm_layer_autograd(
    const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
    const Tensor& ln_ih_w, const Tensor& ln_ih_b, const Tensor& ln_hh_w, const Tensor& ln_hh_b,
    const Tensor& ln_c_w, const Tensor& ln_c_b, bool reverse, bool keep_saved,
    const OptionalTensor& resets, const OptionalTensor& zoneout) {
  const auto out = layernorm_layer_autograd<LayerNormLstmCell>(
      input, batch_sizes, {hx, cx}, w_ih, w_hh, b_ih, b_hh,
      {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b}, reverse, keep_saved, resets, zoneout);
  return {out[0], out[1], out[2], out[3], out[4]};
}

GruLayerOutputs layernorm_gru_layer_autograd(
    const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
    const Tensor& ln_ih_w, const Tensor& ln_ih_b, const Tensor& ln_hh_w, const Tensor& ln_hh_b,
    bool reverse, bool keep_saved, const OptionalTensor& resets, const OptionalTensor& zoneout) {
  const auto out = layernorm_layer_autograd<LayerNormGruCell>(
      input, batch_sizes, {hx}, w_ih, w_hh, b_ih, b_hh, {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b},
      reverse, keep_saved, resets, zoneout);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, Autograd, m) {
  m.impl("lstm_cell", &lstm_cell_autograd);
  m.impl("gru_cell", &gru_cell_autograd);
  m.impl("lstm_layer", &lstm_layer_autograd);
  m.impl("gru_layer", &gru_layer_autograd);
  m.impl("layernorm_lstm_layer", &layernorm_lstm_layer_autograd);
  m.impl("layernorm_gru_layer", &layernorm_gru_layer_autograd);
}

}  // namespace fused_rnn
