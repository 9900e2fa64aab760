// The seam between the ops and a device's kernels: the cell-independent products of a device
// (LinearKernels), one table of kernels per cell kind (CellKernels<Cell>), the argument checks,
// and the device-agnostic parts of every op (the layer time loops and BPTT, the matrix products
// of the backward passes; layer_common.cpp, cell_common.cpp), written once over those tables.
//
// A cell kind is a traits struct (LstmCell, GruCell below) saying what the loops need to know of
// it; its math is in cell_math.h, its kernels in each device's table, its ops in the op
// registration at the end of this file. A new cell kind adds those four, not a loop.
#pragma once

#include "cell_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

// The one dtype dispatch of the project: float, double, half and bfloat16.
#define FUSED_RNN_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace fused_rnn {

using Tensor = at::Tensor;
using OptionalTensor = std::optional<Tensor>;

// ---------------------------------------------------------------------------------------------
// Cell kinds. Each says: its gate count G (rows of W_ih and W_hh: G*H), what it saves for the
// backward (saved rows [*, saved_columns(H)]: S values a unit for these two), its parameters
// beyond torch.nn's (kNorms, the layer-normalized cells'), and how it differs where the loops
// care. The layer-normalized cells' traits are in layernorm_cell_ops.h.

struct LstmCell {
  static constexpr const char* kName = "lstm";
  static constexpr int64_t kGates = kLstmGates;
  static constexpr int64_t kSaved = kLstmSaved;
  // A cell state c beside h (its own initial state cx, saved per step as cell_states).
  static constexpr bool kHasCellState = true;
  // Its pre-activations are the input side plus the hidden side: b_hh joins b_ih in the input
  // projection, the activations are written over that projection (saved is the input side), and
  // one gradient serves both sides.
  static constexpr bool kPreActivationsSumSides = true;
  // The backward's gate gradients read the state a step started from (h_prev).
  static constexpr bool kGateGradsReadHPrev = false;
  // h reaches h' only through W_hh (no direct part of grad h_prev).
  static constexpr bool kDirectStateGrad = false;
  // The ops' name for the saved values.
  static constexpr const char* kSavedName = "gates";
  // The biases the input projection takes: both (their pre-activations sum the sides).
  static constexpr int kInputSideBiases = 2;
  // Saved values in the dtype, S a unit.
  static constexpr bool kSavedInOpMath = false;
  static constexpr int64_t saved_columns(int64_t hidden) { return kSaved * hidden; }
  // No parameters beyond torch.nn's.
  static constexpr int kNorms = 0;
};

struct GruCell {
  static constexpr const char* kName = "gru";
  static constexpr int64_t kGates = kGruGates;
  static constexpr int64_t kSaved = kGruSaved;
  static constexpr bool kHasCellState = false;
  // r scales the hidden side of n: b_hh stays in the step and the sides' gradients differ; h
  // reaches h' directly too (z * h), so the gate gradients give a direct part of grad h_prev.
  static constexpr bool kPreActivationsSumSides = false;
  static constexpr bool kGateGradsReadHPrev = true;
  static constexpr bool kDirectStateGrad = true;
  static constexpr const char* kSavedName = "workspace";
  static constexpr int kInputSideBiases = 1;  // b_ih
  static constexpr bool kSavedInOpMath = false;
  static constexpr int64_t saved_columns(int64_t hidden) { return kSaved * hidden; }
  static constexpr int kNorms = 0;
};

// ---------------------------------------------------------------------------------------------
// The tensors of the cell kernels. Every tensor is contiguous (row blocks of larger ones
// included); B is a step's rows, H the hidden size, P the size of h's rows (H, or an LSTM's
// projection size), G and S the cell's gates and saved values per unit. Fields marked "cell
// state" are for cells with one (undefined otherwise).

// One step.
struct StepTensors {
  Tensor input_side;     // [B, G*H]: the input projection, with the biases on the input side
  Tensor h_prev;         // [B, P]
  Tensor c_prev;         // [B, H], cell state
  Tensor w_hh;           // [G*H, P], as the cell's prepare_recurrent left it
  OptionalTensor b_ih;   // [G*H], where not on the input side (kInputSideBiases < 1)
  OptionalTensor b_hh;   // [G*H], where not on the input side (kInputSideBiases < 2)
  at::ArrayRef<Tensor> norms;  // the cell's kNorms parameters beyond torch.nn's
  Tensor h_out;          // [B, H]: the cell's h (before an LSTM's projection)
  Tensor c_out;          // [B, H], cell state
  Tensor saved;          // [B, saved_columns(H)]; with kPreActivationsSumSides, input_side itself
  // Zoneout: [B, H] weights of the new h and c (cell state), or undefined; with them h_out and
  // c_out receive the states carried on (cell_math.h's zoneout), and h_prev is [B, H].
  Tensor zoneout_h = {}, zoneout_c = {};
};

// One step's gate gradients (the pointwise backward). With zoneout, grad_h and grad_c are the
// carried states' gradients, c_out the carried cell state (the cell rebuilds c' where it reads
// it), and what goes straight to the state before joins grad_c_prev and grad_h_direct (which
// every cell then writes).
struct GateGradTensors {
  Tensor grad_h;             // [B, H]: the gradient of h_out
  Tensor grad_c;             // [B, H]: of c_out, cell state
  Tensor saved;              // [B, S*H]
  Tensor h_prev;             // [B, H], where kGateGradsReadHPrev
  Tensor c_prev, c_out;      // [B, H], cell state
  Tensor grad_input_gates;   // [B, G*H] out: the input side's pre-activation gradients
  Tensor grad_hidden_gates;  // [B, G*H] out: the hidden side's (grad_input_gates itself where
                             // kPreActivationsSumSides)
  Tensor grad_c_prev;        // [B, H] out, cell state; may be grad_c
  Tensor grad_h_direct;      // [B, H] out, where kDirectStateGrad or zoneout; may be grad_h
  at::ArrayRef<Tensor> norms;  // the cell's kNorms parameters
  Tensor grad_pre;           // [B, pre_grad_columns(H)] out, where kNorms: what the cell's
                             // parameter gradients sum over the rows (add_parameter_sums)
  Tensor zoneout_h = {}, zoneout_c = {};  // the forward step's, or undefined
};

// A sequence's episode starts (reset_rows): per step in the order run, the rows whose state
// entering it is the initial state (an int64 index tensor on the input's device), or undefined
// where none; and all of them at once. Empty: no resets. A whole-sequence kernel that does not
// restart rows declines (returns false) where it is not empty.
struct EpisodeStarts {
  std::vector<Tensor> steps;
  Tensor packed_rows, batch_rows;  // every restarted row: its row in the packed [N, *] tensors,
                                   // and its batch row (of hx)
  bool empty() const { return steps.empty(); }
  size_t size() const { return steps.size(); }
  const Tensor& operator[](size_t i) const { return steps[i]; }
};

// One step of a layer's (packed) sequence.
struct SequenceStep {
  int64_t offset;  // first row of the step in the packed [N, *] tensors
  int64_t rows;    // batch_sizes[t]
};

// A layer's whole forward, for one uniform batch of B rows a step and no projection: the rows of
// all T steps one after another, N = T*B.
struct SequenceTensors {
  Tensor input_side;   // [N, G*H]
  Tensor h0, c0;       // [B, H] (c0: cell state)
  Tensor w_hh;         // [G*H, H] (in the saved type where kSavedInOpMath)
  OptionalTensor b_ih, b_hh;   // the biases the steps add (StepTensors)
  at::ArrayRef<Tensor> norms;  // the cell's kNorms parameters
  Tensor output;       // [N, H]
  Tensor cell_states;  // [N, H], cell state
  Tensor saved;        // [N, saved_columns(H)], or its B rows that every step reuses (nothing
                       // kept); with kPreActivationsSumSides, input_side itself
  bool reverse;
  EpisodeStarts starts = {};
  // Zoneout: per state (h, then c where the cell has one), [N, H] weights of each step's new
  // value (StepTensors'), contiguous; empty without. A whole-sequence kernel that does not zone
  // out declines where it is not empty.
  std::vector<Tensor> zoneout = {};
  // Where the steps' batch sizes differ (packed sequences of several lengths): the steps in the
  // order the forward runs them (check_layer_args'); empty for a padded batch (B rows a step).
  // A whole-sequence kernel that takes padded batches only declines where it is not empty.
  std::vector<SequenceStep> packed_steps = {};
};

// The same with the input side computed inside each step (x_t @ W_ih^T beside h @ W_hh^T), so no
// [N, G*H] projection is written and read back. The kernel allocates the saved tensors where it
// applies: saved [N, S*H] with keep_saved, else [B, S*H] or, where nothing needs it, [0, S*H];
// cell_states [N, H] (cell state).
struct InputSequenceTensors {
  Tensor input;        // [N, I]
  Tensor w_ih;         // [G*H, I]
  OptionalTensor b_ih, b_hh;
  Tensor h0, c0, w_hh;
  Tensor output;       // [N, H]
  bool keep_saved, reverse;
  EpisodeStarts starts = {};
  std::vector<Tensor> zoneout = {};  // as SequenceTensors'
};
struct InputSequenceSaved {
  Tensor saved, cell_states;
};

// A layer's whole backward time loop, without projection. grad_h (and grad_c) [B, H] come in
// holding the final state's gradients and leave holding the initial state's (each row's own,
// where the sequences' lengths differ: packed_steps); w_hh as the op got it. With episode starts,
// the gradients of the states entering a step from the initial state are added to grad_h_starts
// (grad_c_starts) [B, H] instead.
struct BackwardSequenceTensors {
  Tensor grad_output;           // [N, H]
  Tensor saved;                 // [N, S*H]
  Tensor h_before;              // [N, H]: the state each step started from, kGateGradsReadHPrev
  Tensor c_before, cell_states; // [N, H], cell state (cell_states: the state carried on, c'
                                // itself but where zoneout blended it, the kernel then
                                // rebuilding c' from the saved gates)
  Tensor w_hh;
  Tensor grad_h, grad_c;
  Tensor grad_input_gates, grad_hidden_gates;  // [N, G*H] out (one tensor: sum of sides)
  bool reverse;
  EpisodeStarts starts = {};
  Tensor grad_h_starts = {}, grad_c_starts = {};
  std::vector<Tensor> zoneout = {};  // as SequenceTensors'
  std::vector<SequenceStep> packed_steps = {};  // as SequenceTensors' (the forward's order)
};

// ---------------------------------------------------------------------------------------------
// A device's kernels.

// The products, whatever the cell.
struct LinearKernels {
  // x @ w^T (+ bias), for products that reuse one weight: prepare_linear readies w (any
  // strides) once for `uses` products of up to `rows` rows each, contiguous or, on the CPU,
  // maybe packed for oneDNN, and linear applies a weight so prepared, or a plain one.
  Tensor (*prepare_linear)(const Tensor& w, int64_t rows, int64_t uses);
  Tensor (*linear)(const Tensor& x, const Tensor& w, const OptionalTensor& bias);
  // The backward's products a [M, K] @ b [K, N] (a may be a transposed view), plus add [M, N]
  // where given.
  Tensor (*matmul)(const Tensor& a, const Tensor& b, const OptionalTensor& add);
  // The per-step products of the layers: prepare_step_weight readies w [N, K] (any strides; a
  // transposed W is packed from W as it lies) once for `uses` products of up to `rows` rows;
  // step_linear writes out [rows, N] = x @ w^T, or adds it to out with accumulate, with no
  // temporary (out must not overlap x).
  Tensor (*prepare_step_weight)(const Tensor& w, int64_t rows, int64_t uses);
  void (*step_linear)(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate);
  // Adds the sums over the rows of d [N, C] and of d * x (x [N, C]; float or double) to sums
  // [2, C]: the layer norms' bias and weight gradients.
  void (*add_row_sums)(const Tensor& d, const Tensor& x, const Tensor& sums);
  // Where the input projection is not saved (inference; the GRU's training too), a padded batch
  // runs in chunks of steps whose projection takes about this many bytes, each chunk's buffer
  // reused; 0: the whole sequence's projection at once. (A layer whose steps compute their input
  // side themselves, sequence_from_input, has none to chunk.)
  int64_t projection_chunk_bytes;
  // An uninitialised buffer for a layer's saved values or gate gradients, fresh every call: on
  // the CPU, a freed block of the same size where the block cache holds one (cpu/block_cache.h).
  Tensor (*empty_buffer)(at::IntArrayRef sizes, const at::TensorOptions& options);
  // Row indices (int64) on like's device, for a gather, made without waiting for the device;
  // undefined where they cannot be (CUDA: while a graph is being captured, whose replays would
  // copy from host memory freed since).
  Tensor (*row_indices)(const std::vector<int64_t>& values, const Tensor& like);
};

// The kernels of one cell kind on a device. The whole-sequence entries may be null; where not,
// each returns false, having done nothing, where it does not apply (shape, dtype, switched off),
// and the layer then runs step by step; where it applies, its results (saved tensors included)
// are those of the step-wise loop.
template <typename Cell>
struct CellKernels {
  // Readies W_hh [G*H, P] of a layer once for the `uses` steps of up to `rows` rows of `step`
  // (the CPU may pack it for its fused recurrent step).
  Tensor (*prepare_recurrent)(const Tensor& w_hh, int64_t rows, int64_t uses);
  // One step: the hidden side's product, the gate math, the new state and the saved values.
  void (*step)(const StepTensors&);
  // One step's gate gradients.
  void (*gate_grads)(const GateGradTensors&);
  // The whole forward time loop at once (CUDA: one persistent launch; CPU: one parallel region).
  bool (*sequence)(const SequenceTensors&);
  // The whole forward with the input side inside each step.
  bool (*sequence_from_input)(const InputSequenceTensors&, InputSequenceSaved&);
  // The whole backward time loop at once (CPU: one parallel region).
  bool (*backward_sequence)(const BackwardSequenceTensors&);
};

// ---------------------------------------------------------------------------------------------
// Checks.

// Sizes of one cell step or layer, read from the (checked) arguments.
struct CellSizes {
  int64_t batch;   // B
  int64_t input;   // I
  int64_t hidden;  // H
  int64_t state;   // size of the hidden state h: H, or the projection size P of an LSTM layer
};

// Checks a cell's or layer's forward arguments and returns their sizes: first every size (the
// weights against input [*, I]: w_ih [G*H,I], w_hh [G*H,P], biases [G*H], w_hr [P,H] for an LSTM
// with projections, P = H without; then hx [batch, P] and, for the LSTM, cx [batch, H]), then
// every tensor's device and dtype against input's, the order in which torch.nn reports them.
CellSizes check_forward_args(const char* op, int64_t gates, const Tensor& input, int64_t batch,
                             const Tensor& hx, const Tensor* cx, const Tensor& w_ih,
                             const Tensor& w_hh, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const OptionalTensor& w_hr);

// Checks a cell forward's arguments and returns their sizes. `op` names the op in messages;
// `cx` is given for the LSTM only. Messages for the checks torch.nn's cells also make
// (input_size, hidden size, batch) use torch.nn's wording, so the drop-in modules raise the same.
CellSizes check_cell_forward_args(const char* op, int64_t gates, const Tensor& input,
                                  const Tensor& hx, const OptionalTensor& cx, const Tensor& w_ih,
                                  const Tensor& w_hh, const OptionalTensor& b_ih,
                                  const OptionalTensor& b_hh);

// Checks a layer op's arguments as the layer ops do (batch_sizes included; `cx` is given for the
// LSTM only) and returns its steps in the order the forward runs them (last first in reverse).
std::vector<SequenceStep> check_layer_args(const char* op, int64_t gates, const Tensor& input,
                                           const Tensor& batch_sizes, const Tensor& hx,
                                           const Tensor* cx, const Tensor& w_ih,
                                           const Tensor& w_hh, const OptionalTensor& b_ih,
                                           const OptionalTensor& b_hh, const OptionalTensor& w_hr,
                                           bool reverse);

// The episode starts of a layer op's sequence (resets [N] bool, a row per input row: an episode
// starts at that row's step), per step of `order` (check_layer_args'): in the forward direction
// a marked step starts from the initial state; in reverse, the step run after it (the one before
// it in time). Empty without resets.
EpisodeStarts reset_rows(const char* op, const OptionalTensor& resets, const Tensor& input,
                         const std::vector<SequenceStep>& order, bool reverse);

// A layer op's zoneout weights (LayerArgs::zoneout [K, N, H], K = `states`: 2 for a cell with a
// cell state), checked (no projection): one [N, H] a state, h's then c's; empty without.
std::vector<Tensor> zoneout_weights(const char* op, const OptionalTensor& zoneout,
                                    const Tensor& input, int64_t hidden, int64_t states,
                                    bool projected);

// Checks that `t` has exactly the given sizes, device and dtype of `like`.
void check_saved(const char* op, const char* name, const Tensor& t, at::IntArrayRef sizes,
                 const Tensor& like);

// The sum of the biases given (none: no bias).
OptionalTensor summed_biases(std::initializer_list<const OptionalTensor*> biases);

// The biases a cell puts on its input side: both where its pre-activations sum the sides, else
// b_ih (b_hh then goes to the step).
template <typename Cell>
OptionalTensor input_side_bias(const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  if constexpr (Cell::kInputSideBiases == 2) return summed_biases({&b_ih, &b_hh});
  if constexpr (Cell::kInputSideBiases == 1) return b_ih;
  return std::nullopt;
}

// The dtype of a cell's saved values and gradients for an input of dtype `dtype`: the dtype, or
// its op-math type (float for the half types) where kSavedInOpMath.
template <typename Cell>
at::ScalarType saved_type(at::ScalarType dtype) {
  return Cell::kSavedInOpMath ? at::toOpMathType(dtype) : dtype;
}

// t in a cell's saved type (the layer-normalized cells' products run in it; else t itself).
template <typename Cell>
Tensor in_saved_type(const Tensor& t) {
  if constexpr (Cell::kSavedInOpMath) return t.to(saved_type<Cell>(t.scalar_type()));
  return t;
}

// The input projection x W_ih^T + bias: one product over all rows of x, in the dtype of x.
Tensor input_projection(const LinearKernels& k, const Tensor& input, const Tensor& w_ih,
                        const OptionalTensor& bias);

// ---------------------------------------------------------------------------------------------
// The device-agnostic ops, over a device's kernels (layer_common.cpp, cell_common.cpp), once per
// cell kind. Their schemas and arguments are documented in fused_rnn.cpp.

// The ops' results as the dispatcher returns them (schemas in fused_rnn.cpp). output_mask order
// of lstm_cell_backward: input, hx, cx, w_ih, w_hh, bias; of gru_cell_backward and
// gru_layer_backward: input, hx, w_ih, w_hh, b_ih, b_hh; of lstm_layer_backward: input, hx, cx,
// w_ih, w_hh, bias, w_hr.
using LstmCellGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using GruGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LstmLayerGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LstmLayerOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using GruLayerOutputs = std::tuple<Tensor, Tensor, Tensor>;

// What a cell's and a layer's forward return, and what its backward is given: cx, cy,
// cell_states and the projection's tensors are the LSTM's; the GRU's saved is its workspace,
// the LSTM's its gates.
struct CellForward {
  Tensor hy, cy, saved;
};
struct LayerForward {
  Tensor output, hy, cy, saved, cell_states, hidden_pre_proj;
};
struct LayerArgs {
  Tensor input, batch_sizes, hx, cx, w_ih, w_hh;
  OptionalTensor b_ih, b_hh, w_hr;
  bool reverse;
  std::vector<Tensor> norms;  // the cell's kNorms parameters beyond torch.nn's
  // [N] bool: where true, an episode starts at that row's step (reset_rows).
  OptionalTensor resets = std::nullopt;
  // [K, N, H]: zoneout's weights of each step's new value, K = 1 (h) or 2 (h, c).
  OptionalTensor zoneout = std::nullopt;
};
// A backward's gradients: grad_b_hh where its own (b_ih's otherwise serves both).
struct Grads {
  Tensor input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr;
  std::vector<Tensor> norms;  // of the kNorms parameters
};
// Which of them to compute.
struct GradMask {
  bool input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr;
  std::vector<bool> norms = {};
};

template <typename Cell>
Grads cell_backward(const LinearKernels& lin, const CellKernels<Cell>& k, const Tensor& grad_hy,
                    const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
                    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                    const Tensor& saved, const Tensor& cy, const GradMask& mask,
                    at::ArrayRef<Tensor> norms = {});
template <typename Cell>
LayerForward layer_forward(const LinearKernels& lin, const CellKernels<Cell>& k,
                           const LayerArgs& a, bool keep_saved);
template <typename Cell>
Grads layer_backward(const LinearKernels& lin, const CellKernels<Cell>& k,
                     const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
                     const LayerArgs& a, const Tensor& output, const Tensor& saved,
                     const Tensor& cell_states, const Tensor& hidden_pre_proj,
                     const GradMask& mask);

// The device's cell forward on the shared kernels: the input projection, then one step.
template <typename Cell>
CellForward cell_forward(const LinearKernels& lin, const CellKernels<Cell>& k,
                         const Tensor& input, const Tensor& hx, const OptionalTensor& cx,
                         const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                         const OptionalTensor& b_hh, at::ArrayRef<Tensor> norms = {});

// Registers a cell forward op as the shared kernels' cell_forward, for a device without a fused
// cell kernel of its own.
template <const LinearKernels& L, const CellKernels<LstmCell>& K>
void impl_lstm_cell(torch::Library& m) {
  m.impl("lstm_cell",
         [](const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
            const Tensor& w_hh, const OptionalTensor& b_ih,
            const OptionalTensor& b_hh) -> std::tuple<Tensor, Tensor, Tensor> {
           const CellForward f = cell_forward(L, K, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
           return {f.hy, f.cy, f.saved};
         });
}
template <const LinearKernels& L, const CellKernels<GruCell>& K>
void impl_gru_cell(torch::Library& m) {
  m.impl("gru_cell",
         [](const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
            const OptionalTensor& b_ih, const OptionalTensor& b_hh) -> std::tuple<Tensor, Tensor> {
           const CellForward f =
               cell_forward(L, K, input, hx, std::nullopt, w_ih, w_hh, b_ih, b_hh);
           return {f.hy, f.saved};
         });
}

// Registers the LSTM's and the GRU's device-agnostic ops for a device's dispatch key, over that
// device's kernels (the schemas' argument lists, mapped onto the generic functions above); the
// cell backward's products by CellL (on CUDA, another rule for float32 than the layers').
template <const LinearKernels& L, const CellKernels<LstmCell>& K,
          const LinearKernels& CellL = L>
void impl_lstm_ops(torch::Library& m) {
  m.impl("lstm_cell_backward",
         [](const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
            const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& gates,
            const Tensor& cy, std::array<bool, 6> mask) -> LstmCellGrads {
           const Grads g = cell_backward(
               CellL, K, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, gates, cy,
               {mask[0], mask[1], mask[2], mask[3], mask[4], mask[5], false, false});
           return {g.input, g.hx, g.cx, g.w_ih, g.w_hh, g.b_ih};
         });
  m.impl("lstm_layer",
         [](const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
            const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
            const OptionalTensor& b_hh, const OptionalTensor& w_hr, bool reverse,
            bool keep_saved, const OptionalTensor& resets,
            const OptionalTensor& zoneout) -> LstmLayerOutputs {
           const LayerForward f = layer_forward(L, K,
                                                {input, batch_sizes, hx, cx, w_ih, w_hh, b_ih,
                                                 b_hh, w_hr, reverse, {}, resets, zoneout},
                                                keep_saved);
           return {f.output, f.hy, f.cy, f.saved, f.cell_states, f.hidden_pre_proj};
         });
  m.impl("lstm_layer_backward",
         [](const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
            const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
            const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& w_hr,
            const Tensor& output, const Tensor& gates, const Tensor& cell_states,
            const Tensor& hidden_pre_proj, bool reverse, std::array<bool, 7> mask,
            const OptionalTensor& resets, const OptionalTensor& zoneout) -> LstmLayerGrads {
           const Grads g = layer_backward(
               L, K, grad_output, grad_hy, grad_cy,
               {input, batch_sizes, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt, w_hr,
                reverse, {}, resets, zoneout},
               output, gates, cell_states, hidden_pre_proj,
               {mask[0], mask[1], mask[2], mask[3], mask[4], mask[5], false, mask[6]});
           return {g.input, g.hx, g.cx, g.w_ih, g.w_hh, g.b_ih, g.w_hr};
         });
}

template <const LinearKernels& L, const CellKernels<GruCell>& K,
          const LinearKernels& CellL = L>
void impl_gru_ops(torch::Library& m) {
  m.impl("gru_cell_backward",
         [](const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
            const Tensor& w_hh, const Tensor& workspace, std::array<bool, 6> mask) -> GruGrads {
           const Grads g = cell_backward(
               CellL, K, grad_hy, Tensor(), input, hx, Tensor(), w_ih, w_hh, workspace, Tensor(),
               {mask[0], mask[1], false, mask[2], mask[3], mask[4], mask[5], false});
           return {g.input, g.hx, g.w_ih, g.w_hh, g.b_ih, g.b_hh};
         });
  m.impl("gru_layer",
         [](const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
            const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
            bool reverse, bool keep_saved, const OptionalTensor& resets,
            const OptionalTensor& zoneout) -> GruLayerOutputs {
           const LayerForward f = layer_forward(
               L, K,
               {input, batch_sizes, hx, Tensor(), w_ih, w_hh, b_ih, b_hh, std::nullopt, reverse,
                {}, resets, zoneout},
               keep_saved);
           return {f.output, f.hy, f.saved};
         });
  m.impl("gru_layer_backward",
         [](const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
            const Tensor& batch_sizes, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
            const Tensor& output, const Tensor& workspace, bool reverse,
            std::array<bool, 6> mask, const OptionalTensor& resets,
            const OptionalTensor& zoneout) -> GruGrads {
           const Grads g = layer_backward(
               L, K, grad_output, grad_hy, Tensor(),
               {input, batch_sizes, hx, Tensor(), w_ih, w_hh, std::nullopt, std::nullopt,
                std::nullopt, reverse, {}, resets, zoneout},
               output, workspace, Tensor(), Tensor(),
               {mask[0], mask[1], false, mask[2], mask[3], mask[4], mask[5], false});
           return {g.input, g.hx, g.w_ih, g.w_hh, g.b_ih, g.b_hh};
         });
}

}  // namespace fused_rnn
