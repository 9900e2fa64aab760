// Where the values of mma.sync's operands sit (row.col, float accumulators; PTX ISA, "Matrix
// fragments for mma.m16n8k16" and "for mma.m16n8k8"): for lane = 4 * group + quad, which element
// of the tile register r (or accumulator i) of that lane holds. m16n8k16 with 16-bit inputs: a
// register holds two elements, the one named and the next along K (A: next column; B: next row).
// m16n8k8 with TF32 inputs: a register holds one element.
// Pure functions, so the CPU tests check that they cover each tile exactly once; the tensor-core
// kernels and benchmarks/gpu_micro/recurrent_step.cu index their fragments with them.
#pragma once

#include "cell_math.h"  // FUSED_RNN_HD

namespace fused_rnn::mma {

// A: 16 x 16 (M x K), row-major; 4 registers.
FUSED_RNN_HD int a_row(int lane, int r) { return lane / 4 + 8 * (r & 1); }
FUSED_RNN_HD int a_col(int lane, int r) { return 2 * (lane % 4) + 8 * (r >> 1); }
// B: 16 x 8 (K x N); 2 registers; the lane's column (N) is its group.
FUSED_RNN_HD int b_row(int lane, int r) { return 2 * (lane % 4) + 8 * r; }
FUSED_RNN_HD int b_col(int lane) { return lane / 4; }
// TF32: a k-tile of 16 columns as two m16n8k8, registers 0-3 (A) and 0-1 (B) for columns 0-7,
// the rest for 8-15. A: 16 x 16, 8 registers, rows as a_row; B: 16 x 8, 4 registers, columns as
// b_col. (One m16n8k8: A register r at row a_row, column lane % 4 + 4 * (r >> 1); B register r at
// row lane % 4 + 4 * r.)
FUSED_RNN_HD int tf32_a_col(int lane, int r) { return 8 * (r / 4) + lane % 4 + 4 * ((r % 4) >> 1); }
FUSED_RNN_HD int tf32_b_row(int lane, int r) { return 8 * (r / 2) + lane % 4 + 4 * (r % 2); }
// C and D of both: 16 x 8 (M x N) floats; 4 accumulators.
FUSED_RNN_HD int c_row(int lane, int i) { return lane / 4 + 8 * (i >> 1); }
FUSED_RNN_HD int c_col(int lane, int i) { return 2 * (lane % 4) + (i & 1); }

}  // namespace fused_rnn::mma
