// The Python extension module fused_rnn._C. Importing it loads the op library (the ops themselves
// go through the torch dispatcher); its functions report how the extension was built and which
// path a CPU or CUDA layer takes, switch the persistent CUDA kernels on or off, and report or
// empty the CPU block cache.
#include "cpu/block_cache.h"
#include "cpu/isa_choice.h"
#include "cpu/linear.h"
#include "cpu/path_choice.h"
#include "cpu/pointwise.h"
#include "default_paths.h"
#include "mma_fragments.h"
#include "persistent_plan.h"
#ifdef FUSED_RNN_WITH_CUDA
#include "cuda/persistent_layer.h"
#endif

#include <algorithm>
#include <iterator>
#include <tuple>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#ifndef FUSED_RNN_VERSION
#error "setup.py defines FUSED_RNN_VERSION"
#endif
#ifndef FUSED_RNN_TORCH_VERSION
#error "setup.py defines FUSED_RNN_TORCH_VERSION"
#endif
#ifndef FUSED_RNN_CUDA_ARCHS
#define FUSED_RNN_CUDA_ARCHS ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.def(
      "build_info",
      [] {
        py::dict info;
        info["version"] = FUSED_RNN_VERSION;
        info["torch_version"] = FUSED_RNN_TORCH_VERSION;
#ifdef FUSED_RNN_WITH_CUDA
        info["cuda"] = true;
#else
        info["cuda"] = false;
#endif
        info["cuda_archs"] = FUSED_RNN_CUDA_ARCHS;
        info["cpu_isas"] = fused_rnn::cpu::pointwise_isas_built();
        info["cpu_isa"] = fused_rnn::cpu::pointwise_kernels().isa;
        return info;
      },
      "How this extension was built: its version, the torch it was built against, whether the "
      "CUDA kernels are compiled in and for which architectures, the instruction sets its CPU "
      "kernels are built for and the one chosen for this CPU.");
  m.def("cpu_features", &fused_rnn::cpu::this_cpu_features,
        "The x86 features the CPU kernel variants need that this CPU has (cpu/isa_choice.h).");
  m.def(
      "cpu_variant_for",
      [](const std::string& requested, const std::vector<std::string>& features) -> std::string {
        return fused_rnn::cpu::variant_for(requested, features);
      },
      "The CPU kernel variant run for ATen's capability `requested` on a CPU with `features`.");
  m.def("cpu_cache_bytes", &fused_rnn::cpu::block_cache_held_bytes,
        "Bytes of freed CPU blocks the block cache holds for reuse (cpu/block_cache.h).");
  m.def("empty_cpu_cache", &fused_rnn::cpu::empty_block_cache,
        "Returns every block the CPU block cache holds to the system.");
  m.def(
      "persistent_plan",
      [](int64_t batch, int64_t hidden, int64_t gates, int64_t elem_bytes, int64_t acc_bytes,
         int64_t sm_count, int64_t shared_limit) {
        const fused_rnn::PersistentPlan plan = fused_rnn::plan_persistent_layer(
            batch, hidden, gates, elem_bytes, acc_bytes, sm_count, shared_limit);
        py::dict d;
        d["runs"] = plan.runs;
        d["reason"] = plan.reason;
        d["units"] = plan.units;
        d["blocks"] = plan.blocks;
        d["shared_bytes"] = plan.shared_bytes;
        return d;
      },
      "The persistent CUDA layer kernel's plan for a shape on a device with sm_count SMs and "
      "shared_limit bytes of shared memory per block (persistent_plan.h).");
  m.def(
      "tensor_core_plan",
      [](int64_t batch, int64_t hidden, int64_t gates, int64_t elem_bytes, bool tf32,
         int64_t sm_count, int64_t shared_limit, int64_t cluster_pairs, bool backward,
         int64_t cluster_split) {
        const fused_rnn::TensorCorePlan plan = fused_rnn::plan_tensor_core_layer(
            batch, hidden, gates, elem_bytes, tf32, {sm_count, shared_limit, cluster_pairs},
            backward, cluster_split);
        py::dict d;
        d["runs"] = plan.runs;
        d["reason"] = plan.reason;
        d["cluster_split"] = plan.cluster_split;
        d["blocks"] = plan.blocks;
        d["threads"] = plan.threads;
        d["k_tiles"] = plan.k_tiles;
        d["k_tile_bound"] = plan.k_tile_bound;
        d["batch_pad"] = plan.batch_pad;
        d["h_pitch"] = plan.h_pitch;
        d["part_pitch"] = plan.part_pitch;
        d["shared_bytes"] = plan.shared_bytes;
        return d;
      },
      "The tensor-core persistent forward's (backward's) plan for a shape on a device with "
      "sm_count SMs, shared_limit bytes of shared memory per block and room for cluster_pairs "
      "clusters of 2 blocks, float32 as TF32 where tf32; cluster_split 0 (chosen), 1 or 2 "
      "(persistent_plan.h).");
  m.def(
      "tensor_core_maps",
      [](int64_t gates) {
        using namespace fused_rnn;
        py::list tile_rows, block_rows, a, b, c, tf32_a, tf32_b;
        for (int tile = 0; tile < gates; ++tile) {
          for (int row = 0; row < 16; ++row) {
            const TileRow r = tensor_core_tile_row(static_cast<int>(gates), tile, row);
            tile_rows.append(py::make_tuple(r.unit, r.gate));
          }
        }
        for (int unit = 0; unit < 16; ++unit) {
          for (int gate = 0; gate < gates; ++gate) {
            block_rows.append(tensor_core_block_row(static_cast<int>(gates), unit, gate));
          }
        }
        for (int lane = 0; lane < 32; ++lane) {
          for (int r = 0; r < 4; ++r) {
            a.append(py::make_tuple(mma::a_row(lane, r), mma::a_col(lane, r)));
          }
          for (int r = 0; r < 2; ++r) {
            b.append(py::make_tuple(mma::b_row(lane, r), mma::b_col(lane)));
          }
          for (int i = 0; i < 4; ++i) {
            c.append(py::make_tuple(mma::c_row(lane, i), mma::c_col(lane, i)));
          }
          for (int r = 0; r < 8; ++r) {
            tf32_a.append(py::make_tuple(mma::a_row(lane, r), mma::tf32_a_col(lane, r)));
          }
          for (int r = 0; r < 4; ++r) {
            tf32_b.append(py::make_tuple(mma::tf32_b_row(lane, r), mma::b_col(lane)));
          }
        }
        py::dict d;
        d["tile_rows"] = tile_rows;    // (unit, gate) of each block row 16 * tile + row
        d["block_rows"] = block_rows;  // the block row of each (unit, gate), unit-major
        d["a"] = a;                    // (row, column) of each lane's A registers, lane-major
        d["b"] = b;
        d["c"] = c;
        d["tf32_a"] = tf32_a;          // a k-tile of TF32 (two m16n8k8), one element a register
        d["tf32_b"] = tf32_b;
        return d;
      },
      "The tensor-core kernel's row interleaving for a cell of `gates` gates and mma.sync's "
      "fragment maps, m16n8k16 and TF32's k-tile (persistent_plan.h, mma_fragments.h).");
  m.def("tensor_core_step_tag", &fused_rnn::tensor_core_step_tag, py::arg("steps_done"), py::arg("mask"),
        "The tag of the h that `steps_done` steps leave in the tensor-core forward's tagged "
        "words (persistent_plan.h).");
  m.def(
      "tagged_exchange",
      []() {
        py::dict d;
        d["slots"] = fused_rnn::kTaggedSlots;
        d["masks"] = py::make_tuple(fused_rnn::kTagMask16Bit, fused_rnn::kTagMaskTf32);
        return d;
      },
      "The tagged exchange's ring size and tag masks (16-bit values, TF32).");
  m.def(
      "set_persistent_kernels",
      [](const std::string& mode) {
        TORCH_CHECK(mode == "measured" || mode == "on" || mode == "simt" || mode == "off",
                    "fused_rnn: expected the persistent mode \"measured\", \"on\", \"simt\" or "
                    "\"off\", got \"", mode, "\"");
#ifdef FUSED_RNN_WITH_CUDA
        using fused_rnn::cuda::PersistentMode;
        fused_rnn::cuda::set_persistent_mode(mode == "on"     ? PersistentMode::kOn
                                             : mode == "simt" ? PersistentMode::kSimt
                                             : mode == "off"  ? PersistentMode::kOff
                                                              : PersistentMode::kMeasured);
#endif
      },
      "When the persistent CUDA layer kernels run: \"measured\" (the default: where the table "
      "of measured paths puts them first), \"on\" (wherever they apply), \"simt\" (the SIMT "
      "forward wherever it fits) or \"off\".");
  m.def(
      "measured_point",
      [](const std::vector<std::tuple<int, int, bool, int64_t, int64_t, std::vector<std::string>>>&
             table,
         int gates, int elem_bytes, bool backward, int64_t batch, int64_t hidden) {
        using fused_rnn::CudaPath;
        const std::pair<CudaPath, const char*> names[] = {{CudaPath::kTensorCores, "tensor cores"},
                                                          {CudaPath::kSimt, "SIMT"},
                                                          {CudaPath::kStepwise, "step-wise"}};
        std::vector<fused_rnn::MeasuredPoint> points;
        for (const auto& [g, e, bwd, b, h, order] : table) {
          TORCH_CHECK(order.size() == 3, "fused_rnn: expected an order of 3 paths, got ",
                      order.size());
          fused_rnn::MeasuredPoint p{g, e, bwd, b, h, {}};
          for (size_t k = 0; k < 3; ++k) {
            const auto* named = std::find_if(std::begin(names), std::end(names),
                                             [&](const auto& n) { return order[k] == n.second; });
            TORCH_CHECK(named != std::end(names), "fused_rnn: unknown path \"", order[k], "\"");
            p.order[k] = named->first;
          }
          points.push_back(p);
        }
        const fused_rnn::MeasuredPoint* found =
            table.empty() ? fused_rnn::measured_point(gates, elem_bytes, backward, batch, hidden)
                          : fused_rnn::nearest_measured_point(points.data(), points.size(), gates,
                                                              elem_bytes, backward, batch, hidden);
        py::object result = py::none();
        if (found != nullptr) {
          py::list order;
          for (const CudaPath path : found->order) {
            for (const auto& [p, name] : names) {
              if (p == path) order.append(name);
            }
          }
          py::dict d;
          d["batch"] = found->batch;
          d["hidden"] = found->hidden;
          d["order"] = order;
          result = d;
        }
        return result;
      },
      "The measured point nearest a layer's shape (persistent_plan.h: nearest_measured_point) in "
      "`table` [(gates, elem_bytes, backward, batch, hidden, [3 paths])], or in the default's "
      "table (csrc/measured_paths.h) where `table` is empty: {batch, hidden, order}, the paths "
      "\"tensor cores\", \"SIMT\", \"step-wise\" fastest first; None where nothing near it "
      "was measured.");
  m.def(
      "set_persistent_barrier",
      [](const std::string& barrier) {
#ifdef FUSED_RNN_WITH_CUDA
        fused_rnn::cuda::set_persistent_barrier(barrier);
#else
        (void)barrier;
#endif
      },
      "How the tensor-core persistent kernels wait for each step: \"flags\", \"grid\" or "
      "\"tagged\" (the forward polls tagged words of h; the backward waits at flags).");
  m.def(
      "set_persistent_cluster_split",
      [](int64_t split) {
#ifdef FUSED_RNN_WITH_CUDA
        fused_rnn::cuda::set_persistent_cluster_split(split);
#else
        (void)split;
#endif
      },
      "Blocks a group of 16 units of the tensor-core persistent kernels: 0 (chosen), 1 or 2.");
  m.def(
      "tensor_core_device",
      [](int64_t device) {
        py::dict d;
#ifdef FUSED_RNN_WITH_CUDA
        const fused_rnn::TensorCoreDevice limits = fused_rnn::cuda::tensor_core_device(device);
        d["sm_count"] = limits.sm_count;
        d["shared_limit"] = limits.shared_limit;
        d["cluster_pairs"] = limits.cluster_pairs;
#else
        (void)device;
        TORCH_CHECK(false, "fused_rnn: built without the CUDA kernels");
#endif
        return d;
      },
      "What the tensor-core plans know of CUDA device `device` (persistent_plan.h).");
  m.def(
      "cpu_layer_path",
      [](int64_t gates, int64_t steps, int64_t batch, int64_t input, int64_t hidden, int64_t proj,
         int64_t elem_bytes, bool keep_saved) {
        const fused_rnn::cpu::LayerShape shape{gates,      steps,      batch,
                                               input,      hidden,     proj,
                                               elem_bytes, keep_saved, at::get_num_threads(),
                                               fused_rnn::cpu::onednn_available(),
                                               fused_rnn::cpu::cpu_has_avx512()};
        py::dict d;
        d["forward"] = fused_rnn::cpu::forward_path(shape);
        d["backward"] = fused_rnn::cpu::backward_path(shape);
        return d;
      },
      "The paths a padded CPU layer of this shape takes, forward and backward, in words "
      "(cpu/path_choice.h).");
  m.def(
      "cuda_layer_path",
      [](int64_t gates, int64_t batch, int64_t hidden, int64_t elem_bytes, int64_t acc_bytes,
         int64_t device, bool backward) -> std::string {
#ifdef FUSED_RNN_WITH_CUDA
        return fused_rnn::cuda::layer_path(gates, batch, hidden, elem_bytes, acc_bytes, device,
                                           backward);
#else
        (void)gates, (void)batch, (void)hidden, (void)elem_bytes, (void)acc_bytes, (void)device;
        (void)backward;
        return "step-wise: built without the CUDA kernels";
#endif
      },
      "Which forward (backward) path a CUDA layer of this shape takes, in words.");
}
