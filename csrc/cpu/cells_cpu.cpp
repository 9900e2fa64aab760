// CPU implementations: the large matrix products through ATen (MKL/oneDNN), the few-row ones and
// the recurrent ones in our register-blocked kernels, the gate math in one fused, vectorised,
// parallel pass over the [B, H] units (pointwise.h), in the variant built for this CPU's
// instruction set. The ops are the device-agnostic ones of cell_ops.h over the CPU's tables
// below.
#include "../cell_ops.h"
#include "block_cache.h"
#include "isa_choice.h"
#include "pointwise.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace fused_rnn {
namespace cpu {

const PointwiseKernels& pointwise_kernels() {
  // ATen's choice ("AVX512", "AVX2", "DEFAULT", ...), bounded by what this CPU can run
  // (isa_choice.h); read once, as ATen does.
  static const PointwiseKernels& chosen = []() -> const PointwiseKernels& {
#ifdef FUSED_RNN_CPU_X86_VARIANTS
    const std::string requested = at::get_cpu_capability();
    const std::vector<std::string> features = this_cpu_features();
    const std::string variant = variant_for(requested, features);
    const std::vector<std::string> missing = missing_features(requested, features);
    if (!missing.empty()) {
      TORCH_WARN("fused_rnn: ATen's CPU capability is ", requested,
                 " (as ATEN_CPU_CAPABILITY may set it), but this CPU lacks ",
                 c10::Join(", ", missing), "; fused_rnn runs its ", variant, " kernels instead");
    }
    if (variant == "AVX512") return AVX512::kKernels;
    if (variant == "AVX2") return AVX2::kKernels;
#endif
    return DEFAULT::kKernels;
  }();
  return chosen;
}

const char* pointwise_isas_built() {
#ifdef FUSED_RNN_CPU_X86_VARIANTS
  return "DEFAULT;AVX2;AVX512";
#else
  return "DEFAULT";
#endif
}

}  // namespace cpu

namespace {

// Units per parallel task: enough work to amortise a task, small enough to spread B*H over cores.
constexpr int64_t kGrainUnits = 4096;

// Runs pass(begin, end) over the units of a [B, H] grid, split over ATen's threads.
template <typename Pass>
void over_units(const Tensor& grid, const Pass& pass) {
  at::parallel_for(0, grid.numel(), kGrainUnits, pass);
}

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

// Packing (oneDNN's reorder) costs about as much as a few hundred rows of product, whatever the
// weight's size; it pays off over a weight reused by many steps, or one large product.
constexpr int64_t kPackMinUses = 8;
constexpr int64_t kPackMinRows = 1024;

Tensor prepare_linear_cpu(const Tensor& w, int64_t rows, int64_t uses) {
  const bool pays_off = uses >= kPackMinUses || rows >= kPackMinRows;
  if (w.scalar_type() != at::kFloat || !pays_off || !onednn().available()) return w.contiguous();
  torch::jit::Stack stack{w.contiguous(), rows};
  onednn().pack->callBoxed(&stack);
  return stack[0].toTensor();
}

// oneDNN's matmul runs 15-25% faster than ATen's mm (MKL) here even on an unpacked float32
// weight (benchmarks/NOTES.md), so float32 products go through it where this torch has it;
// except small ones on an unpacked weight, where its cost per call (the primitive for the shape,
// the weight's reorder) outweighs that: below about 4M multiply-adds ATen's mm takes 0.6-0.95x
// its time (NOTES entry 16; products of at most kDotMaxRows rows take our own kernel, below).
constexpr int64_t kOneDnnMinMacs = int64_t{1} << 22;

// Runs pass(begin, end) over `tasks` tasks of `fmas` vector FMAs in all, split over ATen's
// threads in shares of at least kMinFmasPerThread (about a microsecond: a thread's start costs
// about as much).
constexpr int64_t kMinFmasPerThread = 4096;
template <typename Pass>
void over_panel_tasks(int64_t tasks, int64_t fmas, const Pass& pass) {
  const int64_t per_task = std::max<int64_t>(1, fmas / std::max<int64_t>(1, tasks));
  at::parallel_for(0, tasks, std::max<int64_t>(1, kMinFmasPerThread / per_task), pass);
}

// The vector FMAs of a product of x [rows, K] with `columns` output columns.
int64_t product_fmas(const Tensor& x, int64_t columns) {
  return x.size(0) * x.size(1) * columns / cpu::pointwise_kernels().lanes;
}

// Faults in share `share` of `shares` of the pages that the bytes [begin, end) of a buffer lie
// in, writing only inside that range and changing no byte (a locked add of zero is a write, so a
// fresh page faults once, not as a read and then a write). The step kernels split their outputs
// by column blocks, so every thread writes into every row: on a fresh buffer (glibc maps those
// over its threshold afresh) both threads fault on the same page at once, twice the faults of
// one thread (benchmarks/NOTES.md entry 33). A contiguous share of the pages per thread first
// avoids that.
constexpr std::uintptr_t kPageBytes = 4096;
void touch_pages(std::uintptr_t begin, std::uintptr_t end, int64_t share, int64_t shares) {
  if (begin >= end) return;
  const std::uintptr_t first = begin / kPageBytes, pages = (end - 1) / kPageBytes + 1 - first;
  for (auto page = first + pages * share / shares; page < first + pages * (share + 1) / shares;
       ++page) {
    __atomic_fetch_add(reinterpret_cast<char*>(std::max(begin, page * kPageBytes)), 0,
                       __ATOMIC_RELAXED);
  }
}

// From about 64 pages; fewer, and their faults cost less than the threads' meeting.
constexpr int64_t kMinTouchedBytes = 64 * kPageBytes;

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

// MKL's sgemm on this (AMD) CPU takes its generic path and packs its operands on every call,
// which dominates the few-row products of a cell step; our kernels read the weight as it lies:
// the forward's x @ w^T as dot products along k (linear_rows) for up to 32 rows (0.4-0.7x the
// cell forward's time at B = 1..16, 0.92x at B = 32, a tie from 48), the backward's products
// (grad @ w, grad^T @ x) in register tiles (matmul_rows) wherever one side is at most 128
// (0.5-0.85x the cell backward's time at B = 1..128; NOTES entry 20).
constexpr int64_t kDotMaxRows = 32;
constexpr int64_t kTileMaxSide = 128;

Tensor linear_cpu(const Tensor& x, const Tensor& w, const OptionalTensor& bias) {
  const bool plain_float = w.scalar_type() == at::kFloat && !w.is_mkldnn() && w.is_contiguous();
  if (plain_float && x.size(0) <= kDotMaxRows) {
    const auto& kernels = cpu::pointwise_kernels();
    const Tensor x_c = x.contiguous();
    const Tensor b = bias.has_value() ? bias->contiguous() : Tensor();
    Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
    over_panel_tasks(kernels.rows_tasks(w.size(0)), product_fmas(x, w.size(0)),
                     [&](int64_t begin, int64_t end) {
                       kernels.linear_rows(x_c, w, b.defined() ? b.data_ptr<float>() : nullptr,
                                           out, begin, end);
                     });
    return out;
  }
  const bool onednn_dense =
      plain_float && x.size(0) * w.size(0) * w.size(1) > kOneDnnMinMacs && onednn().available();
  if (!w.is_mkldnn() && !onednn_dense) {
    return bias.has_value() ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
  }
  torch::jit::Stack stack{x.contiguous(), w, bias, std::string("none"),
                          c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  onednn().apply->callBoxed(&stack);
  return stack[0].toTensor();
}

Tensor matmul_cpu(const Tensor& a, const Tensor& b, const OptionalTensor& add) {
  const bool plain_float = a.scalar_type() == at::kFloat;
  if (!plain_float || std::min(a.size(0), a.size(1)) > kTileMaxSide) {
    // A layer's input gradient (its gate gradients over all steps @ W_ih) as oneDNN's product
    // with W_ih^T packed: 1-10% off a layer's forward+backward at 3200-12800 rows (NOTES entry
    // 35); with fewer rows its cost per call makes it a tie or a loss.
    if (plain_float && !add.has_value() && a.is_contiguous() && a.size(0) >= kPackMinRows) {
      return linear_cpu(a, prepare_linear_cpu(b.t(), a.size(0), 1), std::nullopt);
    }
    Tensor out = cpu::empty_from_block_cache({a.size(0), b.size(1)}, a.options());
    return add.has_value() ? at::addmm_out(out, *add, a, b) : at::mm_out(out, a, b);
  }
  const auto& kernels = cpu::pointwise_kernels();
  const Tensor b_c = b.contiguous();
  bool reused = false;
  Tensor out = cpu::empty_from_block_cache({a.size(0), b.size(1)}, a.options(), &reused);
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

// The fused recurrent step (pointwise.h) beats oneDNN's product plus a pointwise pass at small
// batches (B = 1..16: 0.65-0.85x its time, forward) and ties it from B = 32 on (interleaved A/B
// runs, benchmarks/NOTES.md), while the packed W_hh stays within the last-level cache (32 MB
// here: H up to 1448 for the LSTM; LSTM B=1 H=1024 forward 0.88x -> 0.79x of torch.nn's time,
// H=1280 1.05x -> 0.67x; a larger one, streamed from memory every step and packed every call,
// ties or loses: NOTES entry 30). Up to 128 rows where W_hh fits in one core's L2 (H <= 256
// here), where it still wins (B = 128 H = 128 forward: LSTM 1.35x -> 1.20x of torch.nn's time,
// GRU 0.83x -> 0.65x; with W_hh of 3-4 MB a tie or a loss; NOTES entry 21). The layers' other
// per-step products (the backward's, the projection's) follow the same rule. Weights packed for
// it are 3-D tensors.
constexpr int64_t kPanelMaxRows = 32;
constexpr int64_t kPanelMaxRowsCached = 128;
constexpr int64_t kPanelCachedWeightBytes = 1 << 20;
constexpr int64_t kPanelMaxWeightBytes = 32 << 20;
bool packed_in_panels(const Tensor& w) { return w.dim() == 3; }
bool panels_pay_off(const Tensor& w, int64_t rows, int64_t uses) {
  const int64_t bytes = w.numel() * static_cast<int64_t>(sizeof(float));
  const int64_t max_rows = bytes <= kPanelCachedWeightBytes ? kPanelMaxRowsCached : kPanelMaxRows;
  return w.scalar_type() == at::kFloat && uses >= kPackMinUses && rows <= max_rows &&
         bytes <= kPanelMaxWeightBytes;
}

template <typename Cell>
Tensor prepare_recurrent_cpu(const Tensor& w_hh, int64_t rows, int64_t uses) {
  return panels_pay_off(w_hh, rows, uses)
             ? cpu::pointwise_kernels().pack_recurrent_weight(w_hh, Cell::kGates)
             : prepare_linear_cpu(w_hh, rows, uses);
}

Tensor prepare_step_weight_cpu(const Tensor& w, int64_t rows, int64_t uses) {
  return panels_pay_off(w, rows, uses) ? cpu::pointwise_kernels().pack_linear_weight(w)
                                       : prepare_linear_cpu(w, rows, uses);
}

void step_linear_cpu(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate) {
  if (!packed_in_panels(w)) {
    const Tensor product = linear_cpu(x, w, std::nullopt);
    accumulate ? out.add_(product) : out.copy_(product);
    return;
  }
  const auto& kernels = cpu::pointwise_kernels();
  const Tensor x_c = x.contiguous();
  over_panel_tasks(kernels.linear_tasks(x.size(0), out.size(1)), product_fmas(x, out.size(1)),
                   [&](int64_t begin, int64_t end) {
                     kernels.linear_packed(x_c, w, out, accumulate, begin, end);
                   });
}

// A step's rows as the fused recurrent step takes them (gates: null where the step computes its
// input side and keeps no gates).
cpu::RecurrentStep recurrent_step(const Tensor& h_prev, const Tensor& w_packed, float* gates,
                                  const Tensor& h_out) {
  cpu::RecurrentStep s{};
  s.rows = h_prev.size(0);
  s.hidden = h_out.size(1);
  s.state = h_prev.size(1);
  s.h_prev = h_prev.data_ptr<float>();
  s.w_packed = w_packed.data_ptr<float>();
  s.gates = gates;
  s.h_out = h_out.data_ptr<float>();
  return s;
}

// The LSTM's activations are written over its input side (t.saved is t.input_side).
void lstm_step_cpu(const StepTensors& t) {
  const Tensor &gates = t.input_side, &h_prev = t.h_prev, &c_prev = t.c_prev, &w_hh = t.w_hh;
  const Tensor &h_out = t.h_out, &c_out = t.c_out;
  const auto& kernels = cpu::pointwise_kernels();
  if (packed_in_panels(w_hh)) {
    cpu::RecurrentStep s = recurrent_step(h_prev, w_hh, gates.data_ptr<float>(), h_out);
    s.c_prev = c_prev.data_ptr<float>();
    s.c_out = c_out.data_ptr<float>();
    over_panel_tasks(kernels.recurrent_tasks(s.rows, s.hidden, kLstmGates),
                     product_fmas(h_prev, kLstmGates * s.hidden), [&](int64_t begin, int64_t end) {
                       kernels.lstm_forward_recurrent(s, begin, end);
                     });
    return;
  }
  const Tensor gates_h = linear_cpu(h_prev, w_hh, std::nullopt);
  over_units(c_out, [&](int64_t begin, int64_t end) {
    kernels.lstm_forward(gates, gates_h, c_prev, h_out, c_out, begin, end);
  });
}

void gru_step_cpu(const StepTensors& t) {
  const Tensor &gx = t.input_side, &h_prev = t.h_prev, &w_hh = t.w_hh, &h_out = t.h_out;
  const Tensor& workspace = t.saved;
  const OptionalTensor& b_hh = t.b_hh;
  const auto& kernels = cpu::pointwise_kernels();
  if (packed_in_panels(w_hh)) {
    cpu::RecurrentStep s = recurrent_step(h_prev, w_hh, gx.data_ptr<float>(), h_out);
    s.b_hh = b_hh.has_value() ? b_hh->data_ptr<float>() : nullptr;
    s.workspace = workspace.data_ptr<float>();
    over_panel_tasks(kernels.recurrent_tasks(s.rows, s.hidden, kGruGates),
                     product_fmas(h_prev, kGruGates * s.hidden), [&](int64_t begin, int64_t end) {
                       kernels.gru_forward_recurrent(s, begin, end);
                     });
    return;
  }
  const Tensor gh = linear_cpu(h_prev, w_hh, b_hh);
  over_units(h_out, [&](int64_t begin, int64_t end) {
    kernels.gru_forward(gx, gh, h_prev, h_out, workspace, begin, end);
  });
}

// A thread of the whole-sequence region below costs a barrier per step, not a start per step as
// in over_panel_tasks, so it pays from a quarter of the work (A/B, NOTES entry 34: LSTM T=100
// B=1 H=128 forward 1.08x -> 0.85x of torch.nn's time, fwd+bwd 0.90x -> 0.72x; unchanged where
// one thread remains).
constexpr int64_t kMinFmasPerSequenceThread = kMinFmasPerThread / 4;

// A whole padded sequence in one OpenMP parallel region: each thread keeps the same tasks (unit
// blocks, so their W_hh panels stay in its cache) at every step, and the threads meet at one
// barrier per step; no per-step views, dispatcher calls or thread starts, which cost more than
// the product at small sizes (benchmarks/NOTES.md). Per step, before(t, previous t or -1, begin,
// end), the barrier, then after(t, begin, end) (the backward's product). Before each barrier the
// threads fault in the pages of the next step's rows of the buffers the steps write (`written`,
// each the steps' rows in order, step t's the t-th of `steps` equal slices), a share each: a
// step ahead, so that they are still in cache when written (all pages up front cost the LSTM
// 3-5%: NOTES entry 33).
template <typename Before, typename After>
void over_sequence(int64_t steps, bool reverse, int64_t tasks, int64_t fmas_per_step,
                   std::initializer_list<const Tensor*> written, const Before& before,
                   const After& after) {
  const int64_t threads = std::clamp<int64_t>(fmas_per_step / kMinFmasPerSequenceThread, 1,
                                              std::min<int64_t>(at::get_num_threads(), tasks));
  int64_t written_bytes = 0;
  for (const Tensor* buffer : written) written_bytes += buffer->nbytes();
  const bool touch = written_bytes >= kMinTouchedBytes;
#pragma omp parallel num_threads(threads)
  {
    const int64_t id = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t begin = tasks * id / count, end = tasks * (id + 1) / count;
    const bool touching = touch && count > 1;  // the same in every thread
    const auto touch_step = [&](int64_t i) {
      if (!touching || i >= steps) return;
      const int64_t t = reverse ? steps - 1 - i : i;
      for (const Tensor* buffer : written) {
        const auto base = reinterpret_cast<std::uintptr_t>(buffer->data_ptr());
        const std::uintptr_t step_bytes = buffer->nbytes() / steps;
        touch_pages(base + t * step_bytes, base + (t + 1) * step_bytes, id, count);
      }
    };
    if (touching) {
      touch_step(0);
#pragma omp barrier
    }
    for (int64_t i = 0; i < steps; ++i) {
      const int64_t t = reverse ? steps - 1 - i : i;
      before(t, i == 0 ? -1 : (reverse ? t + 1 : t - 1), begin, end);
      touch_step(i + 1);
#pragma omp barrier
      after(t, begin, end);
    }
  }
}

// Step t of a padded sequence whose first step is `first` (B rows; gates rows, where set, G
// wide): every row pointer moved to step t, and the previous state read from step `prev` (-1:
// the initial state).
cpu::RecurrentStep at_step(const cpu::RecurrentStep& first, int64_t gates, int64_t t,
                           int64_t prev) {
  const int64_t units = first.rows * first.hidden;  // one step's [B, H]
  cpu::RecurrentStep s = first;
  if (s.gates) s.gates += t * gates * units;
  if (s.x) s.x += t * first.rows * first.input;
  s.h_out += t * units;
  if (s.c_out) s.c_out += t * units;
  if (s.workspace && first.workspace_per_step) s.workspace += t * kGruSaved * units;
  if (prev >= 0) {
    s.h_prev = first.h_out + prev * units;
    if (s.c_prev) s.c_prev = first.c_out + prev * units;
  }
  return s;
}

// A padded sequence's forward on the fused recurrent step from its first step `first`, whose
// tasks hold `packs` accumulator packs a row (recurrent_tasks; where the steps have gates rows,
// G, their width): `kernel` (a PointwiseKernels member) runs one step's tasks, which write the
// buffers `written`, each the steps' rows in order.
using RecurrentKernel = void (*)(const cpu::RecurrentStep&, int64_t, int64_t);
void run_recurrent_sequence(const cpu::RecurrentStep& first, int64_t packs, int64_t steps,
                            bool reverse, RecurrentKernel cpu::PointwiseKernels::*kernel,
                            int64_t fmas_per_step, std::initializer_list<const Tensor*> written) {
  const auto& kernels = cpu::pointwise_kernels();
  over_sequence(
      steps, reverse, kernels.recurrent_tasks(first.rows, first.hidden, packs), fmas_per_step,
      written, [&](int64_t t, int64_t prev, int64_t begin, int64_t end) {
        (kernels.*kernel)(at_step(first, packs, t, prev), begin, end);
      },
      [](int64_t, int64_t, int64_t) {});
}

// A padded sequence's forward on the fused recurrent step, where that pays off (else false):
// gates [T*B, G*H] the input side, output [T*B, H]; `cell` fills in the cell's own pointers of
// the first step and returns the cell's own rows that the steps write (one step's after
// another), and `kernel` runs one step's tasks.
template <typename Cell>
bool recurrent_sequence(int64_t gates, const Tensor& x, const Tensor& h0, const Tensor& w_hh,
                        const Tensor& output, bool reverse,
                        RecurrentKernel cpu::PointwiseKernels::*kernel, const Cell& cell) {
  const int64_t B = h0.size(0), steps = B == 0 ? 0 : x.size(0) / B;
  if (x.scalar_type() != at::kFloat || !panels_pay_off(w_hh, B, steps)) return false;
  const Tensor packed = cpu::pointwise_kernels().pack_recurrent_weight(w_hh, gates);
  cpu::RecurrentStep first = recurrent_step(h0, packed, x.data_ptr<float>(), output);
  const Tensor cell_written = cell(first);
  run_recurrent_sequence(first, gates, steps, reverse, kernel,
                         product_fmas(h0, gates * h0.size(1)), {&output, &cell_written});
  return true;
}

// The LSTM's own pointers of a sequence's first step; returns the cell states the steps write.
Tensor with_lstm_cell(cpu::RecurrentStep& first, const Tensor& c0, const Tensor& cell_states) {
  first.c_prev = c0.data_ptr<float>();
  first.c_out = cell_states.data_ptr<float>();
  return cell_states;
}

// The GRU's own pointers of a sequence's first step, whose workspace has a row per row of the
// `rows` rows of all steps (training) or B rows that every step reuses (inference); returns the
// workspace rows the steps write one step after another (none where they reuse B rows).
Tensor with_gru_cell(cpu::RecurrentStep& first, const OptionalTensor& b_hh,
                     const Tensor& workspace, int64_t rows) {
  first.b_hh = b_hh.has_value() ? b_hh->data_ptr<float>() : nullptr;
  first.workspace = workspace.data_ptr<float>();
  first.workspace_per_step = workspace.size(0) == rows;
  return first.workspace_per_step ? workspace : workspace.narrow(0, 0, 0);
}

bool lstm_sequence_cpu(const SequenceTensors& t) {
  return recurrent_sequence(
      kLstmGates, t.input_side, t.h0, t.w_hh, t.output, t.reverse,
      &cpu::PointwiseKernels::lstm_forward_recurrent,
      [&](cpu::RecurrentStep& first) { return with_lstm_cell(first, t.c0, t.cell_states); });
}

// From 8 to 128 batch rows and up to 8 MB of W_ih and W_hh together, a sequence runs on the
// fused step with each step computing its input side too (x_t @ W_ih^T beside h @ W_hh^T,
// K = I + H): the [N, G*H] projection is neither written by a product of its own nor read back
// by the steps, and the step's product is twice as long for the same per-task costs. A/B, ratio
// to torch.nn's time, LSTM forward: B=128 H=128 1.15x -> 0.93x, B=32 H=128 1.00x -> 0.86x,
// B=128 H=256 1.07x -> 0.88x, B=64 H=512 (where W_hh alone takes oneDNN's per-step product)
// 1.00x -> 0.95x; GRU forward: B=64 H=512 0.69x -> 0.62x, B=128 H=128 0.70x -> 0.62x, B=8
// H=128 0.43x -> 0.37x; forward+backward ties. With fewer rows, or more weight (B=32 H=1024),
// the serial steps' longer products lose to one product over all steps (LSTM B=4 H=512 0.93x ->
// 1.11x; NOTES entries 41 and 43).
constexpr int64_t kInputInStepMinRows = 8;
constexpr int64_t kInputInStepMaxWeightBytes = 8 << 20;

bool input_in_step_pays_off(const Tensor& input, const Tensor& w_ih, const Tensor& w_hh,
                            int64_t batch) {
  const int64_t steps = batch == 0 ? 0 : input.size(0) / batch;
  const int64_t weight_bytes = (w_ih.numel() + w_hh.numel()) * int64_t{sizeof(float)};
  return input.scalar_type() == at::kFloat && batch >= kInputInStepMinRows &&
         batch <= kPanelMaxRowsCached && steps >= kPackMinUses &&
         weight_bytes <= kInputInStepMaxWeightBytes;
}

// The first step's input side for a step that computes it (RecurrentStep::x): W_ih packed, the
// input [N, I] contiguous and the input side's bias ([G*H], zeros where none), kept alive here.
struct InputSide {
  Tensor w_ih_packed, x, bias;
  int64_t columns;  // G*H
  InputSide(const Tensor& input, const Tensor& w_ih, const OptionalTensor& bias_in, int64_t gates)
      : w_ih_packed(cpu::pointwise_kernels().pack_recurrent_weight(w_ih, gates)),
        x(input.contiguous()),
        bias(bias_in.has_value() ? bias_in->contiguous()
                                 : at::zeros({w_ih.size(0)}, input.options())),
        columns(w_ih.size(0)) {}
  void into(cpu::RecurrentStep& first) const {
    first.x = x.data_ptr<float>();
    first.input = x.size(1);
    first.w_ih_packed = w_ih_packed.data_ptr<float>();
    first.bias = bias.data_ptr<float>();
  }
  int64_t fmas_per_step(int64_t batch) const {
    return product_fmas(x.narrow(0, 0, batch), columns);
  }
};

// Keeps the activated gates only with keep_saved.
bool lstm_sequence_from_input_cpu(const InputSequenceTensors& t, InputSequenceSaved& out) {
  const Tensor &input = t.input, &h0 = t.h0, &output = t.output;
  const int64_t B = h0.size(0), H = h0.size(1), N = input.size(0);
  if (!input_in_step_pays_off(input, t.w_ih, t.w_hh, B)) return false;
  const InputSide input_side(input, t.w_ih, input_side_bias<LstmCell>(t.b_ih, t.b_hh),
                             kLstmGates);
  const Tensor w_hh_packed = cpu::pointwise_kernels().pack_recurrent_weight(t.w_hh, kLstmGates);
  out.saved = at::empty({t.keep_saved ? N : 0, kLstmGates * H}, input.options());
  out.cell_states = at::empty({N, H}, input.options());
  cpu::RecurrentStep first = recurrent_step(
      h0, w_hh_packed, t.keep_saved ? out.saved.data_ptr<float>() : nullptr, output);
  with_lstm_cell(first, t.c0, out.cell_states);
  input_side.into(first);
  run_recurrent_sequence(first, kLstmGates, N / B, t.reverse,
                         &cpu::PointwiseKernels::lstm_forward_recurrent,
                         product_fmas(h0, kLstmGates * H) + input_side.fmas_per_step(B),
                         {&output, &out.cell_states, &out.saved});
  return true;
}

// Without keep_saved, every step writes the same B rows of the workspace.
bool gru_sequence_from_input_cpu(const InputSequenceTensors& t, InputSequenceSaved& out) {
  const Tensor &input = t.input, &h0 = t.h0, &output = t.output;
  const int64_t B = h0.size(0), H = h0.size(1), N = input.size(0);
  if (!input_in_step_pays_off(input, t.w_ih, t.w_hh, B)) return false;
  const InputSide input_side(input, t.w_ih, input_side_bias<GruCell>(t.b_ih, t.b_hh), kGruGates);
  const Tensor w_hh_packed = cpu::pointwise_kernels().pack_recurrent_weight(t.w_hh, kGruGates);
  out.saved = at::empty({t.keep_saved ? N : B, kGruSaved * H}, input.options());
  cpu::RecurrentStep first = recurrent_step(h0, w_hh_packed, nullptr, output);
  const Tensor workspace_written = with_gru_cell(first, t.b_hh, out.saved, N);
  input_side.into(first);
  run_recurrent_sequence(first, cpu::kGruPacksWithInput, N / B, t.reverse,
                         &cpu::PointwiseKernels::gru_forward_recurrent,
                         product_fmas(h0, kGruGates * H) + input_side.fmas_per_step(B),
                         {&output, &workspace_written});
  return true;
}

bool gru_sequence_cpu(const SequenceTensors& t) {
  return recurrent_sequence(
      kGruGates, t.input_side, t.h0, t.w_hh, t.output, t.reverse,
      &cpu::PointwiseKernels::gru_forward_recurrent, [&](cpu::RecurrentStep& first) {
        return with_gru_cell(first, t.b_hh, t.saved, t.input_side.size(0));
      });
}

// A backward step's per-step buffers moved on by `units` units (rows of H; G gates).
cpu::BackwardStep moved_on(cpu::BackwardStep s, int64_t gates, int64_t units) {
  s.grad_out += units;
  s.saved += kLstmGates * units;  // the LSTM's gates and the GRU's workspace: 4 per unit
  s.state_before += units;
  if (s.c_new) s.c_new += units;
  s.grad_gates += gates * units;
  if (s.grad_hidden_gates) s.grad_hidden_gates += gates * units;
  return s;
}

// Step t of a padded sequence's backward whose first step is `first`: the rows of step t; the
// state's gradients (grad_h, grad_c) are carried, not per step.
cpu::BackwardStep backward_at_step(const cpu::BackwardStep& first, int64_t gates, int64_t t) {
  return moved_on(first, gates, t * first.rows * first.hidden);
}

// Rows [row0, row0 + rows) of a backward step, the carried gradients included: every batch
// row's numbers are its own.
cpu::BackwardStep backward_rows(const cpu::BackwardStep& step, int64_t gates, int64_t row0,
                                int64_t rows) {
  const int64_t units = row0 * step.hidden;
  cpu::BackwardStep s = moved_on(step, gates, units);
  s.rows = rows;
  s.grad_h += units;
  if (s.grad_c) s.grad_c += units;
  return s;
}

// From 16 batch rows a thread, the backward splits the batch over the threads, not the units
// (A/B, NOTES entry 38: LSTM T=100 B=128 H=128 fwd+bwd 0.85x -> 0.79x of torch.nn's time; ties
// at 4-8 rows a thread).
constexpr int64_t kMinBackwardRowsPerThread = 16;

// A padded sequence's steps (from the last when reverse) with the batch split over `threads`
// threads in blocks of rows: each row depends only on its own earlier steps, so each thread runs
// every step of its rows, step(t, row0, rows), with no barrier. Its gate gradients feed its own
// product while in its cache, where a split by units has each step's product read the half of
// them the other thread wrote.
template <typename Step>
void over_row_blocks(int64_t steps, bool reverse, int64_t rows, int64_t threads,
                     const Step& step) {
#pragma omp parallel num_threads(threads)
  {
    const int64_t id = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t row0 = rows * id / count, row_end = rows * (id + 1) / count;
    for (int64_t i = 0; i < steps; ++i) step(reverse ? steps - 1 - i : i, row0, row_end - row0);
  }
}

// A padded sequence's backward on the fused steps (BackwardStep), where the forward's pay off
// (else false): the steps run from the forward's last to its first, each a pass of gate
// gradients and the product that carries grad_h to the step before; over blocks of batch rows
// (over_row_blocks) where they are large enough, else over the units, with a barrier between
// the two. grad_h [B, H] (and the LSTM's grad_c) come in holding the final state's gradients and
// leave holding the initial state's; `cell` fills in the cell's own pointers of the first step,
// and the steps write the gate gradients `written`.
using BackwardKernel = void (*)(const cpu::BackwardStep&, int64_t, int64_t);
template <typename Cell>
bool backward_sequence(int64_t gates, const Tensor& grad_output, const Tensor& w_hh,
                       const Tensor& grad_h, bool reverse,
                       BackwardKernel cpu::PointwiseKernels::*gate_grads,
                       BackwardKernel cpu::PointwiseKernels::*product, const Cell& cell,
                       std::initializer_list<const Tensor*> written) {
  const int64_t B = grad_h.size(0), H = grad_h.size(1);
  const int64_t steps = B == 0 ? 0 : grad_output.size(0) / B;
  if (grad_output.scalar_type() != at::kFloat || !panels_pay_off(w_hh, B, steps)) return false;
  const auto& kernels = cpu::pointwise_kernels();
  // grad_h of the step before = the step's hidden gate gradients @ W_hh: linear with W_hh^T.
  const Tensor packed = kernels.pack_linear_weight(w_hh.t());
  cpu::BackwardStep first{};
  first.rows = B;
  first.hidden = H;
  first.grad_out = grad_output.data_ptr<float>();
  first.grad_h = grad_h.data_ptr<float>();
  first.w_packed = packed.data_ptr<float>();
  cell(first);
  const int64_t row_threads =
      std::min<int64_t>(at::get_num_threads(), B / kMinBackwardRowsPerThread);
  if (row_threads > 1) {
    over_row_blocks(steps, !reverse, B, row_threads, [&](int64_t t, int64_t row0, int64_t rows) {
      const cpu::BackwardStep s = backward_rows(backward_at_step(first, gates, t), gates, row0,
                                                rows);
      const int64_t tasks = kernels.linear_tasks(rows, H);
      (kernels.*gate_grads)(s, 0, tasks);
      (kernels.*product)(s, 0, tasks);
    });
    return true;
  }
  over_sequence(
      steps, !reverse, kernels.linear_tasks(B, H), product_fmas(grad_h, gates * H), written,
      [&](int64_t t, int64_t, int64_t begin, int64_t end) {
        (kernels.*gate_grads)(backward_at_step(first, gates, t), begin, end);
      },
      [&](int64_t t, int64_t begin, int64_t end) {
        (kernels.*product)(backward_at_step(first, gates, t), begin, end);
      });
  return true;
}

bool lstm_backward_sequence_cpu(const BackwardSequenceTensors& t) {
  return backward_sequence(kLstmGates, t.grad_output, t.w_hh, t.grad_h, t.reverse,
                           &cpu::PointwiseKernels::lstm_backward_gates,
                           &cpu::PointwiseKernels::lstm_backward_product,
                           [&](cpu::BackwardStep& first) {
                             first.saved = t.saved.data_ptr<float>();
                             first.state_before = t.c_before.data_ptr<float>();
                             first.c_new = t.cell_states.data_ptr<float>();
                             first.grad_c = t.grad_c.data_ptr<float>();
                             first.grad_gates = t.grad_input_gates.data_ptr<float>();
                           },
                           {&t.grad_input_gates});
}

bool gru_backward_sequence_cpu(const BackwardSequenceTensors& t) {
  return backward_sequence(kGruGates, t.grad_output, t.w_hh, t.grad_h, t.reverse,
                           &cpu::PointwiseKernels::gru_backward_gates,
                           &cpu::PointwiseKernels::gru_backward_product,
                           [&](cpu::BackwardStep& first) {
                             first.saved = t.saved.data_ptr<float>();
                             first.state_before = t.h_before.data_ptr<float>();
                             first.grad_gates = t.grad_input_gates.data_ptr<float>();
                             first.grad_hidden_gates = t.grad_hidden_gates.data_ptr<float>();
                           },
                           {&t.grad_input_gates, &t.grad_hidden_gates});
}

void lstm_gate_grads_cpu(const GateGradTensors& t) {
  over_units(t.c_out, [&](int64_t begin, int64_t end) {
    cpu::pointwise_kernels().lstm_backward(t.grad_h, t.grad_c, t.saved, t.c_prev, t.c_out,
                                           t.grad_input_gates, t.grad_c_prev, begin, end);
  });
}

void gru_gate_grads_cpu(const GateGradTensors& t) {
  over_units(t.h_prev, [&](int64_t begin, int64_t end) {
    cpu::pointwise_kernels().gru_backward(t.grad_h, t.h_prev, t.saved, t.grad_input_gates,
                                          t.grad_hidden_gates, t.grad_h_direct, begin, end);
  });
}

// The input projection's chunk (LinearKernels::projection_chunk_bytes): one buffer for the
// whole sequence would be a fresh memory mapping on every call at large batches, first touched
// page by page (a tenth of the forward at B=128; benchmarks/NOTES.md entry 17), while a chunk's
// is reused from the heap.
constexpr int64_t kProjectionChunkBytes = 16 << 20;

// Designated: each kernel named by its entry (one out of order does not compile).
constexpr LinearKernels kCpuLinear{
    .prepare_linear = &prepare_linear_cpu,
    .linear = &linear_cpu,
    .matmul = &matmul_cpu,
    .prepare_step_weight = &prepare_step_weight_cpu,
    .step_linear = &step_linear_cpu,
    .projection_chunk_bytes = kProjectionChunkBytes,
};

constexpr CellKernels<LstmCell> kCpuLstm{
    .prepare_recurrent = &prepare_recurrent_cpu<LstmCell>,
    .step = &lstm_step_cpu,
    .gate_grads = &lstm_gate_grads_cpu,
    .sequence = &lstm_sequence_cpu,
    .sequence_from_input = &lstm_sequence_from_input_cpu,
    .backward_sequence = &lstm_backward_sequence_cpu,
};

constexpr CellKernels<GruCell> kCpuGru{
    .prepare_recurrent = &prepare_recurrent_cpu<GruCell>,
    .step = &gru_step_cpu,
    .gate_grads = &gru_gate_grads_cpu,
    .sequence = &gru_sequence_cpu,
    .sequence_from_input = &gru_sequence_from_input_cpu,
    .backward_sequence = &gru_backward_sequence_cpu,
};

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  impl_lstm_cell<kCpuLinear, kCpuLstm>(m);
  impl_lstm_ops<kCpuLinear, kCpuLstm>(m);
  impl_gru_cell<kCpuLinear, kCpuGru>(m);
  impl_gru_ops<kCpuLinear, kCpuGru>(m);
}

}  // namespace fused_rnn
