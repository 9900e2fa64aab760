// Autocast for the ops: under torch.autocast the forward ops run in the dtype torch.nn's would. On
// CUDA torch.nn casts its LSTM and GRU (cuDNN's RNN) and its cells to autocast's lower-precision
// dtype; on the CPU it casts the LSTM only (its GRU and cells keep float32). The layer-normalized
// cells and layers, which torch.nn lacks, are cast as its cells are. Every op, cast or not,
// then runs below autocast, so that the ATen products inside our kernels take the op's dtype
// rather than autocast's. One boxed kernel serves every op.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace fused_rnn {
namespace {

// cast: each floating tensor argument cast as autocast casts (float64, and tensors on other
// devices, stay as they are) before the call.
template <c10::DeviceType device, bool cast>
void below_autocast(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  if (cast) {
    const at::ScalarType dtype = at::autocast::get_lower_precision_fp_from_device_type(device);
    const size_t arguments = op.schema().arguments().size();
    for (auto arg = stack->end() - arguments; arg != stack->end(); ++arg) {
      if (arg->isTensor()) *arg = at::autocast::cached_cast(dtype, arg->toTensor(), device);
    }
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device));
  op.callBoxed(stack);
}

template <c10::DeviceType device, bool cast>
torch::CppFunction kernel() {
  return torch::CppFunction::makeFromBoxedFunction<&below_autocast<device, cast>>();
}

constexpr const char* kForwardOps[] = {
    "lstm_cell",           "gru_cell",           "lstm_layer",           "gru_layer",
    "layernorm_lstm_cell", "layernorm_gru_cell", "layernorm_lstm_layer", "layernorm_gru_layer"};
constexpr const char* kBackwardOps[] = {
    "lstm_cell_backward",           "gru_cell_backward",
    "lstm_layer_backward",          "gru_layer_backward",
    "layernorm_lstm_cell_backward", "layernorm_gru_cell_backward",
    "layernorm_lstm_layer_backward", "layernorm_gru_layer_backward"};
constexpr auto kCuda = c10::DeviceType::CUDA;
constexpr auto kCpu = c10::DeviceType::CPU;

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, AutocastCUDA, m) {
  for (const char* op : kForwardOps) m.impl(op, kernel<kCuda, true>());
  for (const char* op : kBackwardOps) m.impl(op, kernel<kCuda, false>());
}

TORCH_LIBRARY_IMPL(fused_rnn, AutocastCPU, m) {
  for (const char* op : kForwardOps) {
    m.impl(op, std::string(op) == "lstm_layer" ? kernel<kCpu, true>() : kernel<kCpu, false>());
  }
  for (const char* op : kBackwardOps) m.impl(op, kernel<kCpu, false>());
}

}  // namespace fused_rnn
