// The persistent whole-sequence forward kernels of the CUDA layers (persistent_layer.cu): entry
// points for the layer ops (through kCudaKernels) and for Python (python_module.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace fused_rnn::cuda {

// Off by default until the kernels are measured on a GPU (benchmarks/NOTES.md).
void set_persistent_enabled(bool enabled);
bool persistent_enabled();

// Which forward path a layer of this shape runs on CUDA device `device` (a uniform batch, no
// projection), for a dtype of elem_bytes with accumulation in acc_bytes: "persistent", or
// "step-wise: <why>".
std::string layer_path(int64_t gates, int64_t batch, int64_t hidden, int64_t elem_bytes,
                       int64_t acc_bytes, int64_t device);

// Run the whole forward time loop of one layer in one launch and return true, where the path is
// "persistent"; else return false and touch nothing. One uniform batch of B rows per step, no
// projection. gates/gx [T*B, G*H] hold the input projection (LSTM: becomes the activated gates);
// h0, c0 [B, H]; w_hh [G*H, H]; b_hh [G*H] (GRU); output [T*B, H]; cell_states [T*B, H] (LSTM);
// workspace [T*B, 4H] (GRU), or [B, 4H] when the caller keeps no saved tensors: every step then
// writes the same rows.
bool lstm_sequence(const at::Tensor& gates, const at::Tensor& h0, const at::Tensor& c0,
                   const at::Tensor& w_hh, const at::Tensor& output,
                   const at::Tensor& cell_states, bool reverse);
bool gru_sequence(const at::Tensor& gx, const at::Tensor& h0, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& b_hh, const at::Tensor& output,
                  const at::Tensor& workspace, bool reverse);

}  // namespace fused_rnn::cuda
