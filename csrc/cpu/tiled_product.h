// The register-blocked products: tiles of accumulators in registers over a weight packed into
// panels (the recurrent step's product, the layers' per-step products, the backward's), the same
// tiles over a matrix as it lies, and dot products for a few rows on a weight as it lies.
// Compiled per instruction set: included only by pointwise_kernels.h (which see).
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY and include this through pointwise_kernels.h"
#endif

#include "pointwise.h"
#include "vec_math.h"

#include <ATen/ops/empty.h>

#include <functional>
#include <utility>

namespace fused_rnn::cpu::CPU_CAPABILITY {

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

}  // namespace fused_rnn::cpu::CPU_CAPABILITY
