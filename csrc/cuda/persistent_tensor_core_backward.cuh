// The tensor-core persistent backward of the LSTM and GRU layers (BackwardSequenceTensors): one
// cooperative launch runs the whole backward time loop, each block keeping W_hh^T's rows for its
// 16 units in registers as mma.sync A fragments (plan_tensor_core_layer, backward).
//
// Steps run last first. Per step a block (i) multiplies its W_hh^T rows by the hidden-side gate
// gradients of the step run before (all G H columns, split over its warps; the B operand read
// through L2, where the other blocks wrote it), the partial sums meeting in shared memory, so
// that each (unit, batch row) pair has the gradient of its h' = that product + the part carried
// past W_hh + the output's gradient; (ii) finishes the pairs with the cell's backward step
// (persistent_cells.cuh), writing the step's gate gradients; (iii) publishes them. After the
// last step, one more product gives the initial state's gradient. The weight and input
// gradients stay single GEMMs over all steps afterwards (layer_common.cpp).
//
// The barrier is the forward's (tensor_core_tiles.cuh): with flags, each warp waits only for the
// blocks whose units its K share covers (a k-tile of 16 gate-gradient columns is one block's
// units in one gate) and reads their columns itself, so a __syncwarp() orders its loads. Where one
// block cannot hold its share (float32: the LSTM at H 512 and 768, the GRU at 768 and 1024;
// 16-bit LSTM at H 1024), a cluster of two blocks splits it as the forward's does.
// Launched by tensor_core_launch.cuh; persistent_layer.cu chooses and calls it.
#pragma once

#include "persistent_tensor_core.h"
#include "tensor_core_tiles.cuh"


namespace fused_rnn::cuda {

// Tagged words carry the forward's h only: asked for them, the backward waits at flags.
constexpr PersistentBarrier backward_barrier(PersistentBarrier asked) {
  return asked == PersistentBarrier::kTagged ? PersistentBarrier::kFlags : asked;
}

// kSplit: blocks a group of 16 units (a cluster where 2).
template <typename Cell, typename scalar_t, int kKTileBound, PersistentBarrier kBarrier,
          int kSplit>
__global__ void __launch_bounds__(32 * kTensorCoreBackwardWarps, 1)
    tensor_core_backward_kernel(const BackwardSequenceParams<scalar_t> p,
                                const TensorCoreTiling tiling, const StepSync sync) {
  using Format = TileFormat<scalar_t>;
  constexpr int G = Cell::kGates, kWarps = kTensorCoreBackwardWarps, kUnits = kTensorCoreUnits;
  constexpr int kThreads = 32 * kWarps;
  unsigned char* shared = dynamic_shared_memory();
  const int H = static_cast<int>(p.hidden), B = static_cast<int>(p.batch), columns = G * H;
  const int groups = H / kUnits;
  const int part_pitch = tiling.part_pitch, n_tiles = tiling.batch_pad / 8;
  float* s_part = reinterpret_cast<float*>(shared);     // [kWarps][kUnits][part_pitch]
  float* s_carried_h = s_part + kWarps * kUnits * part_pitch;  // [B][kUnits]
  float* s_carried_c = s_carried_h + B * kUnits;               // [B][kUnits] (LSTM)
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  // This block's place in its group: rank r holds the K shares r kWarps.. and carries the batch
  // rows b with b % kSplit == r; pair e of this block is unit e % 16 of row e / 16 * kSplit + r.
  const int rank = blockIdx.x % kSplit;
  const int j0 = blockIdx.x / kSplit * kUnits;
  const int k_tile0 = (rank * kWarps + warp) * tiling.k_tiles;
  const int k_tile_count = min(tiling.k_tiles, columns / 16 - k_tile0);  // <= 0: adds zeros
  const int pairs = (B - rank + kSplit - 1) / kSplit * kUnits;
  const auto pair_row = [&](int e) { return e / kUnits * kSplit + rank; };
  // The step-before gradients' hidden side: the LSTM's pre-activations sum both sides.
  const scalar_t* hidden_grads = Cell::kCarriesCell ? p.grad_input_gates : p.grad_hidden_gates;

  // W_hh^T's rows j0..j0+15 over this warp's K share: element (u, k) is W_hh[k][j0 + u], the next
  // along K a row of W_hh further.
  uint32_t a[kKTileBound][Format::kARegs];
#pragma unroll
  for (int kt = 0; kt < kKTileBound; ++kt) {
#pragma unroll
    for (int r = 0; r < Format::kARegs; ++r) {
      const int64_t k = 16 * (k_tile0 + kt) + Format::a_col(lane, r);
      a[kt][r] = kt < k_tile_count
                     ? Format::load_a(p.w_hh + k * H + j0 + mma::a_row(lane, r), H)
                     : 0u;
    }
  }
  for (int e = tid; e < pairs; e += kThreads) {
    const int64_t at = static_cast<int64_t>(pair_row(e)) * H + j0 + e % kUnits;
    s_carried_h[e] = static_cast<float>(p.grad_h[at]);
    if constexpr (Cell::kCarriesCell) s_carried_c[e] = static_cast<float>(p.grad_c[at]);
  }
  __syncthreads();

  // With flags, the block whose step this lane waits for (a lane each, for the warp's k-tiles):
  // a k-tile of 16 gate-gradient columns is one gate of group k % groups, every block of which
  // wrote some of its rows.
  static_assert(kSplit * kKTileBound <= 32, "a lane polls one flag at most");
  const unsigned* producer = nullptr;
  if (kBarrier == PersistentBarrier::kFlags && lane < kSplit * max(k_tile_count, 0)) {
    producer = sync.flags + (k_tile0 + lane / kSplit) % groups * kSplit + lane % kSplit;
  }
  // This thread's first pair of (ii), pair tid (its only one where the batch has at most
  // kThreads / 16 rows of this block's): the same batch row and unit every step.
  const int first_b = pair_row(tid), first_u = tid % kUnits;
  // Iteration i < steps runs the forward's step steps - 1 - i (run order); i == steps only the
  // initial states' product. A row the step before (the forward's next) did not run has no
  // product: its sequence ends at this step (its carried gradient is its final h's), or, in the
  // reverse direction of packed sequences, it ended before, its carried gradient being its
  // initial state's, complete once the product of the step where it started is added.
  for (int64_t i = 0; i <= p.steps; ++i) {
    const RunStep step = i == p.steps ? RunStep{0, 0}
                                      : run_step(p.packed_steps, p.steps - 1 - i, p.steps, B,
                                                 p.reverse);
    const RunStep before =
        i == 0 ? RunStep{0, 0} : run_step(p.packed_steps, p.steps - i, p.steps, B, p.reverse);
    // What the first pair's backward step reads besides the product, read ahead: its loads are
    // in flight while the block waits for the gate gradients and multiplies (NOTES entry 75).
    typename Cell::BackwardInputs first_inputs{};
    float first_grad_output = 0.0f;
    if (first_b < step.rows) {
      const int64_t row = step.offset + first_b;
      first_inputs = Cell::backward_inputs(p, row, j0 + first_u);
      first_grad_output = static_cast<float>(p.grad_output[row * H + j0 + first_u]);
    }
    // (i) The product with the gate gradients of the step run before (none before the first).
    if (i > 0) {
      if constexpr (kBarrier == PersistentBarrier::kFlags) {
        if (producer) {
          while (published_steps(producer) < static_cast<unsigned>(i)) {
          }
        }
        __syncwarp();
      }
      const scalar_t* grads = launder(hidden_grads) + before.offset * columns;
      // In a cluster, the peer block must be done reading the last product's partial sums
      // before they are overwritten.
      if (kSplit > 1 && i > 1) cluster_wait();
      // An n-tile at a time, its B fragments from L2: this warp's K share of a row of gate
      // gradients, k-tile kt at a fixed offset from the share's start (one address a row, the
      // k-tiles' offsets immediate: per-k-tile addresses held across the loop spilled). Loads
      // beyond the share (zero weights) or past the step's rows are predicated off, giving zero.
      for (int nt = 0; nt < n_tiles; ++nt) {
        const int b = 8 * nt + mma::b_col(lane);
        const bool row_ran = b < before.rows;
        const scalar_t* share =
            grads + static_cast<int64_t>(row_ran ? b : 0) * columns + 16 * k_tile0;
        float acc[4] = {};
#pragma unroll
        for (int kt = 0; kt < kKTileBound; ++kt) {
          uint32_t frag[Format::kBRegs] = {};
          if (kt < k_tile_count && row_ran) {
#pragma unroll
            for (int r = 0; r < Format::kBRegs; ++r) {
              frag[r] = Format::load_b_global(share + 16 * kt + Format::b_row(lane, r));
            }
          }
          Format::mma(acc, a[kt], frag);
        }
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int unit_row = warp * kUnits + mma::c_row(lane, c);
          s_part[unit_row * part_pitch + 8 * nt + mma::c_col(lane, c)] = acc[c];
        }
      }
      if constexpr (kSplit > 1) {
        cluster_arrive();  // (every block's partial sums, read below, written)
        cluster_wait();
      } else {
        __syncthreads();
      }
    }

    // (ii) Each pair's gradient of h': the step's rows run their backward step, the others
    // carry it (after the last step: the initial states' gradients).
    for (int e = tid; e < pairs; e += kThreads) {
      const int b = pair_row(e), u = e % kUnits;
      float grad_h = s_carried_h[e];
      if (i > 0) {
#pragma unroll
        for (int q = 0; q < kSplit; ++q) {
          const float* part = kSplit > 1 ? cluster_peer(s_part, q) : s_part;
#pragma unroll
          for (int w = 0; w < kWarps; ++w) grad_h += part[(w * kUnits + u) * part_pitch + b];
        }
      }
      const int64_t at = static_cast<int64_t>(b) * H + j0 + u;
      if (b < step.rows) {
        const int64_t row = step.offset + b;
        const bool first = e == tid;
        grad_h += first ? first_grad_output : static_cast<float>(p.grad_output[row * H + j0 + u]);
        float no_cell = 0.0f;
        Cell::finish_backward(p, row, j0 + u,
                              first ? first_inputs : Cell::backward_inputs(p, row, j0 + u),
                              grad_h, s_carried_h[e],
                              Cell::kCarriesCell ? s_carried_c[e] : no_cell);
      } else {
        s_carried_h[e] = grad_h;
      }
      if (i == p.steps) {
        p.grad_h[at] = static_cast<scalar_t>(s_carried_h[e]);
        if constexpr (Cell::kCarriesCell) p.grad_c[at] = static_cast<scalar_t>(s_carried_c[e]);
      }
    }
    if (kSplit > 1 && i > 0) cluster_arrive();  // (done reading the peer's partial sums)
    if (i == p.steps) break;
    // (iii) This step's gate gradients are written and visible before any block reads them; the
    // barrier also keeps s_part until this block's threads are done with it.
    end_step<kBarrier>(sync, i);
  }
  // A block's shared memory must outlive its peer's reads of it.
  if constexpr (kSplit > 1) cluster_wait();
}

}  // namespace fused_rnn::cuda
