// Whether a layer's forward may run as one persistent CUDA kernel, and with which tiling: a pure
// function of the shape and the device's limits, so the CPU build and its tests can ask it too.
//
// The persistent kernel (csrc/cuda/persistent_layer.cu) runs the whole time loop in one
// cooperative launch: block k owns `units` consecutive hidden units, keeps their G gate rows of
// W_hh in shared memory for every step, and the blocks meet at one grid-wide barrier per step.
// So all blocks must be resident at once (one per SM at most here) and each block's shared memory
// must hold its W_hh slice, the previous h of the whole batch and, for the LSTM, its own units'
// cell states.
//
// The tensor-core kernel (csrc/cuda/persistent_tensor_core.cuh) keeps W_hh in registers instead,
// as mma.sync A fragments: plan_tensor_core_layer says whether it applies and how it tiles.
#pragma once

#include "cell_math.h"  // FUSED_RNN_HD

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace fused_rnn {

struct PersistentPlan {
  bool runs;           // the persistent kernel applies
  std::string reason;  // why not, when it does not
  int64_t units;       // hidden units per block
  int64_t blocks;      // grid size
  int64_t shared_bytes;
};

// gates: 4 (LSTM) or 3 (GRU); elem_bytes: the dtype's size (W_hh is kept in it); acc_bytes: its
// accumulation type's size (h and c are kept in it). Inputs that are not one uniform batch or
// that carry a projection are the caller's to rule out.
inline PersistentPlan plan_persistent_layer(int64_t batch, int64_t hidden, int64_t gates,
                                            int64_t elem_bytes, int64_t acc_bytes,
                                            int64_t sm_count, int64_t shared_limit) {
  PersistentPlan plan{false, "", 0, 0, 0};
  if (batch < 1 || hidden < 1) {
    plan.reason = "empty batch or hidden size";
    return plan;
  }
  // One block per SM, each owning an equal share of the units.
  plan.units = (hidden + sm_count - 1) / sm_count;
  plan.blocks = (hidden + plan.units - 1) / plan.units;
  const int64_t weights = gates * plan.units * hidden * elem_bytes;
  const int64_t states = (batch * hidden + (gates == 4 ? batch * plan.units : 0)) * acc_bytes;
  plan.shared_bytes = (weights + 15) / 16 * 16 + states;
  if (plan.shared_bytes > shared_limit) {
    plan.reason = "W_hh slice and states need " + std::to_string(plan.shared_bytes) +
                  " bytes of shared memory per block, over the device's " +
                  std::to_string(shared_limit);
    return plan;
  }
  plan.runs = true;
  return plan;
}

// ---------------------------------------------------------------------------------------------
// The default's choice between the CUDA layer's paths: measured, not modelled. A table of points
// (csrc/measured_paths.h, written by benchmarks/path_table.py from a sweep on the GPU; read
// through default_paths.h) gives, for a cell kind, a dtype size and a direction (forward or
// backward), at a batch and hidden size, the paths in the order of their measured time. A layer
// takes the table's point nearest its shape (batch first, then hidden, each by ratio) and runs
// the first path of its order that applies to it; outside the span of batches and hidden sizes
// measured, and for float64, it runs step by step.
enum class CudaPath : uint8_t { kStepwise, kSimt, kTensorCores };

struct MeasuredPoint {
  int gates;        // 4 (LSTM) or 3 (GRU)
  int elem_bytes;   // 2 (float16, bfloat16) or 4 (float32, measured with TF32 allowed)
  bool backward;
  int64_t batch;
  int64_t hidden;
  CudaPath order[3];  // fastest first; step-wise, which every shape can run, ends it
};

// log2(a / b) squared, the distance between two sizes.
inline double size_distance(int64_t a, int64_t b) {
  const double d = std::log2(static_cast<double>(a) / static_cast<double>(b));
  return d * d;
}

// The point of `points` nearest to (batch, hidden) among those of the same gates, elem_bytes and
// direction: the nearest measured batch, then the nearest hidden size measured at it (ties to
// the smaller size); null outside the measured span of either, or where none was measured.
inline const MeasuredPoint* nearest_measured_point(const MeasuredPoint* points, size_t count,
                                                   int gates, int elem_bytes, bool backward,
                                                   int64_t batch, int64_t hidden) {
  const auto same_kind = [&](const MeasuredPoint& p) {
    return p.gates == gates && p.elem_bytes == elem_bytes && p.backward == backward;
  };
  // Of the sizes `best` (0: none yet) and `candidate`, the one nearer to `want`.
  const auto nearest = [](int64_t want, int64_t best, int64_t candidate) {
    if (best == 0) return candidate;
    const double d = size_distance(want, candidate), d_best = size_distance(want, best);
    return d < d_best || (d == d_best && candidate < best) ? candidate : best;
  };
  int64_t min_batch = 0, max_batch = 0, min_hidden = 0, max_hidden = 0, near_batch = 0;
  for (size_t i = 0; i < count; ++i) {
    const MeasuredPoint& p = points[i];
    if (!same_kind(p)) continue;
    min_batch = min_batch == 0 ? p.batch : std::min(min_batch, p.batch);
    max_batch = std::max(max_batch, p.batch);
    min_hidden = min_hidden == 0 ? p.hidden : std::min(min_hidden, p.hidden);
    max_hidden = std::max(max_hidden, p.hidden);
    if (batch >= 1) near_batch = nearest(batch, near_batch, p.batch);
  }
  if (near_batch == 0 || batch < min_batch || batch > max_batch || hidden < min_hidden ||
      hidden > max_hidden) {
    return nullptr;
  }
  const MeasuredPoint* found = nullptr;
  for (size_t i = 0; i < count; ++i) {
    const MeasuredPoint& p = points[i];
    if (!same_kind(p) || p.batch != near_batch) continue;
    if (found == nullptr || nearest(hidden, found->hidden, p.hidden) != found->hidden) found = &p;
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// The tensor-core persistent kernels. A group of `cluster_split` blocks (S: 1, or 2 as one
// thread-block cluster, sm_90) owns the hidden units [16k, 16k + 16) as group k, blocks S k to
// S k + S - 1.
// Forward: the G gate rows of W_hh for them, 16 G rows, as G tiles of 16 rows (mma.sync's M).
// The group's warps split those tiles' K = H columns S * kTensorCoreKSplits ways, each warp one
// tile and one K share held in registers for the whole sequence, so a block has
// G * kTensorCoreKSplits warps and the blocks of a group hold consecutive K ranges.
// The previous h of the batch is the B operand, the batch on N in tiles of 8 rows: every weight
// fragment serves every batch row. The K shares' partial sums meet in shared memory (of the
// cluster: a block reads its peer's through distributed shared memory), where the threads finish
// the step with the cell math, one (unit, batch row) pair at a time, block r of a group taking the
// rows b with b % S == r.
// Backward: the gradient of its units' h before a step is W_hh^T's 16 rows for them (M) times the
// step's hidden-side gate gradients (K = G H columns, B operand read through L2), K split over
// the group's S * kTensorCoreBackwardWarps warps: 384 threads a block leave each 168 registers
// (the LSTM's forward, at 512, has 128), room for the B fragments loaded from L2 and the backward
// step's math.
// Splitting a group over a cluster halves each block's share of W_hh, for what one SM's registers
// cannot hold (float32 beyond H = 512, the LSTM's backward beyond 768), at the cost of a cluster
// barrier and remote reads of the partial sums each step.
constexpr int64_t kTensorCoreUnits = 16;
constexpr int64_t kTensorCoreKSplits = 4;
constexpr int64_t kTensorCoreMaxClusterSplit = 2;
// A warp's K share in k-tiles of 16 columns takes 2 * elem_bytes registers a k-tile (16-bit: 4,
// one m16n8k16 A fragment; float32 as TF32: 8, two m16n8k8 ones), at most
// kTensorCoreWeightRegisters in the forward: 16 k-tiles in 16 bits, 8 in float32 (H up to 1024
// and 512 unsplit); kTensorCoreBackwardWeightRegisters in the backward. The kernels are built for
// every bound of k-tiles that is a multiple of 4 up to that, and run the smallest that holds it.
constexpr int64_t kTensorCoreWeightRegisters = 64;
constexpr int64_t kTensorCoreBackwardWarps = 12;
constexpr int64_t kTensorCoreBackwardWeightRegisters = 64;
// h rows in shared memory are padded by 16 bytes so that the 8 rows one B fragment reads fall in
// distinct banks (a row's K range is a multiple of 32 bytes); the partial sums' rows by 4 floats.
constexpr int64_t kTensorCoreHPadBytes = 16;
constexpr int64_t kTensorCorePartPad = 4;

// Which unit and gate row `row` (0..15) of tile `tile` (0..G-1) holds. Rows are gate-interleaved
// in slots of 8: slot s = 2 * tile + row / 8 holds gate s % G of units 8 * (s / G) + 0..7, so a
// block's two groups of 8 units each have all G gates within its G tiles.
struct TileRow {
  int unit;
  int gate;
};
FUSED_RNN_HD TileRow tensor_core_tile_row(int gates, int tile, int row) {
  const int slot = 2 * tile + row / 8;
  return {8 * (slot / gates) + row % 8, slot % gates};
}
// The inverse: the block's row (16 * tile + row) of gate `gate` of its unit `unit`.
FUSED_RNN_HD int tensor_core_block_row(int gates, int unit, int gate) {
  const int slot = (unit / 8) * gates + gate;
  return 16 * (slot / 2) + 8 * (slot % 2) + unit % 8;
}

// The tagged exchange of the forward's h (PersistentBarrier::kTagged, persistent_tensor_core.cuh):
// step i's h goes to slot i % kTaggedSlots of a ring, each value in one 32-bit word beside a tag
// in the bits it leaves free (16-bit values: 16 bits, mask 0xffff; TF32: 13, mask 0x1fff). The
// tag of the h that `steps_done` steps leave is in 1..mask, never 0 (the words start as zeros);
// a reader waits for its step's tag, and a word it finds not yet overwritten holds the tag of
// kTaggedSlots steps before (a row runs consecutive steps), which differs: mask is odd, so
// kTaggedSlots (a power of 2) is no multiple of it.
constexpr int kTaggedSlots = 4;
constexpr uint32_t kTagMask16Bit = 0xffffu;  // below a 16-bit value
constexpr uint32_t kTagMaskTf32 = 0x1fffu;   // the 13 low mantissa bits TF32 leaves out
FUSED_RNN_HD uint32_t tensor_core_step_tag(int64_t steps_done, uint32_t mask) {
  return 1u + static_cast<uint32_t>(static_cast<uint64_t>(steps_done) % mask);
}

struct TensorCorePlan {
  bool runs;
  std::string reason;     // why not, when it does not
  int64_t cluster_split;  // S: blocks a group of 16 units (a thread-block cluster where 2)
  int64_t blocks;         // S H / 16, one per SM at most
  int64_t threads;        // 32 warps: G * kTensorCoreKSplits, kTensorCoreBackwardWarps
  int64_t k_tiles;        // a warp's K share in k-tiles (the last warps' may be shorter)
  int64_t k_tile_bound;   // the kernel built for it: k_tiles rounded up to a multiple of 4
  int64_t batch_pad;      // the batch rounded up to whole pairs of n-tiles of 8
  int64_t h_pitch;        // elements per h row in shared memory: the block's K range and the
                          // pad (float32: TF32-rounded floats)
  int64_t part_pitch;     // floats per row of partial sums
  int64_t shared_bytes;   // forward: h [batch_pad][h_pitch] in the dtype; both: the partial sums
                          // [warps][16][part_pitch] in float; then the carried state's
                          // values [B][16] in float: forward (LSTM) c; backward h's gradient
                          // and (LSTM) c's
};

// What a tensor-core plan needs to know of the device.
struct TensorCoreDevice {
  int64_t sm_count;
  int64_t shared_limit;   // bytes of shared memory a block may have (opt-in)
  int64_t cluster_pairs;  // clusters of 2 blocks, one an SM, resident at once; 0: no clusters
};

// One cluster split's plan (plan_tensor_core_layer chooses among them).
inline TensorCorePlan plan_tensor_core_split(int64_t batch, int64_t hidden, int64_t gates,
                                             int64_t elem_bytes, const TensorCoreDevice& device,
                                             bool backward, int64_t split) {
  TensorCorePlan plan{false, "", split, 0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t groups = hidden / kTensorCoreUnits;
  plan.blocks = split * groups;
  const int64_t warps = backward ? kTensorCoreBackwardWarps : gates * kTensorCoreKSplits;
  const int64_t k_tiles_shared = backward ? gates * hidden / 16 : hidden / 16;
  const int64_t shares = split * (backward ? warps : kTensorCoreKSplits);
  const int64_t register_budget =
      backward ? kTensorCoreBackwardWeightRegisters : kTensorCoreWeightRegisters;
  plan.threads = 32 * warps;
  plan.k_tiles = (k_tiles_shared + shares - 1) / shares;
  plan.k_tile_bound = (plan.k_tiles + 3) / 4 * 4;
  plan.batch_pad = (batch + 15) / 16 * 16;
  const int64_t block_columns = std::min(16 * kTensorCoreKSplits * plan.k_tiles, hidden);
  plan.h_pitch = block_columns + kTensorCoreHPadBytes / elem_bytes;
  plan.part_pitch = plan.batch_pad + kTensorCorePartPad;
  const int64_t partial_bytes = warps * kTensorCoreUnits * plan.part_pitch * 4;
  const int64_t carried = backward ? (gates == 4 ? 2 : 1) : (gates == 4 ? 1 : 0);
  plan.shared_bytes = (backward ? 0 : plan.batch_pad * plan.h_pitch * elem_bytes) +
                      partial_bytes + carried * batch * kTensorCoreUnits * 4;
  if (plan.blocks > device.sm_count) {
    plan.reason = "the hidden size needs " + std::to_string(plan.blocks) + " blocks (" +
                  std::to_string(split) + " a group of 16 units), over the device's " +
                  std::to_string(device.sm_count) + " SMs";
  } else if (split > 1 && groups > device.cluster_pairs) {
    plan.reason = "the hidden size needs " + std::to_string(groups) +
                  " clusters of 2 blocks, over the " + std::to_string(device.cluster_pairs) +
                  " the device runs at once";
  } else if (plan.k_tile_bound * 2 * elem_bytes > register_budget) {
    plan.reason = "a warp's share of W_hh does not fit in registers (" +
                  std::to_string(plan.k_tile_bound * 2 * elem_bytes) + " of them, over " +
                  std::to_string(register_budget) + ", " + std::to_string(split) +
                  (split == 1 ? " block" : " blocks") + " a group of 16 units)";
  } else if (plan.shared_bytes > device.shared_limit) {
    plan.reason = std::string(backward ? "" : "h of the batch and ") + "the partial sums need " +
                  std::to_string(plan.shared_bytes) +
                  " bytes of shared memory per block, over the device's " +
                  std::to_string(device.shared_limit);
  } else {
    plan.runs = true;
  }
  return plan;
}

// elem_bytes: 2 (float16, bfloat16) or 4 (float32, as TF32 where tf32 is allowed: cuDNN's rule,
// torch.backends.cudnn.allow_tf32); float64 stays on the SIMT kernel (forward) or step-wise.
// backward: the backward kernel's plan. cluster_split: 0 takes one block a group where that
// runs, else a cluster of 2 (where the device has clusters); 1 or 2 asks for that split.
inline TensorCorePlan plan_tensor_core_layer(int64_t batch, int64_t hidden, int64_t gates,
                                             int64_t elem_bytes, bool tf32,
                                             const TensorCoreDevice& device,
                                             bool backward = false, int64_t cluster_split = 0) {
  TensorCorePlan plan{false, "", 0, 0, 0, 0, 0, 0, 0, 0, 0};
  if (elem_bytes != 2 && elem_bytes != 4) {
    plan.reason = "tensor cores take float16, bfloat16 and float32 (as TF32) only";
    return plan;
  }
  if (elem_bytes == 4 && !tf32) {
    plan.reason = "float32 takes tensor cores only as TF32, which torch.backends.cudnn.allow_tf32 "
                  "forbids";
    return plan;
  }
  if (batch < 1 || hidden < 1 || hidden % kTensorCoreUnits != 0) {
    plan.reason = "the hidden size is not a positive multiple of 16";
    return plan;
  }
  if (cluster_split < 0 || cluster_split > kTensorCoreMaxClusterSplit) {
    plan.reason = "the cluster split asked for is " + std::to_string(cluster_split) +
                  ", not 1 or 2";
    return plan;
  }
  if (cluster_split > 1 && device.cluster_pairs == 0) {
    plan.reason = "a cluster split needs thread-block clusters (sm_90 or later)";
    return plan;
  }
  if (cluster_split > 0) {
    return plan_tensor_core_split(batch, hidden, gates, elem_bytes, device, backward,
                                  cluster_split);
  }
  plan = plan_tensor_core_split(batch, hidden, gates, elem_bytes, device, backward, 1);
  if (plan.runs || device.cluster_pairs == 0) return plan;
  const TensorCorePlan split = plan_tensor_core_split(batch, hidden, gates, elem_bytes, device,
                                                      backward, kTensorCoreMaxClusterSplit);
  if (split.runs) return split;
  plan.reason += "; split over a cluster: " + split.reason;
  return plan;
}

}  // namespace fused_rnn
