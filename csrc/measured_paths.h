// The CUDA layer's measured paths, the table the default reads (through default_paths.h, which
// includes it after the types it fills): per cell kind (gates), dtype size, direction, batch and
// hidden size, the paths fastest first. Written by benchmarks/path_table.py; rerun it with a new
// sweep rather than editing by hand.
// Source: the H200 run of 2026-11-26 (benchmarks/results/2026-11-26-gpu-h200.json, NOTES entries
// 15 and 61): the SIMT persistent forward against the step-wise path of then at batch 1,
// T=100-256, 0.05-0.27x of its time in float32, bfloat16 and float16 (the LSTM at H 128-1024,
// the GRU at 128-512); no other path measured yet
#pragma once

namespace fused_rnn {

inline constexpr MeasuredPoint kMeasuredPaths[] = {
    // gates, elem_bytes, backward, batch, hidden, order (fastest first)
    {4, 2, false, 1, 128, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {4, 2, false, 1, 256, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {4, 2, false, 1, 512, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {4, 2, false, 1, 1024, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {4, 4, false, 1, 128, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {4, 4, false, 1, 256, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {4, 4, false, 1, 512, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {4, 4, false, 1, 1024, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {3, 2, false, 1, 128, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {3, 2, false, 1, 256, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {3, 2, false, 1, 512, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {3, 4, false, 1, 128, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {3, 4, false, 1, 256, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
    {3, 4, false, 1, 512, {CudaPath::kSimt, CudaPath::kStepwise, CudaPath::kStepwise}},
};

}  // namespace fused_rnn
