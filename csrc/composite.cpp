// The forward ops as compositions of differentiable ATen operations (composite.h). A layer is a
// loop over its steps in C++: the input side of every step as one product, then per step the
// recurrent product and the gate math, with packed sequences' rows leaving (forward) or joining
// (reverse) the batch as batch_sizes says.
#include "composite.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <vector>

namespace fused_rnn::composite {
namespace {

// One LSTM step from its input side x_side [B,4H] (biases included): returns h' before any
// projection, c' and the activated gates [B,4H].
struct LstmStep {
  Tensor hidden, cell, gates;
};
LstmStep lstm_step(const Tensor& x_side, const Tensor& h, const Tensor& c, const Tensor& w_hh,
                   const OptionalTensor& b_hh) {
  const auto pre = (x_side + at::linear(h, w_hh, b_hh)).chunk(kLstmGates, 1);
  const Tensor i = pre[0].sigmoid(), f = pre[1].sigmoid(), g = pre[2].tanh(), o = pre[3].sigmoid();
  const Tensor cell = f * c + i * g;
  return {o * cell.tanh(), cell, at::cat({i, f, g, o}, 1)};
}

// One GRU step from its input side x_side [B,3H] (b_ih included): h' and the workspace [B,4H]
// (r, z, n, h_n) the fused kernels save.
struct GruStep {
  Tensor hidden, workspace;
};
GruStep gru_step(const Tensor& x_side, const Tensor& h, const Tensor& w_hh,
                 const OptionalTensor& b_hh) {
  const auto x = x_side.chunk(kGruGates, 1);
  const auto hs = at::linear(h, w_hh, b_hh).chunk(kGruGates, 1);
  const Tensor r = (x[0] + hs[0]).sigmoid(), z = (x[1] + hs[1]).sigmoid();
  const Tensor n = (x[2] + r * hs[2]).tanh();
  return {(1 - z) * n + z * h, at::cat({r, z, n, hs[2]}, 1)};
}

// The step order and row layout of a (packed) sequence, and the carried states' rows: in the
// forward direction rows leave the batch (their final state is then set aside); in reverse they
// join it from the initial state.
class Steps {
 public:
  Steps(const Tensor& batch_sizes, bool reverse) : reverse_(reverse) {
    const auto sizes = batch_sizes.accessor<int64_t, 1>();
    int64_t offset = 0;
    for (int64_t t = 0; t < sizes.size(0); ++t) {
      rows_.push_back(sizes[t]);
      offsets_.push_back(offset);
      offset += sizes[t];
    }
  }
  int64_t count() const { return static_cast<int64_t>(rows_.size()); }
  // The time index of the s-th step run.
  int64_t time(int64_t s) const { return reverse_ ? count() - 1 - s : s; }
  int64_t rows(int64_t t) const { return rows_[t]; }
  int64_t offset(int64_t t) const { return offsets_[t]; }

  // The state entering the first step run: the initial state's rows that step runs (in reverse,
  // the rows of the sequences that reach the last step).
  Tensor first(const Tensor& initial) const {
    return rows_.empty() ? initial : initial.narrow(0, 0, rows_[time(0)]);
  }

  // The state `state` carried into step t: its rows cut or joined from `initial`; rows leaving
  // are set aside in `finished` (highest rows first).
  Tensor enter(const Tensor& state, const Tensor& initial, int64_t t,
               std::vector<Tensor>& finished) const {
    const int64_t have = state.size(0), want = rows_[t];
    if (want < have) {
      finished.push_back(state.narrow(0, want, have - want));
      return state.narrow(0, 0, want);
    }
    if (want > have) return at::cat({state, initial.narrow(0, have, want - have)}, 0);
    return state;
  }

  // Each sequence's state after its last step, in batch order.
  static Tensor final_state(const Tensor& state, std::vector<Tensor> finished) {
    finished.push_back(state);
    std::reverse(finished.begin(), finished.end());
    return finished.size() == 1 ? state : at::cat(finished, 0);
  }

  // Per-step tensors [rows, columns], listed in the order run, joined in time order.
  Tensor in_time_order(std::vector<Tensor> per_step, const Tensor& like, int64_t columns) const {
    if (per_step.empty()) return like.new_empty({0, columns});
    if (reverse_) std::reverse(per_step.begin(), per_step.end());
    return at::cat(per_step, 0);
  }

 private:
  bool reverse_;
  std::vector<int64_t> rows_, offsets_;
};

// batch_sizes as a tensor whose values can be read: under a torch.func transform it comes wrapped,
// without storage of its own, and only its elements' values (item) can be read.
Tensor readable(const Tensor& batch_sizes) {
  if (batch_sizes.has_storage() || batch_sizes.scalar_type() != at::kLong ||
      batch_sizes.dim() != 1) {
    return batch_sizes;
  }
  std::vector<int64_t> values;
  for (int64_t t = 0; t < batch_sizes.size(0); ++t) {
    values.push_back(batch_sizes[t].item<int64_t>());
  }
  // Made outside the transform, which would wrap a tensor made under it too.
  c10::impl::ExcludeDispatchKeyGuard outside(
      c10::DispatchKeySet({c10::DispatchKey::FuncTorchDynamicLayerFrontMode,
                           c10::DispatchKey::FuncTorchDynamicLayerBackMode}));
  Tensor plain = at::empty({batch_sizes.size(0)}, at::kLong);
  std::copy(values.begin(), values.end(), plain.data_ptr<int64_t>());
  return plain;
}

Tensor saved_or_empty(bool keep, const Steps& steps, std::vector<Tensor> per_step,
                      const Tensor& like, int64_t columns) {
  if (!keep) return like.new_empty({0, columns});
  return steps.in_time_order(std::move(per_step), like, columns).detach();
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> lstm_cell(const Tensor& input, const Tensor& hx,
                                             const Tensor& cx, const Tensor& w_ih,
                                             const Tensor& w_hh, const OptionalTensor& b_ih,
                                             const OptionalTensor& b_hh) {
  check_cell_forward_args("lstm_cell", kLstmGates, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  auto step = lstm_step(at::linear(input, w_ih, b_ih), hx, cx, w_hh, b_hh);
  return {step.hidden, step.cell, step.gates.detach()};
}

std::tuple<Tensor, Tensor> gru_cell(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                    const Tensor& w_hh, const OptionalTensor& b_ih,
                                    const OptionalTensor& b_hh) {
  check_cell_forward_args("gru_cell", kGruGates, input, hx, std::nullopt, w_ih, w_hh, b_ih,
                          b_hh);
  auto step = gru_step(at::linear(input, w_ih, b_ih), hx, w_hh, b_hh);
  return {step.hidden, step.workspace.detach()};
}

LstmLayerOutputs lstm_layer(const Tensor& input, const Tensor& batch_sizes, const Tensor& hx,
                            const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                            const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                            const OptionalTensor& w_hr, bool reverse, bool keep_saved) {
  const Tensor sizes = readable(batch_sizes);
  check_layer_args("lstm_layer", kLstmGates, input, sizes, hx, &cx, w_ih, w_hh, b_ih, b_hh,
                   w_hr);
  const Steps steps(sizes, reverse);
  const Tensor x_side = at::linear(input, w_ih, b_ih);
  Tensor h = steps.first(hx), c = steps.first(cx);
  std::vector<Tensor> outputs, gates, cells, pre_proj, h_done, c_done;
  for (int64_t s = 0; s < steps.count(); ++s) {
    const int64_t t = steps.time(s);
    h = steps.enter(h, hx, t, h_done);
    c = steps.enter(c, cx, t, c_done);
    auto step = lstm_step(x_side.narrow(0, steps.offset(t), steps.rows(t)), h, c, w_hh, b_hh);
    h = w_hr ? at::linear(step.hidden, *w_hr) : step.hidden;
    c = step.cell;
    outputs.push_back(h);
    gates.push_back(step.gates);
    cells.push_back(step.cell);
    pre_proj.push_back(step.hidden);
  }
  const int64_t hidden = w_hh.size(0) / kLstmGates;
  return {steps.in_time_order(outputs, input, h.size(1)), Steps::final_state(h, h_done),
          Steps::final_state(c, c_done),
          saved_or_empty(keep_saved, steps, gates, input, kLstmGates * hidden),
          saved_or_empty(keep_saved, steps, cells, input, hidden),
          saved_or_empty(keep_saved && w_hr, steps, pre_proj, input, hidden)};
}

GruLayerOutputs gru_layer(const Tensor& input, const Tensor& batch_sizes, const Tensor& hx,
                          const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                          const OptionalTensor& b_hh, bool reverse, bool keep_saved) {
  const Tensor sizes = readable(batch_sizes);
  check_layer_args("gru_layer", kGruGates, input, sizes, hx, nullptr, w_ih, w_hh, b_ih, b_hh,
                   std::nullopt);
  const Steps steps(sizes, reverse);
  const Tensor x_side = at::linear(input, w_ih, b_ih);
  Tensor h = steps.first(hx);
  std::vector<Tensor> outputs, workspaces, h_done;
  for (int64_t s = 0; s < steps.count(); ++s) {
    const int64_t t = steps.time(s);
    h = steps.enter(h, hx, t, h_done);
    auto step = gru_step(x_side.narrow(0, steps.offset(t), steps.rows(t)), h, w_hh, b_hh);
    h = step.hidden;
    outputs.push_back(h);
    workspaces.push_back(step.workspace);
  }
  return {steps.in_time_order(outputs, input, h.size(1)), Steps::final_state(h, h_done),
          saved_or_empty(keep_saved, steps, workspaces, input,
                         kGruSavedPerUnit * w_hh.size(1))};
}

}  // namespace fused_rnn::composite
