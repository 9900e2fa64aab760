// The CPU's fused pointwise passes (the gate math of one step over all [B, H] units), compiled once
// per x86 instruction set (pointwise_default.cpp, _avx2.cpp, _avx512.cpp) and picked at run time
// for the CPU at hand, as ATen picks its own kernels (ATEN_CPU_CAPABILITY=default or avx2 lowers it).
// Every tensor is contiguous and allocated by the caller; dtypes are float, double, half, bfloat16.
// Each pass covers the units [begin, end) of the flattened [B, H] grid, serially: the caller splits
// the grid over threads (so the per-ISA files need none of ATen's threading headers).
#pragma once

#include "../cell_ops.h"
#include "../layernorm_cell_ops.h"

#include <ATen/core/Tensor.h>

// The build defines FUSED_RNN_CPU_X86_VARIANTS where it compiles the AVX2 and AVX-512 variants
// (x86-64); elsewhere only the portable one exists.

namespace fused_rnn::cpu {

using at::Tensor;

// The rows of one step of the fused recurrent step (float32; every pointer to contiguous rows).
struct RecurrentStep {
  int64_t rows, hidden, state;  // B, H, and K: the size of h_prev's rows (P with a projection)
  const float* h_prev;          // [B, K]
  const float* w_packed;        // W_hh packed by pack_recurrent_weight
  float* gates;                 // LSTM: [B, 4H], input side in, activated gates out; GRU: gx [B, 3H]
  const float* c_prev;          // LSTM: [B, H]
  float* c_out;                 // LSTM: [B, H]
  float* h_out;                 // [B, H]
  const float* b_hh;            // GRU: [3H], or null
  float* workspace;             // GRU: [B, 4H]
  // A whole sequence (cells_cpu.cpp): whether each step has its own workspace rows, or every
  // step reuses the first step's (the caller keeps no saved tensors).
  bool workspace_per_step;
  // Where the step computes its input side too (x @ W_ih^T beside h_prev @ W_hh^T; else x is
  // null and gates holds it): x [B, I] the step's input rows, W_ih packed by
  // pack_recurrent_weight, and the input side's biases (LSTM: both summed [4H]; GRU: b_ih [3H],
  // b_hh apart as always); gates is then unused (GRU), or only receives the activated gates
  // (LSTM), where not null.
  const float* x;
  int64_t input;  // I
  const float* w_ih_packed;
  const float* bias;
  // Zoneout (layer_common.cpp): the weights of the step's new h and c, [B, H] like h_out, or
  // null; with them, h_prev's rows are [B, H] too (no projection).
  const float* zoneout_h;
  const float* zoneout_c;
};

// One step of a padded sequence's backward (float32; every pointer to contiguous rows), in the
// tasks of linear_tasks(rows, hidden): first the gate gradients of the tasks' units, then, once
// every task's are done, the tasks' columns of the previous state's gradient, the step's hidden
// gate gradients @ W_hh. A task keeps the same units in both, so a step needs one barrier.
struct BackwardStep {
  int64_t rows, hidden;        // B, H
  const float* grad_out;       // [B, H]: the step's output gradient
  float* grad_h;               // [B, H]: in, from the later steps; out, for the step before
  const float* w_packed;       // W_hh^T [H, G*H] packed by pack_linear_weight
  const float* saved;          // LSTM: the activated gates [B, 4H]; GRU: the workspace [B, 4H]
  const float* state_before;   // LSTM: c_prev [B, H]; GRU: h_prev [B, H]
  const float* c_new;          // LSTM: [B, H]
  float* grad_c;               // LSTM: [B, H], in and out like grad_h
  float* grad_gates;           // LSTM: [B, 4H]; GRU: the input side [B, 3H]
  float* grad_hidden_gates;    // GRU: [B, 3H]
  const float* zoneout_h;      // [B, H]: zoneout's weights of the step's new h, or null
  const float* zoneout_c;      // LSTM: [B, H], of its new c, or null
};

// Accumulator packs a row of a GRU step that computes its input side (RecurrentStep::x): r, z,
// and n's input and hidden sides apart (r scales only W_hn h).
constexpr int64_t kGruPacksWithInput = 4;

// The kernels of one cell kind in one instruction set's variant.
template <typename Cell>
struct CellPointwise {
  // The gate math of one step, its products done, over the units [begin, end) of its [B, H]
  // grid (the layer-normalized cells, whose norms need whole rows: over the rows [begin, end)):
  // from t.input_side and hidden_side [B, G*H] (the hidden product, b_hh included where the
  // cell keeps it apart), t.h_prev and t.c_prev, writes t.h_out, t.c_out and t.saved (which may
  // be t.input_side). The norms, where the cell has them, contiguous.
  void (*forward)(const StepTensors& t, const Tensor& hidden_side, int64_t begin, int64_t end);
  // One step's gate gradients (GateGradTensors), over the units [begin, end) (rows, as forward,
  // for the layer-normalized cells).
  void (*backward)(const GateGradTensors& t, int64_t begin, int64_t end);

  // The fused recurrent step, float32 only: each task computes h_prev @ W_hh^T for a block of
  // rows and a block of `lanes` units, all gates of those units at once, in registers, and
  // finishes them into the step's update, so the [B, G*H] hidden product never goes to memory
  // and a step is one parallel pass; on raw pointers (RecurrentStep), so that a whole sequence
  // can run without building tensors. Its tasks: recurrent_tasks(rows, hidden, G), or with
  // packs_with_input accumulator packs a row where the step computes its input side too.
  void (*forward_recurrent)(const RecurrentStep& step, int64_t begin, int64_t end);
  int64_t packs_with_input;

  // The two halves of a BackwardStep over the tasks [begin, end): the gate gradients, then the
  // product that carries grad_h to the step before (LSTM: grad_h = grad_gates @ W_hh; GRU:
  // grad_h, the direct part, += its product).
  void (*backward_gates)(const BackwardStep& step, int64_t begin, int64_t end);
  void (*backward_product)(const BackwardStep& step, int64_t begin, int64_t end);
};

struct PointwiseKernels {
  const char* isa;  // the instruction set it was built for: "DEFAULT", "AVX2" or "AVX512"
  // The cells' kernels (the layer-normalized cells': forward and backward only).
  CellPointwise<LstmCell> lstm;
  CellPointwise<GruCell> gru;
  CellPointwise<LayerNormLstmCell> layernorm_lstm;
  CellPointwise<LayerNormGruCell> layernorm_gru;

  // The fused recurrent step's weight: W_hh [G*H, K] is packed once per sequence by
  // pack_recurrent_weight into [ceil(H / lanes), K, G * lanes] (unit block, k, gate, lane;
  // zero-padded past H), so each k reads one contiguous run of G * lanes weights.
  int64_t lanes;
  Tensor (*pack_recurrent_weight)(const Tensor& w_hh, int64_t gates);
  // The number of tasks of a step over `rows` rows, with `packs` accumulator packs a row.
  int64_t (*recurrent_tasks)(int64_t rows, int64_t hidden, int64_t packs);

  // The same register-blocked product as a plain linear map, for the per-step products of the
  // backward (float32): w [N, K] is packed by pack_linear_weight into
  // [ceil(N / (kLinearGroups * lanes)), K, kLinearGroups * lanes], block b holding the output
  // columns b * kLinearGroups * lanes onwards, zero-padded past N.
  Tensor (*pack_linear_weight)(const Tensor& w);
  int64_t (*linear_tasks)(int64_t rows, int64_t columns);
  // out [rows, N] = x [rows, K] @ w^T, or += with accumulate, over the tasks [begin, end).
  void (*linear_packed)(const Tensor& x, const Tensor& w_packed, const Tensor& out,
                        bool accumulate, int64_t begin, int64_t end);

  // A product with the weight as it lies, for a few rows (float32), where packing would cost
  // more than the product: out [rows, N] = x [rows, K] @ w^T (+ bias [N] where not null), x and
  // w [N, K] contiguous; a task covers a few columns for every row.
  int64_t (*rows_tasks)(int64_t columns);
  void (*linear_rows)(const Tensor& x, const Tensor& w, const float* bias, const Tensor& out,
                      int64_t begin, int64_t end);
  // out [M, N] = a [M, K] @ b [K, N], or += with accumulate, in linear_packed's tiles
  // (linear_tasks(M, N)) over b as it lies (contiguous; a with any strides, out contiguous): the
  // small products of a cell's backward, whose weights are used once.
  void (*matmul_rows)(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate,
                      int64_t begin, int64_t end);
};

// A cell kind's kernels in a variant's table.
template <typename Cell>
const CellPointwise<Cell>& cell_kernels(const PointwiseKernels& k);
template <>
inline const CellPointwise<LstmCell>& cell_kernels(const PointwiseKernels& k) {
  return k.lstm;
}
template <>
inline const CellPointwise<GruCell>& cell_kernels(const PointwiseKernels& k) {
  return k.gru;
}
template <>
inline const CellPointwise<LayerNormLstmCell>& cell_kernels(const PointwiseKernels& k) {
  return k.layernorm_lstm;
}
template <>
inline const CellPointwise<LayerNormGruCell>& cell_kernels(const PointwiseKernels& k) {
  return k.layernorm_gru;
}

// Column groups of `lanes` outputs per task of linear_packed: as many accumulators per row as the
// recurrent LSTM step, so the same product kernel serves both.
constexpr int64_t kLinearGroups = 4;

namespace DEFAULT {
extern const PointwiseKernels kKernels;
}
#ifdef FUSED_RNN_CPU_X86_VARIANTS
namespace AVX2 {
extern const PointwiseKernels kKernels;
}
namespace AVX512 {
extern const PointwiseKernels kKernels;
}
#endif

// The variant for this CPU.
const PointwiseKernels& pointwise_kernels();

// The instruction sets this build has variants for, e.g. "DEFAULT;AVX2;AVX512".
const char* pointwise_isas_built();

}  // namespace fused_rnn::cpu
