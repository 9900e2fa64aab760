// The tensor-core persistent forward of the LSTM and GRU layers: one cooperative launch runs every
// step, each block keeping its share of W_hh in registers as mma.sync A fragments for the whole
// sequence (tiling and shared-memory layout: plan_tensor_core_layer, persistent_plan.h).
//
// Per step a block (i) stages the previous h of the whole batch from L2 into shared memory,
// (ii) has each warp multiply its tile of gate rows by its K share of h on tensor cores (float
// accumulation), n-tile by n-tile, writing the partial sums to shared memory, (iii) sums the K
// shares of each (unit, batch row) pair and finishes it with the cell's gate math
// (persistent_cells.cuh), and (iv) publishes the h it wrote. The LSTM's cell states of its units
// stay in shared memory.
//
// Three ways to wait for h (PersistentBarrier, chosen at run time so each can be measured):
// - kGrid: grid.sync() after (iii), every block waiting for the slowest.
// - kFlags: block k owns units [16k, 16k+16), which are k-tile k of every K share, so the warps
//   sharing a K share (a group of G warps) need h from just the blocks of their k-tiles. Each
//   block publishes a step by a release store of its flag (steps done); each group polls its
//   producers' flags with acquire loads, stages its own columns of h and meets at a named barrier
//   of its G warps, so groups start as soon as their producers are done and no block writes a
//   shared counter. Nothing is overwritten that a slower block still reads: each step's h has its
//   own rows of the output.
// - kTagged: as kFlags, each group stages its own columns, but from tagged words: every (row,
//   unit) of h also goes to a ring of kTaggedSlots slots (the h of n steps done to slot
//   n % kTaggedSlots) as one 32-bit word holding the value and its step's tag
//   (TileFormat::tagged), by a relaxed store, and the group's threads poll those words until
//   their tags are the step's. No flag, no fence: the data is its own signal (NOTES
//   entry 65). A slot is written again kTaggedSlots steps later, when every reader is done with
//   it: a block's step i + 3 needs h of step i + 2 from the blocks it reads, which needed h of
//   step i + 1 from every group, which every group made after staging step i's.
// Where one block cannot hold a group's share of W_hh (float32 at H 768 and 1024), a thread-block
// cluster of kSplit = 2 blocks owns the group: each keeps half of K, the two read each other's
// partial sums through distributed shared memory after a cluster barrier, and rank r finishes the
// batch rows b with b % 2 == r (plan_tensor_core_split, persistent_plan.h; NOTES.md entry 58).
// Launched by tensor_core_launch.cuh; persistent_layer.cu chooses and calls it.
#pragma once

#include "persistent_tensor_core.h"
#include "tensor_core_tiles.cuh"


namespace fused_rnn::cuda {

// A thread's items of a grid of rows of `per_row` items taken row-major, from item `first` by
// `stride` items: each next item's (row, column) by adds, not divisions (a division by a size
// known at run time costs some 25 instructions on the GPU, and the staging of h took one an item
// each step; NOTES entry 75). Made once a step (the kernel says why); no items where
// per_row is 0.
struct GridWalk {
  int row, column, row_step, column_step, per_row;
  __device__ GridWalk(int per_row_, int first, int stride) : per_row(per_row_) {
    const int n = per_row > 0 ? per_row : 1;
    row = per_row > 0 ? first / n : INT32_MAX;
    column = first % n;
    row_step = stride / n;
    column_step = stride % n;
  }
  __device__ void advance(int& b, int& c) const {
    b += row_step;
    c += column_step;
    if (c >= per_row) {
      c -= per_row;
      ++b;
    }
  }
};

// Calls load(b, c) for the walk's items in rows b < rows, kLoads at a time, all issued before any
// is used, then use(b, c, loaded): the staging of h waits for L2 about once per kLoads items
// instead of once per item (a load used at once stalls until it lands).
template <int kLoads, typename Loaded, typename Load, typename Use>
__device__ __forceinline__ void batched_loads(const GridWalk& walk, int rows, const Load& load,
                                              const Use& use) {
  for (int b = walk.row, c = walk.column; b < rows;) {
    Loaded loaded[kLoads];
    int lb = b, lc = c;
#pragma unroll
    for (int q = 0; q < kLoads; ++q) {
      if (lb < rows) loaded[q] = load(lb, lc);
      walk.advance(lb, lc);
    }
#pragma unroll
    for (int q = 0; q < kLoads; ++q) {
      if (b < rows) use(b, c, loaded[q]);
      walk.advance(b, c);
    }
  }
}

// sync: the flags (kFlags) or tagged words (kTagged), zeros at launch. kSplit: blocks a group of
// 16 units (a cluster where 2).
template <typename Cell, typename scalar_t, int kKTileBound, PersistentBarrier kBarrier,
          int kSplit>
__global__ void __launch_bounds__(32 * Cell::kGates * kTensorCoreKSplits, 1)
    tensor_core_layer_kernel(const SequenceParams<scalar_t> p, const TensorCoreTiling tiling,
                             const StepSync sync) {
  using Format = TileFormat<scalar_t>;
  constexpr int G = Cell::kGates, kSplits = kTensorCoreKSplits, kUnits = kTensorCoreUnits;
  constexpr int kThreads = 32 * G * kSplits;
  constexpr int kPerVector = 16 / sizeof(scalar_t);  // h is staged 16 bytes at a time
  unsigned char* shared = dynamic_shared_memory();
  const int H = static_cast<int>(p.hidden), B = static_cast<int>(p.batch);
  const int pitch = tiling.h_pitch, part_pitch = tiling.part_pitch;
  const int n_tiles = tiling.batch_pad / 8;
  scalar_t* s_h = reinterpret_cast<scalar_t*>(shared);            // [batch_pad][pitch]
  float* s_part = reinterpret_cast<float*>(s_h + tiling.batch_pad * pitch);
  float* s_c = s_part + kSplits * G * kUnits * part_pitch;        // [B][kUnits] (LSTM)
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int tile = warp % G, split = warp / G;
  // This block's place in its group: rank r holds the K shares r kSplits.. and finishes the
  // batch rows b with b % kSplit == r.
  const int rank = blockIdx.x % kSplit;
  const int j0 = blockIdx.x / kSplit * kUnits;
  const int block_k_tile0 = rank * kSplits * tiling.k_tiles;
  const int k_tile0 = block_k_tile0 + split * tiling.k_tiles;
  const int k_tile_count = min(tiling.k_tiles, H / 16 - k_tile0);  // <= 0: this warp adds zeros
  // s_h's columns: the block's K range (empty for a peer beyond a small H).
  const int block_k0 = 16 * block_k_tile0;
  const int block_columns = max(0, min(16 * kSplits * tiling.k_tiles, H - block_k0));

  // This warp's tile of W_hh over its K share, for every step.
  uint32_t a[kKTileBound][Format::kARegs];
  constexpr int kARegisters = kKTileBound * Format::kARegs;
  // Whether the first pair's input side is read ahead (below): its G registers, live through
  // the staging and the products, fit beside a's without spilling except in the LSTM's largest
  // shares (512 threads leave 128 registers; ptxas, sm_80 and sm_90a).
  constexpr bool kReadAhead = G == kGruGates || kARegisters + 16 * kSplit <= 64;
  // Loads of 16 bytes of h a thread issues at once when staging (batched_loads), as many as fit
  // beside a's registers without spilling (ptxas; a cluster's kernel holds more besides; at 12
  // k-tiles with flags and the read-ahead, 4 on sm_80: at B=16, H=768 a thread stages 3).
  constexpr int kStagingLoads =
      kSplit == 1
          ? (kARegisters > 48                                                           ? 2
             : kARegisters == 48 && kReadAhead && kBarrier == PersistentBarrier::kFlags ? 4
                                                                                        : 6)
          : (kARegisters > 48 ? 1 : kARegisters > 32 ? 2 : 4);
#pragma unroll
  for (int kt = 0; kt < kKTileBound; ++kt) {
#pragma unroll
    for (int r = 0; r < Format::kARegs; ++r) {
      const TileRow row = tensor_core_tile_row(G, tile, mma::a_row(lane, r));
      const int64_t w_row = static_cast<int64_t>(row.gate) * H + j0 + row.unit;
      a[kt][r] = kt < k_tile_count ? Format::load_a(p.w_hh + w_row * H + 16 * (k_tile0 + kt) +
                                                        Format::a_col(lane, r),
                                                    1)
                                   : 0u;
    }
  }

  // kTagged: the ring's slot of the h that `steps_done` steps leave (tagged with that count).
  const auto tagged_slot = [&](int64_t steps_done) {
    return sync.words + steps_done % kTaggedSlots * static_cast<int64_t>(B) * H;
  };

  // The staging's items, per row of h: 16-byte vectors of the block's K range (grid.sync()) or of
  // the group's share (flags), or vectors of 4 tagged words of the group's share (tagged).
  const int group_threads = 32 * G, group_tid = tid - split * group_threads;
  const int stage_k0 = kBarrier == PersistentBarrier::kGrid ? block_k0 : 16 * k_tile0;
  const int stage_columns =
      kBarrier == PersistentBarrier::kGrid ? block_columns : 16 * max(k_tile_count, 0);
  const int stage_per_row =
      stage_columns / (kBarrier == PersistentBarrier::kTagged ? 4 : kPerVector);

  // This thread's first pair of (iii), pair tid (its only one where the batch has at most
  // kThreads / 16 rows of this block's): the same batch row and unit every step. Its previous h
  // (the GRU's, the h it wrote the step before) is kept here rather than read back.
  const int first_b = tid / kUnits * kSplit + rank, first_u = tid % kUnits;
  float first_h = 0.0f;

  for (int64_t i = 0; i < p.steps; ++i) {
    // This step's rows, and the step before's: a row it ran continues from there, the others
    // start from h0 and c0 (every row at the first step; packed sequences in the reverse
    // direction, whose batch grows, later too).
    const RunStep step = run_step(p.packed_steps, i, p.steps, B, p.reverse);
    const RunStep before =
        i == 0 ? RunStep{0, 0} : run_step(p.packed_steps, i - 1, p.steps, B, p.reverse);
    const auto h_prev = [&](const scalar_t* output, int b) {
      return b < before.rows ? output + (before.offset + b) * H
                             : p.h0 + static_cast<int64_t>(b) * H;
    };
    // The first pair's input side, read ahead: its loads are in flight while the block waits
    // for h and multiplies (NOTES entry 75).
    InputSide<G, float> first_input{};
    if (kReadAhead && first_b < step.rows) {
      first_input = input_side<G, float>(p, step.offset + first_b, j0 + first_u);
    }
    // (i) h of the block's K range, 16 bytes at a time, through L2: other SMs wrote it. With
    // flags or tagged words, each group of warps sharing a K share waits for its producers (every
    // block of their groups) and stages its own columns. (The rows past the step's, padding
    // included, keep whatever they hold: a batch row's products depend on its own column of B
    // only, and theirs are not read.)
    // (Made each step: kept through the loop, its registers spilled in the LSTM's largest
    // shares.)
    const GridWalk walk =
        kBarrier == PersistentBarrier::kGrid ? GridWalk(stage_per_row, tid, kThreads)
                                             : GridWalk(stage_per_row, group_tid, group_threads);
    // The step's rows of the staged columns from the output (after the barrier) or h0.
    const auto stage_vectors = [&] {
      const scalar_t* output = launder(p.output);
      batched_loads<kStagingLoads, uint4>(
          walk, static_cast<int>(step.rows),
          [&](int b, int c) {
            return load_l2(
                reinterpret_cast<const uint4*>(h_prev(output, b) + stage_k0 + kPerVector * c));
          },
          [&](int b, int c, uint4 v) {
            *reinterpret_cast<uint4*>(s_h + b * pitch + stage_k0 + kPerVector * c - block_k0) =
                Format::staged(v);
          });
    };
    if constexpr (kBarrier == PersistentBarrier::kGrid) {
      stage_vectors();
      __syncthreads();
    } else {
      if constexpr (kBarrier == PersistentBarrier::kFlags) {
        if (i > 0 && tile == 0) {
          for (int q = kSplit * k_tile0 + lane; q < kSplit * (k_tile0 + k_tile_count); q += 32) {
            while (published_steps(sync.flags + q) < static_cast<unsigned>(i)) {
            }
          }
          __syncwarp();
        }
        named_barrier(1 + split, group_threads);
        stage_vectors();
      } else {
        // Four columns a word vector (Format::Quad once staged): the step before's tagged words
        // where it ran the row, polled until their tags are its, else h0.
        const uint32_t* slot = tagged_slot(i);
        const uint32_t tag = tensor_core_step_tag(i, Format::kTagMask);
        const auto words_at = [&](int b, int c) {
          return reinterpret_cast<const uint4*>(slot + static_cast<int64_t>(b) * H + stage_k0 +
                                                4 * c);
        };
        batched_loads<kStagingLoads, uint4>(
            walk, static_cast<int>(step.rows),
            [&](int b, int c) { return b < before.rows ? load_relaxed(words_at(b, c)) : uint4{}; },
            [&](int b, int c, uint4 words) {
              typename Format::Quad values;
              if (b < before.rows) {
                while (!tags_are(words, tag, Format::kTagMask)) words = load_relaxed(words_at(b, c));
                values = Format::untagged(words);
              } else {
                values = Format::quad(h_prev(p.output, b) + stage_k0 + 4 * c);
              }
              *reinterpret_cast<typename Format::Quad*>(s_h + b * pitch + stage_k0 + 4 * c -
                                                        block_k0) = values;
            });
      }
      named_barrier(1 + split, group_threads);
    }

    // (ii) Two n-tiles at a time (batch_pad is a multiple of 16): two independent accumulator
    // chains. Each row's k-tiles at fixed offsets from this warp's share of it (immediate
    // offsets: per-k-tile addresses held across the loop spilled); beyond the share (zero
    // weights; the columns past h's rows hold other data) the loads are predicated off, giving
    // zero. In a cluster, the peer block must be done reading the last step's partial sums
    // before they are overwritten.
    if (kSplit > 1 && i > 0) cluster_wait();
    for (int nt0 = 0; nt0 < n_tiles; nt0 += 2) {
      float acc[2][4] = {};
#pragma unroll
      for (int kt = 0; kt < kKTileBound; ++kt) {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          const scalar_t* share =
              s_h + (8 * (nt0 + n) + mma::b_col(lane)) * pitch + 16 * k_tile0 - block_k0;
          uint32_t b[Format::kBRegs] = {};
          if (kt < k_tile_count) {
#pragma unroll
            for (int r = 0; r < Format::kBRegs; ++r) {
              b[r] = Format::load_b(share + 16 * kt + Format::b_row(lane, r));
            }
          }
          Format::mma(acc[n], a[kt], b);
        }
      }
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int row = (split * G + tile) * 16 + mma::c_row(lane, c);
          s_part[row * part_pitch + 8 * (nt0 + n) + mma::c_col(lane, c)] = acc[n][c];
        }
      }
    }
    if constexpr (kSplit > 1) {
      cluster_arrive();  // (every block's partial sums, read below, written)
      cluster_wait();
    } else {
      __syncthreads();
    }

    // (iii) Consecutive threads take consecutive units of a row: the stores of h, c and the
    // saved activations coalesce. Pair e of this block is unit e % 16 of its row e / 16.
    const int rows = (static_cast<int>(step.rows) - rank + kSplit - 1) / kSplit;
    for (int e = tid; e < rows * kUnits; e += kThreads) {
      const int b = e / kUnits * kSplit + rank, u = e % kUnits;
      float hidden_side[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int row = tensor_core_block_row(G, u, g);
        float sum = 0.0f;
#pragma unroll
        for (int q = 0; q < kSplit; ++q) {
          const float* part = kSplit > 1 ? cluster_peer(s_part, q) : s_part;
#pragma unroll
          for (int s = 0; s < kSplits; ++s) sum += part[(s * G * 16 + row) * part_pitch + b];
        }
        hidden_side[g] = sum;
      }
      // (Not from s_h, which holds TF32-rounded floats and part of K: kept from the step before
      // (the first pair), or from global memory: this block's own pairs, written by this SM, or
      // h0.)
      const bool first = e == tid, read_ahead = kReadAhead && first;
      const float h_prev_value = first && b < before.rows
                                     ? first_h
                                     : static_cast<float>(h_prev(p.output, b)[j0 + u]);
      float no_cell = 0.0f;
      float& c = Cell::kCarriesCell ? s_c[e] : no_cell;
      if (Cell::kCarriesCell && b >= before.rows) {
        c = static_cast<float>(p.c0[static_cast<int64_t>(b) * H + j0 + u]);
      }
      const int64_t row = step.offset + b;
      const scalar_t h =
          Cell::finish(p, row, b, j0 + u,
                       read_ahead ? first_input : input_side<G, float>(p, row, j0 + u),
                       hidden_side, h_prev_value, c);
      if (first) first_h = static_cast<float>(h);
      if constexpr (kBarrier == PersistentBarrier::kTagged) {
        store_relaxed(tagged_slot(i + 1) + static_cast<int64_t>(b) * H + j0 + u,
                      Format::tagged(h, tensor_core_step_tag(i + 1, Format::kTagMask)));
      }
    }
    if constexpr (kSplit > 1) cluster_arrive();  // (done reading the peer's partial sums)
    // (iv) Every block's h of this step is written and visible before any block stages it; the
    // barrier also keeps s_h and s_part until this block's threads are done with them.
    end_step<kBarrier>(sync, i);
  }
  // A block's shared memory must outlive its peer's reads of it.
  if constexpr (kSplit > 1) cluster_wait();
}

}  // namespace fused_rnn::cuda
