// Vector math on ATen's Vectorized lane packs: exp and tanh for the gate math (MathOps), and
// loads and stores of a few units in the op-math type.
// Compiled per instruction set: included only by pointwise_kernels.h (which see).
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY and include this through pointwise_kernels.h"
#endif

#include "../cell_math.h"

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fused_rnn {

// The gate math on Vectorized lane packs.
template <typename S>
struct MathOps<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V exp(V x) { return x.exp(); }
  static V tanh(V x) { return x.tanh(); }
};

// float's exp and tanh, inlined (Sleef's, called out of line, took a fifth of a small LSTM
// layer's forward: B=32 H=128 on one thread, 8.7 -> 6.8 ms; NOTES entry 23). The polynomials
// are least-squares fits of our own, made for these forms and checked in float32 over the whole
// range (max errors below).
template <>
struct MathOps<at::vec::Vectorized<float>> {
  using V = at::vec::Vectorized<float>;
  using I = at::vec::Vectorized<int32_t>;

  // e^x = 2^n e^r, n = round(x / ln 2), |r| <= ln 2 / 2 (ln 2 in two parts, so r is exact);
  // e^r = 1 + r + r^2 q(r); 2^n as two normal powers of two, so results from 2^-149 (denormals)
  // to the overflow to inf are rounded once. x is clamped to where that holds: below, 0; above,
  // inf. Max error 1.3 ULP; NaN stays NaN (ATen's minimum and maximum keep it).
  static V exp(V x) {
    const V clamped = at::vec::minimum(at::vec::maximum(x, V(-104.0f)), V(89.0f));
    const V n = (clamped * V(1.44269504f)).round();
    V r = at::vec::fmadd(n, V(-0.693145751953125f), clamped);
    r = at::vec::fmadd(n, V(-1.42860677e-6f), r);
    V q(1.37518556e-3f);
    q = at::vec::fmadd(q, r, V(8.36709328e-3f));
    q = at::vec::fmadd(q, r, V(4.16693203e-2f));
    q = at::vec::fmadd(q, r, V(1.66665360e-1f));
    q = at::vec::fmadd(q, r, V(4.99999911e-1f));
    const V e_r = at::vec::fmadd(r * r, q, r + V(1.0f));
    // NaN lanes (already NaN in e_r) convert 0, not an out-of-range float.
    const I n_int = at::vec::convert_to_int_of_same_size(V::blendv(V(0.0f), n, n == n));
    const I half = n_int >> I(1);
    return e_r * power_of_two(half) * power_of_two(n_int - half);
  }

  // An odd polynomial near 0, where the other form would cancel; else 1 - 2 / (e^2|x| + 1),
  // which saturates to 1 and keeps NaN; then x's sign (so tanh(-0) = -0). Max error 0.8 ULP
  // (the polynomial, fit of (tanh(x) - x) / x^3 in x^2 on [0, 0.625]) and 1.7 ULP (the other).
  static V tanh(V x) {
    const V x2 = x * x;
    V p(-5.7875775e-3f);
    p = at::vec::fmadd(p, x2, V(2.0711632e-2f));
    p = at::vec::fmadd(p, x2, V(-5.3761411e-2f));
    p = at::vec::fmadd(p, x2, V(1.3331693e-1f));
    p = at::vec::fmadd(p, x2, V(-3.3333290e-1f));
    const V near_zero = at::vec::fmadd(x * x2, p, x);
    const V a = x.abs();
    const V magnitude = V(1.0f) - V(2.0f) / (exp(a + a) + V(1.0f));
    return V::blendv(magnitude, near_zero, a < V(0.625f)) | (x & V(-0.0f));
  }

 private:
  // 2^n for -126 <= n <= 127, built in the exponent field.
  static V power_of_two(const I& n) { return at::vec::cast<float>((n + I(127)) << I(23)); }
};


namespace cpu::CPU_CAPABILITY {

// Loads and stores `count` (1 to kWidth) consecutive units as one pack of the op-math type; the
// half types are converted on the way, so all the math runs in float.
template <typename scalar_t>
struct Lanes {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t kWidth = Vec::size();

  static Vec load(const scalar_t* p, int64_t count) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      return Vec::loadu(p, count);
    } else {
      acc_t buf[kWidth];
      for (int64_t i = 0; i < count; ++i) buf[i] = static_cast<acc_t>(p[i]);
      return Vec::loadu(buf, count);
    }
  }

  static void store(scalar_t* p, const Vec& v, int64_t count) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      v.store(p, static_cast<int>(count));
    } else {
      acc_t buf[kWidth];
      v.store(buf);
      for (int64_t i = 0; i < count; ++i) p[i] = static_cast<scalar_t>(buf[i]);
    }
  }
};

// Calls pack(b, j, count) over the units [begin, end) of a [B, H] grid (flattened), in packs of
// count <= kWidth consecutive units of one row.
template <typename scalar_t, typename Pack>
void for_each_pack(int64_t hidden, int64_t begin, int64_t end, const Pack& pack) {
  constexpr int64_t kWidth = Lanes<scalar_t>::kWidth;
  for (int64_t idx = begin; idx < end;) {
    const int64_t b = idx / hidden;
    const int64_t j_begin = idx % hidden;
    const int64_t j_end = std::min(hidden, j_begin + (end - idx));
    for (int64_t j = j_begin; j < j_end; j += kWidth) pack(b, j, std::min(kWidth, j_end - j));
    idx = b * hidden + j_end;
  }
}

}  // namespace cpu::CPU_CAPABILITY
}  // namespace fused_rnn
