// The CUDA kernel tables that other CUDA files register their ops over.
#pragma once

#include "../cell_ops.h"

namespace fused_rnn {

// The products (cells_cuda.cu).
extern const LinearKernels kCudaLinear;

}  // namespace fused_rnn
