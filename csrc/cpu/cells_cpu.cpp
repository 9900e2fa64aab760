// CPU implementations of the cell ops: the matrix products through ATen (MKL/oneDNN), then one
// fused, vectorised, parallel pass of the gate math from cell_math.h over the [B, H] units.
#include "../cell_math.h"
#include "../cell_ops.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

namespace fused_rnn {

// The gate math on Vectorized lane packs.
template <typename S>
struct MathOps<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V exp(V x) { return x.exp(); }
  static V tanh(V x) { return x.tanh(); }
};

namespace {

// One lane of the pointwise pass: a single unit, computed in the op-math type (float for the half
// types). `load` reads any scalar pointer, so biases kept in the op-math type load the same way.
template <typename scalar_t>
struct ScalarLane {
  using T = at::opmath_type<scalar_t>;
  static constexpr int64_t kWidth = 1;
  template <typename P>
  static T load(const P* p) { return static_cast<T>(*p); }
  static void store(scalar_t* p, T v) { *p = static_cast<scalar_t>(v); }
};

// A Vectorized pack of units, for types computed natively (float, double).
template <typename scalar_t>
struct VectorLane {
  using T = at::vec::Vectorized<scalar_t>;
  static constexpr int64_t kWidth = T::size();
  static T load(const scalar_t* p) { return T::loadu(p); }
  static void store(scalar_t* p, T v) { v.store(p); }
};

template <typename scalar_t>
constexpr bool kHasVectorLane = std::is_same_v<scalar_t, at::opmath_type<scalar_t>>;

// Units per parallel task: enough work to amortise a task, small enough to spread B*H over cores.
constexpr int64_t kGrainUnits = 4096;

// Runs `span(lane_tag, b, j)` over every unit (b, j) of a [B, H] grid in parallel, in Vectorized
// packs where the type allows and in scalar lanes for the tails.
template <typename scalar_t, typename Span>
void for_each_unit(int64_t batch, int64_t hidden, const Span& span) {
  at::parallel_for(0, batch * hidden, kGrainUnits, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end;) {
      const int64_t b = idx / hidden;
      int64_t j = idx % hidden;
      const int64_t j_end = std::min(hidden, j + (end - idx));
      if constexpr (kHasVectorLane<scalar_t>) {
        using Lane = VectorLane<scalar_t>;
        for (; j + Lane::kWidth <= j_end; j += Lane::kWidth) span(Lane{}, b, j);
      }
      for (; j < j_end; ++j) span(ScalarLane<scalar_t>{}, b, j);
      idx = b * hidden + j_end;
    }
  });
}

// The given biases summed in the op-math dtype (float for the half types, so no rounding), or
// zeros: one code path whatever the bias arguments (adding zero changes no nonzero value).
Tensor summed_bias(std::initializer_list<const OptionalTensor*> biases, int64_t rows,
                   const Tensor& input) {
  const auto t = input.scalar_type();
  const auto acc = (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
  Tensor sum = at::zeros({rows}, input.options().dtype(acc));
  for (const OptionalTensor* b : biases) {
    if (b->has_value()) sum.add_(**b);
  }
  return sum;
}

std::tuple<Tensor, Tensor, Tensor> lstm_cell_cpu(const Tensor& input, const Tensor& hx,
                                                 const Tensor& cx, const Tensor& w_ih,
                                                 const Tensor& w_hh, const OptionalTensor& b_ih,
                                                 const OptionalTensor& b_hh) {
  const CellSizes s = check_cell_forward_args("fused_rnn.lstm_cell", kLstmGates, input, hx, cx,
                                              w_ih, w_hh, b_ih, b_hh);
  const int64_t H = s.hidden;
  // gates holds the pre-activations, then is overwritten in place by the activated gates that the
  // backward needs.
  Tensor gates = at::mm(input, w_ih.t());
  gates.addmm_(hx, w_hh.t());
  const Tensor bias = summed_bias({&b_ih, &b_hh}, kLstmGates * H, input);
  const Tensor c = cx.contiguous();
  Tensor hy = at::empty({s.batch, H}, input.options());
  Tensor cy = at::empty({s.batch, H}, input.options());

  FUSED_RNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_cell_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    const acc_t* bias_p = bias.data_ptr<acc_t>();
    const scalar_t* c_p = c.data_ptr<scalar_t>();
    scalar_t* hy_p = hy.data_ptr<scalar_t>();
    scalar_t* cy_p = cy.data_ptr<scalar_t>();
    for_each_unit<scalar_t>(s.batch, H, [&](auto lane, int64_t b, int64_t j) {
      using Lane = decltype(lane);
      using T = typename Lane::T;
      scalar_t* row = gates_p + b * kLstmGates * H;
      T a[kLstmGates];
      for (int64_t k = 0; k < kLstmGates; ++k) {
        a[k] = Lane::load(row + k * H + j) + Lane::load(bias_p + k * H + j);
      }
      const auto st = lstm_step_forward<T>(a[0], a[1], a[2], a[3], Lane::load(c_p + b * H + j));
      Lane::store(row + 0 * H + j, st.i);
      Lane::store(row + 1 * H + j, st.f);
      Lane::store(row + 2 * H + j, st.g);
      Lane::store(row + 3 * H + j, st.o);
      Lane::store(cy_p + b * H + j, st.c_new);
      Lane::store(hy_p + b * H + j, st.h_new);
    });
  });
  return {hy, cy, gates};
}

std::tuple<Tensor, Tensor> lstm_gate_grads_cpu(const Tensor& grad_hy, const Tensor& grad_cy,
                                               const Tensor& gates, const Tensor& cx,
                                               const Tensor& cy) {
  const int64_t B = cx.size(0), H = cx.size(1);
  Tensor grad_gates = at::empty({B, kLstmGates * H}, gates.options());
  Tensor grad_cx = at::empty({B, H}, cx.options());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(cx.scalar_type(), "lstm_gate_grads_cpu", [&] {
    const scalar_t* gh_p = grad_hy.data_ptr<scalar_t>();
    const scalar_t* gc_p = grad_cy.data_ptr<scalar_t>();
    const scalar_t* gates_p = gates.data_ptr<scalar_t>();
    const scalar_t* c_p = cx.data_ptr<scalar_t>();
    const scalar_t* cy_p = cy.data_ptr<scalar_t>();
    scalar_t* gg_p = grad_gates.data_ptr<scalar_t>();
    scalar_t* gcx_p = grad_cx.data_ptr<scalar_t>();
    for_each_unit<scalar_t>(B, H, [&](auto lane, int64_t b, int64_t j) {
      using Lane = decltype(lane);
      using T = typename Lane::T;
      const scalar_t* row = gates_p + b * kLstmGates * H;
      const int64_t u = b * H + j;
      const auto d = lstm_step_backward<T>(
          Lane::load(row + 0 * H + j), Lane::load(row + 1 * H + j), Lane::load(row + 2 * H + j),
          Lane::load(row + 3 * H + j), Lane::load(c_p + u), Lane::load(cy_p + u),
          Lane::load(gh_p + u), Lane::load(gc_p + u));
      scalar_t* grow = gg_p + b * kLstmGates * H;
      Lane::store(grow + 0 * H + j, d.a_i);
      Lane::store(grow + 1 * H + j, d.a_f);
      Lane::store(grow + 2 * H + j, d.a_g);
      Lane::store(grow + 3 * H + j, d.a_o);
      Lane::store(gcx_p + u, d.c);
    });
  });
  return {grad_gates, grad_cx};
}

std::tuple<Tensor, Tensor> gru_cell_cpu(const Tensor& input, const Tensor& hx,
                                        const Tensor& w_ih, const Tensor& w_hh,
                                        const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  const CellSizes s = check_cell_forward_args("fused_rnn.gru_cell", kGruGates, input, hx,
                                              std::nullopt, w_ih, w_hh, b_ih, b_hh);
  const int64_t H = s.hidden;
  // The n gate needs its input and hidden parts apart, so the two products stay separate.
  const Tensor gx = at::mm(input, w_ih.t());
  const Tensor gh = at::mm(hx, w_hh.t());
  const Tensor bias_ih = summed_bias({&b_ih}, kGruGates * H, input);
  const Tensor bias_hh = summed_bias({&b_hh}, kGruGates * H, input);
  const Tensor h = hx.contiguous();
  Tensor hy = at::empty({s.batch, H}, input.options());
  Tensor workspace = at::empty({s.batch, kGruSavedPerUnit * H}, input.options());

  FUSED_RNN_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_cell_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gx_p = gx.data_ptr<scalar_t>();
    const scalar_t* gh_p = gh.data_ptr<scalar_t>();
    const acc_t* bih_p = bias_ih.data_ptr<acc_t>();
    const acc_t* bhh_p = bias_hh.data_ptr<acc_t>();
    const scalar_t* h_p = h.data_ptr<scalar_t>();
    scalar_t* hy_p = hy.data_ptr<scalar_t>();
    scalar_t* ws_p = workspace.data_ptr<scalar_t>();
    for_each_unit<scalar_t>(s.batch, H, [&](auto lane, int64_t b, int64_t j) {
      using Lane = decltype(lane);
      using T = typename Lane::T;
      T x[kGruGates], hh[kGruGates];
      for (int64_t k = 0; k < kGruGates; ++k) {
        x[k] = Lane::load(gx_p + b * kGruGates * H + k * H + j) + Lane::load(bih_p + k * H + j);
        hh[k] = Lane::load(gh_p + b * kGruGates * H + k * H + j) + Lane::load(bhh_p + k * H + j);
      }
      const int64_t u = b * H + j;
      const auto st = gru_step_forward<T>(x[0], x[1], x[2], hh[0], hh[1], hh[2],
                                          Lane::load(h_p + u));
      scalar_t* ws = ws_p + b * kGruSavedPerUnit * H;
      Lane::store(ws + 0 * H + j, st.r);
      Lane::store(ws + 1 * H + j, st.z);
      Lane::store(ws + 2 * H + j, st.n);
      Lane::store(ws + 3 * H + j, st.h_n);
      Lane::store(hy_p + u, st.h_new);
    });
  });
  return {hy, workspace};
}

std::tuple<Tensor, Tensor, Tensor> gru_gate_grads_cpu(const Tensor& grad_hy, const Tensor& hx,
                                                      const Tensor& workspace) {
  const int64_t B = hx.size(0), H = hx.size(1);
  Tensor grad_input_gates = at::empty({B, kGruGates * H}, hx.options());
  Tensor grad_hidden_gates = at::empty({B, kGruGates * H}, hx.options());
  Tensor grad_hx_direct = at::empty({B, H}, hx.options());
  FUSED_RNN_DISPATCH_FLOATING_TYPES(hx.scalar_type(), "gru_gate_grads_cpu", [&] {
    const scalar_t* g_p = grad_hy.data_ptr<scalar_t>();
    const scalar_t* h_p = hx.data_ptr<scalar_t>();
    const scalar_t* ws_p = workspace.data_ptr<scalar_t>();
    scalar_t* gi_p = grad_input_gates.data_ptr<scalar_t>();
    scalar_t* gg_p = grad_hidden_gates.data_ptr<scalar_t>();
    scalar_t* gd_p = grad_hx_direct.data_ptr<scalar_t>();
    for_each_unit<scalar_t>(B, H, [&](auto lane, int64_t b, int64_t j) {
      using Lane = decltype(lane);
      using T = typename Lane::T;
      const scalar_t* ws = ws_p + b * kGruSavedPerUnit * H;
      const int64_t u = b * H + j;
      const auto d = gru_step_backward<T>(Lane::load(ws + 0 * H + j), Lane::load(ws + 1 * H + j),
                                          Lane::load(ws + 2 * H + j), Lane::load(ws + 3 * H + j),
                                          Lane::load(h_p + u), Lane::load(g_p + u));
      scalar_t* gi = gi_p + b * kGruGates * H;
      scalar_t* gg = gg_p + b * kGruGates * H;
      Lane::store(gi + 0 * H + j, d.a_r);
      Lane::store(gi + 1 * H + j, d.a_z);
      Lane::store(gi + 2 * H + j, d.x_n);
      Lane::store(gg + 0 * H + j, d.a_r);
      Lane::store(gg + 1 * H + j, d.a_z);
      Lane::store(gg + 2 * H + j, d.h_n);
      Lane::store(gd_p + u, d.h);
    });
  });
  return {grad_input_gates, grad_hidden_gates, grad_hx_direct};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("lstm_cell", &lstm_cell_cpu);
  m.impl("lstm_cell_backward", &lstm_cell_backward<lstm_gate_grads_cpu>);
  m.impl("gru_cell", &gru_cell_cpu);
  m.impl("gru_cell_backward", &gru_cell_backward<gru_gate_grads_cpu>);
}

}  // namespace fused_rnn
