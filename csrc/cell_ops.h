// What the CPU and CUDA implementations share: the dtype dispatch macro, the argument checks, and
// the device-agnostic parts of every op (the layer time loops, the matrix products of the
// backward passes), written once over a device's step and gate-gradient kernels (DeviceKernels).
#pragma once

#include <ATen/Dispatch.h>
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

constexpr int64_t kLstmGates = 4;
constexpr int64_t kGruGates = 3;
// The GRU forward saves r, z, n and h_n (the hidden part of n's pre-activation) per unit.
constexpr int64_t kGruSavedPerUnit = 4;

using Tensor = at::Tensor;
using OptionalTensor = std::optional<Tensor>;

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

// One step of a layer's (packed) sequence.
struct SequenceStep {
  int64_t offset;  // first row of the step in the packed [N, *] tensors
  int64_t rows;    // batch_sizes[t]
};

// Checks a layer op's arguments as the layer ops do (batch_sizes included; `cx` is given for the
// LSTM only) and returns its steps in the order the forward runs them (last first in reverse).
std::vector<SequenceStep> check_layer_args(const char* op, int64_t gates, const Tensor& input,
                                           const Tensor& batch_sizes, const Tensor& hx,
                                           const Tensor* cx, const Tensor& w_ih,
                                           const Tensor& w_hh, const OptionalTensor& b_ih,
                                           const OptionalTensor& b_hh, const OptionalTensor& w_hr,
                                           bool reverse);

// Checks that `t` has exactly the given sizes, device and dtype of `like`.
void check_saved(const char* op, const char* name, const Tensor& t, at::IntArrayRef sizes,
                 const Tensor& like);

// A device's kernels. Every tensor is contiguous (row blocks of larger ones included).
struct DeviceKernels {
  // x @ w^T (+ bias), for products that reuse one weight: prepare_linear readies w (any
  // strides) once for `uses` products of up to `rows` rows each, contiguous or, on the CPU,
  // maybe packed for oneDNN, and linear applies a weight so prepared, or a plain one.
  Tensor (*prepare_linear)(const Tensor& w, int64_t rows, int64_t uses);
  Tensor (*linear)(const Tensor& x, const Tensor& w, const OptionalTensor& bias);
  // The backward's products a [M, K] @ b [K, N] (a may be a transposed view), plus add [M, N]
  // where given.
  Tensor (*matmul)(const Tensor& a, const Tensor& b, const OptionalTensor& add);
  // Readies W_hh [G*H, P] of a layer once for the `uses` steps of up to `rows` rows of its
  // lstm_step or gru_step (the CPU may pack it for its fused recurrent step).
  Tensor (*prepare_recurrent)(const Tensor& w_hh, int64_t gates, int64_t rows, int64_t uses);
  // The per-step products of the layers: prepare_step_weight readies w [N, K] (any strides; a
  // transposed W is packed from W as it lies) once for `uses` products of up to `rows` rows;
  // step_linear writes out [rows, N] = x @ w^T, or adds it to out with accumulate, with no
  // temporary (out must not overlap x).
  Tensor (*prepare_step_weight)(const Tensor& w, int64_t rows, int64_t uses);
  void (*step_linear)(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate);
  // One LSTM step over the rows of gates [B,4H]: in, the input projection (biases included); out,
  // the activated gates. h_prev [B,P], c_prev [B,H], w_hh [4H,P] (maybe prepared). Writes h_out
  // [B,H] (o*tanh(c'), before any projection) and c_out [B,H].
  void (*lstm_step)(const Tensor& gates, const Tensor& h_prev, const Tensor& c_prev,
                    const Tensor& w_hh, const Tensor& h_out, const Tensor& c_out);
  // One GRU step: gx [B,3H] the input projection (b_ih included), h_prev [B,H], w_hh [3H,H] (maybe
  // prepared), b_hh [3H]. Writes h_out [B,H] and workspace [B,4H] (r, z, n, h_n).
  void (*gru_step)(const Tensor& gx, const Tensor& h_prev, const Tensor& w_hh,
                   const OptionalTensor& b_hh, const Tensor& h_out, const Tensor& workspace);
  // The fused pointwise LSTM backward: from grad_h, grad_c [B,H], the activated gates [B,4H],
  // c_prev and c_new [B,H], writes the pre-activation gradients grad_gates [B,4H] and grad_c_prev
  // [B,H]. grad_c_prev may be grad_c itself (each unit reads its own entry before writing it).
  void (*lstm_gate_grads)(const Tensor& grad_h, const Tensor& grad_c, const Tensor& gates,
                          const Tensor& c_prev, const Tensor& c_new, const Tensor& grad_gates,
                          const Tensor& grad_c_prev);
  // The fused pointwise GRU backward: from grad_h, h_prev [B,H] and the workspace [B,4H], writes
  // the input-side and hidden-side gate gradients [B,3H] and the direct part of grad_h_prev
  // (through z * h) [B,H], which may be grad_h itself.
  void (*gru_gate_grads)(const Tensor& grad_h, const Tensor& h_prev, const Tensor& workspace,
                         const Tensor& grad_input_gates, const Tensor& grad_hidden_gates,
                         const Tensor& grad_h_direct);
  // Where not null: a layer's whole forward time loop at once (CUDA: one persistent launch; CPU:
  // one parallel region), for one uniform batch and no projection, with the results the
  // step-wise loop would give (saved tensors included). Each returns false, having done nothing,
  // where it does not apply (shape, dtype, device, or switched off); the layer then runs step by
  // step. Arguments as cuda::lstm_sequence / gru_sequence (csrc/cuda/persistent_layer.h); the
  // GRU workspace has a row per step and batch row, or only B rows that every step reuses.
  bool (*lstm_sequence)(const Tensor& gates, const Tensor& h0, const Tensor& c0,
                        const Tensor& w_hh, const Tensor& output, const Tensor& cell_states,
                        bool reverse);
  bool (*gru_sequence)(const Tensor& gx, const Tensor& h0, const Tensor& w_hh,
                       const OptionalTensor& b_hh, const Tensor& output, const Tensor& workspace,
                       bool reverse);
  // Where not null: the LSTM's whole forward with the input side inside each step (x_t @ W_ih^T
  // beside h @ W_hh^T: no [N, 4H] projection written and read back), for one uniform batch and
  // no projection; false, having done nothing, where it does not apply. input [N, I]; where it
  // applies it allocates cell_states [N, H] and gates, the activated gates [N, 4H] with
  // keep_gates, else not kept ([0, 4H]).
  bool (*lstm_sequence_from_input)(const Tensor& input, const Tensor& w_ih,
                                   const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                                   const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                   const Tensor& output, bool keep_gates, Tensor& gates,
                                   Tensor& cell_states, bool reverse);
  // The same for the GRU: gru_sequence's tensors but the input [N, I] for gx, with W_ih and b_ih.
  bool (*gru_sequence_from_input)(const Tensor& input, const Tensor& w_ih,
                                  const OptionalTensor& b_ih, const Tensor& h0, const Tensor& w_hh,
                                  const OptionalTensor& b_hh, const Tensor& output,
                                  const Tensor& workspace, bool reverse);
  // Where not null: a layer's whole backward time loop at once (CPU: one parallel region), for
  // one uniform batch and no projection, with the results of the step-wise loop; false, having
  // done nothing, where it does not apply. Tensors as in the layer backward ops (all contiguous
  // but w_hh; c_before / h_before [N, H] the state each step started from); grad_h (and grad_c)
  // [B, H] come in holding the final state's gradients and leave holding the initial state's.
  bool (*lstm_backward_sequence)(const Tensor& grad_output, const Tensor& gates,
                                 const Tensor& c_before, const Tensor& cell_states,
                                 const Tensor& w_hh, const Tensor& grad_h, const Tensor& grad_c,
                                 const Tensor& grad_gates, bool reverse);
  bool (*gru_backward_sequence)(const Tensor& grad_output, const Tensor& workspace,
                                const Tensor& h_before, const Tensor& w_hh, const Tensor& grad_h,
                                const Tensor& grad_input_gates, const Tensor& grad_hidden_gates,
                                bool reverse);
  // Where the input projection is not saved (inference; the GRU's training too), a padded batch
  // runs in chunks of steps whose projection takes about this many bytes, each chunk's buffer
  // reused; 0: the whole sequence's projection at once. (A layer whose steps compute their input
  // side themselves, the *_sequence_from_input entries, has none to chunk.)
  int64_t projection_chunk_bytes;
};

// The sum of the biases given (none: no bias).
OptionalTensor summed_biases(std::initializer_list<const OptionalTensor*> biases);

// The input projection x W_ih^T, with the biases that belong to it added (both for the LSTM,
// whose gates sum them; b_ih for the GRU): one product over all rows of x, in the dtype of x.
Tensor input_projection(const DeviceKernels& k, const Tensor& input, const Tensor& w_ih,
                        std::initializer_list<const OptionalTensor*> biases);

// output_mask order of lstm_cell_backward: input, hx, cx, w_ih, w_hh, bias.
using LstmCellGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
// output_mask order of gru_cell_backward and gru_layer_backward: input, hx, w_ih, w_hh, b_ih, b_hh.
using GruGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
// output_mask order of lstm_layer_backward: input, hx, cx, w_ih, w_hh, bias, w_hr.
using LstmLayerGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LstmLayerOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using GruLayerOutputs = std::tuple<Tensor, Tensor, Tensor>;

// The ops, over a device's kernels. Their schemas and arguments are documented in fused_rnn.cpp.
LstmCellGrads lstm_cell_backward(const DeviceKernels& k, const Tensor& grad_hy,
                                 const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
                                 const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                                 const Tensor& gates, const Tensor& cy,
                                 std::array<bool, 6> mask);
GruGrads gru_cell_backward(const DeviceKernels& k, const Tensor& grad_hy, const Tensor& input,
                           const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                           const Tensor& workspace, std::array<bool, 6> mask);
LstmLayerOutputs lstm_layer(const DeviceKernels& k, const Tensor& input,
                            const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
                            const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
                            const OptionalTensor& b_hh, const OptionalTensor& w_hr,
                            bool reverse, bool keep_saved);
LstmLayerGrads lstm_layer_backward(const DeviceKernels& k, const Tensor& grad_output,
                                   const Tensor& grad_hy, const Tensor& grad_cy,
                                   const Tensor& input, const Tensor& batch_sizes,
                                   const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                                   const Tensor& w_hh, const OptionalTensor& w_hr,
                                   const Tensor& output, const Tensor& gates,
                                   const Tensor& cell_states, const Tensor& hidden_pre_proj,
                                   bool reverse, std::array<bool, 7> mask);
GruLayerOutputs gru_layer(const DeviceKernels& k, const Tensor& input, const Tensor& batch_sizes,
                          const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                          const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool reverse,
                          bool keep_saved);
GruGrads gru_layer_backward(const DeviceKernels& k, const Tensor& grad_output,
                            const Tensor& grad_hy, const Tensor& input, const Tensor& batch_sizes,
                            const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                            const Tensor& output, const Tensor& workspace, bool reverse,
                            std::array<bool, 6> mask);

// Registers the device-agnostic ops for a device's dispatch key, over that device's kernels K.
template <const DeviceKernels& K>
void impl_device_agnostic_ops(torch::Library& m) {
  m.impl("lstm_cell_backward",
         [](const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
            const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& gates,
            const Tensor& cy, std::array<bool, 6> mask) {
           return lstm_cell_backward(K, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, gates, cy,
                                     mask);
         });
  m.impl("gru_cell_backward",
         [](const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
            const Tensor& w_hh, const Tensor& workspace, std::array<bool, 6> mask) {
           return gru_cell_backward(K, grad_hy, input, hx, w_ih, w_hh, workspace, mask);
         });
  m.impl("lstm_layer",
         [](const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
            const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
            const OptionalTensor& b_hh, const OptionalTensor& w_hr, bool reverse,
            bool keep_saved) {
           return lstm_layer(K, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                             reverse, keep_saved);
         });
  m.impl("lstm_layer_backward",
         [](const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
            const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
            const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& w_hr,
            const Tensor& output, const Tensor& gates, const Tensor& cell_states,
            const Tensor& hidden_pre_proj, bool reverse, std::array<bool, 7> mask) {
           return lstm_layer_backward(K, grad_output, grad_hy, grad_cy, input, batch_sizes, hx,
                                      cx, w_ih, w_hh, w_hr, output, gates, cell_states,
                                      hidden_pre_proj, reverse, mask);
         });
  m.impl("gru_layer",
         [](const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
            const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
            bool reverse, bool keep_saved) {
           return gru_layer(K, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse,
                            keep_saved);
         });
  m.impl("gru_layer_backward",
         [](const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
            const Tensor& batch_sizes, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
            const Tensor& output, const Tensor& workspace, bool reverse,
            std::array<bool, 6> mask) {
           return gru_layer_backward(K, grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh,
                                     output, workspace, reverse, mask);
         });
}

}  // namespace fused_rnn
