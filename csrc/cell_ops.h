// What the CPU and CUDA implementations of the cell ops share: the dtype dispatch macro, the
// argument checks, and the backward's matrix products, which are device-agnostic ATen calls
// around each device's fused pointwise gate-gradient pass.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

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

// Sizes of one cell step, read from the (checked) arguments.
struct CellSizes {
  int64_t batch;   // B
  int64_t input;   // I
  int64_t hidden;  // H
};

// Checks a cell forward's arguments and returns their sizes. `op` names the op in messages;
// `cx` is given for the LSTM only. Messages for the checks torch.nn's cells also make
// (input_size, hidden size, batch) use torch.nn's wording, so the drop-in modules raise the same.
CellSizes check_cell_forward_args(const char* op, int64_t gates, const Tensor& input,
                                  const Tensor& hx, const OptionalTensor& cx, const Tensor& w_ih,
                                  const Tensor& w_hh, const OptionalTensor& b_ih,
                                  const OptionalTensor& b_hh);

// Checks that `t` has exactly the given sizes, device and dtype of `like`.
void check_saved(const char* op, const char* name, const Tensor& t, at::IntArrayRef sizes,
                 const Tensor& like);

// output_mask order of lstm_cell_backward: input, hx, cx, w_ih, w_hh, bias.
using LstmGradMask = std::array<bool, 6>;
using LstmGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
// output_mask order of gru_cell_backward: input, hx, w_ih, w_hh, b_ih, b_hh.
using GruGradMask = std::array<bool, 6>;
using GruGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// A device's fused pointwise LSTM backward: from grad_hy, grad_cy [B,H], the saved activated gates
// [B,4H], cx and cy [B,H], it returns the gate pre-activation gradients [B,4H] and grad_cx [B,H].
using LstmGateGradsFn = std::tuple<Tensor, Tensor> (*)(const Tensor& grad_hy,
                                                       const Tensor& grad_cy,
                                                       const Tensor& gates, const Tensor& cx,
                                                       const Tensor& cy);

// A device's fused pointwise GRU backward: from grad_hy, hx [B,H] and the saved [B,4H] workspace,
// it returns the input-side gate gradients [B,3H], the hidden-side ones [B,3H] and the direct part
// of grad_hx [B,H] (through z * h).
using GruGateGradsFn = std::tuple<Tensor, Tensor, Tensor> (*)(const Tensor& grad_hy,
                                                              const Tensor& hx,
                                                              const Tensor& workspace);

LstmGrads lstm_cell_backward_with(LstmGateGradsFn gate_grads, const Tensor& grad_hy,
                                  const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
                                  const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                                  const Tensor& gates, const Tensor& cy, LstmGradMask mask);

GruGrads gru_cell_backward_with(GruGateGradsFn gate_grads, const Tensor& grad_hy,
                                const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                const Tensor& w_hh, const Tensor& workspace, GruGradMask mask);

// The registered backward for one device: the shared matrix products around its pointwise pass.
template <LstmGateGradsFn GateGrads>
LstmGrads lstm_cell_backward(const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input,
                             const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                             const Tensor& w_hh, const Tensor& gates, const Tensor& cy,
                             LstmGradMask mask) {
  return lstm_cell_backward_with(GateGrads, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, gates,
                                 cy, mask);
}

template <GruGateGradsFn GateGrads>
GruGrads gru_cell_backward(const Tensor& grad_hy, const Tensor& input, const Tensor& hx,
                           const Tensor& w_ih, const Tensor& w_hh, const Tensor& workspace,
                           GruGradMask mask) {
  return gru_cell_backward_with(GateGrads, grad_hy, input, hx, w_ih, w_hh, workspace, mask);
}

}  // namespace fused_rnn
