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
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

namespace fused_rnn {

// The gate math on Vectorized lane packs.
template <typename S>
struct MathOps<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V exp(V x) { return x.exp(); }
  static V tanh(V x) { return x.tanh(); }
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
      scalar_t* row = gates_p + b * kLstmGates * H;
      const scalar_t* hrow = gates_h_p + b * kLstmGates * H;
      typename L::Vec a[kLstmGates];
      for (int64_t g = 0; g < kLstmGates; ++g) {
        a[g] = L::load(row + g * H + j, n) + L::load(hrow + g * H + j, n);
      }
      const int64_t u = b * H + j;
      const auto s = lstm_step_forward(a[0], a[1], a[2], a[3], L::load(c_p + u, n));
      L::store(row + 0 * H + j, s.i, n);
      L::store(row + 1 * H + j, s.f, n);
      L::store(row + 2 * H + j, s.g, n);
      L::store(row + 3 * H + j, s.o, n);
      L::store(c_out_p + u, s.c_new, n);
      L::store(h_out_p + u, s.h_new, n);
    });
  });
}

void lstm_backward(const Tensor& grad_h, const Tensor& grad_c, const Tensor& gates,
                   const Tensor& c_prev, const Tensor& c_new, const Tensor& grad_gates,
                   const Tensor& grad_c_prev, int64_t begin, int64_t end) {
  const int64_t H = c_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(c_prev.scalar_type(), "lstm_backward_cpu", [&] {
    using L = Lanes<scalar_t>;
    const scalar_t* gh_p = grad_h.data_ptr<scalar_t>();
    const scalar_t* gc_p = grad_c.data_ptr<scalar_t>();
    const scalar_t* gates_p = gates.data_ptr<scalar_t>();
    const scalar_t* c_p = c_prev.data_ptr<scalar_t>();
    const scalar_t* cn_p = c_new.data_ptr<scalar_t>();
    scalar_t* gg_p = grad_gates.data_ptr<scalar_t>();
    scalar_t* gcp_p = grad_c_prev.data_ptr<scalar_t>();
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      const scalar_t* row = gates_p + b * kLstmGates * H;
      const int64_t u = b * H + j;
      const auto d = lstm_step_backward(
          L::load(row + 0 * H + j, n), L::load(row + 1 * H + j, n), L::load(row + 2 * H + j, n),
          L::load(row + 3 * H + j, n), L::load(c_p + u, n), L::load(cn_p + u, n),
          L::load(gh_p + u, n), L::load(gc_p + u, n));
      scalar_t* grow = gg_p + b * kLstmGates * H;
      L::store(grow + 0 * H + j, d.a_i, n);
      L::store(grow + 1 * H + j, d.a_f, n);
      L::store(grow + 2 * H + j, d.a_g, n);
      L::store(grow + 3 * H + j, d.a_o, n);
      L::store(gcp_p + u, d.c, n);
    });
  });
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
      const scalar_t* x = gx_p + b * kGruGates * H + j;
      const scalar_t* h = gh_p + b * kGruGates * H + j;
      const int64_t u = b * H + j;
      const auto s = gru_step_forward(L::load(x, n), L::load(x + H, n), L::load(x + 2 * H, n),
                                      L::load(h, n), L::load(h + H, n), L::load(h + 2 * H, n),
                                      L::load(h_p + u, n));
      scalar_t* ws = ws_p + b * kGruSavedPerUnit * H;
      L::store(ws + 0 * H + j, s.r, n);
      L::store(ws + 1 * H + j, s.z, n);
      L::store(ws + 2 * H + j, s.n, n);
      L::store(ws + 3 * H + j, s.h_n, n);
      L::store(h_out_p + u, s.h_new, n);
    });
  });
}

void gru_backward(const Tensor& grad_h, const Tensor& h_prev, const Tensor& workspace,
                  const Tensor& grad_input_gates, const Tensor& grad_hidden_gates,
                  const Tensor& grad_h_direct, int64_t begin, int64_t end) {
  const int64_t H = h_prev.size(1);
  FUSED_RNN_DISPATCH_FLOATING_TYPES(h_prev.scalar_type(), "gru_backward_cpu", [&] {
    using L = Lanes<scalar_t>;
    const scalar_t* g_p = grad_h.data_ptr<scalar_t>();
    const scalar_t* h_p = h_prev.data_ptr<scalar_t>();
    const scalar_t* ws_p = workspace.data_ptr<scalar_t>();
    scalar_t* gi_p = grad_input_gates.data_ptr<scalar_t>();
    scalar_t* gg_p = grad_hidden_gates.data_ptr<scalar_t>();
    scalar_t* gd_p = grad_h_direct.data_ptr<scalar_t>();
    for_each_pack<scalar_t>(H, begin, end, [&](int64_t b, int64_t j, int64_t n) {
      const scalar_t* ws = ws_p + b * kGruSavedPerUnit * H;
      const int64_t u = b * H + j;
      const auto d = gru_step_backward(L::load(ws + 0 * H + j, n), L::load(ws + 1 * H + j, n),
                                       L::load(ws + 2 * H + j, n), L::load(ws + 3 * H + j, n),
                                       L::load(h_p + u, n), L::load(g_p + u, n));
      scalar_t* gi = gi_p + b * kGruGates * H;
      scalar_t* gg = gg_p + b * kGruGates * H;
      L::store(gi + 0 * H + j, d.a_r, n);
      L::store(gi + 1 * H + j, d.a_z, n);
      L::store(gi + 2 * H + j, d.x_n, n);
      L::store(gg + 0 * H + j, d.a_r, n);
      L::store(gg + 1 * H + j, d.a_z, n);
      L::store(gg + 2 * H + j, d.h_n, n);
      L::store(gd_p + u, d.h, n);
    });
  });
}

#define FUSED_RNN_STRINGIFY_(x) #x
#define FUSED_RNN_STRINGIFY(x) FUSED_RNN_STRINGIFY_(x)
extern const PointwiseKernels kKernels = {FUSED_RNN_STRINGIFY(CPU_CAPABILITY), &lstm_forward,
                                          &lstm_backward, &gru_forward, &gru_backward};

}  // namespace cpu::CPU_CAPABILITY
}  // namespace fused_rnn
