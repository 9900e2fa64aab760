// The CPU kernels of pointwise.h, written once over at::vec::Vectorized and compiled per
// instruction set: each pointwise_<isa>.cpp defines CPU_CAPABILITY (and is built with that ISA's
// flags) before including this file, so everything lands in namespace
// fused_rnn::cpu::<CPU_CAPABILITY> and ATen's Vectorized is the portable, 8-wide AVX2 or 16-wide
// AVX-512 one. Include it nowhere else.
// The kernels live in headers by role: vec_math.h (exp, tanh, lane loads), gate_passes.h (the
// pointwise passes), tiled_product.h (the register-blocked products), fused_steps.h (the fused
// forward and backward steps), layernorm_passes.h (the layer-normalized cells' passes); this
// file fills the ISA's table with them.
#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY before including pointwise_kernels.h"
#endif

#include "fused_steps.h"
#include "gate_passes.h"
#include "layernorm_passes.h"
#include "tiled_product.h"

namespace fused_rnn::cpu::CPU_CAPABILITY {

#define FUSED_RNN_STRINGIFY_(x) #x
#define FUSED_RNN_STRINGIFY(x) FUSED_RNN_STRINGIFY_(x)
extern const PointwiseKernels kKernels = {
    .isa = FUSED_RNN_STRINGIFY(CPU_CAPABILITY),
    .lstm =
        {
            .forward = &lstm_forward,
            .backward = &lstm_backward,
            .forward_recurrent = &lstm_forward_recurrent,
            .packs_with_input = kLstmGates,
            .backward_gates = &lstm_backward_gates,
            .backward_product = &lstm_backward_product,
        },
    .gru =
        {
            .forward = &gru_forward,
            .backward = &gru_backward,
            .forward_recurrent = &gru_forward_recurrent,
            .packs_with_input = kGruPacksWithInput,
            .backward_gates = &gru_backward_gates,
            .backward_product = &gru_backward_product,
        },
    .layernorm_lstm =
        {
            .forward = &layernorm_lstm_forward,
            .backward = &layernorm_lstm_backward,
            .forward_recurrent = nullptr,
            .packs_with_input = 0,
            .backward_gates = nullptr,
            .backward_product = nullptr,
        },
    .layernorm_gru =
        {
            .forward = &layernorm_gru_forward,
            .backward = &layernorm_gru_backward,
            .forward_recurrent = nullptr,
            .packs_with_input = 0,
            .backward_gates = nullptr,
            .backward_product = nullptr,
        },
    .lanes = kLanes,
    .pack_recurrent_weight = &pack_recurrent_weight,
    .recurrent_tasks = &recurrent_tasks,
    .pack_linear_weight = &pack_linear_weight,
    .linear_tasks = &linear_tasks,
    .linear_packed = &linear_packed,
    .rows_tasks = &rows_tasks,
    .linear_rows = &linear_rows,
    .matmul_rows = &matmul_rows,
};

}  // namespace fused_rnn::cpu::CPU_CAPABILITY
