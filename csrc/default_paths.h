// The table of measured paths the CUDA default reads (measured_paths.h, written by
// benchmarks/path_table.py) and its lookup. Apart from persistent_plan.h, so that a new table
// recompiles only its readers (persistent_layer.cu, python_module.cpp), not the kernels.
#pragma once

#include "persistent_plan.h"

#include "measured_paths.h"  // kMeasuredPaths

#include <iterator>

namespace fused_rnn {

// The measured point for a layer of this shape (nearest_measured_point over kMeasuredPaths).
inline const MeasuredPoint* measured_point(int gates, int elem_bytes, bool backward, int64_t batch,
                                           int64_t hidden) {
  return nearest_measured_point(kMeasuredPaths, std::size(kMeasuredPaths), gates, elem_bytes,
                                backward, batch, hidden);
}

}  // namespace fused_rnn
