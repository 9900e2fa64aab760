// Every choice the CPU makes between its paths, in one place: the thresholds, each with its reason
// and the benchmarks/NOTES.md entry that measured it, and the decisions as pure functions of
// sizes (the kernels call them; layer_path puts them together for fused_rnn.cpu_layer_path).
// The figures are ratios to torch.nn's time on this project's 2-core AVX-512 EPYC unless said.
#pragma once

#include <cstdint>
#include <string>

namespace fused_rnn::cpu {

// ---------------------------------------------------------------------------------------------
// The products (linear.cpp).

// Packing a weight (oneDNN's reorder) costs about as much as a few hundred rows of product,
// whatever the weight's size: it pays off over a weight reused by many steps, or one large
// product.
constexpr int64_t kPackMinUses = 8;
constexpr int64_t kPackMinRows = 1024;
bool onednn_packing_pays_off(int64_t rows, int64_t uses);

// MKL's sgemm on this (AMD) CPU takes its generic path and packs its operands on every call,
// which dominates the few-row products of a cell step; our kernels read the weight as it lies:
// the forward's x @ w^T as dot products along k (linear_rows) for up to 32 rows (0.4-0.7x the
// cell forward's time at B = 1..16, 0.92x at B = 32, a tie from 48), the backward's products
// (grad @ w, grad^T @ x) in register tiles (matmul_rows) wherever one side is at most 128
// (0.5-0.85x the cell backward's time at B = 1..128; NOTES entry 20).
constexpr int64_t kDotMaxRows = 32;
constexpr int64_t kTileMaxSide = 128;
bool dot_products_pay_off(int64_t rows);
bool tiles_pay_off(int64_t rows, int64_t inner);

// oneDNN's matmul runs 15-25% faster than ATen's mm (MKL) here even on an unpacked float32
// weight (NOTES entry 16), so float32 products go through it where this torch has it; except
// small ones on an unpacked weight, where its cost per call (the primitive for the shape, the
// weight's reorder) outweighs that: below about 4M multiply-adds ATen's mm takes 0.6-0.95x its
// time.
constexpr int64_t kOneDnnMinMacs = int64_t{1} << 22;
bool onednn_unpacked_pays_off(int64_t rows, int64_t columns, int64_t inner);

// The layer-normalized cells' steps (no fused recurrent step: their norms need each product's
// whole row) take h @ W_hh^T on W_hh as it lies where the dot products pay off, else on W_hh
// packed for oneDNN where that pays off: at B=1 a packed weight's oneDNN call per step cost more
// than the product (LN-LSTM T=100 B=1 H=256 forward 2.4 -> 1.0 ms, B=8 5.2 -> 3.1 ms; NOTES
// entry 47).
bool layernorm_step_weight_packed(int64_t rows, int64_t uses);

// A layer's input gradient (its gate gradients over all steps @ W_ih) as oneDNN's product with
// W_ih^T packed: 1-10% off a layer's forward+backward at 3200-12800 rows (NOTES entry 35); with
// fewer rows its cost per call makes it a tie or a loss.
bool onednn_input_gradient_pays_off(int64_t rows);

// A layer's weight gradients (its gate gradients over all steps, transposed, @ its inputs or
// states) as oneDNN's product X^T @ grad, the gate gradients read in place as its weight: MKL's
// sgemm takes its generic path on these AMD CPUs and runs at about half oneDNN's AVX-512 rate,
// so from 300 rows the product takes 0.49-0.73x of at::mm's time (H = 128..1024, up to 12800
// rows; NOTES entry 48). With oneDNN held to AVX2 it ties at::mm from 1024 rows and loses below,
// so a CPU without AVX-512 takes it from kPackMinRows.
constexpr int64_t kWeightGradientMinRowsAvx512 = 300;
bool onednn_weight_gradient_pays_off(int64_t rows, bool avx512);

// ---------------------------------------------------------------------------------------------
// The fused recurrent step (pointwise.h) and its sequences (sequences.cpp).

// The fused recurrent step beats oneDNN's product plus a pointwise pass at small batches
// (B = 1..16: 0.65-0.85x its time, forward) and ties it from B = 32 on, while the packed W_hh
// stays within the last-level cache (32 MB here: H up to 1448 for the LSTM; LSTM B=1 H=1024
// forward 0.88x -> 0.79x, H=1280 1.05x -> 0.67x; a larger one, streamed from memory every step
// and packed every call, ties or loses: NOTES entry 30). Up to 128 rows where W_hh fits in one
// core's L2 (H <= 256 here), where it still wins (B = 128 H = 128 forward: LSTM 1.35x -> 1.20x,
// GRU 0.83x -> 0.65x; with W_hh of 3-4 MB a tie or a loss; NOTES entry 21). The layers' other
// per-step products (the backward's, the projection's) follow the same rule, and so does the
// whole-sequence backward.
constexpr int64_t kPanelMaxRows = 32;
constexpr int64_t kPanelMaxRowsCached = 128;
constexpr int64_t kPanelCachedWeightBytes = 1 << 20;
constexpr int64_t kPanelMaxWeightBytes = 32 << 20;
// For a float32 weight of weight_bytes used by `uses` products of up to `rows` rows.
bool panels_pay_off(int64_t weight_bytes, int64_t rows, int64_t uses);

// From 8 to 128 batch rows and up to 8 MB of W_ih and W_hh together, a sequence runs on the
// fused step with each step computing its input side too (x_t @ W_ih^T beside h @ W_hh^T,
// K = I + H): the [N, G*H] projection is neither written by a product of its own nor read back
// by the steps, and the step's product is twice as long for the same per-task costs. LSTM
// forward: B=128 H=128 1.15x -> 0.93x, B=32 H=128 1.00x -> 0.86x, B=128 H=256 1.07x -> 0.88x,
// B=64 H=512 (where W_hh alone takes oneDNN's per-step product) 1.00x -> 0.95x; GRU forward:
// B=64 H=512 0.69x -> 0.62x, B=128 H=128 0.70x -> 0.62x, B=8 H=128 0.43x -> 0.37x;
// forward+backward ties. With fewer rows, or more weight (B=32 H=1024), the serial steps'
// longer products lose to one product over all steps (LSTM B=4 H=512 0.93x -> 1.11x; NOTES
// entries 41 and 43).
constexpr int64_t kInputInStepMinRows = 8;
constexpr int64_t kInputInStepMaxWeightBytes = 8 << 20;
// For float32 W_ih and W_hh of weight_bytes together, `batch` rows a step, `steps` steps.
bool input_in_step_pays_off(int64_t weight_bytes, int64_t batch, int64_t steps);

// Where the input projection is not saved, a padded batch runs in chunks of steps whose
// projection takes about this many bytes, each chunk's buffer reused (LinearKernels::
// projection_chunk_bytes): one buffer for the whole sequence would be a fresh memory mapping on
// every call at large batches, first touched page by page (a tenth of the forward at B=128;
// NOTES entry 17), while a chunk's is reused from the heap.
constexpr int64_t kProjectionChunkBytes = 16 << 20;

// ---------------------------------------------------------------------------------------------
// Threads.

// Units per parallel task of a pointwise pass: enough work to amortise a task, small enough to
// spread B*H over cores.
constexpr int64_t kGrainUnits = 4096;

// A product's tasks go to ATen's threads in shares of at least this many vector FMAs (about a
// microsecond: a thread's start costs about as much).
constexpr int64_t kMinFmasPerThread = 4096;
// The grain (tasks a thread) for `tasks` tasks of `fmas` vector FMAs in all.
int64_t product_grain(int64_t tasks, int64_t fmas);

// A thread of a whole-sequence region costs a barrier per step, not a start per step, so it
// pays from a quarter of the work (NOTES entry 34: LSTM T=100 B=1 H=128 forward 1.08x -> 0.85x,
// fwd+bwd 0.90x -> 0.72x; unchanged where one thread remains).
constexpr int64_t kMinFmasPerSequenceThread = kMinFmasPerThread / 4;
// The threads of a sequence's region of `tasks` tasks a step of fmas_per_step vector FMAs.
int64_t sequence_threads(int64_t fmas_per_step, int64_t tasks, int64_t threads);

// From 16 batch rows a thread, the backward sequence splits the batch over the threads, not the
// units (NOTES entry 38: LSTM T=100 B=128 H=128 fwd+bwd 0.85x -> 0.79x; ties at 4-8 rows a
// thread). The threads it splits the batch over; 1: it splits the units.
constexpr int64_t kMinBackwardRowsPerThread = 16;
int64_t backward_row_threads(int64_t batch, int64_t threads);

// The fresh buffers the threads write column block by column block are faulted in a contiguous
// share of the pages per thread first, from about 64 pages: fewer, and their faults cost less
// than the threads' meeting (NOTES entry 33).
constexpr int64_t kMinTouchedBytes = 64 * 4096;

// ---------------------------------------------------------------------------------------------
// The paths of a layer, put together from the choices above.

struct LayerShape {
  int64_t gates;          // 4: LSTM, 3: GRU
  int64_t steps, batch;   // T and B of a padded batch
  int64_t input, hidden;  // I and H
  int64_t proj;           // P of an LSTM with projections, 0 without
  int64_t elem_bytes;     // the dtype's size: 4 is float32, which has our kernels; the others
                          // take ATen's products and our pointwise passes
  bool keep_saved;        // training: the forward saves for the backward
  int64_t threads;        // ATen's threads
  bool onednn;            // this torch has oneDNN's packed linear ops
  bool avx512;            // this CPU runs AVX-512 (oneDNN's products do where it does)
};

// Which forward path a padded layer of this shape takes on the CPU, in words.
std::string forward_path(const LayerShape& s);
// Which backward path it takes.
std::string backward_path(const LayerShape& s);

}  // namespace fused_rnn::cpu
