// The pointwise passes for CPUs with AVX-512 (F, BW, VL, DQ) and FMA: 16-wide Vectorized<float>,
// SLEEF's exp and tanh. Compiled alone with the matching -m flags, as pointwise_avx2.cpp is.
#ifndef __AVX512F__
#error "pointwise_avx512.cpp must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c"
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "pointwise_kernels.h"
static_assert(at::vec::Vectorized<float>::size() == 16, "the AVX-512 Vectorized was not selected");
