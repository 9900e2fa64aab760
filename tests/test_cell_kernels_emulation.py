"""The step-wise CUDA kernels' own source (csrc/cuda/cell_kernels.cuh,
layernorm_cell_kernels.cuh), run on the CPU under the emulated GPU of tests/emulator, against the
CPU ops one step at a time (float64 the truth, the same dtype the reference the project's rules
hold them to): the cell ops' step on both of its kernels (tiled, and a warp per unit), a layer
step's gate math after its hidden product, the gate gradients (with and without zoneout, the
output's gradient added in the kernel, the state's gradient written over the incoming one), and
the layer-normalized cells' steps and gate gradients; and the step-wise loops
(stepwise_loops.cuh) over whole layers, padded and packed, both directions.

The kernels get the tensors their launchers hand them (each between guards,
conftest.GuardedCalls: reads past one show in the results, writes past one fail) and the
launchers' grids for an H200 (the pointwise kernels also one block, striding). The one-step
layer ops give what each kernel writes: with w_ih the identity, the input is the input side of
the gates and its gradient the input-side gate gradients; with w_hh zero, h0's gradient is the
part that goes straight to the state before; with h0's rows scaled unit vectors, W_hh's gradient
holds the hidden side's gate gradients. What the emulation cannot show (timing, the GPU's memory
ordering, cuBLAS itself) is the GPU run's (test_cells.py, test_sequence.py and the others' CUDA
cases)."""

import pytest
import torch

from conftest import assert_matches_torch, assert_near_truth, load_emulation
from test_tensor_core_emulation import Case, check, forward_buffers, states_before

# (The GPU run has the kernels themselves: it leaves these out.)
pytestmark = pytest.mark.cpu_only

GATES = {"lstm": 4, "gru": 3}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# A batch past one tile of 8 rows (and one pass of the unit warps' 8), hidden units past one tile
# of 32 and not a multiple of a block's 8 warps, an input size short of one k-tile of 32.
BATCH, HIDDEN, INPUT = 9, 37, 20


def emulator():
    """The test-only extension running the kernels (built once per session, ~40 s)."""
    return load_emulation("cell_kernels_emulation.cpp")


def drawer(seed, dtype):
    """Uniform draws in [-s, s], made in float64 and rounded to dtype (so the float64 truth
    starts from the same numbers)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape, s=1.0):
        return ((torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * s
                ).to(dtype)
    return draw


def nans(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def op_math(dtype):
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def zoneout_weights(draw, cell, rows, hidden, dtype):
    """Zoneout's weights [K, rows, H] (K = 2 for the LSTM's h and c), in [0, 1]."""
    return ((draw(2 if cell == "lstm" else 1, rows, hidden).double() + 1) / 2).to(dtype)


def at_each(dtype, run):
    """run(dtype) at dtype and at float64 (the truth)."""
    return run(dtype), run(torch.float64)


# ---------------------------------------------------------------------------------------------
# The cell ops' step.

@pytest.mark.parametrize("batch", [1, BATCH], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("kernel", ["tiled", "unit warps"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_cell_step_matches_cpu(cell, dtype, kernel, batch):
    lstm, gates = cell == "lstm", GATES[cell]
    draw = drawer(1, dtype)
    scale = HIDDEN ** -0.5
    x, h = draw(batch, INPUT), draw(batch, HIDDEN, s=0.5)
    c = draw(batch, HIDDEN, s=0.5) if lstm else None
    w_ih, w_hh = draw(gates * HIDDEN, INPUT, s=scale), draw(gates * HIDDEN, HIDDEN, s=scale)
    b_ih, b_hh = draw(gates * HIDDEN, s=scale), draw(gates * HIDDEN, s=scale)

    def cpu(d):
        args = [t.to(d) for t in (x, h)] + ([c.to(d)] if lstm else [])
        args += [t.to(d) for t in (w_ih, w_hh, b_ih, b_hh)]
        out = getattr(torch.ops.fused_rnn, f"{cell}_cell")(*args)
        return dict(hy=out[0], cy=out[1] if lstm else None, saved=out[-1])
    theirs, truth = at_each(dtype, cpu)

    hy, saved = nans(batch, HIDDEN, dtype=dtype), nans(batch, 4 * HIDDEN, dtype=dtype)
    cy = nans(batch, HIDDEN, dtype=dtype) if lstm else None
    # 1 SM: the tiled kernel's tiles (batch/8 x 2) suffice; an H200's 132 would idle: a warp per
    # unit.
    unit_warps, grid_x, grid_y = emulator().cell_forward(
        cell, x, h, c, w_ih, w_hh, b_ih, b_hh, hy, cy, saved, 132 if kernel == "unit warps" else 1)
    assert (bool(unit_warps), grid_x, grid_y) == ((True, 5, 1) if kernel == "unit warps"
                                                  else (False, (batch + 7) // 8, 2))
    assert_matches_torch(hy, theirs["hy"], truth["hy"], "hy")
    assert_matches_torch(saved, theirs["saved"], truth["saved"], "saved gates")
    if lstm:
        assert_matches_torch(cy, theirs["cy"], truth["cy"], "cy")


# ---------------------------------------------------------------------------------------------
# A layer's step (one step of the layer ops, batch_sizes [B]).

class LayerStep:
    """A layer op's one step at dtype and float64: x is the input side (w_ih the identity, no
    input bias), zoneout optional; forward results and gradients of (x, h0, c0, w_hh)."""

    def __init__(self, cell, dtype, zoneout, w_hh="random", layernorm=False, hidden=HIDDEN,
                 batch=BATCH, grad_output=True, seed=2):
        self.cell, self.dtype, self.layernorm = cell, dtype, layernorm
        self.lstm, gates = cell == "lstm", GATES[cell]
        draw = drawer(seed, dtype)
        scale = hidden ** -0.5
        self.x = draw(batch, gates * hidden)
        if w_hh == "unit rows":
            # h0's row b is s_b e_b (s_b a power of two): h0 W_hh^T is exact and W_hh's gradient's
            # column b is s_b times row b of the hidden side's gradient.
            self.scales = torch.tensor([2.0 ** (b % 3 - 1) * (-1) ** b for b in range(batch)],
                                       dtype=torch.float64)
            self.h0 = torch.zeros(batch, hidden, dtype=torch.float64)
            self.h0[range(batch), range(batch)] = self.scales
            self.h0 = self.h0.to(dtype)
        else:
            self.h0 = draw(batch, hidden, s=0.5)
        self.c0 = draw(batch, hidden, s=0.5) if self.lstm else None
        self.w_hh = (torch.zeros(gates * hidden, hidden, dtype=dtype) if w_hh == "zero"
                     else draw(gates * hidden, hidden, s=scale))
        self.b_ih = draw(gates * hidden, s=scale) if layernorm else None
        self.b_hh = draw(gates * hidden, s=scale) if layernorm or not self.lstm else None
        norm_sizes = [gates * hidden] * 4 + ([hidden] * 2 if self.lstm else [])
        self.norms = [(draw(n).double() * 0.5 + (1 if k % 2 == 0 else 0)).to(dtype)
                      for k, n in enumerate(norm_sizes)]  # weights near 1, biases near 0
        self.zoneout = zoneout_weights(draw, cell, batch, hidden, dtype) if zoneout else None
        generator = torch.Generator().manual_seed(seed + 1)
        finals = 3 if self.lstm else 2

        def grad(k):
            if k == 0 and not grad_output:
                return torch.zeros(batch, hidden, dtype=dtype)
            return torch.randn(batch, hidden, generator=generator, dtype=torch.float64).to(dtype)
        self.grads_out = [grad(k) for k in range(finals)]  # output's, hy's, (cy's)
        self.theirs, self.truth = at_each(dtype, self.cpu)

    def cpu(self, dtype):
        def at(t):
            return None if t is None else t.to(dtype).detach().requires_grad_()
        x, h0, c0, w_hh = at(self.x), at(self.h0), at(self.c0), at(self.w_hh)
        rest = [None if t is None else t.to(dtype) for t in (self.b_ih, self.b_hh)]
        norms = [t.to(dtype) for t in self.norms] if self.layernorm else []
        zoneout = None if self.zoneout is None else self.zoneout.to(dtype)
        eye = torch.eye(x.shape[1], dtype=dtype)
        batch_sizes = torch.tensor([x.shape[0]])
        states = (h0, c0) if self.lstm else (h0,)
        ops = torch.ops.fused_rnn
        if self.layernorm:
            op = ops.layernorm_lstm_layer if self.lstm else ops.layernorm_gru_layer
            results = op(x, batch_sizes, *states, eye, w_hh, *rest, *norms, False, True, None,
                         zoneout)
        elif self.lstm:
            results = ops.lstm_layer(x, batch_sizes, h0, c0, eye, w_hh, *rest, None, False, True,
                                     None, zoneout)
        else:
            results = ops.gru_layer(x, batch_sizes, h0, eye, w_hh, *rest, False, True, None,
                                    zoneout)
        finals = results[:3] if self.lstm else results[:2]
        leaves = (x, *states, w_hh)
        grads = torch.autograd.grad(finals, leaves, [g.to(dtype) for g in self.grads_out])
        saved = results[3] if self.lstm else results[2]
        cells = results[4] if self.lstm else None
        return dict(output=results[0].detach(), saved=saved.detach(),
                    cells=None if cells is None else cells.detach(),
                    **dict(zip(["grad_x", "grad_h0", "grad_c0", "grad_w_hh"] if self.lstm
                               else ["grad_x", "grad_h0", "grad_w_hh"], grads)))

    def zoneout_parts(self):
        """The kernels' zoneout weights of h and (LSTM) c, or None."""
        if self.zoneout is None:
            return None, None
        return self.zoneout[0], self.zoneout[1] if self.lstm else None


@pytest.mark.parametrize("blocks", [0, 1], ids=["H200 grid", "one block"])
@pytest.mark.parametrize("zoneout", [False, True], ids=["plain", "zoneout"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_step_gates_match_cpu(cell, dtype, zoneout, blocks):
    step = LayerStep(cell, dtype, zoneout)
    hidden_product = (step.h0.double() @ step.w_hh.double().t()).to(dtype)
    xproj = step.x.clone()
    h_out = nans(BATCH, HIDDEN, dtype=dtype)
    c_out = nans(BATCH, HIDDEN, dtype=dtype) if step.lstm else None
    # The LSTM's gates are written over xproj, as the layers' loops have it; the GRU's workspace.
    saved = xproj if step.lstm else nans(BATCH, 4 * HIDDEN, dtype=dtype)
    zoneout_h, zoneout_c = step.zoneout_parts()
    launched = emulator().step_gates(cell, xproj, hidden_product, step.h0, step.c0, step.b_hh,
                                     h_out, c_out, saved, zoneout_h, zoneout_c, blocks)
    assert launched == (2 if blocks == 0 else 1)  # 333 units: 2 blocks of 256 threads
    theirs, truth = step.theirs, step.truth
    assert_matches_torch(h_out, theirs["output"], truth["output"], "h'")
    assert_matches_torch(saved, theirs["saved"], truth["saved"], "saved values")
    if step.lstm:
        assert_matches_torch(c_out, theirs["cells"], truth["cells"], "c'")


def hidden_side(grads_x, workspace, hidden):
    """The GRU's hidden-side gate gradients from its input side's: r's and z's the same, n's
    times r (the workspace's first block)."""
    g = grads_x.double().clone()
    g[:, 2 * hidden:] *= workspace[:, :hidden].double()
    return g.to(grads_x.dtype)


@pytest.mark.parametrize("in_place", [False, True], ids=["apart", "in place"])
@pytest.mark.parametrize("grad_output", [False, True], ids=["grad_h", "grad_h+output's"])
@pytest.mark.parametrize("zoneout", [False, True], ids=["plain", "zoneout"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_gate_grads_match_cpu(cell, dtype, zoneout, grad_output, in_place):
    # W_hh zero: h0's gradient is only the part straight to the state before.
    step = LayerStep(cell, dtype, zoneout, w_hh="zero", grad_output=grad_output)
    theirs, truth = step.theirs, step.truth
    grad_out = step.grads_out[0] if grad_output else None
    grad_h = step.grads_out[1].clone()
    zoneout_h, zoneout_c = step.zoneout_parts()
    gate_grads = nans(BATCH, GATES[cell] * HIDDEN, dtype=dtype)
    if step.lstm:
        grad_c = step.grads_out[2].clone()
        grad_c_prev = grad_c if in_place else nans(BATCH, HIDDEN, dtype=dtype)
        direct = (grad_h if in_place else nans(BATCH, HIDDEN, dtype=dtype)) if zoneout else None
        launched = emulator().lstm_gate_grads(
            grad_h, grad_out, grad_c, theirs["saved"], step.c0, theirs["cells"], gate_grads,
            grad_c_prev, zoneout_h, zoneout_c, direct, 0)
        assert_matches_torch(grad_c_prev, theirs["grad_c0"], truth["grad_c0"], "c's gradient")
    else:
        hidden_grads = nans(BATCH, GATES[cell] * HIDDEN, dtype=dtype)
        direct = grad_h if in_place else nans(BATCH, HIDDEN, dtype=dtype)
        launched = emulator().gru_gate_grads(grad_h, grad_out, step.h0, theirs["saved"],
                                             gate_grads, hidden_grads, direct, zoneout_h, 0)
        assert_matches_torch(hidden_grads, hidden_side(theirs["grad_x"], theirs["saved"], HIDDEN),
                             hidden_side(truth["grad_x"], truth["saved"], HIDDEN),
                             "hidden-side gate gradients")
    assert launched == 2
    assert_matches_torch(gate_grads, theirs["grad_x"], truth["grad_x"], "gate gradients")
    if direct is not None:
        assert_matches_torch(direct, theirs["grad_h0"], truth["grad_h0"], "h's direct gradient")


# ---------------------------------------------------------------------------------------------
# The step-wise loops (stepwise_loops.cuh) over whole layers, against the CPU layer ops (the
# persistent kernels' emulation's cases: the input side as the input, w_ih the identity), their
# products in the dtype's op-math type as cuBLAS's.

LAYOUTS = [("padded", False), ("padded", True), ("packed", False), ("packed", True)]


def packed_steps(case):
    """The loops' packed_steps: the run order's (first row, rows), none for a padded batch."""
    if case.packed is None:
        return torch.zeros(0, 2, dtype=torch.long)
    return case.packed.long()


@pytest.mark.parametrize("layout,reverse", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_stepwise_forward_matches_cpu(cell, dtype, layout, reverse):
    case = Case(cell, dtype, HIDDEN, BATCH, 5, layout, reverse)
    xproj, output, cells, workspace = forward_buffers(case)
    saved = xproj if cell == "lstm" else workspace
    assert emulator().stepwise_forward_layer(cell, xproj, case.h0, case.c0, case.w_hh, case.b_hh,
                                             output, cells, saved, packed_steps(case), reverse)
    check("output", output, case, lambda r: r["output"], tf32=False)
    check("saved", saved, case, lambda r: r["saved"], tf32=False)
    if cells is not None:
        check("cell states", cells, case, lambda r: r["cells"], tf32=False)


@pytest.mark.parametrize("layout,reverse", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_stepwise_backward_matches_cpu(cell, dtype, layout, reverse):
    case = Case(cell, dtype, HIDDEN, BATCH, 5, layout, reverse)
    res, lstm = case.results[dtype], cell == "lstm"
    grad_output, grad_h = res["grads_out"][0], res["grads_out"][1].clone()
    grad_c = res["grads_out"][2].clone() if lstm else None
    h_before = None if lstm else states_before(case.batch_sizes, res["output"], case.h0, reverse)
    c_before = states_before(case.batch_sizes, res["cells"], case.c0, reverse) if lstm else None
    grad_input_gates = nans(*case.x.shape, dtype=dtype)
    # (The LSTM's two sides are one tensor: the loop writes its gate gradients once.)
    grad_hidden_gates = grad_input_gates if lstm else nans(*case.x.shape, dtype=dtype)
    assert emulator().stepwise_backward_layer(
        cell, grad_output, res["saved"], h_before, c_before, res["cells"], case.w_hh, grad_h,
        grad_c, grad_input_gates, grad_hidden_gates, packed_steps(case), reverse)
    check("input-side gate gradients", grad_input_gates, case, lambda r: r["grads"][0],
          tf32=False)
    check("h0's gradient", grad_h, case, lambda r: r["grads"][1], tf32=False)
    if lstm:
        check("c0's gradient", grad_c, case, lambda r: r["grads"][2], tf32=False)
    else:
        check("hidden-side gate gradients", grad_hidden_gates, case,
              lambda r: hidden_side(r["grads"][0], r["saved"], HIDDEN), tf32=False)


# ---------------------------------------------------------------------------------------------
# The layer-normalized cells' step and gate gradients: a block per batch row; H=37 leaves most
# of its 256 threads idle, H=300 has them stride (over 4H=1200 gate rows).

LN_HIDDEN = [37, 300]
LN_BATCH = 3


@pytest.mark.parametrize("hidden", LN_HIDDEN, ids=lambda h: f"H{h}")
@pytest.mark.parametrize("zoneout", [False, True], ids=["plain", "zoneout"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_layernorm_step_matches_cpu(cell, dtype, zoneout, hidden):
    step = LayerStep(cell, dtype, zoneout, layernorm=True, hidden=hidden, batch=LN_BATCH)
    acc = op_math(dtype)
    x_proj = step.x.to(acc)
    h_proj = (step.h0.double() @ step.w_hh.double().t()).to(acc)
    h_out = nans(LN_BATCH, hidden, dtype=dtype)
    zoneout_h, zoneout_c = step.zoneout_parts()
    h_prev = step.h0 if zoneout else None
    if step.lstm:
        c_out = nans(LN_BATCH, hidden, dtype=dtype)
        saved = nans(LN_BATCH, 13 * hidden + 3, dtype=acc)
        emulator().layernorm_lstm_forward(x_proj, h_proj, step.c0, step.b_ih, step.b_hh,
                                          step.norms, h_out, c_out, saved, zoneout_h, zoneout_c,
                                          h_prev)
        assert_near_truth(c_out, step.theirs["cells"], step.truth["cells"], "c'")
    else:
        saved = nans(LN_BATCH, 10 * hidden + 2, dtype=acc)
        emulator().layernorm_gru_forward(x_proj, h_proj, step.h0, step.b_ih, step.b_hh,
                                         step.norms, h_out, saved, zoneout_h)
    assert_near_truth(h_out, step.theirs["output"], step.truth["output"], "h'")
    # (Held at the run's dtype: the half types' layers keep c' in that dtype, its LN reads it so.)
    assert_near_truth(saved.to(dtype), step.theirs["saved"].to(dtype), step.truth["saved"],
                      "saved values")


@pytest.mark.parametrize("in_place", [False, True], ids=["apart", "in place"])
@pytest.mark.parametrize("hidden", LN_HIDDEN, ids=lambda h: f"H{h}")
@pytest.mark.parametrize("zoneout", [False, True], ids=["plain", "zoneout"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_layernorm_gate_grads_match_cpu(cell, dtype, zoneout, hidden, in_place):
    step = LayerStep(cell, dtype, zoneout, w_hh="unit rows", layernorm=True, hidden=hidden,
                     batch=LN_BATCH, grad_output=False)
    theirs, truth = step.theirs, step.truth
    acc, gates = op_math(dtype), GATES[cell]
    grad_h = step.grads_out[1].clone()
    zoneout_h, zoneout_c = step.zoneout_parts()
    grad_x_proj = nans(LN_BATCH, gates * hidden, dtype=acc)
    grad_h_proj = nans(LN_BATCH, gates * hidden, dtype=acc)
    if step.lstm:
        grad_c = step.grads_out[2].clone()
        grad_c_prev = grad_c if in_place else nans(LN_BATCH, hidden, dtype=dtype)
        direct = (grad_h if in_place else nans(LN_BATCH, hidden, dtype=dtype)) if zoneout else None
        emulator().layernorm_lstm_backward(
            theirs["saved"], grad_h, grad_c, step.c0, step.norms,
            nans(LN_BATCH, 5 * hidden, dtype=acc), grad_x_proj, grad_h_proj, grad_c_prev,
            zoneout_h, zoneout_c, direct)
        assert_near_truth(grad_c_prev, theirs["grad_c0"], truth["grad_c0"], "c's gradient")
    else:
        direct = grad_h if in_place else nans(LN_BATCH, hidden, dtype=dtype)
        emulator().layernorm_gru_backward(
            theirs["saved"], grad_h, step.h0, step.norms, nans(LN_BATCH, 6 * hidden, dtype=acc),
            grad_x_proj, grad_h_proj, direct, zoneout_h)
    assert_near_truth(grad_x_proj.to(dtype), theirs["grad_x"], truth["grad_x"],
                      "input-side gradient")

    def hidden_grads(r):
        return (r["grad_w_hh"][:, :LN_BATCH].t().double() / step.scales[:, None]).to(dtype)
    assert_near_truth(grad_h_proj.to(dtype), hidden_grads(theirs), hidden_grads(truth),
                      "hidden-side gradient")
    if direct is not None:
        def straight(r, d):
            # The part of h's gradient that skips the gates: the GRU's z h, zoneout's 1 - w.
            g, w = step.grads_out[1].double(), 1.0
            if zoneout:
                w = zoneout_h.double()
            through = g * w
            part = g * (1 - w) if zoneout else torch.zeros_like(g)
            if not step.lstm:
                part = part + through * r["saved"][:, hidden:2 * hidden].double()
            return part.to(d)
        assert_near_truth(direct, straight(theirs, dtype), straight(truth, torch.float64),
                          "h's direct gradient")
