// The forward ops as compositions of differentiable ATen operations (composite.h). A layer is a
// loop over its steps in C++ (in the order the layer ops' schedule gives): the input side of every
// step as one product, then per step the recurrent product and the gate math, with packed
// sequences' rows leaving (forward) or joining (reverse) the batch as batch_sizes says.
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

// A step's saved values in the layout of cell_math.h (store_lstm_saved, store_gru_saved), from
// the step's values as tensors [B, H].
template <int64_t kSaved, typename Step, typename Store>
Tensor saved_blocks(const Step& step, const Store& store) {
  std::vector<Tensor> blocks(kSaved);
  store(step, [&](int64_t k, const Tensor& v) { blocks[k] = v; });
  return at::cat(blocks, 1);
}

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
  const Tensor hidden = o * cell.tanh();
  const Tensor saved = saved_blocks<kLstmSaved>(
      fused_rnn::LstmStep<Tensor>{i, f, g, o, cell, hidden},
      [](const auto& s, const auto& store) { store_lstm_saved(s, store); });
  return {hidden, cell, saved};
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
  const Tensor hidden = (1 - z) * n + z * h;
  const Tensor saved = saved_blocks<kGruSaved>(
      fused_rnn::GruStep<Tensor>{r, z, n, hs[2], hidden},
      [](const auto& s, const auto& store) { store_gru_saved(s, store); });
  return {hidden, saved};
}

// The state entering the first step run (order as check_layer_args returns it): the initial
// state's rows that step runs (in reverse, those of the sequences that reach the last step).
Tensor first_state(const Tensor& initial, const std::vector<SequenceStep>& order) {
  return order.empty() ? initial : initial.narrow(0, 0, order.front().rows);
}

// The state `state` carried into a step of `rows` rows: rows leaving the batch (forward) are set
// aside in `finished`, highest rows first; rows joining it (reverse) come from `initial`.
Tensor enter(const Tensor& state, const Tensor& initial, int64_t rows,
             std::vector<Tensor>& finished) {
  const int64_t have = state.size(0);
  if (rows < have) {
    finished.push_back(state.narrow(0, rows, have - rows));
    return state.narrow(0, 0, rows);
  }
  if (rows > have) return at::cat({state, initial.narrow(0, have, rows - have)}, 0);
  return state;
}

// Each sequence's state after its last step, in batch order.
Tensor final_state(const Tensor& state, std::vector<Tensor> finished) {
  finished.push_back(state);
  std::reverse(finished.begin(), finished.end());
  return finished.size() == 1 ? state : at::cat(finished, 0);
}

// Per-step tensors [rows, columns], listed in the order run, joined in time order.
Tensor in_time_order(std::vector<Tensor> per_step, bool reverse, const Tensor& like,
                     int64_t columns) {
  if (per_step.empty()) return like.new_empty({0, columns});
  if (reverse) std::reverse(per_step.begin(), per_step.end());
  return at::cat(per_step, 0);
}

// Tensors made outside a torch.func transform, which would wrap a tensor made under it too.
c10::impl::ExcludeDispatchKeyGuard outside_transforms() {
  return c10::impl::ExcludeDispatchKeyGuard(
      c10::DispatchKeySet({c10::DispatchKey::FuncTorchDynamicLayerFrontMode,
                           c10::DispatchKey::FuncTorchDynamicLayerBackMode}));
}

// batch_sizes (int64) or resets (bool) as a tensor whose values can be read: under a torch.func
// transform it comes wrapped, without storage of its own, and only its elements' values (item)
// can be read.
Tensor readable(const Tensor& values) {
  const bool flags = values.scalar_type() == at::kBool;
  if (values.has_storage() || (values.scalar_type() != at::kLong && !flags) ||
      values.dim() != 1) {
    return values;
  }
  std::vector<int64_t> read;
  for (int64_t t = 0; t < values.size(0); ++t) {
    read.push_back(flags ? values[t].item<bool>() : values[t].item<int64_t>());
  }
  const auto outside = outside_transforms();
  Tensor plain = at::empty({values.size(0)}, at::kLong);
  std::copy(read.begin(), read.end(), plain.data_ptr<int64_t>());
  return flags ? plain.to(at::kBool) : plain;
}

// reset_rows (cell_ops.h) over readable resets, its index tensors made outside any transform.
EpisodeStarts episode_starts(const char* op, const OptionalTensor& resets, const Tensor& input,
                             const std::vector<SequenceStep>& order, bool reverse) {
  if (!resets.has_value()) return {};
  const Tensor flags = readable(*resets);
  const auto outside = outside_transforms();
  return reset_rows(op, flags, input, order, reverse);
}

// The state `state` entering step i, restarted from `initial` in the rows where an episode
// starts (starts: episode_starts').
Tensor entering(const Tensor& state, const Tensor& initial, const EpisodeStarts& starts,
                size_t i) {
  if (starts.empty() || !starts[i].defined()) return state;
  return state.index_copy(0, starts[i], initial.index_select(0, starts[i]));
}

// The state carried on from a step: its new value `next`, or with zoneout (weights, a [N, H]
// tensor a state) cell_math.h's blend of it with the state before by weights[k].
Tensor zone_out(const Tensor& before, const Tensor& next, const std::vector<Tensor>& weights,
                size_t k, const SequenceStep& step) {
  if (weights.empty()) return next;
  return zoneout(before, next, weights[k].narrow(0, step.offset, step.rows));
}

Tensor saved_or_empty(bool keep, std::vector<Tensor> per_step, bool reverse, const Tensor& like,
                      int64_t columns) {
  if (!keep) return like.new_empty({0, columns});
  return in_time_order(std::move(per_step), reverse, like, columns).detach();
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
                            const OptionalTensor& w_hr, bool reverse, bool keep_saved,
                            const OptionalTensor& resets, const OptionalTensor& zoneout) {
  const auto order = check_layer_args("lstm_layer", kLstmGates, input, readable(batch_sizes), hx,
                                      &cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse);
  const auto starts = episode_starts("lstm_layer", resets, input, order, reverse);
  const auto weights = zoneout_weights("lstm_layer", zoneout, input, w_hh.size(0) / kLstmGates, 2,
                                       w_hr.has_value());
  const Tensor x_side = at::linear(input, w_ih, b_ih);
  Tensor h = first_state(hx, order), c = first_state(cx, order);
  std::vector<Tensor> outputs, gates, cells, pre_proj, h_done, c_done;
  for (size_t i = 0; i < order.size(); ++i) {
    const SequenceStep& step = order[i];
    h = entering(enter(h, hx, step.rows, h_done), hx, starts, i);
    c = entering(enter(c, cx, step.rows, c_done), cx, starts, i);
    auto cell = lstm_step(x_side.narrow(0, step.offset, step.rows), h, c, w_hh, b_hh);
    h = w_hr ? at::linear(cell.hidden, *w_hr) : zone_out(h, cell.hidden, weights, 0, step);
    c = zone_out(c, cell.cell, weights, 1, step);
    outputs.push_back(h);
    gates.push_back(cell.gates);
    cells.push_back(c);
    if (w_hr) pre_proj.push_back(cell.hidden);
  }
  const int64_t hidden = w_hh.size(0) / kLstmGates;
  return {in_time_order(outputs, reverse, input, h.size(1)), final_state(h, h_done),
          final_state(c, c_done),
          saved_or_empty(keep_saved, gates, reverse, input, kLstmGates * hidden),
          saved_or_empty(keep_saved, cells, reverse, input, hidden),
          saved_or_empty(keep_saved && w_hr, pre_proj, reverse, input, hidden)};
}

GruLayerOutputs gru_layer(const Tensor& input, const Tensor& batch_sizes, const Tensor& hx,
                          const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                          const OptionalTensor& b_hh, bool reverse, bool keep_saved,
                          const OptionalTensor& resets, const OptionalTensor& zoneout) {
  const auto order = check_layer_args("gru_layer", kGruGates, input, readable(batch_sizes), hx,
                                      nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt, reverse);
  const auto starts = episode_starts("gru_layer", resets, input, order, reverse);
  const auto weights =
      zoneout_weights("gru_layer", zoneout, input, w_hh.size(1), 1, false);
  const Tensor x_side = at::linear(input, w_ih, b_ih);
  Tensor h = first_state(hx, order);
  std::vector<Tensor> outputs, workspaces, h_done;
  for (size_t i = 0; i < order.size(); ++i) {
    const SequenceStep& step = order[i];
    h = entering(enter(h, hx, step.rows, h_done), hx, starts, i);
    auto cell = gru_step(x_side.narrow(0, step.offset, step.rows), h, w_hh, b_hh);
    h = zone_out(h, cell.hidden, weights, 0, step);
    outputs.push_back(h);
    workspaces.push_back(cell.workspace);
  }
  return {in_time_order(outputs, reverse, input, h.size(1)), final_state(h, h_done),
          saved_or_empty(keep_saved, workspaces, reverse, input,
                         kGruSaved * w_hh.size(1))};
}

}  // namespace fused_rnn::composite
