// The pointwise passes for CPUs with AVX2 and FMA: 8-wide Vectorized<float>, SLEEF's exp and tanh.
// The build compiles this file alone with -mavx2 -mfma -mf16c (setup.py, CMakeLists.txt); everything it
// defines lives in namespace AVX2 or is instantiated on AVX2's own Vectorized types.
#ifndef __AVX2__
#error "pointwise_avx2.cpp must be compiled with -mavx2 -mfma -mf16c"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "pointwise_kernels.h"
static_assert(at::vec::Vectorized<float>::size() == 8, "the AVX2 Vectorized was not selected");
