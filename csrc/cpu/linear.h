// The CPU's matrix products (the LinearKernels entries, and the helpers the step and sequence
// kernels share): the large ones through ATen (MKL/oneDNN), the few-row ones and the per-step
// ones in our register-blocked kernels (pointwise.h), as path_choice.h decides.
#pragma once

#include "../cell_ops.h"
#include "path_choice.h"
#include "pointwise.h"

#include <ATen/Parallel.h>

#include <cstdint>

namespace fused_rnn::cpu {

// Runs pass(begin, end) over the units of a [B, H] grid, split over ATen's threads.
template <typename Pass>
void over_units(const Tensor& grid, const Pass& pass) {
  at::parallel_for(0, grid.numel(), kGrainUnits, pass);
}

// Runs pass(begin, end) over `tasks` tasks of `fmas` vector FMAs in all, split over ATen's
// threads (product_grain).
template <typename Pass>
void over_panel_tasks(int64_t tasks, int64_t fmas, const Pass& pass) {
  at::parallel_for(0, tasks, product_grain(tasks, fmas), pass);
}

// The vector FMAs of a product of x [rows, K] with `columns` output columns.
int64_t product_fmas(const Tensor& x, int64_t columns);

// Faults in share `share` of `shares` of the pages that the bytes [begin, end) of a buffer lie
// in, writing only inside that range and changing no byte (kMinTouchedBytes says why).
void touch_pages(std::uintptr_t begin, std::uintptr_t end, int64_t share, int64_t shares);

// Whether this torch has oneDNN's packed linear ops.
bool onednn_available();
// Whether this CPU runs AVX-512 (oneDNN's products use it where it does, whatever ATen's
// capability setting).
bool cpu_has_avx512();

// Weights packed for the fused step's panels are 3-D tensors.
inline bool packed_in_panels(const Tensor& w) { return w.dim() == 3; }
// path_choice.h's panels_pay_off for a weight tensor (float32 only).
bool panels_pay_off(const Tensor& w, int64_t rows, int64_t uses);

// The CPU's LinearKernels table (cell_ops.h), and its entries.
extern const LinearKernels kCpuLinear;
Tensor prepare_linear_cpu(const Tensor& w, int64_t rows, int64_t uses);
Tensor linear_cpu(const Tensor& x, const Tensor& w, const OptionalTensor& bias);
Tensor matmul_cpu(const Tensor& a, const Tensor& b, const OptionalTensor& add);
Tensor prepare_step_weight_cpu(const Tensor& w, int64_t rows, int64_t uses);
void step_linear_cpu(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate);
void add_row_sums_cpu(const Tensor& d, const Tensor& x, const Tensor& sums);
Tensor empty_buffer_cpu(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace fused_rnn::cpu
