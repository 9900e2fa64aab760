// The layer-normalized LSTM and GRU as cell kinds of the shared loops (cell_ops.h): their traits,
// the gradients of their parameters beyond torch.nn's (layernorm_cell_ops.cpp), and their ops'
// registration over a device's tables. The math is layernorm_cell_math.h's; the schemas are in
// fused_rnn.cpp. The norms (LayerArgs::norms, StepTensors::norms) are, in order, ln_ih_weight,
// ln_ih_bias, ln_hh_weight, ln_hh_bias and, for the LSTM, ln_c_weight, ln_c_bias.
#pragma once

#include "cell_ops.h"
#include "layernorm_cell_math.h"

namespace fused_rnn {

struct LayerNormLstmCell {
  static constexpr const char* kName = "layernorm_lstm";
  static constexpr int64_t kGates = kLstmGates;
  static constexpr bool kHasCellState = true;
  // Each side is normalized apart: the biases are the step's, the sides' gradients differ.
  static constexpr bool kPreActivationsSumSides = false;
  static constexpr int kInputSideBiases = 0;
  static constexpr bool kGateGradsReadHPrev = false;
  static constexpr bool kDirectStateGrad = false;
  static constexpr const char* kSavedName = "saved";
  // The normalized values and rstd set every gradient's scale: kept in the op-math type, and the
  // products run in it.
  static constexpr bool kSavedInOpMath = true;
  static constexpr int64_t saved_columns(int64_t hidden) {
    return kLayerNormLstmSavedPerUnit * hidden + kLayerNormLstmSavedPerRow;
  }
  static constexpr int kNorms = 6;
  // The gate gradients' grad_pre rows: the pre-activations' gradient [4H], LN_c's output's [H].
  static constexpr int64_t pre_grad_columns(int64_t hidden) { return (kGates + 1) * hidden; }
  // The biases' and the norms' gradients are sums over the rows: parameter_sums starts them
  // (zeros), add_parameter_sums adds the rows of a step's grad_pre and saved (the device's
  // row_sums), parameter_grads makes them the gradients (one for b_ih and b_hh, in b_ih) in
  // `dtype`, where mask asks for them.
  static std::vector<Tensor> parameter_sums(int64_t hidden, const at::TensorOptions& options);
  static void add_parameter_sums(const LinearKernels& lin, const Tensor& grad_pre,
                                 const Tensor& saved, int64_t hidden,
                                 const std::vector<Tensor>& sums);
  static void parameter_grads(const std::vector<Tensor>& sums, const GradMask& mask,
                              Grads& grads, at::ScalarType dtype);
  // Checks the norms' sizes ([4H] each, [H] for LN_c's), devices and dtypes (input's).
  static void check_norms(const char* op, at::ArrayRef<Tensor> norms, int64_t hidden,
                          const Tensor& input);
};

struct LayerNormGruCell {
  static constexpr const char* kName = "layernorm_gru";
  static constexpr int64_t kGates = kGruGates;
  static constexpr bool kHasCellState = false;
  static constexpr bool kPreActivationsSumSides = false;
  static constexpr int kInputSideBiases = 0;
  static constexpr bool kGateGradsReadHPrev = true;
  static constexpr bool kDirectStateGrad = true;
  static constexpr const char* kSavedName = "saved";
  static constexpr bool kSavedInOpMath = true;
  static constexpr int64_t saved_columns(int64_t hidden) {
    return kLayerNormGruSavedPerUnit * hidden + kLayerNormGruSavedPerRow;
  }
  static constexpr int kNorms = 4;
  // grad_pre rows: the input side's gradient after LN [3H], the hidden side's [3H].
  static constexpr int64_t pre_grad_columns(int64_t hidden) { return 2 * kGates * hidden; }
  // As the LSTM's (b_ih's and b_hh's gradients apart).
  static std::vector<Tensor> parameter_sums(int64_t hidden, const at::TensorOptions& options);
  static void add_parameter_sums(const LinearKernels& lin, const Tensor& grad_pre,
                                 const Tensor& saved, int64_t hidden,
                                 const std::vector<Tensor>& sums);
  static void parameter_grads(const std::vector<Tensor>& sums, const GradMask& mask,
                              Grads& grads, at::ScalarType dtype);
  // Checks the norms' sizes ([3H] each), devices and dtypes (input's).
  static void check_norms(const char* op, at::ArrayRef<Tensor> norms, int64_t hidden,
                          const Tensor& input);
};

using LayerNormLstmCellGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                          Tensor, Tensor, Tensor, Tensor, Tensor>;
using LayerNormGruGrads =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LayerNormLstmLayerOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// Registers the layer-normalized LSTM's ops (cell, cell backward, layer, layer backward) over a
// device's tables.
template <const LinearKernels& L, const CellKernels<LayerNormLstmCell>& K>
void impl_layernorm_lstm_ops(torch::Library& m) {
  m.impl("layernorm_lstm_cell",
         [](const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
            const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
            const Tensor& ln_ih_w, const Tensor& ln_ih_b, const Tensor& ln_hh_w,
            const Tensor& ln_hh_b, const Tensor& ln_c_w,
            const Tensor& ln_c_b) -> std::tuple<Tensor, Tensor, Tensor> {
           const CellForward f = cell_forward(L, K, input, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                              {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b});
           return {f.hy, f.cy, f.saved};
         });
  m.impl("layernorm_lstm_cell_backward",
         [](const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
            const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& ln_ih_w,
            const Tensor& ln_ih_b, const Tensor& ln_hh_w, const Tensor& ln_hh_b,
            const Tensor& ln_c_w, const Tensor& ln_c_b, const Tensor& saved, const Tensor& cy,
            std::array<bool, 12> mask) -> LayerNormLstmCellGrads {
           const Grads g = cell_backward(
               L, K, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, saved, cy,
               {mask[0], mask[1], mask[2], mask[3], mask[4], mask[5], false, false,
                {mask[6], mask[7], mask[8], mask[9], mask[10], mask[11]}},
               {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b});
           const auto& n = g.norms;
           return {g.input, g.hx, g.cx, g.w_ih, g.w_hh, g.b_ih, n[0], n[1], n[2], n[3], n[4],
                   n[5]};
         });
  m.impl("layernorm_lstm_layer",
         [](const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
            const Tensor& w_ih, const Tensor& w_hh, const OptionalTensor& b_ih,
            const OptionalTensor& b_hh, const Tensor& ln_ih_w, const Tensor& ln_ih_b,
            const Tensor& ln_hh_w, const Tensor& ln_hh_b, const Tensor& ln_c_w,
            const Tensor& ln_c_b, bool reverse, bool keep_saved,
            const OptionalTensor& resets,
            const OptionalTensor& zoneout) -> LayerNormLstmLayerOutputs {
           const LayerForward f = layer_forward(
               L, K,
               {input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, std::nullopt, reverse,
                {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b}, resets, zoneout},
               keep_saved);
           return {f.output, f.hy, f.cy, f.saved, f.cell_states};
         });
  m.impl("layernorm_lstm_layer_backward",
         [](const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
            const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& cx,
            const Tensor& w_ih, const Tensor& w_hh, const Tensor& ln_ih_w,
            const Tensor& ln_ih_b, const Tensor& ln_hh_w, const Tensor& ln_hh_b,
            const Tensor& ln_c_w, const Tensor& ln_c_b, const Tensor& output,
            const Tensor& saved, const Tensor& cell_states, bool reverse,
            std::array<bool, 12> mask, const OptionalTensor& resets,
            const OptionalTensor& zoneout) -> LayerNormLstmCellGrads {
           const Grads g = layer_backward(
               L, K, grad_output, grad_hy, grad_cy,
               {input, batch_sizes, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt,
                std::nullopt, reverse, {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b},
                resets, zoneout},
               output, saved, cell_states, Tensor(),
               {mask[0], mask[1], mask[2], mask[3], mask[4], mask[5], false, false,
                {mask[6], mask[7], mask[8], mask[9], mask[10], mask[11]}});
           const auto& n = g.norms;
           return {g.input, g.hx, g.cx, g.w_ih, g.w_hh, g.b_ih, n[0], n[1], n[2], n[3], n[4],
                   n[5]};
         });
}

// The same for the layer-normalized GRU.
template <const LinearKernels& L, const CellKernels<LayerNormGruCell>& K>
void impl_layernorm_gru_ops(torch::Library& m) {
  m.impl("layernorm_gru_cell",
         [](const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
            const OptionalTensor& b_ih, const OptionalTensor& b_hh, const Tensor& ln_ih_w,
            const Tensor& ln_ih_b, const Tensor& ln_hh_w,
            const Tensor& ln_hh_b) -> std::tuple<Tensor, Tensor> {
           const CellForward f = cell_forward(L, K, input, hx, std::nullopt, w_ih, w_hh, b_ih,
                                              b_hh, {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b});
           return {f.hy, f.saved};
         });
  m.impl("layernorm_gru_cell_backward",
         [](const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
            const Tensor& w_hh, const Tensor& ln_ih_w, const Tensor& ln_ih_b,
            const Tensor& ln_hh_w, const Tensor& ln_hh_b, const Tensor& saved,
            std::array<bool, 10> mask) -> LayerNormGruGrads {
           const Grads g = cell_backward(
               L, K, grad_hy, Tensor(), input, hx, Tensor(), w_ih, w_hh, saved, Tensor(),
               {mask[0], mask[1], false, mask[2], mask[3], mask[4], mask[5], false,
                {mask[6], mask[7], mask[8], mask[9]}},
               {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b});
           const auto& n = g.norms;
           return {g.input, g.hx, g.w_ih, g.w_hh, g.b_ih, g.b_hh, n[0], n[1], n[2], n[3]};
         });
  m.impl("layernorm_gru_layer",
         [](const Tensor& input, const Tensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
            const Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
            const Tensor& ln_ih_w, const Tensor& ln_ih_b, const Tensor& ln_hh_w,
            const Tensor& ln_hh_b, bool reverse, bool keep_saved,
            const OptionalTensor& resets,
            const OptionalTensor& zoneout) -> GruLayerOutputs {
           const LayerForward f = layer_forward(
               L, K,
               {input, batch_sizes, hx, Tensor(), w_ih, w_hh, b_ih, b_hh, std::nullopt, reverse,
                {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b}, resets, zoneout},
               keep_saved);
           return {f.output, f.hy, f.saved};
         });
  m.impl("layernorm_gru_layer_backward",
         [](const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
            const Tensor& batch_sizes, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
            const Tensor& ln_ih_w, const Tensor& ln_ih_b, const Tensor& ln_hh_w,
            const Tensor& ln_hh_b, const Tensor& output, const Tensor& saved, bool reverse,
            std::array<bool, 10> mask, const OptionalTensor& resets,
            const OptionalTensor& zoneout) -> LayerNormGruGrads {
           const Grads g = layer_backward(
               L, K, grad_output, grad_hy, Tensor(),
               {input, batch_sizes, hx, Tensor(), w_ih, w_hh, std::nullopt, std::nullopt,
                std::nullopt, reverse, {ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b}, resets, zoneout},
               output, saved, Tensor(), Tensor(),
               {mask[0], mask[1], false, mask[2], mask[3], mask[4], mask[5], false,
                {mask[6], mask[7], mask[8], mask[9]}});
           const auto& n = g.norms;
           return {g.input, g.hx, g.w_ih, g.w_hh, g.b_ih, g.b_hh, n[0], n[1], n[2], n[3]};
         });
}

}  // namespace fused_rnn
