// The whole-sequence layer ops, forward and backward (BPTT), over a device's kernels.
//
// A sequence comes packed, as torch.nn.utils.rnn.PackedSequence lays it out: input [N, I] holds
// the steps one after another, step t being batch_sizes[t] rows (non-increasing in t), the rows of
// the sequences still running; a padded [T, B, I] batch is the case batch_sizes = [B] * T. So
// variable lengths cost nothing: step t simply works on fewer rows. The state lives in a [B, *]
// buffer whose first batch_sizes[t] rows are the running sequences'; the rows of finished
// sequences keep their last state, which is what h_n reports. The reverse direction walks the
// steps backwards: its batch grows, and a sequence joining at its last step starts from h0.
#include "cell_ops.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include <algorithm>
#include <vector>

namespace fused_rnn {
namespace {

// The steps in the order the forward runs them, after checking batch_sizes against the input.
std::vector<SequenceStep> schedule(const char* op, const Tensor& batch_sizes, const Tensor& input,
                           int64_t batch, bool reverse) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong &&
                  batch_sizes.device().is_cpu(),
              op, ": expected batch_sizes to be a 1-D int64 tensor on the CPU, got ",
              batch_sizes.dim(), "-D ", batch_sizes.scalar_type(), " on ", batch_sizes.device());
  const Tensor sizes = batch_sizes.contiguous();
  const int64_t* bs = sizes.data_ptr<int64_t>();
  const int64_t steps = sizes.numel();
  std::vector<SequenceStep> order(steps);
  int64_t offset = 0;
  for (int64_t t = 0; t < steps; ++t) {
    TORCH_CHECK(bs[t] >= 0 && bs[t] <= (t == 0 ? batch : bs[t - 1]), op,
                ": expected batch_sizes to be non-increasing, within [0, ", batch,
                "] (the batch of hx), got ", batch_sizes);
    order[t] = {offset, bs[t]};
    offset += bs[t];
  }
  TORCH_CHECK(steps == 0 || bs[0] == batch, op, ": expected batch_sizes[0] = ", batch,
              " (the batch of hx), got ", bs[0]);
  TORCH_CHECK(offset == input.size(0), op, ": batch_sizes sum to ", offset, " but input has ",
              input.size(0), " rows");
  if (reverse) std::reverse(order.begin(), order.end());
  return order;
}

// Every step runs the whole batch (a padded sequence).
bool uniform_batch(const std::vector<SequenceStep>& order, int64_t batch) {
  return std::all_of(order.begin(), order.end(), [&](const SequenceStep& s) { return s.rows == batch; });
}

Tensor rows(const Tensor& t, const SequenceStep& s) { return t.narrow(0, s.offset, s.rows); }
Tensor first_rows(const Tensor& t, int64_t n) { return t.narrow(0, 0, n); }

// For each step, the state it started from, as a packed [N, X] tensor: the previous step's saved
// state (saved [N, X]) where the row ran then, else the initial state (init [B, X]).
Tensor states_before_steps(const std::vector<SequenceStep>& order, const Tensor& saved,
                           const Tensor& init) {
  Tensor before = at::empty({saved.size(0), init.size(1)}, saved.options());
  const int64_t B = init.size(0), N = saved.size(0);
  if (!order.empty() && uniform_batch(order, B)) {
    // A padded batch: past the first step, each step starts from the one before it (in the
    // order run: the next one in memory for the reverse direction), so two copies do.
    const bool reverse = order.size() > 1 && order[0].offset > order[1].offset;
    before.narrow(0, reverse ? N - B : 0, B).copy_(init);
    if (N > B) {
      before.narrow(0, reverse ? 0 : B, N - B).copy_(saved.narrow(0, reverse ? B : 0, N - B));
    }
    return before;
  }
  for (size_t k = 0; k < order.size(); ++k) {
    const SequenceStep& s = order[k];
    const int64_t carried = k == 0 ? 0 : std::min(s.rows, order[k - 1].rows);
    Tensor dst = rows(before, s);
    if (carried > 0) first_rows(dst, carried).copy_(first_rows(rows(saved, order[k - 1]), carried));
    if (carried < s.rows) {
      dst.narrow(0, carried, s.rows - carried).copy_(init.narrow(0, carried, s.rows - carried));
    }
  }
  return before;
}

// The state a step starts from, [rows, X]: a prefix of the previous step's saved rows (saved
// [N, X]) when it ran all of them, else (the batch grew: reverse direction, packed) those rows
// followed by initial ones (init [B, X]), gathered into `scratch` [B, X].
Tensor state_before(const std::vector<SequenceStep>& order, size_t k, const Tensor& saved,
                    const Tensor& init, Tensor& scratch) {
  const SequenceStep& step = order[k];
  if (k == 0) return first_rows(init, step.rows);
  const SequenceStep& prev = order[k - 1];
  if (step.rows <= prev.rows) return first_rows(rows(saved, prev), step.rows);
  if (!scratch.defined()) scratch = at::empty_like(init);
  first_rows(scratch, prev.rows).copy_(rows(saved, prev));
  scratch.narrow(0, prev.rows, step.rows - prev.rows)
      .copy_(init.narrow(0, prev.rows, step.rows - prev.rows));
  return first_rows(scratch, step.rows);
}

// Each sequence's state after its last step, [B, X]: the rows of saved [N, X] where it ran last
// (the initial state for an empty sequence).
Tensor final_states(const std::vector<SequenceStep>& order, const Tensor& saved, const Tensor& init) {
  Tensor final = init.clone();
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t still_running = k + 1 < order.size() ? order[k + 1].rows : 0;
    const int64_t from = std::min(still_running, order[k].rows);
    if (from < order[k].rows) {
      final.narrow(0, from, order[k].rows - from)
          .copy_(rows(saved, order[k]).narrow(0, from, order[k].rows - from));
    }
  }
  return final;
}

// A layer op's checked sizes (B from hx) and its steps in the order the forward runs them.
struct Layer {
  CellSizes sizes;
  std::vector<SequenceStep> order;
};

// The checks every layer op starts with; cx is given for the LSTM only.
Layer check_layer(const char* op, int64_t gates, const Tensor& input, const Tensor& batch_sizes,
                  const Tensor& hx, const Tensor* cx, const Tensor& w_ih, const Tensor& w_hh,
                  const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                  const OptionalTensor& w_hr, bool reverse) {
  const CellSizes s = check_forward_args(op, gates, input, hx.dim() >= 1 ? hx.size(0) : 0, hx,
                                         cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  return {s, schedule(op, batch_sizes, input, s.batch, reverse)};
}

}  // namespace

std::vector<SequenceStep> check_layer_args(const char* op, int64_t gates, const Tensor& input,
                                           const Tensor& batch_sizes, const Tensor& hx,
                                           const Tensor* cx, const Tensor& w_ih,
                                           const Tensor& w_hh, const OptionalTensor& b_ih,
                                           const OptionalTensor& b_hh, const OptionalTensor& w_hr,
                                           bool reverse) {
  return check_layer(op, gates, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
      .order;
}

namespace {

// Steps per chunk of the input projection (DeviceKernels::projection_chunk_bytes), for `steps`
// steps of `batch` rows of `columns` input-side values each: all of them where the device does
// not chunk.
int64_t chunk_steps(const DeviceKernels& k, int64_t steps, int64_t batch, int64_t columns,
                    const Tensor& like) {
  if (k.projection_chunk_bytes == 0) return steps;
  const int64_t step_bytes = std::max<int64_t>(1, batch * columns * like.element_size());
  return std::clamp<int64_t>(k.projection_chunk_bytes / step_bytes, 1,
                             std::max<int64_t>(steps, 1));
}

// run(first, steps) for each chunk of `chunk` steps (the last one shorter), in the order the
// forward runs them (from the end when reverse); first is the chunk's first step in memory.
template <typename Run>
void over_chunks(int64_t steps, int64_t chunk, bool reverse, const Run& run) {
  for (int64_t done = 0; done < steps; done += chunk) {
    const int64_t n = std::min(chunk, steps - done);
    run(reverse ? steps - done - n : done, n);
  }
}

// A saved tensor the caller did not keep: [0, columns], holding no buffer of the forward's.
Tensor not_kept(int64_t columns, const Tensor& like) {
  return at::empty({0, columns}, like.options());
}

// The order of `steps` uniform steps of `batch` rows.
std::vector<SequenceStep> uniform_steps(int64_t steps, int64_t batch, bool reverse) {
  std::vector<SequenceStep> order(steps);
  for (int64_t t = 0; t < steps; ++t) order[t] = {t * batch, batch};
  if (reverse) std::reverse(order.begin(), order.end());
  return order;
}

// The LSTM's forward time loop over `order`, the steps of gates/output/cell_states/pre_proj
// (rows as in the op), starting from h0, c0: the device's whole-sequence loop where it applies,
// else step by step. gates holds the input side and becomes the activated gates.
void lstm_time_loop(const DeviceKernels& k, const std::vector<SequenceStep>& order, int64_t batch,
                    const Tensor& gates, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                    const OptionalTensor& w_hr, const Tensor& output, const Tensor& cell_states,
                    const Tensor& pre_proj, bool reverse) {
  if (!w_hr.has_value() && uniform_batch(order, batch) && k.lstm_sequence &&
      k.lstm_sequence(gates, h0, c0, w_hh, output, cell_states, reverse)) {
    return;
  }
  const int64_t uses = static_cast<int64_t>(order.size());
  const Tensor w_hh_p = k.prepare_recurrent(w_hh, kLstmGates, batch, uses);
  const Tensor w_hr_p =
      w_hr.has_value() ? k.prepare_step_weight(*w_hr, batch, uses) : Tensor();
  Tensor h_scratch, c_scratch;
  for (size_t i = 0; i < order.size(); ++i) {
    const SequenceStep& step = order[i];
    const Tensor h_out = w_hr.has_value() ? rows(pre_proj, step) : rows(output, step);
    k.lstm_step(rows(gates, step), state_before(order, i, output, h0, h_scratch),
                state_before(order, i, cell_states, c0, c_scratch), w_hh_p, h_out,
                rows(cell_states, step));
    if (w_hr.has_value()) k.step_linear(h_out, w_hr_p, rows(output, step), false);
  }
}

// The GRU's forward time loop over `order`, the steps of gx/output (rows as in the op), starting
// from h0: the device's whole-sequence loop where it applies, else step by step. workspace has a
// row per step's row, or only `batch` rows that every step reuses (nothing kept).
void gru_time_loop(const DeviceKernels& k, const std::vector<SequenceStep>& order, int64_t batch,
                   const Tensor& gx, const Tensor& h0, const Tensor& w_hh,
                   const OptionalTensor& b_hh, const Tensor& output, const Tensor& workspace,
                   bool reverse) {
  if (uniform_batch(order, batch) && k.gru_sequence &&
      k.gru_sequence(gx, h0, w_hh, b_hh, output, workspace, reverse)) {
    return;
  }
  const bool per_step = workspace.size(0) == gx.size(0);
  const Tensor w_hh_p =
      k.prepare_recurrent(w_hh, kGruGates, batch, static_cast<int64_t>(order.size()));
  Tensor h_scratch;
  for (size_t i = 0; i < order.size(); ++i) {
    const SequenceStep& step = order[i];
    k.gru_step(rows(gx, step), state_before(order, i, output, h0, h_scratch), w_hh_p, b_hh,
               rows(output, step),
               per_step ? rows(workspace, step) : first_rows(workspace, step.rows));
  }
}

}  // namespace

LstmLayerOutputs lstm_layer(const DeviceKernels& k, const Tensor& input,
                            const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
                            const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                            const OptionalTensor& b_hh, const OptionalTensor& w_hr,
                            bool reverse, bool keep_saved) {
  constexpr const char* op = "fused_rnn.lstm_layer";
  const auto [s, order] = check_layer(op, kLstmGates, input, batch_sizes, hx, &cx, w_ih, w_hh,
                                      b_ih, b_hh, w_hr, reverse);
  const int64_t N = input.size(0), B = s.batch;
  Tensor output = at::empty({N, s.state}, input.options());
  const Tensor h0 = hx.contiguous(), c0 = cx.contiguous(), w_hh_c = w_hh.contiguous();

  // The device's whole forward with the input side inside each step, where it has one.
  if (!w_hr.has_value() && k.lstm_sequence_from_input && uniform_batch(order, B)) {
    Tensor gates, cell_states;
    if (k.lstm_sequence_from_input(input, w_ih, b_ih, b_hh, h0, c0, w_hh_c, output, keep_saved,
                                   gates, cell_states, reverse)) {
      const Tensor h = final_states(order, output, h0), c = final_states(order, cell_states, c0);
      return {output, h, c, gates, keep_saved ? cell_states : not_kept(s.hidden, input),
              not_kept(s.hidden, input)};
    }
  }

  const int64_t steps = static_cast<int64_t>(order.size());
  const int64_t chunk = chunk_steps(k, steps, B, kLstmGates * s.hidden, input);
  if (!keep_saved && !w_hr.has_value() && chunk < steps && uniform_batch(order, B)) {
    // Inference on a padded batch that spans several chunks; the cell states of two chunks at a
    // time (a chunk starts from the one before it).
    const Tensor cells[2] = {at::empty({chunk * B, s.hidden}, input.options()),
                             at::empty({chunk * B, s.hidden}, input.options())};
    const Tensor no_projection = not_kept(s.hidden, input);
    Tensor h = h0, c = c0;
    int slot = 0;
    over_chunks(steps, chunk, reverse, [&](int64_t first, int64_t n) {
      const Tensor gates =
          input_projection(k, input.narrow(0, first * B, n * B), w_ih, {&b_ih, &b_hh});
      const Tensor out = output.narrow(0, first * B, n * B);
      const Tensor cell_states = first_rows(cells[slot], n * B);
      const std::vector<SequenceStep> sub = uniform_steps(n, B, reverse);
      lstm_time_loop(k, sub, B, gates, h, c, w_hh_c, std::nullopt, out, cell_states,
                     no_projection, reverse);
      h = rows(out, sub.back());
      c = rows(cell_states, sub.back());
      slot ^= 1;
    });
    return {output, h.clone(), c.clone(), not_kept(kLstmGates * s.hidden, input),
            not_kept(s.hidden, input), not_kept(s.hidden, input)};
  }

  // One product for the input side of every step; each step then turns its rows into its gates.
  Tensor gates = input_projection(k, input, w_ih, {&b_ih, &b_hh});
  Tensor cell_states = at::empty({N, s.hidden}, input.options());
  // With a projection, o * tanh(c) before it, which the backward needs; else unused (empty).
  Tensor pre_proj = at::empty({w_hr.has_value() ? N : 0, s.hidden}, input.options());
  lstm_time_loop(k, order, B, gates, h0, c0, w_hh_c, w_hr, output, cell_states, pre_proj,
                 reverse);
  const Tensor h = final_states(order, output, h0), c = final_states(order, cell_states, c0);
  if (!keep_saved) {
    return {output, h, c, not_kept(kLstmGates * s.hidden, input), not_kept(s.hidden, input),
            not_kept(s.hidden, input)};
  }
  return {output, h, c, gates, cell_states, pre_proj};
}

LstmLayerGrads lstm_layer_backward(const DeviceKernels& k, const Tensor& grad_output,
                                   const Tensor& grad_hy, const Tensor& grad_cy,
                                   const Tensor& input, const Tensor& batch_sizes,
                                   const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                                   const Tensor& w_hh, const OptionalTensor& w_hr,
                                   const Tensor& output, const Tensor& gates,
                                   const Tensor& cell_states, const Tensor& hidden_pre_proj,
                                   bool reverse, std::array<bool, 7> mask) {
  constexpr const char* op = "fused_rnn.lstm_layer_backward";
  const auto [s, order] = check_layer(op, kLstmGates, input, batch_sizes, hx, &cx, w_ih, w_hh,
                                      std::nullopt, std::nullopt, w_hr, reverse);
  const int64_t N = input.size(0);
  check_saved(op, "grad_output", grad_output, {N, s.state}, input);
  check_saved(op, "grad_hy", grad_hy, {s.batch, s.state}, input);
  check_saved(op, "grad_cy", grad_cy, {s.batch, s.hidden}, input);
  check_saved(op, "output", output, {N, s.state}, input);
  check_saved(op, "gates", gates, {N, kLstmGates * s.hidden}, input);
  check_saved(op, "cell_states", cell_states, {N, s.hidden}, input);
  check_saved(op, "hidden_pre_proj", hidden_pre_proj, {w_hr.has_value() ? N : 0, s.hidden},
              input);

  const Tensor gates_c = gates.contiguous(), cells_c = cell_states.contiguous();
  const Tensor grad_out_c = grad_output.contiguous(), pre_proj_c = hidden_pre_proj.contiguous();
  const Tensor c_before = states_before_steps(order, cells_c, cx.contiguous());
  Tensor grad_gates = at::empty({N, kLstmGates * s.hidden}, input.options());
  // Gradients of the running state, carried backwards through the steps.
  Tensor grad_h = grad_hy.contiguous().clone();
  Tensor grad_c = grad_cy.contiguous().clone();
  // With a projection: every step's full output gradient, for w_hr's gradient as one GEMM.
  Tensor grad_projected = w_hr.has_value() && mask[6]
                              ? at::empty({N, s.state}, input.options()) : Tensor();
  const bool whole_sequence =
      !w_hr.has_value() && uniform_batch(order, s.batch) && k.lstm_backward_sequence &&
      k.lstm_backward_sequence(grad_out_c, gates_c, c_before, cells_c, w_hh, grad_h,
                               grad_c, grad_gates, reverse);
  if (!whole_sequence) {
    // grad_h of the previous step = grad_gates @ W_hh, i.e. linear with W_hh^T as the weight.
    const int64_t uses = static_cast<int64_t>(order.size());
    const Tensor w_hh_t = k.prepare_step_weight(w_hh.t(), s.batch, uses);
    const Tensor w_hr_t =
        w_hr.has_value() ? k.prepare_step_weight(w_hr->t(), s.batch, uses) : Tensor();
    // With a projection: the gradient of each step's o * tanh(c), before the projection.
    Tensor grad_pre_proj =
        w_hr.has_value() ? at::empty({s.batch, s.hidden}, input.options()) : Tensor();
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      const SequenceStep& step = *it;
      Tensor gh = first_rows(grad_h, step.rows);
      gh.add_(rows(grad_out_c, step));
      Tensor grad_cell_out = gh;  // gradient of o * tanh(c), the cell's own output
      if (w_hr.has_value()) {
        if (grad_projected.defined()) rows(grad_projected, step).copy_(gh);
        grad_cell_out = first_rows(grad_pre_proj, step.rows);
        k.step_linear(gh, w_hr_t, grad_cell_out, false);
      }
      Tensor gc = first_rows(grad_c, step.rows);
      k.lstm_gate_grads(grad_cell_out, gc, rows(gates_c, step), rows(c_before, step),
                        rows(cells_c, step), rows(grad_gates, step), gc);
      k.step_linear(rows(grad_gates, step), w_hh_t, gh, false);
    }
  }
  // The input's and the weights' gradients as single GEMMs over all steps (the input's through
  // the device's matmul, which on the CPU may hand it to oneDNN).
  return {mask[0] ? k.matmul(grad_gates, w_ih, std::nullopt) : Tensor(),
          mask[1] ? grad_h : Tensor(),
          mask[2] ? grad_c : Tensor(),
          mask[3] ? at::mm(grad_gates.t(), input) : Tensor(),
          mask[4] ? at::mm(grad_gates.t(), states_before_steps(order, output.contiguous(),
                                                                hx.contiguous()))
                  : Tensor(),
          mask[5] ? at::sum(grad_gates, 0) : Tensor(),
          grad_projected.defined() ? at::mm(grad_projected.t(), pre_proj_c) : Tensor()};
}

GruLayerOutputs gru_layer(const DeviceKernels& k, const Tensor& input, const Tensor& batch_sizes,
                          const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                          const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool reverse,
                          bool keep_saved) {
  constexpr const char* op = "fused_rnn.gru_layer";
  const auto [s, order] = check_layer(op, kGruGates, input, batch_sizes, hx, nullptr, w_ih, w_hh,
                                      b_ih, b_hh, std::nullopt, reverse);
  const int64_t N = input.size(0), B = s.batch;
  Tensor output = at::empty({N, s.hidden}, input.options());
  const Tensor h0 = hx.contiguous(), w_hh_c = w_hh.contiguous();
  const OptionalTensor b_hh_c = b_hh.has_value() ? OptionalTensor(b_hh->contiguous()) : b_hh;
  // Kept: a row per step and batch row. Not kept: one step's rows, which every step overwrites
  // (at large batches writing, and first touching, the whole workspace costs a quarter of the
  // forward; benchmarks/NOTES.md entry 16).
  Tensor workspace =
      at::empty({keep_saved ? N : B, kGruSavedPerUnit * s.hidden}, input.options());

  const Tensor kept_workspace =
      keep_saved ? workspace : not_kept(kGruSavedPerUnit * s.hidden, input);
  // The device's whole forward with the input side inside each step, where it has one.
  if (k.gru_sequence_from_input && uniform_batch(order, B) &&
      k.gru_sequence_from_input(input, w_ih, b_ih, h0, w_hh_c, b_hh_c, output, workspace,
                                reverse)) {
    return {output, final_states(order, output, h0), kept_workspace};
  }

  const int64_t steps = static_cast<int64_t>(order.size());
  const int64_t chunk = chunk_steps(k, steps, B, kGruGates * s.hidden, input);
  Tensor h_n;
  if (chunk < steps && uniform_batch(order, B)) {
    // A padded batch that spans several chunks (projection_chunk_bytes). The GRU saves its
    // workspace, not the projection, so training runs in chunks too (B=128 H=256 forward+
    // backward: 0.95x -> 0.91x of torch.nn's time, a fresh 39 MB buffer fewer; NOTES entry 27).
    Tensor h = h0;
    over_chunks(steps, chunk, reverse, [&](int64_t first, int64_t n) {
      const Tensor gx = input_projection(k, input.narrow(0, first * B, n * B), w_ih, {&b_ih});
      const Tensor out = output.narrow(0, first * B, n * B);
      const Tensor chunk_workspace = keep_saved ? workspace.narrow(0, first * B, n * B) : workspace;
      const std::vector<SequenceStep> sub = uniform_steps(n, B, reverse);
      gru_time_loop(k, sub, B, gx, h, w_hh_c, b_hh_c, out, chunk_workspace, reverse);
      h = rows(out, sub.back());
    });
    h_n = h.clone();
  } else {
    const Tensor gx = input_projection(k, input, w_ih, {&b_ih});
    gru_time_loop(k, order, B, gx, h0, w_hh_c, b_hh_c, output, workspace, reverse);
    h_n = final_states(order, output, h0);
  }
  return {output, h_n, kept_workspace};
}

GruGrads gru_layer_backward(const DeviceKernels& k, const Tensor& grad_output,
                            const Tensor& grad_hy, const Tensor& input, const Tensor& batch_sizes,
                            const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                            const Tensor& output, const Tensor& workspace, bool reverse,
                            std::array<bool, 6> mask) {
  constexpr const char* op = "fused_rnn.gru_layer_backward";
  const auto [s, order] = check_layer(op, kGruGates, input, batch_sizes, hx, nullptr, w_ih, w_hh,
                                      std::nullopt, std::nullopt, std::nullopt, reverse);
  const int64_t N = input.size(0);
  check_saved(op, "grad_output", grad_output, {N, s.hidden}, input);
  check_saved(op, "grad_hy", grad_hy, {s.batch, s.hidden}, input);
  check_saved(op, "output", output, {N, s.hidden}, input);
  check_saved(op, "workspace", workspace, {N, kGruSavedPerUnit * s.hidden}, input);

  const Tensor ws_c = workspace.contiguous(), grad_out_c = grad_output.contiguous();
  const Tensor h_before = states_before_steps(order, output.contiguous(), hx.contiguous());
  Tensor grad_input_gates = at::empty({N, kGruGates * s.hidden}, input.options());
  Tensor grad_hidden_gates = at::empty({N, kGruGates * s.hidden}, input.options());
  Tensor grad_h = grad_hy.contiguous().clone();
  const bool whole_sequence =
      uniform_batch(order, s.batch) && k.gru_backward_sequence &&
      k.gru_backward_sequence(grad_out_c, ws_c, h_before, w_hh, grad_h, grad_input_gates,
                              grad_hidden_gates, reverse);
  if (!whole_sequence) {
    const Tensor w_hh_t = k.prepare_step_weight(w_hh.t(), s.batch,
                                                static_cast<int64_t>(order.size()));
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      const SequenceStep& step = *it;
      Tensor gh = first_rows(grad_h, step.rows);
      gh.add_(rows(grad_out_c, step));
      // gh becomes the direct part of the previous state's gradient, then gains W_hh's.
      k.gru_gate_grads(gh, rows(h_before, step), rows(ws_c, step),
                       rows(grad_input_gates, step), rows(grad_hidden_gates, step), gh);
      k.step_linear(rows(grad_hidden_gates, step), w_hh_t, gh, true);
    }
  }
  // As the LSTM's: the input's gradient through the device's matmul, the weights' one GEMM each.
  return {mask[0] ? k.matmul(grad_input_gates, w_ih, std::nullopt) : Tensor(),
          mask[1] ? grad_h : Tensor(),
          mask[2] ? at::mm(grad_input_gates.t(), input) : Tensor(),
          mask[3] ? at::mm(grad_hidden_gates.t(), h_before) : Tensor(),
          mask[4] ? at::sum(grad_input_gates, 0) : Tensor(),
          mask[5] ? at::sum(grad_hidden_gates, 0) : Tensor()};
}

}  // namespace fused_rnn
