// The pointwise passes for any CPU: ATen's portable Vectorized (plain arrays the compiler may
// vectorize, with the C library's exp and tanh).
#define CPU_CAPABILITY DEFAULT
#include "pointwise_kernels.h"
