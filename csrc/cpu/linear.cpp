// The CPU's matrix products (linear.h).
#include "linear.h"

#include "block_cache.h"

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <string>

namespace fused_rnn::cpu {
namespace {

// oneDNN's matmul over a weight packed once (mkldnn::_reorder_linear_weight and
// _linear_pointwise, the ops torch.compile's CPU backend uses), where this torch has them.
struct OneDnnLinear {
  std::optional<c10::OperatorHandle> pack, apply;
  OneDnnLinear()
      : pack(c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""})),
        apply(c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""})) {}
  bool available() const { return at::hasMKLDNN() && pack.has_value() && apply.has_value(); }
};

const OneDnnLinear& onednn() {
  static const OneDnnLinear ops;
  return ops;
}

// touch_pages over ATen's threads, for a fresh buffer that a product's tasks (at::parallel_for)
// will write column block by column block.
void touch_pages_in_parallel(const Tensor& buffer) {
  const int64_t shares = at::get_num_threads();
  if (shares == 1 || buffer.nbytes() < kMinTouchedBytes) return;
  const auto begin = reinterpret_cast<std::uintptr_t>(buffer.data_ptr());
  at::parallel_for(0, shares, 1, [&](int64_t first, int64_t last) {
    for (int64_t share = first; share < last; ++share) {
      touch_pages(begin, begin + buffer.nbytes(), share, shares);
    }
  });
}

// oneDNN's x @ w^T (+ bias), w packed or plain (any strides).
Tensor onednn_linear(const Tensor& x, const Tensor& w, const OptionalTensor& bias) {
  torch::jit::Stack stack{x.contiguous(), w, bias, std::string("none"),
                          c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  onednn().apply->callBoxed(&stack);
  return stack[0].toTensor();
}

// oneDNN sums a product's inner dimension in one sequence: over thousands of rows its error is
// 3-4x MKL's; summing the products of 256-row blocks keeps it at MKL's for about 1.1x the time
// (NOTES entry 48).
constexpr int64_t kWeightGradientBlockRows = 256;

// grad_t [C, N] (the transposed view of a gate gradient) @ x [N, K] as oneDNN's x^T @ grad,
// block by block of rows, grad read in place as oneDNN's weight.
Tensor onednn_weight_gradient(const Tensor& grad_t, const Tensor& x) {
  const int64_t rows = x.size(0);
  Tensor sum_t;  // [K, C]
  for (int64_t begin = 0; begin < rows; begin += kWeightGradientBlockRows) {
    const int64_t block = std::min(kWeightGradientBlockRows, rows - begin);
    const Tensor part = onednn_linear(x.narrow(0, begin, block).t(),
                                      grad_t.narrow(1, begin, block), std::nullopt);
    sum_t = sum_t.defined() ? sum_t.add_(part) : part;
  }
  return sum_t.t().contiguous();
}

}  // namespace

Tensor empty_buffer_cpu(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return empty_from_block_cache(sizes, options);
}

bool onednn_available() { return onednn().available(); }

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has;
}

int64_t product_fmas(const Tensor& x, int64_t columns) {
  return x.size(0) * x.size(1) * columns / pointwise_kernels().lanes;
}

// A locked add of zero is a write, so a fresh page faults once, not as a read and then a write.
// The step kernels split their outputs by column blocks, so every thread writes into every row:
// on a fresh buffer (glibc maps those over its threshold afresh) both threads fault on the same
// page at once, twice the faults of one thread (NOTES entry 33); a contiguous share of the pages
// per thread first avoids that.
void touch_pages(std::uintptr_t begin, std::uintptr_t end, int64_t share, int64_t shares) {
  constexpr std::uintptr_t kPageBytes = 4096;
  if (begin >= end) return;
  const std::uintptr_t first = begin / kPageBytes, pages = (end - 1) / kPageBytes + 1 - first;
  for (auto page = first + pages * share / shares; page < first + pages * (share + 1) / shares;
       ++page) {
    __atomic_fetch_add(reinterpret_cast<char*>(std::max(begin, page * kPageBytes)), 0,
                       __ATOMIC_RELAXED);
  }
}

Tensor prepare_linear_cpu(const Tensor& w, int64_t rows, int64_t uses) {
  if (w.scalar_type() != at::kFloat || !onednn_packing_pays_off(rows, uses) ||
      !onednn().available()) {
    return w.contiguous();
  }
  torch::jit::Stack stack{w.contiguous(), rows};
  onednn().pack->callBoxed(&stack);
  return stack[0].toTensor();
}

namespace {

// A float32 weight as it lies (not packed for oneDNN or in panels), which the dot products may
// take.
bool plain_float(const Tensor& w) {
  return w.scalar_type() == at::kFloat && w.dim() == 2 && !w.is_mkldnn() && w.is_contiguous();
}

// out [rows, N] (contiguous) = x @ w^T (+ bias) as dot products (linear_rows).
void dot_products_into(const Tensor& x, const Tensor& w, const OptionalTensor& bias,
                       const Tensor& out) {
  const auto& kernels = pointwise_kernels();
  const Tensor x_c = x.contiguous();
  const Tensor b = bias.has_value() ? bias->contiguous() : Tensor();
  over_panel_tasks(kernels.rows_tasks(w.size(0)), product_fmas(x, w.size(0)),
                   [&](int64_t begin, int64_t end) {
                     kernels.linear_rows(x_c, w, b.defined() ? b.data_ptr<float>() : nullptr,
                                         out, begin, end);
                   });
}

}  // namespace

Tensor linear_cpu(const Tensor& x, const Tensor& w, const OptionalTensor& bias) {
  if (plain_float(w) && dot_products_pay_off(x.size(0))) {
    Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
    dot_products_into(x, w, bias, out);
    return out;
  }
  const bool onednn_dense = plain_float(w) &&
                            onednn_unpacked_pays_off(x.size(0), w.size(0), w.size(1)) &&
                            onednn().available();
  if (!w.is_mkldnn() && !onednn_dense) {
    return bias.has_value() ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
  }
  return onednn_linear(x, w, bias);
}

Tensor matmul_cpu(const Tensor& a, const Tensor& b, const OptionalTensor& add) {
  const bool float32 = a.scalar_type() == at::kFloat;
  // A weight gradient: a is the transposed view of the gate gradients.
  const bool transposed_a = a.stride(0) == 1 && a.stride(1) >= a.size(0);
  if (float32 && b.scalar_type() == at::kFloat && !add.has_value() && transposed_a &&
      onednn_weight_gradient_pays_off(a.size(1), cpu_has_avx512()) && onednn().available()) {
    return onednn_weight_gradient(a, b);
  }
  if (!float32 || !tiles_pay_off(a.size(0), a.size(1))) {
    if (float32 && !add.has_value() && a.is_contiguous() &&
        onednn_input_gradient_pays_off(a.size(0))) {
      return linear_cpu(a, prepare_linear_cpu(b.t(), a.size(0), 1), std::nullopt);
    }
    Tensor out = empty_from_block_cache({a.size(0), b.size(1)}, a.options());
    return add.has_value() ? at::addmm_out(out, *add, a, b) : at::mm_out(out, a, b);
  }
  const auto& kernels = pointwise_kernels();
  const Tensor b_c = b.contiguous();
  bool reused = false;
  Tensor out = empty_from_block_cache({a.size(0), b.size(1)}, a.options(), &reused);
  if (add.has_value()) {
    out.copy_(*add);
  } else if (!reused) {
    touch_pages_in_parallel(out);
  }
  over_panel_tasks(kernels.linear_tasks(a.size(0), b.size(1)), product_fmas(a, b.size(1)),
                   [&](int64_t begin, int64_t end) {
                     kernels.matmul_rows(a, b_c, out, add.has_value(), begin, end);
                   });
  return out;
}

bool panels_pay_off(const Tensor& w, int64_t rows, int64_t uses) {
  return w.scalar_type() == at::kFloat &&
         panels_pay_off(w.numel() * static_cast<int64_t>(sizeof(float)), rows, uses);
}

Tensor prepare_step_weight_cpu(const Tensor& w, int64_t rows, int64_t uses) {
  return panels_pay_off(w, rows, uses) ? pointwise_kernels().pack_linear_weight(w)
                                       : prepare_linear_cpu(w, rows, uses);
}

void step_linear_cpu(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate) {
  if (!accumulate && plain_float(w) && dot_products_pay_off(x.size(0)) && out.is_contiguous() &&
      out.scalar_type() == at::kFloat) {
    dot_products_into(x, w, std::nullopt, out);
    return;
  }
  if (!packed_in_panels(w)) {
    const Tensor product = linear_cpu(x, w, std::nullopt);
    accumulate ? out.add_(product) : out.copy_(product);
    return;
  }
  const auto& kernels = pointwise_kernels();
  const Tensor x_c = x.contiguous();
  over_panel_tasks(kernels.linear_tasks(x.size(0), out.size(1)), product_fmas(x, out.size(1)),
                   [&](int64_t begin, int64_t end) {
                     kernels.linear_packed(x_c, w, out, accumulate, begin, end);
                   });
}

// One pass over d and x, each thread a range of columns (ATen's mul and sum would write d * x
// out first). Blocks of rows are summed apart, then added, for a sum's accuracy over thousands
// of rows.
void add_row_sums_cpu(const Tensor& d, const Tensor& x, const Tensor& sums) {
  constexpr int64_t kBlockRows = 256, kBlockColumns = 256;
  const Tensor d_r = d.stride(1) == 1 ? d : d.contiguous();
  const Tensor x_r = x.stride(1) == 1 ? x : x.contiguous();
  const int64_t rows = d.size(0), columns = d.size(1);
  const int64_t grain = std::max<int64_t>(1, kGrainUnits / std::max<int64_t>(rows, 1));
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "add_row_sums", [&] {
    const scalar_t* d_p = d_r.data_ptr<scalar_t>();
    const scalar_t* x_p = x_r.data_ptr<scalar_t>();
    scalar_t* sum_d = sums[0].data_ptr<scalar_t>();
    scalar_t* sum_dx = sums[1].data_ptr<scalar_t>();
    at::parallel_for(0, columns, grain, [&](int64_t begin, int64_t end) {
      scalar_t block_d[kBlockColumns], block_dx[kBlockColumns];
      for (int64_t first = begin; first < end; first += kBlockColumns) {
        const int64_t width = std::min(kBlockColumns, end - first);
        for (int64_t top = 0; top < rows; top += kBlockRows) {
          std::fill(block_d, block_d + width, scalar_t(0));
          std::fill(block_dx, block_dx + width, scalar_t(0));
          for (int64_t n = top; n < std::min(rows, top + kBlockRows); ++n) {
            const scalar_t* d_row = d_p + n * d_r.stride(0) + first;
            const scalar_t* x_row = x_p + n * x_r.stride(0) + first;
            for (int64_t c = 0; c < width; ++c) {
              block_d[c] += d_row[c];
              block_dx[c] += d_row[c] * x_row[c];
            }
          }
          for (int64_t c = 0; c < width; ++c) {
            sum_d[first + c] += block_d[c];
            sum_dx[first + c] += block_dx[c];
          }
        }
      }
    });
  });
}

Tensor row_indices_cpu(const std::vector<int64_t>& values, const Tensor& /*like*/) {
  Tensor indices = at::empty({static_cast<int64_t>(values.size())}, at::kLong);
  std::copy(values.begin(), values.end(), indices.data_ptr<int64_t>());
  return indices;
}

// Designated: each kernel named by its entry (one out of order does not compile).
extern const LinearKernels kCpuLinear{
    .prepare_linear = &prepare_linear_cpu,
    .linear = &linear_cpu,
    .matmul = &matmul_cpu,
    .prepare_step_weight = &prepare_step_weight_cpu,
    .step_linear = &step_linear_cpu,
    .add_row_sums = &add_row_sums_cpu,
    .projection_chunk_bytes = kProjectionChunkBytes,
    .empty_buffer = &empty_buffer_cpu,
    .row_indices = &row_indices_cpu,
};

}  // namespace fused_rnn::cpu
