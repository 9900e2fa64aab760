// The CPU's choices between its paths (path_choice.h).
#include "path_choice.h"

#include <algorithm>

namespace fused_rnn::cpu {

bool onednn_packing_pays_off(int64_t rows, int64_t uses) {
  return uses >= kPackMinUses || rows >= kPackMinRows;
}

bool dot_products_pay_off(int64_t rows) { return rows <= kDotMaxRows; }

bool tiles_pay_off(int64_t rows, int64_t inner) { return std::min(rows, inner) <= kTileMaxSide; }

bool onednn_unpacked_pays_off(int64_t rows, int64_t columns, int64_t inner) {
  return rows * columns * inner > kOneDnnMinMacs;
}

bool onednn_input_gradient_pays_off(int64_t rows) { return rows >= kPackMinRows; }

bool onednn_weight_gradient_pays_off(int64_t rows, bool avx512) {
  return rows >= (avx512 ? kWeightGradientMinRowsAvx512 : kPackMinRows);
}

bool layernorm_step_weight_packed(int64_t rows, int64_t uses) {
  return !dot_products_pay_off(rows) && onednn_packing_pays_off(rows, uses);
}

bool panels_pay_off(int64_t weight_bytes, int64_t rows, int64_t uses) {
  const int64_t max_rows =
      weight_bytes <= kPanelCachedWeightBytes ? kPanelMaxRowsCached : kPanelMaxRows;
  return uses >= kPackMinUses && rows <= max_rows && weight_bytes <= kPanelMaxWeightBytes;
}

bool input_in_step_pays_off(int64_t weight_bytes, int64_t batch, int64_t steps) {
  return batch >= kInputInStepMinRows && batch <= kPanelMaxRowsCached && steps >= kPackMinUses &&
         weight_bytes <= kInputInStepMaxWeightBytes;
}

int64_t product_grain(int64_t tasks, int64_t fmas) {
  const int64_t per_task = std::max<int64_t>(1, fmas / std::max<int64_t>(1, tasks));
  return std::max<int64_t>(1, kMinFmasPerThread / per_task);
}

int64_t sequence_threads(int64_t fmas_per_step, int64_t tasks, int64_t threads) {
  return std::clamp<int64_t>(fmas_per_step / kMinFmasPerSequenceThread, 1,
                             std::min(threads, tasks));
}

int64_t backward_row_threads(int64_t batch, int64_t threads) {
  return std::max<int64_t>(1, std::min(threads, batch / kMinBackwardRowsPerThread));
}

namespace {

bool float32(const LayerShape& s) { return s.elem_bytes == 4; }

// The size of h's rows: P with a projection, else H.
int64_t state_size(const LayerShape& s) { return s.proj > 0 ? s.proj : s.hidden; }

// How a per-step product of `rows` rows with a weight [N, K] used `uses` times runs, where the
// fused step's panels do not (prepare_linear_cpu, then linear_cpu).
std::string per_step_product(const LayerShape& s, int64_t columns, int64_t inner, int64_t uses) {
  if (!float32(s)) return "ATen's mm";
  if (s.onednn && onednn_packing_pays_off(s.batch, uses)) return "oneDNN's product, weight packed";
  if (dot_products_pay_off(s.batch)) return "dot products on the weight as it lies";
  if (s.onednn && onednn_unpacked_pays_off(s.batch, columns, inner)) return "oneDNN's product";
  return "ATen's mm";
}

// The steps a chunk of the input projection spans (layer_common.cpp's chunk_steps over
// kProjectionChunkBytes).
int64_t chunk_steps(const LayerShape& s) {
  const int64_t step_bytes = std::max<int64_t>(1, s.batch * s.gates * s.hidden * s.elem_bytes);
  return std::clamp<int64_t>(kProjectionChunkBytes / step_bytes, 1,
                             std::max<int64_t>(s.steps, 1));
}

}  // namespace

std::string forward_path(const LayerShape& s) {
  const int64_t H = s.hidden, G = s.gates, P = state_size(s);
  const int64_t w_ih_bytes = G * H * s.input * 4, w_hh_bytes = G * H * P * 4;
  const bool lstm = G == 4;
  if (s.proj == 0 && float32(s) && input_in_step_pays_off(w_ih_bytes + w_hh_bytes, s.batch,
                                                           s.steps)) {
    return "sequence from input: the fused recurrent step computing x_t @ W_ih^T beside "
           "h @ W_hh^T, every step in one parallel region";
  }
  const int64_t chunk = chunk_steps(s);
  const bool chunked = s.proj == 0 && chunk < s.steps && (!s.keep_saved || !lstm);
  std::string path = chunked ? "input projection in chunks of " + std::to_string(chunk) +
                                   " steps, the recurrence chunk by chunk; "
                             : "input projection over all steps; ";
  const int64_t uses = chunked ? chunk : s.steps;
  if (float32(s) && panels_pay_off(w_hh_bytes, s.batch, uses)) {
    if (s.proj == 0) {
      return path + "sequence: the fused recurrent step (W_hh packed), every step in one "
                    "parallel region";
    }
    return path + "per step: the fused recurrent step (W_hh packed), then the projection " +
           (panels_pay_off(P * H * 4, s.batch, uses) ? std::string("on packed panels")
                                                      : "by " + per_step_product(s, P, H, uses));
  }
  path += "per step: h @ W_hh^T by " + per_step_product(s, G * H, P, uses) +
          ", then the gate math in one pointwise pass";
  if (s.proj > 0) path += ", then the projection by " + per_step_product(s, P, H, uses);
  return path;
}

std::string backward_path(const LayerShape& s) {
  const int64_t H = s.hidden, G = s.gates, P = state_size(s);
  const int64_t w_hh_bytes = G * H * P * 4;
  const bool onednn_weights =
      float32(s) && s.onednn && onednn_weight_gradient_pays_off(s.steps * s.batch, s.avx512);
  const std::string weights =
      std::string("; the input and weight gradients as single products over all steps") +
      (onednn_weights ? " (the weights' by oneDNN)" : "");
  if (s.proj == 0 && float32(s) && panels_pay_off(w_hh_bytes, s.batch, s.steps)) {
    const int64_t row_threads = backward_row_threads(s.batch, s.threads);
    return std::string("sequence: the fused backward step (gate gradients, then grad_h @ W_hh "
                       "on W_hh^T packed), every step in one parallel region, ") +
           (row_threads > 1 ? "the batch split over " + std::to_string(row_threads) + " threads"
                            : std::string("the units split over the threads")) +
           weights;
  }
  const std::string product = float32(s) && panels_pay_off(w_hh_bytes, s.batch, s.steps)
                                  ? std::string("on packed panels")
                                  : "by " + per_step_product(s, P, G * H, s.steps);
  return "per step: the gate gradients in one pointwise pass, then their product with W_hh " +
         product + weights;
}

}  // namespace fused_rnn::cpu
