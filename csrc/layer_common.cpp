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
#include "layernorm_cell_ops.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <string>
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
Tensor states_before_steps(const LinearKernels& lin, const std::vector<SequenceStep>& order,
                           const Tensor& saved, const Tensor& init) {
  const int64_t B = init.size(0), N = saved.size(0);
  if (!order.empty() && uniform_batch(order, B)) {
    Tensor before = at::empty({N, init.size(1)}, saved.options());
    // A padded batch: past the first step, each step starts from the one before it (in the
    // order run: the next one in memory for the reverse direction), so two copies do.
    const bool reverse = order.size() > 1 && order[0].offset > order[1].offset;
    before.narrow(0, reverse ? N - B : 0, B).copy_(init);
    if (N > B) {
      before.narrow(0, reverse ? 0 : B, N - B).copy_(saved.narrow(0, reverse ? B : 0, N - B));
    }
    return before;
  }
  // Packed sequences: one gather of the carried rows and one of the initial ones, whatever the
  // steps (a copy or two a step, whose launches would pace a GPU's backward). Indices: each
  // row's source row in saved (0 for a row that starts from init, written over next), then the
  // rows that start from init and their rows of init.
  std::vector<int64_t> indices(N);
  std::vector<int64_t> from_init, init_rows;
  for (size_t k = 0; k < order.size(); ++k) {
    const SequenceStep& s = order[k];
    const int64_t carried = k == 0 ? 0 : std::min(s.rows, order[k - 1].rows);
    for (int64_t b = 0; b < s.rows; ++b) {
      if (b < carried) {
        indices[s.offset + b] = order[k - 1].offset + b;
      } else {
        indices[s.offset + b] = 0;
        from_init.push_back(s.offset + b);
        init_rows.push_back(b);
      }
    }
  }
  const int64_t starts = static_cast<int64_t>(from_init.size());
  indices.insert(indices.end(), from_init.begin(), from_init.end());
  indices.insert(indices.end(), init_rows.begin(), init_rows.end());
  const Tensor on_device = lin.row_indices(indices, saved);
  if (!on_device.defined()) {  // (indices cannot come from the host now: a copy a step)
    Tensor before = at::empty({N, init.size(1)}, saved.options());
    for (size_t k = 0; k < order.size(); ++k) {
      const SequenceStep& s = order[k];
      const int64_t carried = k == 0 ? 0 : std::min(s.rows, order[k - 1].rows);
      Tensor dst = rows(before, s);
      if (carried > 0) {
        first_rows(dst, carried).copy_(first_rows(rows(saved, order[k - 1]), carried));
      }
      if (carried < s.rows) {
        dst.narrow(0, carried, s.rows - carried).copy_(init.narrow(0, carried, s.rows - carried));
      }
    }
    return before;
  }
  Tensor before = saved.index_select(0, on_device.narrow(0, 0, N));
  if (starts > 0) {
    before.index_copy_(0, on_device.narrow(0, N, starts),
                       init.index_select(0, on_device.narrow(0, N + starts, starts)));
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

EpisodeStarts reset_rows(const char* op, const OptionalTensor& resets, const Tensor& input,
                         const std::vector<SequenceStep>& order, bool reverse) {
  if (!resets.has_value()) return {};
  const Tensor& r = *resets;
  TORCH_CHECK(r.scalar_type() == at::kBool && r.dim() == 1 && r.size(0) == input.size(0), op,
              ": expected resets to be a 1-D bool tensor of ", input.size(0),
              " elements (one per input row), got a ", r.dim(), "-D ", r.scalar_type(),
              " tensor of shape ", r.sizes());
  TORCH_CHECK(r.device() == input.device(), op, ": expected resets on ", input.device(),
              " (the input's device), got ", r.device());
  const Tensor flags = r.to(at::kCPU).contiguous();
  const bool* starts = flags.data_ptr<bool>();
  const auto on_device = [&](const std::vector<int64_t>& values) {
    return at::tensor(values, at::TensorOptions(at::kLong)).to(input.device());
  };
  EpisodeStarts result{std::vector<Tensor>(order.size())};
  std::vector<int64_t> packed_rows, batch_rows;
  // The first step run starts from the initial state anyway.
  for (size_t i = 1; i < order.size(); ++i) {
    const SequenceStep& marked = reverse ? order[i - 1] : order[i];
    std::vector<int64_t> rows;
    for (int64_t b = 0; b < std::min(order[i].rows, marked.rows); ++b) {
      if (!starts[marked.offset + b]) continue;
      rows.push_back(b);
      packed_rows.push_back(order[i].offset + b);
      batch_rows.push_back(b);
    }
    if (!rows.empty()) result.steps[i] = on_device(rows);
  }
  result.packed_rows = on_device(packed_rows);
  result.batch_rows = on_device(batch_rows);
  return result;
}

std::vector<Tensor> zoneout_weights(const char* op, const OptionalTensor& zoneout,
                                    const Tensor& input, int64_t hidden, int64_t states,
                                    bool projected) {
  if (!zoneout.has_value()) return {};
  const Tensor& z = *zoneout;
  TORCH_CHECK(!projected, op, ": zoneout with a projection (w_hr) is not supported");
  TORCH_CHECK(z.dim() == 3 && z.size(0) == states && z.size(1) == input.size(0) &&
                  z.size(2) == hidden,
              op, ": expected zoneout of shape [", states, ", ", input.size(0), ", ", hidden,
              "] (the weight of each step's new ", states == 2 ? "h and c" : "h",
              " per input row and unit), got ", z.sizes());
  TORCH_CHECK(z.scalar_type() == input.scalar_type() && z.device() == input.device(), op,
              ": expected zoneout to be ", input.scalar_type(), " on ", input.device(),
              " (as input), got ", z.scalar_type(), " on ", z.device());
  std::vector<Tensor> weights;
  for (int64_t k = 0; k < states; ++k) weights.push_back(z.select(0, k).contiguous());
  return weights;
}

namespace {

// `state` [rows, X] with the rows `index` taken from the initial state `init` [B, X] instead.
Tensor restarted(const Tensor& state, const Tensor& init, const Tensor& index) {
  return state.index_copy(0, index, init.index_select(0, index));
}

// The backward sums a cell's parameter gradients (add_parameter_sums) over groups of steps of
// about this many rows: a call per step of few rows costs more than its sums (LN-LSTM T=100 B=1
// H=256 forward+backward in the suite: 4.35 ms summed step by step, 3.62 ms in groups; NOTES
// entry 49).
constexpr int64_t kParameterSumRows = 256;

// Steps per chunk of the input projection (LinearKernels::projection_chunk_bytes), for `steps`
// steps of `batch` rows of `columns` input-side values each: all of them where the device does
// not chunk.
int64_t chunk_steps(const LinearKernels& k, int64_t steps, int64_t batch, int64_t columns,
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

// The op names of a cell kind's ops, for messages (built once).
template <typename Cell>
struct OpNames {
  const std::string layer = std::string("fused_rnn.") + Cell::kName + "_layer";
  const std::string layer_backward = layer + "_backward";
};
template <typename Cell>
const OpNames<Cell>& op_names() {
  static const OpNames<Cell> names;
  return names;
}

// A cell's forward time loop over `order`, the steps of the sequence tensors `t` (rows as in the
// op; t.saved has a row per step's row, or only `batch` rows that every step reuses; t.starts
// its episode starts): the device's whole-sequence loop where it applies, else step by step.
// With a projection w_hr (the LSTM's), each step's h goes to pre_proj and its projection to the
// output.
template <typename Cell>
void time_loop(const LinearKernels& lin, const CellKernels<Cell>& k,
               const std::vector<SequenceStep>& order, int64_t batch, const SequenceTensors& t,
               const OptionalTensor& w_hr, const Tensor& pre_proj) {
  if (!w_hr.has_value() && k.sequence) {
    if (uniform_batch(order, batch)) {
      if (k.sequence(t)) return;
    } else {
      SequenceTensors packed = t;
      packed.packed_steps = order;
      if (k.sequence(packed)) return;
    }
  }
  const EpisodeStarts& starts = t.starts;
  const int64_t uses = static_cast<int64_t>(order.size());
  const bool saved_per_step = t.saved.size(0) == t.input_side.size(0);
  StepTensors step_tensors;
  step_tensors.w_hh = k.prepare_recurrent(t.w_hh, batch, uses);
  step_tensors.b_ih = t.b_ih;
  step_tensors.b_hh = t.b_hh;
  step_tensors.norms = t.norms;
  const Tensor w_hr_p = w_hr.has_value() ? lin.prepare_step_weight(*w_hr, batch, uses) : Tensor();
  Tensor h_scratch, c_scratch;
  for (size_t i = 0; i < order.size(); ++i) {
    const SequenceStep& step = order[i];
    StepTensors& st = step_tensors;
    st.input_side = rows(t.input_side, step);
    st.h_prev = state_before(order, i, t.output, t.h0, h_scratch);
    const bool restart = !starts.empty() && starts[i].defined();
    if (restart) st.h_prev = restarted(st.h_prev, t.h0, starts[i]);
    st.h_out = w_hr.has_value() ? rows(pre_proj, step) : rows(t.output, step);
    if constexpr (Cell::kHasCellState) {
      st.c_prev = state_before(order, i, t.cell_states, t.c0, c_scratch);
      if (restart) st.c_prev = restarted(st.c_prev, t.c0, starts[i]);
      st.c_out = rows(t.cell_states, step);
    }
    st.saved = saved_per_step ? rows(t.saved, step) : first_rows(t.saved, step.rows);
    if (!t.zoneout.empty()) {
      st.zoneout_h = rows(t.zoneout[0], step);
      if constexpr (Cell::kHasCellState) st.zoneout_c = rows(t.zoneout[1], step);
    }
    k.step(st);
    if (w_hr.has_value()) lin.step_linear(st.h_out, w_hr_p, rows(t.output, step), false);
  }
}

Tensor contiguous_or_self(const Tensor& t) { return t.defined() ? t.contiguous() : t; }

// W_hh's gradient grad_hidden_gates^T @ (the state each step started from), in the saved type,
// for a padded batch without episode starts, from the output [N, X] and h0 [B, X] as they are:
// the first step run started from h0, every other one from the output of the step run before it
// (the next one in memory for the reverse direction). Two products over shifted rows instead of
// an [N, X] copy of those states, which was alive at the backward's peak of memory.
template <typename Cell>
Tensor hidden_weight_grad_from_outputs(const LinearKernels& lin, const Tensor& grad_hidden_gates,
                                       const Tensor& output, const Tensor& h0, bool reverse) {
  const int64_t B = h0.size(0), carried = output.size(0) - B;
  const Tensor from_h0 = grad_hidden_gates.narrow(0, reverse ? carried : 0, B).t();
  if (carried == 0) return lin.matmul(from_h0, in_saved_type<Cell>(h0), std::nullopt);
  const Tensor from_outputs =
      lin.matmul(grad_hidden_gates.narrow(0, reverse ? 0 : B, carried).t(),
                 in_saved_type<Cell>(output.narrow(0, reverse ? B : 0, carried)), std::nullopt);
  return lin.matmul(from_h0, in_saved_type<Cell>(h0), from_outputs);
}

OptionalTensor contiguous_or_none(const OptionalTensor& t) {
  return t.has_value() ? OptionalTensor(t->contiguous()) : t;
}

// The biases a cell's steps add themselves (those not on its input side).
template <typename Cell>
std::pair<OptionalTensor, OptionalTensor> step_biases(const OptionalTensor& b_ih,
                                                      const OptionalTensor& b_hh) {
  return {Cell::kInputSideBiases < 1 ? contiguous_or_none(b_ih) : std::nullopt,
          Cell::kInputSideBiases < 2 ? contiguous_or_none(b_hh) : std::nullopt};
}

}  // namespace

template <typename Cell>
LayerForward layer_forward(const LinearKernels& lin, const CellKernels<Cell>& k,
                           const LayerArgs& a, bool keep_saved) {
  constexpr bool kCell = Cell::kHasCellState;
  constexpr int64_t G = Cell::kGates;
  static_assert(!Cell::kPreActivationsSumSides || Cell::saved_columns(1) == G,
                "a cell whose activations go over its input side saves one value per gate");
  const auto [s, order] =
      check_layer(op_names<Cell>().layer.c_str(), G, a.input, a.batch_sizes, a.hx,
                  kCell ? &a.cx : nullptr, a.w_ih, a.w_hh, a.b_ih, a.b_hh, a.w_hr, a.reverse);
  const Tensor& input = a.input;
  const int64_t N = input.size(0), B = s.batch, H = s.hidden, S = Cell::saved_columns(H);
  if constexpr (Cell::kNorms > 0) Cell::check_norms(op_names<Cell>().layer.c_str(), a.norms, H, input);
  const auto saved_options = input.options().dtype(saved_type<Cell>(input.scalar_type()));
  const EpisodeStarts starts =
      reset_rows(op_names<Cell>().layer.c_str(), a.resets, input, order, a.reverse);
  const std::vector<Tensor> zoneout = zoneout_weights(
      op_names<Cell>().layer.c_str(), a.zoneout, input, H, kCell ? 2 : 1, a.w_hr.has_value());
  const bool uniform = uniform_batch(order, B);
  Tensor output = at::empty({N, s.state}, input.options());
  const Tensor h0 = a.hx.contiguous(), c0 = contiguous_or_self(a.cx);
  const Tensor w_hh = in_saved_type<Cell>(a.w_hh).contiguous();
  const OptionalTensor b_hh = contiguous_or_none(a.b_hh);
  const auto [step_b_ih, step_b_hh] = step_biases<Cell>(a.b_ih, a.b_hh);
  const auto not_kept_saved = [&] { return at::empty({0, S}, saved_options); };
  const auto final_cell_states = [&](const Tensor& cell_states) {
    return kCell ? final_states(order, cell_states, c0) : Tensor();
  };

  // The device's whole forward with the input side inside each step, where it has one.
  if (!a.w_hr.has_value() && uniform && k.sequence_from_input) {
    InputSequenceSaved saved;
    if (k.sequence_from_input({input, a.w_ih, a.b_ih, b_hh, h0, c0, w_hh, output, keep_saved,
                               a.reverse, starts, zoneout},
                              saved)) {
      return {output,
              final_states(order, output, h0),
              final_cell_states(saved.cell_states),
              keep_saved ? saved.saved : not_kept_saved(),
              kCell && keep_saved ? saved.cell_states : not_kept(H, input),
              not_kept(H, input)};
    }
  }

  const OptionalTensor bias = input_side_bias<Cell>(a.b_ih, a.b_hh);
  const Tensor w_ih = in_saved_type<Cell>(a.w_ih);
  const int64_t steps = static_cast<int64_t>(order.size());
  const int64_t chunk = chunk_steps(lin, steps, B, G * H, input);
  // A padded batch that spans several chunks (projection_chunk_bytes) runs chunk by chunk where
  // the backward does not read the projection: in inference, and in the training of a cell whose
  // saved values are its own (the GRU: B=128 H=256 forward+backward 0.95x -> 0.91x of torch.nn's
  // time, a fresh 39 MB buffer fewer; NOTES entry 27).
  // (Episode starts: in one piece.)
  if (!a.w_hr.has_value() && uniform && starts.empty() && chunk < steps &&
      (!keep_saved || !Cell::kPreActivationsSumSides)) {
    // Saved values of their own: all kept, or one step's rows, which every step overwrites.
    const Tensor saved = Cell::kPreActivationsSumSides
                             ? Tensor()
                             : lin.empty_buffer({keep_saved ? N : B, S}, saved_options);
    // Cell states: all kept, or those of two chunks at a time (a chunk starts from the one
    // before it).
    const Tensor all_cells =
        kCell && keep_saved ? lin.empty_buffer({N, H}, input.options()) : Tensor();
    const Tensor cell_slots[2] = {
        kCell && !keep_saved ? at::empty({chunk * B, H}, input.options()) : Tensor(),
        kCell && !keep_saved ? at::empty({chunk * B, H}, input.options()) : Tensor()};
    Tensor h = h0, c = c0;
    int slot = 0;
    // W_ih readied once for every chunk (on the CPU, packed once: 0.6 ms a pack at H=512).
    const int64_t chunks = (steps + chunk - 1) / chunk;
    const Tensor w_ih_ready = lin.prepare_linear(w_ih, chunk * B, chunks);
    over_chunks(steps, chunk, a.reverse, [&](int64_t first, int64_t n) {
      const Tensor x_side =
          lin.linear(in_saved_type<Cell>(input.narrow(0, first * B, n * B)), w_ih_ready, bias);
      const Tensor out = output.narrow(0, first * B, n * B);
      const Tensor cells = !kCell ? Tensor()
                           : keep_saved ? all_cells.narrow(0, first * B, n * B)
                                        : first_rows(cell_slots[slot], n * B);
      const Tensor chunk_saved = Cell::kPreActivationsSumSides ? x_side
                                 : keep_saved ? saved.narrow(0, first * B, n * B)
                                              : saved;
      const std::vector<SequenceStep> sub = uniform_steps(n, B, a.reverse);
      std::vector<Tensor> chunk_zoneout;
      for (const Tensor& weights : zoneout) {
        chunk_zoneout.push_back(weights.narrow(0, first * B, n * B));
      }
      time_loop(lin, k, sub, B,
                {x_side, h, c, w_hh, step_b_ih, step_b_hh, a.norms, out, cells, chunk_saved,
                 a.reverse, {}, chunk_zoneout},
                std::nullopt, Tensor());
      h = rows(out, sub.back());
      if (kCell) c = rows(cells, sub.back());
      slot ^= 1;
    });
    return {output,
            h.clone(),
            kCell ? c.clone() : Tensor(),
            keep_saved ? saved : not_kept_saved(),
            kCell && keep_saved ? all_cells : not_kept(H, input),
            not_kept(H, input)};
  }

  // One product for the input side of every step; each step then reads its rows.
  const Tensor x_side = input_projection(lin, in_saved_type<Cell>(input), w_ih, bias);
  const Tensor cell_states = kCell ? lin.empty_buffer({N, H}, input.options()) : Tensor();
  // Saved over the input side, or apart: a row per step's row where kept, else (at large
  // batches writing, and first touching, the whole of it costs a quarter of the GRU's forward;
  // benchmarks/NOTES.md entry 16) one step's rows, which every step overwrites.
  const Tensor saved = Cell::kPreActivationsSumSides
                           ? x_side
                           : lin.empty_buffer({keep_saved ? N : B, S}, saved_options);
  // With a projection, h before it, which the backward needs.
  const Tensor pre_proj =
      a.w_hr.has_value() ? at::empty({N, H}, input.options()) : not_kept(H, input);
  time_loop(lin, k, order, B,
            {x_side, h0, c0, w_hh, step_b_ih, step_b_hh, a.norms, output, cell_states, saved,
             a.reverse, starts, zoneout},
            a.w_hr, pre_proj);
  const Tensor hy = final_states(order, output, h0), cy = final_cell_states(cell_states);
  if (!keep_saved) {
    return {output, hy, cy, not_kept_saved(), not_kept(H, input), not_kept(H, input)};
  }
  return {output, hy, cy, saved, kCell ? cell_states : not_kept(H, input), pre_proj};
}

template <typename Cell>
Grads layer_backward(const LinearKernels& lin, const CellKernels<Cell>& k,
                     const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
                     const LayerArgs& a, const Tensor& output, const Tensor& saved,
                     const Tensor& cell_states, const Tensor& hidden_pre_proj,
                     const GradMask& mask) {
  constexpr bool kCell = Cell::kHasCellState;
  constexpr int64_t G = Cell::kGates;
  const char* op = op_names<Cell>().layer_backward.c_str();
  const auto [s, order] = check_layer(op, G, a.input, a.batch_sizes, a.hx, kCell ? &a.cx : nullptr,
                                      a.w_ih, a.w_hh, std::nullopt, std::nullopt, a.w_hr,
                                      a.reverse);
  const Tensor& input = a.input;
  const int64_t N = input.size(0), B = s.batch, H = s.hidden;
  const at::ScalarType grad_type = saved_type<Cell>(input.scalar_type());
  const auto grad_options = input.options().dtype(grad_type);
  const OptionalTensor& w_hr = a.w_hr;
  if constexpr (Cell::kNorms > 0) Cell::check_norms(op, a.norms, H, input);
  check_saved(op, "grad_output", grad_output, {N, s.state}, input);
  check_saved(op, "grad_hy", grad_hy, {B, s.state}, input);
  if (kCell) check_saved(op, "grad_cy", grad_cy, {B, H}, input);
  check_saved(op, "output", output, {N, s.state}, input);
  check_saved(op, Cell::kSavedName, saved, {N, Cell::saved_columns(H)},
              Cell::kSavedInOpMath ? at::empty({0}, grad_options) : input);
  if (kCell) check_saved(op, "cell_states", cell_states, {N, H}, input);
  if (hidden_pre_proj.defined()) {
    check_saved(op, "hidden_pre_proj", hidden_pre_proj, {w_hr.has_value() ? N : 0, H}, input);
  }

  const EpisodeStarts starts = reset_rows(op, a.resets, input, order, a.reverse);
  // Zoneout: each state's weights of the new value.
  const std::vector<Tensor> zoneout =
      zoneout_weights(op, a.zoneout, input, H, kCell ? 2 : 1, w_hr.has_value());
  // The state each step started from, [N, X]: the step before's, or the initial state's rows
  // where the step starts an episode (resets).
  const auto states_before = [&](const Tensor& states, const Tensor& init) {
    Tensor before = states_before_steps(lin, order, states, init);
    if (!starts.empty()) {
      before.index_copy_(0, starts.packed_rows, init.index_select(0, starts.batch_rows));
    }
    return before;
  };
  const Tensor saved_c = saved.contiguous(), grad_out_c = grad_output.contiguous();
  const Tensor cells_c = contiguous_or_self(cell_states);
  Tensor c_before = kCell ? states_before(cells_c, a.cx.contiguous()) : Tensor();
  // h's: for the gate gradients where they read it, else only for W_hh's gradient. (The output
  // is read as it lies, also where it is a view with rows further apart: a bidirectional
  // layer's direction's columns of its output, fused_rnn/functional.py.)
  Tensor h_before;
  const auto hidden_before = [&]() -> const Tensor& {
    if (!h_before.defined()) h_before = states_before(output, a.hx.contiguous());
    return h_before;
  };
  if (Cell::kGateGradsReadHPrev) hidden_before();
  // The pre-activations' gradients of the two sides (of the raw products where the cell
  // normalizes them), in the saved type.
  const Tensor grad_input_gates = lin.empty_buffer({N, G * H}, grad_options);
  Tensor grad_hidden_gates = Cell::kPreActivationsSumSides
                                 ? grad_input_gates
                                 : lin.empty_buffer({N, G * H}, grad_options);
  // Where the cell has parameters beyond torch.nn's: what their gradients sum over the rows,
  // kept for a group of `group` consecutive steps (grad_pre), and those sums.
  const int64_t group = std::max<int64_t>(1, kParameterSumRows / std::max<int64_t>(B, 1));
  Tensor grad_pre;
  std::vector<Tensor> parameter_sums;
  if constexpr (Cell::kNorms > 0) {
    grad_pre = at::empty({std::min(N, group * B), Cell::pre_grad_columns(H)}, grad_options);
    parameter_sums = Cell::parameter_sums(H, grad_options);
  }
  // Gradients of the running state, carried backwards through the steps; and those of the
  // episodes that start from the initial state mid-sequence (resets), which stop there.
  Tensor grad_h = grad_hy.contiguous().clone();
  Tensor grad_c = kCell ? grad_cy.contiguous().clone() : Tensor();
  const Tensor grad_h_starts = starts.empty() ? Tensor() : at::zeros_like(grad_h);
  const Tensor grad_c_starts = starts.empty() || !kCell ? Tensor() : at::zeros_like(grad_c);
  // With a projection: every step's full output gradient, for w_hr's gradient as one GEMM.
  const Tensor grad_projected =
      w_hr.has_value() && mask.w_hr ? at::empty({N, s.state}, input.options()) : Tensor();
  // (A cell with parameters of its own sums their gradients step by step, in the loop below.)
  const bool uniform = uniform_batch(order, B);
  const bool whole_sequence =
      Cell::kNorms == 0 && !w_hr.has_value() && k.backward_sequence &&
      k.backward_sequence({grad_out_c, saved_c, h_before, c_before, cells_c, a.w_hh, grad_h,
                           grad_c, grad_input_gates, grad_hidden_gates, a.reverse, starts,
                           grad_h_starts, grad_c_starts, zoneout,
                           uniform ? std::vector<SequenceStep>() : order});
  if (!whole_sequence) {
    // grad_h of the previous step = grad_hidden_gates @ W_hh, i.e. linear with W_hh^T as the
    // weight (plus the direct part, where the cell has one).
    const int64_t uses = static_cast<int64_t>(order.size());
    const Tensor w_hh_t = lin.prepare_step_weight(in_saved_type<Cell>(a.w_hh).t(), B, uses);
    const Tensor w_hr_t =
        w_hr.has_value() ? lin.prepare_step_weight(w_hr->t(), B, uses) : Tensor();
    // With a projection: the gradient of each step's h before it.
    const Tensor grad_pre_proj =
        w_hr.has_value() ? at::empty({B, H}, input.options()) : Tensor();
    GateGradTensors gg;
    gg.norms = a.norms;
    for (int64_t j = static_cast<int64_t>(order.size()) - 1; j >= 0; --j) {
      const SequenceStep& step = order[j];
      // Its group's steps, order[j0..j1], lie side by side from row group_row.
      const int64_t j0 = j / group * group;
      const int64_t j1 = std::min<int64_t>(j0 + group, order.size()) - 1;
      const int64_t group_row = std::min(order[j0].offset, order[j1].offset);
      Tensor gh = first_rows(grad_h, step.rows);
      gh.add_(rows(grad_out_c, step));
      gg.grad_h = gh;  // the gradient of the cell's own h
      if (w_hr.has_value()) {
        if (grad_projected.defined()) rows(grad_projected, step).copy_(gh);
        gg.grad_h = first_rows(grad_pre_proj, step.rows);
        lin.step_linear(gh, w_hr_t, gg.grad_h, false);
      }
      gg.saved = rows(saved_c, step);
      if (Cell::kGateGradsReadHPrev) gg.h_prev = rows(h_before, step);
      if constexpr (kCell) {
        gg.grad_c = first_rows(grad_c, step.rows);
        gg.grad_c_prev = gg.grad_c;
        gg.c_prev = rows(c_before, step);
        gg.c_out = rows(cells_c, step);
      }
      gg.grad_input_gates = rows(grad_input_gates, step);
      gg.grad_hidden_gates = Cell::kPreActivationsSumSides ? gg.grad_input_gates
                                                           : rows(grad_hidden_gates, step);
      if (Cell::kNorms > 0) gg.grad_pre = grad_pre.narrow(0, step.offset - group_row, step.rows);
      if (!zoneout.empty()) {
        gg.zoneout_h = rows(zoneout[0], step);
        if constexpr (kCell) gg.zoneout_c = rows(zoneout[1], step);
      }
      // gh becomes the direct part of the previous state's gradient, then gains W_hh's.
      const bool direct = Cell::kDirectStateGrad || !zoneout.empty();
      if (direct) gg.grad_h_direct = gh;
      k.gate_grads(gg);
      if constexpr (Cell::kNorms > 0) {
        if (j == j0) {  // the group's last step run
          const int64_t group_rows =
              std::max(order[j0].offset + order[j0].rows, order[j1].offset + order[j1].rows) -
              group_row;
          Cell::add_parameter_sums(lin, first_rows(grad_pre, group_rows),
                                   saved_c.narrow(0, group_row, group_rows), H, parameter_sums);
        }
      }
      lin.step_linear(gg.grad_hidden_gates, w_hh_t, gh, direct);
      if (!starts.empty() && starts[j].defined()) {
        // The state entering this step was the initial one for these rows.
        const Tensor& index = starts[j];
        grad_h_starts.index_add_(0, index, gh.index_select(0, index));
        gh.index_fill_(0, index, 0);
        if constexpr (kCell) {
          grad_c_starts.index_add_(0, index, gg.grad_c.index_select(0, index));
          gg.grad_c.index_fill_(0, index, 0);
        }
      }
    }
  }
  // The input's and the weights' gradients as single GEMMs over all steps, through the device's
  // matmul (which on the CPU may hand them to oneDNN). The hidden side's first, so that what only
  // the loop and they read is freed before the input's gradient [N, I] is made: the backward's
  // peak of memory is at that point or in the loop (NOTES entry 66).
  // (In the saved type, the result in the dtype, where the cell keeps its gradients in another.)
  const auto in_dtype = [&](const Tensor& t) {
    if constexpr (Cell::kSavedInOpMath) return t.to(input.scalar_type());
    return t;
  };
  c_before.reset();
  Grads g;
  if (mask.w_hh) {
    g.w_hh = in_dtype(
        !order.empty() && uniform && starts.empty() && !h_before.defined()
            ? hidden_weight_grad_from_outputs<Cell>(lin, grad_hidden_gates, output,
                                                    a.hx.contiguous(), a.reverse)
            : lin.matmul(grad_hidden_gates.t(), in_saved_type<Cell>(hidden_before()),
                         std::nullopt));
  }
  h_before.reset();
  if constexpr (Cell::kNorms > 0) {
    Cell::parameter_grads(parameter_sums, mask, g, input.scalar_type());
  } else {
    if (mask.b_hh) g.b_hh = at::sum(grad_hidden_gates, 0);
    if (mask.b_ih) g.b_ih = at::sum(grad_input_gates, 0);
  }
  grad_hidden_gates.reset();  // (the input side's, where the cell's sides sum: still held)
  if (mask.input) {
    g.input = in_dtype(lin.matmul(grad_input_gates, in_saved_type<Cell>(a.w_ih), std::nullopt));
  }
  if (mask.hx) g.hx = starts.empty() ? grad_h : grad_h.add(grad_h_starts);
  if (mask.cx) g.cx = starts.empty() ? grad_c : grad_c.add(grad_c_starts);
  if (mask.w_ih) {
    g.w_ih = in_dtype(lin.matmul(grad_input_gates.t(), in_saved_type<Cell>(input), std::nullopt));
  }
  if (grad_projected.defined()) {
    g.w_hr = lin.matmul(grad_projected.t(), hidden_pre_proj.contiguous(), std::nullopt);
  }
  return g;
}

#define FUSED_RNN_INSTANTIATE_LAYER_OPS(Cell)                                                \
  template LayerForward layer_forward<Cell>(const LinearKernels&, const CellKernels<Cell>&,     \
                                            const LayerArgs&, bool);                           \
  template Grads layer_backward<Cell>(const LinearKernels&, const CellKernels<Cell>&,          \
                                      const Tensor&, const Tensor&, const Tensor&,             \
                                      const LayerArgs&, const Tensor&, const Tensor&,          \
                                      const Tensor&, const Tensor&, const GradMask&);
FUSED_RNN_INSTANTIATE_LAYER_OPS(LstmCell)
FUSED_RNN_INSTANTIATE_LAYER_OPS(GruCell)
FUSED_RNN_INSTANTIATE_LAYER_OPS(LayerNormLstmCell)
FUSED_RNN_INSTANTIATE_LAYER_OPS(LayerNormGruCell)

}  // namespace fused_rnn
