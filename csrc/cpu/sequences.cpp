// The CPU's whole-sequence kernels (sequences.h).
#include "sequences.h"

#include "linear.h"
#include "path_choice.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fused_rnn::cpu {

// A step's rows as the fused recurrent step takes them (gates: null where the step computes its
// input side and keeps no gates).
RecurrentStep recurrent_step(const Tensor& h_prev, const Tensor& w_packed, float* gates,
                                  const Tensor& h_out) {
  RecurrentStep s{};
  s.rows = h_prev.size(0);
  s.hidden = h_out.size(1);
  s.state = h_prev.size(1);
  s.h_prev = h_prev.data_ptr<float>();
  s.w_packed = w_packed.data_ptr<float>();
  s.gates = gates;
  s.h_out = h_out.data_ptr<float>();
  return s;
}

namespace {

// A whole padded sequence in one OpenMP parallel region: each thread keeps the same tasks (unit
// blocks, so their W_hh panels stay in its cache) at every step, and the threads meet at one
// barrier per step; no per-step views, dispatcher calls or thread starts, which cost more than
// the product at small sizes (benchmarks/NOTES.md). Per step, before(t, previous t or -1, begin,
// end), the barrier, then after(t, begin, end) (the backward's product). Before each barrier the
// threads fault in the pages of the next step's rows of the buffers the steps write (`written`,
// each the steps' rows in order, step t's the t-th of `steps` equal slices), a share each: a
// step ahead, so that they are still in cache when written (all pages up front cost the LSTM
// 3-5%: NOTES entry 33).
template <typename Before, typename After>
void over_sequence(int64_t steps, bool reverse, int64_t tasks, int64_t fmas_per_step,
                   const std::vector<Tensor>& written, const Before& before,
                   const After& after) {
  const int64_t threads = sequence_threads(fmas_per_step, tasks, at::get_num_threads());
  int64_t written_bytes = 0;
  for (const Tensor& buffer : written) written_bytes += buffer.nbytes();
  const bool touch = written_bytes >= kMinTouchedBytes;
#pragma omp parallel num_threads(threads)
  {
    const int64_t id = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t begin = tasks * id / count, end = tasks * (id + 1) / count;
    const bool touching = touch && count > 1;  // the same in every thread
    const auto touch_step = [&](int64_t i) {
      if (!touching || i >= steps) return;
      const int64_t t = reverse ? steps - 1 - i : i;
      for (const Tensor& buffer : written) {
        const auto base = reinterpret_cast<std::uintptr_t>(buffer.data_ptr());
        const std::uintptr_t step_bytes = buffer.nbytes() / steps;
        touch_pages(base + t * step_bytes, base + (t + 1) * step_bytes, id, count);
      }
    };
    if (touching) {
      touch_step(0);
#pragma omp barrier
    }
    for (int64_t i = 0; i < steps; ++i) {
      const int64_t t = reverse ? steps - 1 - i : i;
      before(t, i == 0 ? -1 : (reverse ? t + 1 : t - 1), begin, end);
      touch_step(i + 1);
#pragma omp barrier
      after(t, begin, end);
    }
  }
}

// Step t of a padded sequence whose first step is `first` (B rows; gates rows, where set, G
// wide): every row pointer moved to step t, and the previous state read from step `prev` (-1:
// the initial state).
RecurrentStep at_step(const RecurrentStep& first, int64_t gates, int64_t t,
                           int64_t prev) {
  const int64_t units = first.rows * first.hidden;  // one step's [B, H]
  RecurrentStep s = first;
  if (s.gates) s.gates += t * gates * units;
  if (s.x) s.x += t * first.rows * first.input;
  s.h_out += t * units;
  if (s.c_out) s.c_out += t * units;
  if (s.zoneout_h) s.zoneout_h += t * units;
  if (s.zoneout_c) s.zoneout_c += t * units;
  if (s.workspace && first.workspace_per_step) s.workspace += t * kGruSaved * units;
  if (prev >= 0) {
    s.h_prev = first.h_out + prev * units;
    if (s.c_prev) s.c_prev = first.c_out + prev * units;
  }
  return s;
}

// The index in the order run of step t of `steps` (EpisodeStarts' order).
int64_t run_index(int64_t t, int64_t steps, bool reverse) { return reverse ? steps - 1 - t : t; }

// Step s restarted in the rows `index` (episode starts): its previous state (h, and c where the
// cell has one) read from `copy` ([B, K] then [B, H], the thread's own), the previous step's
// with those rows from the initial state (first's).
void restart_rows(RecurrentStep& s, const RecurrentStep& first, const Tensor& index,
                  float* copy) {
  const int64_t B = s.rows;
  const int64_t* rows = index.data_ptr<int64_t>();
  const auto restart = [&](const float* previous, const float* initial, int64_t width,
                           float* out) {
    std::copy(previous, previous + B * width, out);
    for (int64_t k = 0; k < index.numel(); ++k) {
      std::copy(initial + rows[k] * width, initial + (rows[k] + 1) * width, out + rows[k] * width);
    }
  };
  restart(s.h_prev, first.h_prev, s.state, copy);
  s.h_prev = copy;
  if (s.c_prev) {
    float* c_copy = copy + B * s.state;
    restart(s.c_prev, first.c_prev, s.hidden, c_copy);
    s.c_prev = c_copy;
  }
}

// A padded sequence's forward on the fused recurrent step of a cell from its first step `first`
// (with_input: the steps compute their input side too, RecurrentStep::x): its steps' tasks write
// the buffers `written`, each the steps' rows in order. Each thread restarts the rows of an
// episode start in a copy of its own (every task reads the whole previous state), no barrier.
template <typename Cell>
void run_recurrent_sequence(const RecurrentStep& first, bool with_input, int64_t steps,
                            bool reverse, int64_t fmas_per_step,
                            const std::vector<Tensor>& written, const EpisodeStarts& starts) {
  const auto& kernels = pointwise_kernels();
  const CellPointwise<Cell>& cell = cell_kernels<Cell>(kernels);
  const int64_t packs = with_input ? cell.packs_with_input : Cell::kGates;
  const int64_t copy_floats = first.rows * (first.state + (first.c_prev ? first.hidden : 0));
  const Tensor copies = starts.empty() ? Tensor()
                                       : at::empty({at::get_num_threads() * copy_floats},
                                                   at::TensorOptions(at::kFloat));
  over_sequence(
      steps, reverse, kernels.recurrent_tasks(first.rows, first.hidden, packs), fmas_per_step,
      written, [&](int64_t t, int64_t prev, int64_t begin, int64_t end) {
        RecurrentStep s = at_step(first, Cell::kGates, t, prev);
        const int64_t i = run_index(t, steps, reverse);
        if (!starts.empty() && starts[i].defined()) {
          restart_rows(s, first, starts[i],
                       copies.data_ptr<float>() + omp_get_thread_num() * copy_floats);
        }
        cell.forward_recurrent(s, begin, end);
      },
      [](int64_t, int64_t, int64_t) {});
}

// The first rows of zoneout's weights (SequenceTensors::zoneout; null without), per state.
const float* zoneout_rows(const std::vector<Tensor>& zoneout, size_t state) {
  return zoneout.size() > state ? zoneout[state].data_ptr<float>() : nullptr;
}

// The cell's own pointers of a sequence's first step: its cell state's (c0, cell_states), its
// hidden bias where kept apart, its saved rows where apart from the input side (a row per row of
// all `rows` rows, or B rows that every step reuses), and zoneout's weights. Appends to `written`
// the buffers of the cell's that the steps write one step after another.
template <typename Cell>
void with_cell(RecurrentStep& first, const Tensor& c0, const Tensor& cell_states,
               const OptionalTensor& b_hh, const Tensor& saved, int64_t rows,
               const std::vector<Tensor>& zoneout, std::vector<Tensor>& written) {
  first.zoneout_h = zoneout_rows(zoneout, 0);
  first.zoneout_c = zoneout_rows(zoneout, 1);
  if constexpr (Cell::kHasCellState) {
    first.c_prev = c0.data_ptr<float>();
    first.c_out = cell_states.data_ptr<float>();
    written.push_back(cell_states);
  }
  if constexpr (!Cell::kPreActivationsSumSides) {
    first.b_hh = b_hh.has_value() ? b_hh->data_ptr<float>() : nullptr;
    first.workspace = saved.data_ptr<float>();
    first.workspace_per_step = saved.size(0) == rows;
    if (first.workspace_per_step) written.push_back(saved);
  }
}

// path_choice.h's input_in_step_pays_off for these tensors (float32 only).
bool sequence_from_input_pays_off(const Tensor& input, const Tensor& w_ih, const Tensor& w_hh,
                                  int64_t batch) {
  const int64_t steps = batch == 0 ? 0 : input.size(0) / batch;
  const int64_t weight_bytes = (w_ih.numel() + w_hh.numel()) * int64_t{sizeof(float)};
  return input.scalar_type() == at::kFloat &&
         input_in_step_pays_off(weight_bytes, batch, steps);
}

// The first step's input side for a step that computes it (RecurrentStep::x): W_ih packed, the
// input [N, I] contiguous and the input side's bias ([G*H], zeros where none), kept alive here.
struct InputSide {
  Tensor w_ih_packed, x, bias;
  int64_t columns;  // G*H
  InputSide(const Tensor& input, const Tensor& w_ih, const OptionalTensor& bias_in, int64_t gates)
      : w_ih_packed(pointwise_kernels().pack_recurrent_weight(w_ih, gates)),
        x(input.contiguous()),
        bias(bias_in.has_value() ? bias_in->contiguous()
                                 : at::zeros({w_ih.size(0)}, input.options())),
        columns(w_ih.size(0)) {}
  void into(RecurrentStep& first) const {
    first.x = x.data_ptr<float>();
    first.input = x.size(1);
    first.w_ih_packed = w_ih_packed.data_ptr<float>();
    first.bias = bias.data_ptr<float>();
  }
  int64_t fmas_per_step(int64_t batch) const {
    return product_fmas(x.narrow(0, 0, batch), columns);
  }
};

}  // namespace

template <typename Cell>
bool sequence_cpu(const SequenceTensors& t) {
  const int64_t B = t.h0.size(0), steps = B == 0 ? 0 : t.input_side.size(0) / B;
  if (!t.packed_steps.empty() || t.input_side.scalar_type() != at::kFloat ||
      !panels_pay_off(t.w_hh, B, steps)) {
    return false;
  }
  const Tensor packed = pointwise_kernels().pack_recurrent_weight(t.w_hh, Cell::kGates);
  RecurrentStep first = recurrent_step(t.h0, packed, t.input_side.data_ptr<float>(), t.output);
  std::vector<Tensor> written{t.output};
  with_cell<Cell>(first, t.c0, t.cell_states, t.b_hh, t.saved, t.input_side.size(0), t.zoneout,
                  written);
  run_recurrent_sequence<Cell>(first, false, steps, t.reverse,
                               product_fmas(t.h0, Cell::kGates * t.h0.size(1)), written,
                               t.starts);
  return true;
}

template <typename Cell>
bool sequence_from_input_cpu(const InputSequenceTensors& t, InputSequenceSaved& out) {
  constexpr bool kSavedOverInput = Cell::kPreActivationsSumSides;
  const Tensor &input = t.input, &h0 = t.h0, &output = t.output;
  const int64_t B = h0.size(0), H = h0.size(1), N = input.size(0);
  if (!sequence_from_input_pays_off(input, t.w_ih, t.w_hh, B)) return false;
  const InputSide input_side(input, t.w_ih, input_side_bias<Cell>(t.b_ih, t.b_hh), Cell::kGates);
  const Tensor w_hh_packed = pointwise_kernels().pack_recurrent_weight(t.w_hh, Cell::kGates);
  // Saved values written where the input side would be are written only where kept; those
  // apart from it, into B rows that every step reuses where not kept.
  const int64_t saved_rows = t.keep_saved ? N : kSavedOverInput ? 0 : B;
  out.saved = empty_buffer_cpu({saved_rows, Cell::kSaved * H}, input.options());
  if (Cell::kHasCellState) out.cell_states = empty_buffer_cpu({N, H}, input.options());
  RecurrentStep first = recurrent_step(
      h0, w_hh_packed, kSavedOverInput && t.keep_saved ? out.saved.data_ptr<float>() : nullptr,
      output);
  std::vector<Tensor> written{output};
  if (kSavedOverInput) written.push_back(out.saved);
  with_cell<Cell>(first, t.c0, out.cell_states, t.b_hh, out.saved, N, t.zoneout, written);
  input_side.into(first);
  run_recurrent_sequence<Cell>(
      first, true, N / B, t.reverse,
      product_fmas(h0, Cell::kGates * H) + input_side.fmas_per_step(B), written, t.starts);
  return true;
}

template bool sequence_cpu<LstmCell>(const SequenceTensors&);
template bool sequence_cpu<GruCell>(const SequenceTensors&);
template bool sequence_from_input_cpu<LstmCell>(const InputSequenceTensors&, InputSequenceSaved&);
template bool sequence_from_input_cpu<GruCell>(const InputSequenceTensors&, InputSequenceSaved&);

namespace {

// A backward step's per-step buffers moved on by `units` units (rows of H; G gates).
BackwardStep moved_on(BackwardStep s, int64_t gates, int64_t units) {
  s.grad_out += units;
  s.saved += kLstmGates * units;  // the LSTM's gates and the GRU's workspace: 4 per unit
  s.state_before += units;
  if (s.c_new) s.c_new += units;
  s.grad_gates += gates * units;
  if (s.grad_hidden_gates) s.grad_hidden_gates += gates * units;
  if (s.zoneout_h) s.zoneout_h += units;
  if (s.zoneout_c) s.zoneout_c += units;
  return s;
}

// Step t of a padded sequence's backward whose first step is `first`: the rows of step t; the
// state's gradients (grad_h, grad_c) are carried, not per step.
BackwardStep backward_at_step(const BackwardStep& first, int64_t gates, int64_t t) {
  return moved_on(first, gates, t * first.rows * first.hidden);
}

// Rows [row0, row0 + rows) of a backward step, the carried gradients included: every batch
// row's numbers are its own.
BackwardStep backward_rows(const BackwardStep& step, int64_t gates, int64_t row0,
                           int64_t rows) {
  const int64_t units = row0 * step.hidden;
  BackwardStep s = moved_on(step, gates, units);
  s.rows = rows;
  s.grad_h += units;
  if (s.grad_c) s.grad_c += units;
  return s;
}

// A padded sequence's steps (from the last when reverse) with the batch split over `threads`
// threads in blocks of rows: each row depends only on its own earlier steps, so each thread runs
// every step of its rows, step(t, row0, rows), with no barrier. Its gate gradients feed its own
// product while in its cache, where a split by units has each step's product read the half of
// them the other thread wrote.
template <typename Step>
void over_row_blocks(int64_t steps, bool reverse, int64_t rows, int64_t threads,
                     const Step& step) {
#pragma omp parallel num_threads(threads)
  {
    const int64_t id = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t row0 = rows * id / count, row_end = rows * (id + 1) / count;
    for (int64_t i = 0; i < steps; ++i) step(reverse ? steps - 1 - i : i, row0, row_end - row0);
  }
}

// A padded sequence's backward on the fused steps (BackwardStep), where the forward's pay off
// (else false): the steps run from the forward's last to its first, each a pass of gate
// gradients and the product that carries grad_h to the step before; over blocks of batch rows
// (over_row_blocks) where they are large enough, else over the units, with a barrier between
// the two. grad_h [B, H] (and the LSTM's grad_c) come in holding the final state's gradients and
// leave holding the initial state's; `cell` fills in the cell's own pointers of the first step,
// and the steps write the gate gradients `written`.
using BackwardKernel = void (*)(const BackwardStep&, int64_t, int64_t);

// Where episodes start (BackwardSequenceTensors): after step t, the state gradients of the rows
// in [row0, row_end) that entered it from the initial state move from the carried grad_h (grad_c)
// to grad_h_starts (grad_c_starts).
struct StartGradients {
  const EpisodeStarts& starts;
  float *grad_h, *grad_c, *grad_h_starts, *grad_c_starts;
  int64_t steps, hidden;
  bool reverse;
  bool at(int64_t t) const {
    return !starts.empty() && starts[run_index(t, steps, reverse)].defined();
  }
  void move(int64_t t, int64_t row0, int64_t row_end) const {
    const Tensor& index = starts[run_index(t, steps, reverse)];
    const int64_t* rows = index.data_ptr<int64_t>();
    for (int64_t k = 0; k < index.numel(); ++k) {
      if (rows[k] < row0 || rows[k] >= row_end) continue;
      const int64_t offset = rows[k] * hidden;
      for (int64_t u = 0; u < hidden; ++u) {
        grad_h_starts[offset + u] += grad_h[offset + u];
        grad_h[offset + u] = 0.0f;
        if (grad_c) {
          grad_c_starts[offset + u] += grad_c[offset + u];
          grad_c[offset + u] = 0.0f;
        }
      }
    }
  }
};

template <typename CellPointers>
bool backward_sequence(int64_t gates, const Tensor& grad_output, const Tensor& w_hh,
                       const Tensor& grad_h, bool reverse, BackwardKernel gate_grads,
                       BackwardKernel product, const CellPointers& cell,
                       const std::vector<Tensor>& written, const BackwardSequenceTensors& t) {
  const int64_t B = grad_h.size(0), H = grad_h.size(1);
  const int64_t steps = B == 0 ? 0 : grad_output.size(0) / B;
  if (grad_output.scalar_type() != at::kFloat || !panels_pay_off(w_hh, B, steps)) return false;
  const auto& kernels = pointwise_kernels();
  // grad_h of the step before = the step's hidden gate gradients @ W_hh: linear with W_hh^T.
  const Tensor packed = kernels.pack_linear_weight(w_hh.t());
  BackwardStep first{};
  first.rows = B;
  first.hidden = H;
  first.grad_out = grad_output.data_ptr<float>();
  first.grad_h = grad_h.data_ptr<float>();
  first.w_packed = packed.data_ptr<float>();
  first.zoneout_h = zoneout_rows(t.zoneout, 0);
  first.zoneout_c = zoneout_rows(t.zoneout, 1);
  cell(first);
  const auto pointer = [](const Tensor& x) { return x.defined() ? x.data_ptr<float>() : nullptr; };
  const StartGradients starts{t.starts,          first.grad_h,  first.grad_c,
                              pointer(t.grad_h_starts), pointer(t.grad_c_starts),
                              steps,             H,             reverse};
  const int64_t row_threads = backward_row_threads(B, at::get_num_threads());
  if (row_threads > 1) {
    over_row_blocks(steps, !reverse, B, row_threads, [&](int64_t t, int64_t row0, int64_t rows) {
      const BackwardStep s = backward_rows(backward_at_step(first, gates, t), gates, row0, rows);
      const int64_t tasks = kernels.linear_tasks(rows, H);
      gate_grads(s, 0, tasks);
      product(s, 0, tasks);
      if (starts.at(t)) starts.move(t, row0, row0 + rows);  // this thread's rows
    });
    return true;
  }
  over_sequence(
      steps, !reverse, kernels.linear_tasks(B, H), product_fmas(grad_h, gates * H), written,
      [&](int64_t t, int64_t, int64_t begin, int64_t end) {
        gate_grads(backward_at_step(first, gates, t), begin, end);
      },
      [&](int64_t t, int64_t begin, int64_t end) {
        product(backward_at_step(first, gates, t), begin, end);
        if (starts.at(t)) {  // every thread's columns written, then one thread moves the rows
#pragma omp barrier
#pragma omp master
          starts.move(t, 0, B);
#pragma omp barrier
        }
      });
  return true;
}

}  // namespace

template <typename Cell>
bool backward_sequence_cpu(const BackwardSequenceTensors& t) {
  if (!t.packed_steps.empty()) return false;  // (padded batches only)
  const CellPointwise<Cell>& cell = cell_kernels<Cell>(pointwise_kernels());
  std::vector<Tensor> written{t.grad_input_gates};
  if (!Cell::kPreActivationsSumSides) written.push_back(t.grad_hidden_gates);
  return backward_sequence(Cell::kGates, t.grad_output, t.w_hh, t.grad_h, t.reverse,
                           cell.backward_gates, cell.backward_product,
                           [&](BackwardStep& first) {
                             first.saved = t.saved.data_ptr<float>();
                             first.grad_gates = t.grad_input_gates.data_ptr<float>();
                             // BackwardStep::state_before: c_prev with a cell state, else h_prev.
                             if constexpr (Cell::kHasCellState) {
                               first.state_before = t.c_before.data_ptr<float>();
                               first.c_new = t.cell_states.data_ptr<float>();
                               first.grad_c = t.grad_c.data_ptr<float>();
                             } else {
                               first.state_before = t.h_before.data_ptr<float>();
                             }
                             if (!Cell::kPreActivationsSumSides) {
                               first.grad_hidden_gates = t.grad_hidden_gates.data_ptr<float>();
                             }
                           },
                           written, t);
}

template bool backward_sequence_cpu<LstmCell>(const BackwardSequenceTensors&);
template bool backward_sequence_cpu<GruCell>(const BackwardSequenceTensors&);

}  // namespace fused_rnn::cpu
