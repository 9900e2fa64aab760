// The CPU pointwise passes, written once over at::vec::Vectorized and compiled per instruction set:
// each pointwise_<isa>.cpp defines CPU_CAPABILITY (and is built with that ISA's flags) before
// including this file, so everything here lands in namespace fused_rnn::cpu::<CPU_CAPABILITY> and
// ATen's Vectorized is the portable, 8-wide AVX2 or 16-wide AVX-512 one. Include it nowhere else.
#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY before including pointwise_kernels.h"
#endif

#include "../cell_math.h"
#include "../cell_ops.h"
#include "pointwise.h"

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <utility>

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

// The LSTM update of the n units j.. of one row, from a_h, their hidden-side pre-activations, and
// input_row, the row's input side ([4H], read at g * H + j: a row of the input projection, or the
// biases where the step computed x @ W_ih^T into a_h): the activated gates go to gates_row (which
// may be input_row) where it is not null; c and h point at the row's unit j.
template <typename scalar_t, typename Vec>
inline void lstm_units(const scalar_t* input_row, scalar_t* gates_row,
                       const Vec (&a_h)[kLstmGates], const scalar_t* c_prev, scalar_t* c_out,
                       scalar_t* h_out, int64_t H, int64_t j, int64_t n) {
  using L = Lanes<scalar_t>;
  Vec a[kLstmGates];
  for (int64_t g = 0; g < kLstmGates; ++g) a[g] = L::load(input_row + g * H + j, n) + a_h[g];
  const auto s = lstm_step_forward(a[0], a[1], a[2], a[3], L::load(c_prev, n));
  L::store(c_out, s.c_new, n);
  L::store(h_out, s.h_new, n);
  if (!gates_row) return;
  store_lstm_saved(s, [&](int64_t k, const Vec& v) { L::store(gates_row + k * H + j, v, n); });
}

void lstm_forward(const Tensor& gates, const Tensor& gates_h, const Tensor& c_prev,
                  const Tensor& h_out, const Tensor& c_out, int64_t begin, int64_t end) {
  const int64_t H = c_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(c_prev.scalar_type(), "lstm_forward_cpu", [&] {
    using L = Lanes<scalar_t>;
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    const scalar_t* gates_h_p = gates_h.data_ptr<scalar_t>();
    const scalar_t* c_p = c_prev.data_ptr<scalar_t>();
    scalar_t* h_out_p = h_out.data_ptr<scalar_t>();
    scalar_t* c_out_p = c_out.data_ptr<scalar_t>();
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      const scalar_t* hrow = gates_h_p + b * kLstmGates * H;
      typename L::Vec a_h[kLstmGates];
      for (int64_t g = 0; g < kLstmGates; ++g) a_h[g] = L::load(hrow + g * H + j, n);
      const int64_t u = b * H + j;
      scalar_t* row = gates_p + b * kLstmGates * H;
      lstm_units(row, row, a_h, c_p + u, c_out_p + u, h_out_p + u, H, j, n);
    });
  });
}

// The LSTM backward of the n units j.. of row b ([B, H] grids, [B, 4H] gate rows): writes their
// gate gradients and grad_c_prev, which may alias grad_c.
template <typename scalar_t>
inline void lstm_backward_units(const scalar_t* grad_h, const scalar_t* grad_c,
                                const scalar_t* gates, const scalar_t* c_prev,
                                const scalar_t* c_new, scalar_t* grad_gates,
                                scalar_t* grad_c_prev, int64_t H, int64_t b, int64_t j,
                                int64_t n) {
  using L = Lanes<scalar_t>;
  using Vec = typename L::Vec;
  const scalar_t* row = gates + b * kLstmSaved * H;
  const int64_t u = b * H + j;
  const auto d = lstm_step_backward(
      [&](int64_t k) { return L::load(row + k * H + j, n); }, L::load(c_prev + u, n),
      L::load(c_new + u, n), L::load(grad_h + u, n), L::load(grad_c + u, n));
  scalar_t* grow = grad_gates + b * kLstmGates * H;
  store_lstm_gate_grads(d, [&](int64_t g, const Vec& v) { L::store(grow + g * H + j, v, n); });
  L::store(grad_c_prev + u, d.c, n);
}

void lstm_backward(const Tensor& grad_h, const Tensor& grad_c, const Tensor& gates,
                   const Tensor& c_prev, const Tensor& c_new, const Tensor& grad_gates,
                   const Tensor& grad_c_prev, int64_t begin, int64_t end) {
  const int64_t H = c_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(c_prev.scalar_type(), "lstm_backward_cpu", [&] {
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      lstm_backward_units(grad_h.data_ptr<scalar_t>(), grad_c.data_ptr<scalar_t>(),
                          gates.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(),
                          c_new.data_ptr<scalar_t>(), grad_gates.data_ptr<scalar_t>(),
                          grad_c_prev.data_ptr<scalar_t>(), H, b, j, n);
    });
  });
}

// The GRU update of the n units j.. of one row, from gx and gh, their input-side and hidden-side
// products (b_ih and b_hh included): writes h and the row's workspace.
template <typename scalar_t, typename Vec>
inline void gru_units(const Vec (&gx)[kGruGates], const Vec (&gh)[kGruGates],
                      const scalar_t* h_prev, scalar_t* h_out, scalar_t* ws_row, int64_t H,
                      int64_t j, int64_t n) {
  using L = Lanes<scalar_t>;
  const auto s = gru_step_forward(gx[0], gx[1], gx[2], gh[0], gh[1], gh[2], L::load(h_prev, n));
  store_gru_saved(s, [&](int64_t k, const Vec& v) { L::store(ws_row + k * H + j, v, n); });
  L::store(h_out, s.h_new, n);
}

void gru_forward(const Tensor& gx, const Tensor& gh, const Tensor& h_prev, const Tensor& h_out,
                 const Tensor& workspace, int64_t begin, int64_t end) {
  const int64_t H = h_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(h_prev.scalar_type(), "gru_forward_cpu", [&] {
    using L = Lanes<scalar_t>;
    const scalar_t* gx_p = gx.data_ptr<scalar_t>();
    const scalar_t* gh_p = gh.data_ptr<scalar_t>();
    const scalar_t* h_p = h_prev.data_ptr<scalar_t>();
    scalar_t* h_out_p = h_out.data_ptr<scalar_t>();
    scalar_t* ws_p = workspace.data_ptr<scalar_t>();
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      const scalar_t* xrow = gx_p + b * kGruGates * H;
      const scalar_t* hrow = gh_p + b * kGruGates * H;
      typename L::Vec a_x[kGruGates], a_h[kGruGates];
      for (int64_t g = 0; g < kGruGates; ++g) {
        a_x[g] = L::load(xrow + g * H + j, n);
        a_h[g] = L::load(hrow + g * H + j, n);
      }
      const int64_t u = b * H + j;
      gru_units(a_x, a_h, h_p + u, h_out_p + u, ws_p + b * kGruSaved * H, H, j, n);
    });
  });
}

// The GRU backward of the n units j.. of row b ([B, H] grids, [B, 4H] workspace rows, [B, 3H]
// gate rows): writes their input-side and hidden-side gate gradients and the direct part of
// grad_h_prev, which may alias grad_h.
template <typename scalar_t>
inline void gru_backward_units(const scalar_t* grad_h, const scalar_t* h_prev,
                               const scalar_t* workspace, scalar_t* grad_input_gates,
                               scalar_t* grad_hidden_gates, scalar_t* grad_h_direct, int64_t H,
                               int64_t b, int64_t j, int64_t n) {
  using L = Lanes<scalar_t>;
  using Vec = typename L::Vec;
  const scalar_t* ws = workspace + b * kGruSaved * H;
  const int64_t u = b * H + j;
  const auto d = gru_step_backward([&](int64_t k) { return L::load(ws + k * H + j, n); },
                                   L::load(h_prev + u, n), L::load(grad_h + u, n));
  scalar_t* gi = grad_input_gates + b * kGruGates * H;
  scalar_t* gh = grad_hidden_gates + b * kGruGates * H;
  store_gru_gate_grads(
      d, [&](int64_t g, const Vec& v) { L::store(gi + g * H + j, v, n); },
      [&](int64_t g, const Vec& v) { L::store(gh + g * H + j, v, n); });
  L::store(grad_h_direct + u, d.h, n);
}

void gru_backward(const Tensor& grad_h, const Tensor& h_prev, const Tensor& workspace,
                  const Tensor& grad_input_gates, const Tensor& grad_hidden_gates,
                  const Tensor& grad_h_direct, int64_t begin, int64_t end) {
  const int64_t H = h_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(h_prev.scalar_type(), "gru_backward_cpu", [&] {
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      gru_backward_units(grad_h.data_ptr<scalar_t>(), h_prev.data_ptr<scalar_t>(),
                         workspace.data_ptr<scalar_t>(), grad_input_gates.data_ptr<scalar_t>(),
                         grad_hidden_gates.data_ptr<scalar_t>(),
                         grad_h_direct.data_ptr<scalar_t>(), H, b, j, n);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The fused recurrent step (pointwise.h): a register-blocked product of a few rows of h_prev with
// one packed unit block of W_hh, then the gate math on the accumulators.

using FloatVec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = FloatVec::size();

// Accumulator packs the product keeps in registers (AVX-512 has 32 vector registers, AVX2 16;
// the rest hold the weights of one k and the broadcast h): a task covers kAccumulators / G rows.
#ifdef CPU_CAPABILITY_AVX512
constexpr int kAccumulators = 24;
#else
constexpr int kAccumulators = 12;
#endif

// acc[r][g] = sum over k of a[r][k] * b[k][g * kLanes ...]: R rows of a (strides a_row, a_k) and
// G packs of each row k of b (row stride b_k); with kAccumulate, added to acc. With kTail, only
// `tail` lanes of the last pack are read (b's last columns; the rest are zeros), the others whole.
template <int G, int R, bool kTail = false, bool kAccumulate = false>
inline void tile_product(const float* a, int64_t a_row, int64_t a_k, const float* b, int64_t b_k,
                         int64_t K, FloatVec (&acc)[R][G], int64_t tail = kLanes) {
  if constexpr (!kAccumulate) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[r][g] = FloatVec(0.0f);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    FloatVec w[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const float* p = b + k * b_k + g * kLanes;
      w[g] = kTail && g == G - 1 ? FloatVec::loadu(p, tail) : FloatVec::loadu(p);
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const FloatVec x(a[r * a_row + k * a_k]);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[r][g] = at::vec::fmadd(x, w[g], acc[r][g]);
    }
  }
}

// The product of R rows of h [*, K] with one packed panel [K, G * kLanes], or added to acc.
template <int G, int R, bool kAccumulate = false>
inline void recurrent_product(const float* h, const float* panel, int64_t K,
                              FloatVec (&acc)[R][G]) {
  tile_product<G, R, false, kAccumulate>(h, K, 1, panel, G * kLanes, K, acc);
}

// Calls f with std::integral_constant<int, n>, for 1 <= n <= R: the row (or column) count of a
// task as a compile-time constant, so its accumulators stay in registers.
template <int R, typename F>
inline void with_count(int64_t n, const F& f) {
  if constexpr (R > 1) {
    if (n < R) return with_count<R - 1>(n, f);
  }
  f(std::integral_constant<int, R>{});
}

template <int G>
constexpr int kTaskRows = kAccumulators / G;

// The chunks a product with G accumulator packs per row splits `rows` rows into.
template <int G>
int64_t row_chunks(int64_t rows) {
  return (rows + kTaskRows<G> - 1) / kTaskRows<G>;
}

int64_t recurrent_tasks(int64_t rows, int64_t hidden, int64_t packs) {
  // 3 packs a row (the GRU) or 4 (the LSTM; the GRU with its input side).
  const int64_t chunks = packs == 3 ? row_chunks<3>(rows) : row_chunks<4>(rows);
  return (hidden + kLanes - 1) / kLanes * chunks;
}

// Task `task` of a product with G accumulator packs per row over `rows` rows: panel (column)
// block task / chunks and row chunk task % chunks, the rows [row0, row_end). Rows are split
// evenly over the chunks (8 rows: 4 + 4, not 6 + 2): a chunk of few rows leaves the product
// bound by its weight loads.
struct PanelTask {
  int64_t block, row0, row_end;
};
template <int G>
inline PanelTask panel_task(int64_t task, int64_t rows) {
  const int64_t chunks = row_chunks<G>(rows), chunk = task % chunks;
  return {task / chunks, chunk * rows / chunks, (chunk + 1) * rows / chunks};
}

// Runs body(block, row0, row_count) for the tasks [begin, end) of a product with G accumulator
// packs a row over `rows` rows (panel_task), row_count a compile-time constant (with_count).
template <int G, typename Body>
void for_each_task(int64_t rows, int64_t begin, int64_t end, const Body& body) {
  for (int64_t task = begin; task < end; ++task) {
    const auto [block, row0, row_end] = panel_task<G>(task, rows);
    with_count<kTaskRows<G>>(row_end - row0,
                             [&](auto row_count) { body(block, row0, row_count); });
  }
}

// Runs the tasks [begin, end) of a product of h [rows, K] (contiguous rows) with a packed weight,
// plus that of x [rows, x_k] with x_packed (packed alike) where x is not null: task t is panel
// block t / chunks and row chunk t % chunks (consecutive tasks share a block's weights, which so
// stay in cache). finish(row, block, acc) gets a row's G accumulator packs for that block.
template <int G, typename Finish>
void for_each_panel_task(const float* h, int64_t rows, int64_t K, const float* w_packed,
                         int64_t begin, int64_t end, const Finish& finish,
                         const float* x = nullptr, int64_t x_k = 0,
                         const float* x_packed = nullptr) {
  for_each_task<G>(rows, begin, end, [&](int64_t block, int64_t row0, auto row_count) {
    constexpr int kRows = decltype(row_count)::value;
    FloatVec acc[kRows][G];
    recurrent_product<G, kRows>(h + row0 * K, w_packed + block * K * G * kLanes, K, acc);
    if (x) {
      recurrent_product<G, kRows, true>(x + row0 * x_k, x_packed + block * x_k * G * kLanes, x_k,
                                        acc);
    }
    for (int r = 0; r < kRows; ++r) finish(row0 + r, block, acc[r]);
  });
}

// Packs the rows of w [N, K] into panels [blocks, K, G * kLanes]: panel columns (g, 0..) of
// block b hold the `count` consecutive rows of w from `first`, {first, count} = rows_of(b, g),
// and zeros in the lanes past them (past N). w may be contiguous or the transpose of a
// contiguous matrix (W_hh^T for the backward), which is read as it lies.
template <typename RowsOf>
Tensor pack_panels(const Tensor& w_in, int64_t G, int64_t blocks, const RowsOf& rows_of) {
  const bool transposed = w_in.stride(0) == 1 && w_in.stride(1) == w_in.size(0);
  const Tensor w = transposed ? w_in : w_in.contiguous();
  const int64_t N = w.size(0), K = w.size(1), width = G * kLanes;
  Tensor packed = at::empty({blocks, K, width}, w.options());
  const float* src = w.data_ptr<float>();
  for (int64_t block = 0; block < blocks; ++block) {
    float* panel = packed.data_ptr<float>() + block * K * width;
    for (int64_t g = 0; g < G; ++g) {
      const auto [first, count] = rows_of(block, g);
      for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
        const int64_t n = std::min(kLanes, K - k0);
        float* out = panel + k0 * width + g * kLanes;
        if (transposed) {
          // A panel row is `count` consecutive values of the matrix as it lies.
          for (int64_t k = 0; k < n; ++k) {
            std::copy_n(src + (k0 + k) * N + first, count, out + k * width);
          }
        } else if (count > 0) {
          // A tile of `count` rows by n values of k, transposed in registers: whole lines read
          // and written. (One element at a time, walking the destination in order across 64
          // rows, was a quarter of a B=1 H=512 LSTM forward.)
          at::vec::transpose_mxn<float>(src + first * K + k0, K, out, width, count, n);
        }
        for (int64_t k = 0; count < kLanes && k < n; ++k) {
          std::fill(out + k * width + count, out + k * width + kLanes, 0.0f);
        }
      }
    }
  }
  return packed;
}

// W_hh [G*H, K]: block b's panel holds the G gate rows of units b * kLanes onwards.
Tensor pack_recurrent_weight(const Tensor& w_hh, int64_t gates) {
  const int64_t H = w_hh.size(0) / gates;
  return pack_panels(w_hh, gates, (H + kLanes - 1) / kLanes,
                     [&](int64_t block, int64_t g) {
                       const int64_t j = block * kLanes;
                       return std::pair{g * H + j, std::min(kLanes, H - j)};
                     });
}

void lstm_forward_recurrent(const RecurrentStep& s, int64_t begin, int64_t end) {
  const int64_t H = s.hidden;
  for_each_panel_task<kLstmGates>(
      s.h_prev, s.rows, s.state, s.w_packed, begin, end,
      [&](int64_t b, int64_t block, const FloatVec(&a)[kLstmGates]) {
        const int64_t j = block * kLanes, n = std::min(kLanes, H - j), u = b * H + j;
        float* gates_row = s.gates ? s.gates + b * kLstmGates * H : nullptr;
        lstm_units(s.x ? s.bias : gates_row, gates_row, a, s.c_prev + u, s.c_out + u,
                   s.h_out + u, H, j, n);
      },
      s.x, s.input, s.w_ih_packed);
}

// The GRU step's update of row b, units of `block`, from its hidden-side products (acc_h, b_hh
// not included) and its input side: the gx row's, or where the step computed x @ W_ih^T itself,
// acc_x plus b_ih.
inline void gru_finish(const RecurrentStep& s, int64_t b, int64_t block,
                       const FloatVec (&acc_h)[kGruGates], const FloatVec* acc_x) {
  using L = Lanes<float>;
  const int64_t H = s.hidden, j = block * kLanes, n = std::min(kLanes, H - j);
  const float* x_side = acc_x ? s.bias : s.gates + b * kGruGates * H;
  FloatVec gx[kGruGates], gh[kGruGates];
  for (int64_t g = 0; g < kGruGates; ++g) {
    gx[g] = L::load(x_side + g * H + j, n);
    if (acc_x) gx[g] = gx[g] + acc_x[g];
    gh[g] = s.b_hh ? acc_h[g] + L::load(s.b_hh + g * H + j, n) : acc_h[g];
  }
  const int64_t u = b * H + j;
  gru_units<float>(gx, gh, s.h_prev + u, s.h_out + u, s.workspace + b * kGruSaved * H, H,
                   j, n);
}

void gru_forward_recurrent(const RecurrentStep& s, int64_t begin, int64_t end) {
  if (!s.x) {
    for_each_panel_task<kGruGates>(
        s.h_prev, s.rows, s.state, s.w_packed, begin, end,
        [&](int64_t b, int64_t block, const FloatVec(&acc)[kGruGates]) {
          gru_finish(s, b, block, acc, nullptr);
        });
    return;
  }
  // With its input side: both products of a row in registers at once (kGruPacksWithInput packs
  // a row). The hidden side's r and z carry on as the input side's accumulators.
  for_each_task<kGruPacksWithInput>(s.rows, begin, end, [&](int64_t block, int64_t row0,
                                                             auto row_count) {
    constexpr int kRows = decltype(row_count)::value;
    const int64_t h_panel = block * s.state * kGruGates * kLanes;
    const int64_t x_panel = block * s.input * kGruGates * kLanes;
    FloatVec acc_h[kRows][kGruGates], acc_x[kRows][kGruGates];
    recurrent_product<kGruGates, kRows>(s.h_prev + row0 * s.state, s.w_packed + h_panel,
                                        s.state, acc_h);
    for (int r = 0; r < kRows; ++r) {
      acc_x[r][0] = acc_h[r][0];
      acc_x[r][1] = acc_h[r][1];
      acc_x[r][2] = FloatVec(0.0f);
      acc_h[r][0] = acc_h[r][1] = FloatVec(0.0f);
    }
    recurrent_product<kGruGates, kRows, true>(s.x + row0 * s.input, s.w_ih_packed + x_panel,
                                              s.input, acc_x);
    for (int r = 0; r < kRows; ++r) gru_finish(s, row0 + r, block, acc_h[r], acc_x[r]);
  });
}

Tensor pack_linear_weight(const Tensor& w) {
  const int64_t N = w.size(0), per_block = kLinearGroups * kLanes;
  return pack_panels(w, kLinearGroups, (N + per_block - 1) / per_block,
                     [&](int64_t block, int64_t g) {
                       const int64_t first = block * per_block + g * kLanes;
                       return std::pair{first, std::clamp<int64_t>(N - first, 0, kLanes)};
                     });
}

int64_t linear_tasks(int64_t rows, int64_t columns) {
  const int64_t per_block = kLinearGroups * kLanes;
  return (columns + per_block - 1) / per_block * row_chunks<kLinearGroups>(rows);
}

// Writes a whole pack to dst past the caches (a non-temporal store), where this ISA has one and
// dst is aligned to it; false, having written nothing, elsewhere. Such stores are weakly ordered:
// a thread ends its writes with past_cache_fence() before others read them.
inline bool store_past_cache(float* dst, const FloatVec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if (reinterpret_cast<std::uintptr_t>(dst) % 64 != 0) return false;
  _mm512_stream_ps(dst, v);
  return true;
#elif defined(CPU_CAPABILITY_AVX2)
  if (reinterpret_cast<std::uintptr_t>(dst) % 32 != 0) return false;
  _mm256_stream_ps(dst, v);
  return true;
#else
  (void)dst, (void)v;
  return false;
#endif
}

inline void past_cache_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// Writes (or adds, with accumulate) G packs of a row's columns `first` onwards into row `row` of
// out [*, N], as far as N; with past_cache, whole packs where store_past_cache can.
template <int G>
inline void store_columns(float* out, int64_t N, int64_t row, int64_t first,
                          const FloatVec (&acc)[G], bool accumulate, bool past_cache = false) {
  for (int64_t g = 0; g < G; ++g) {
    const int64_t c = first + g * kLanes, n = std::min(kLanes, N - c);
    if (n <= 0) break;
    float* dst = out + row * N + c;
    if (past_cache && n == kLanes && store_past_cache(dst, acc[g])) continue;
    Lanes<float>::store(dst, accumulate ? acc[g] + Lanes<float>::load(dst, n) : acc[g], n);
  }
}

// out [rows, N] = x [rows, K] @ w^T (or += with accumulate), w packed by pack_linear_weight.
void packed_product(const float* x, int64_t rows, int64_t K, const float* w_packed, float* out,
                    int64_t N, bool accumulate, int64_t begin, int64_t end) {
  for_each_panel_task<kLinearGroups>(
      x, rows, K, w_packed, begin, end,
      [&](int64_t row, int64_t block, const FloatVec(&acc)[kLinearGroups]) {
        store_columns(out, N, row, block * kLinearGroups * kLanes, acc, accumulate);
      });
}

void linear_packed(const Tensor& x, const Tensor& w_packed, const Tensor& out, bool accumulate,
                   int64_t begin, int64_t end) {
  packed_product(x.data_ptr<float>(), x.size(0), x.size(1), w_packed.data_ptr<float>(),
                 out.data_ptr<float>(), out.size(1), accumulate, begin, end);
}

// The backward sequence's step (pointwise.h, BackwardStep): the gate gradients of a task's
// units, the same units as its product's output columns (linear_tasks(rows, hidden)).
template <typename Units>
void for_each_task_pack(const BackwardStep& s, int64_t begin, int64_t end, const Units& units) {
  constexpr int64_t kBlockColumns = kLinearGroups * kLanes;
  for (int64_t task = begin; task < end; ++task) {
    const auto [block, row0, row_end] = panel_task<kLinearGroups>(task, s.rows);
    const int64_t j_end = std::min(s.hidden, (block + 1) * kBlockColumns);
    for (int64_t b = row0; b < row_end; ++b) {
      for (int64_t j = block * kBlockColumns; j < j_end; j += kLanes) {
        // The state's gradient from the later steps plus this step's output gradient.
        const int64_t u = b * s.hidden + j, n = std::min(kLanes, j_end - j);
        Lanes<float>::store(s.grad_h + u,
                            Lanes<float>::load(s.grad_h + u, n) +
                                Lanes<float>::load(s.grad_out + u, n),
                            n);
        units(b, j, n);
      }
    }
  }
}

void lstm_backward_gates(const BackwardStep& s, int64_t begin, int64_t end) {
  for_each_task_pack(s, begin, end, [&](int64_t b, int64_t j, int64_t n) {
    lstm_backward_units<float>(s.grad_h, s.grad_c, s.saved, s.state_before, s.c_new,
                               s.grad_gates, s.grad_c, s.hidden, b, j, n);
  });
}

void gru_backward_gates(const BackwardStep& s, int64_t begin, int64_t end) {
  for_each_task_pack(s, begin, end, [&](int64_t b, int64_t j, int64_t n) {
    gru_backward_units<float>(s.grad_h, s.state_before, s.saved, s.grad_gates,
                              s.grad_hidden_gates, s.grad_h, s.hidden, b, j, n);
  });
}

void lstm_backward_product(const BackwardStep& s, int64_t begin, int64_t end) {
  packed_product(s.grad_gates, s.rows, kLstmGates * s.hidden, s.w_packed, s.grad_h, s.hidden,
                 false, begin, end);
}

void gru_backward_product(const BackwardStep& s, int64_t begin, int64_t end) {
  packed_product(s.grad_hidden_gates, s.rows, kGruGates * s.hidden, s.w_packed, s.grad_h,
                 s.hidden, true, begin, end);
}

// A product whose k is at most this writes far more than it reads (a cell's weight gradients,
// k = B): its output goes past the caches, which spares reading each line in before writing it
// and keeps the weights cached for the next call (A/B, NOTES entry 39: LSTM cell B=1 H=512
// forward+backward 1.19 -> 0.70 ms, B=64 H=512 7.14 -> 6.78 ms).
constexpr int64_t kPastCacheMaxK = 128;

// The same tiles as linear_packed (linear_tasks), over a b [K, N] as it lies: the last column
// block reads only as far as N.
void matmul_rows(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate,
                 int64_t begin, int64_t end) {
  constexpr int G = kLinearGroups, R = kTaskRows<G>;
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const bool past_cache = !accumulate && K <= kPastCacheMaxK;
  const int64_t a_row = a.stride(0), a_k = a.stride(1);
  const float* a_p = a.data_ptr<float>();
  const float* b_p = b.data_ptr<float>();
  float* out_p = out.data_ptr<float>();
  for (int64_t task = begin; task < end; ++task) {
    const auto [block, row0, row_end] = panel_task<G>(task, M);
    const int64_t first = block * G * kLanes, columns = std::min(G * kLanes, N - first);
    const int64_t packs = (columns + kLanes - 1) / kLanes, tail = columns - (packs - 1) * kLanes;
    with_count<R>(row_end - row0, [&](auto row_count) {
      with_count<G>(packs, [&](auto pack_count) {
        constexpr int kRows = decltype(row_count)::value, kPacks = decltype(pack_count)::value;
        const float* a_rows = a_p + row0 * a_row;
        FloatVec acc[kRows][kPacks];
        if (tail == kLanes) {
          tile_product<kPacks, kRows>(a_rows, a_row, a_k, b_p + first, N, K, acc);
        } else {
          tile_product<kPacks, kRows, true>(a_rows, a_row, a_k, b_p + first, N, K, acc, tail);
        }
        for (int r = 0; r < kRows; ++r) {
          store_columns(out_p, N, row0 + r, first, acc[r], accumulate, past_cache);
        }
      });
    });
  }
  if (past_cache) past_cache_fence();
}

// ---------------------------------------------------------------------------------------------
// The product with a weight as it lies (pointwise.h, linear_rows): every output is the dot
// product of a row of x with a row of w, both contiguous along k, so nothing is packed first.

// A task covers kDotColumns rows of w against every row of x, kDotRows rows at a time: their
// kDotRows * kDotColumns accumulator packs stay in registers next to the kDotColumns weight packs
// of one k (AVX2 has 16 vector registers, AVX-512 32).
constexpr int kDotColumns = 4;
#ifdef CPU_CAPABILITY_AVX512
constexpr int kDotRows = 4;
#else
constexpr int kDotRows = 2;
#endif

// dots[r][c] = x[r] . w[c] over K, for R rows of x (row stride K) and C rows of w (row stride K).
template <int R, int C>
inline void dot_products(const float* x, const float* w, int64_t K, float (&dots)[R][C]) {
  FloatVec acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = FloatVec(0.0f);
  }
  // count < kLanes only at the tail of k: the partial loads there fill the missing lanes with
  // zeros, which add nothing.
  const auto accumulate = [&](int64_t k, int64_t count) {
    FloatVec wk[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) wk[c] = FloatVec::loadu(w + c * K + k, count);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const FloatVec xk = FloatVec::loadu(x + r * K + k, count);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = at::vec::fmadd(xk, wk[c], acc[r][c]);
    }
  };
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) accumulate(k, kLanes);
  if (k < K) accumulate(k, K - k);
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      dots[r][c] = at::vec::vec_reduce_all<float>(std::plus<FloatVec>(), acc[r][c]);
    }
  }
}

int64_t rows_tasks(int64_t columns) { return (columns + kDotColumns - 1) / kDotColumns; }

void linear_rows(const Tensor& x, const Tensor& w, const float* bias, const Tensor& out,
                 int64_t begin, int64_t end) {
  const int64_t rows = x.size(0), K = x.size(1), N = w.size(0);
  const float* x_p = x.data_ptr<float>();
  const float* w_p = w.data_ptr<float>();
  float* out_p = out.data_ptr<float>();
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n0 = task * kDotColumns;
    with_count<kDotColumns>(std::min<int64_t>(kDotColumns, N - n0), [&](auto column_count) {
      constexpr int C = decltype(column_count)::value;
      for (int64_t r0 = 0; r0 < rows; r0 += kDotRows) {
        with_count<kDotRows>(std::min<int64_t>(kDotRows, rows - r0), [&](auto row_count) {
          constexpr int R = decltype(row_count)::value;
          float dots[R][C];
          dot_products<R, C>(x_p + r0 * K, w_p + n0 * K, K, dots);
          for (int r = 0; r < R; ++r) {
            for (int c = 0; c < C; ++c) {
              out_p[(r0 + r) * N + n0 + c] = bias ? dots[r][c] + bias[n0 + c] : dots[r][c];
            }
          }
        });
      }
    });
  }
}

#define FUSED_RNN_STRINGIFY_(x) #x
#define FUSED_RNN_STRINGIFY(x) FUSED_RNN_STRINGIFY_(x)
extern const PointwiseKernels kKernels = {
    .isa = FUSED_RNN_STRINGIFY(CPU_CAPABILITY),
    .lstm_forward = &lstm_forward,
    .lstm_backward = &lstm_backward,
    .gru_forward = &gru_forward,
    .gru_backward = &gru_backward,
    .lanes = kLanes,
    .pack_recurrent_weight = &pack_recurrent_weight,
    .recurrent_tasks = &recurrent_tasks,
    .lstm_forward_recurrent = &lstm_forward_recurrent,
    .gru_forward_recurrent = &gru_forward_recurrent,
    .pack_linear_weight = &pack_linear_weight,
    .linear_tasks = &linear_tasks,
    .linear_packed = &linear_packed,
    .rows_tasks = &rows_tasks,
    .linear_rows = &linear_rows,
    .matmul_rows = &matmul_rows,
    .lstm_backward_gates = &lstm_backward_gates,
    .gru_backward_gates = &gru_backward_gates,
    .lstm_backward_product = &lstm_backward_product,
    .gru_backward_product = &gru_backward_product,
};

}  // namespace cpu::CPU_CAPABILITY
}  // namespace fused_rnn
