"""The persistent kernels' own CUDA source, run on the CPU under an emulated GPU (tests/emulator:
every CUDA thread a fiber, every block a thread, mma.sync by the PTX ISA's fragment layout),
against the CPU layer ops. The tensor-core kernels: the forward's outputs, states and saved
values, the backward's gate gradients and initial states' gradients, for each barrier, one block
or a cluster of two a group, padded and packed sequences in both directions. The SIMT forward:
padded sequences both ways, every dtype. Every tensor lies between guards
(conftest.GuardedCalls). What the emulation cannot show (the GPU's memory ordering, timing) is
the GPU run's (tests/test_persistent.py)."""

import pytest
import torch

from conftest import load_emulation
from fused_rnn.accuracy import accuracy_problem  # (importing fused_rnn loads its CPU ops)

# (The GPU run has the kernels themselves: it leaves these out.)
pytestmark = pytest.mark.cpu_only

GATES = {"lstm": 4, "gru": 3}
# float32 runs as TF32 (10 bits of mantissa): its results are held to the float64 truth within
# TF32_UNITS of TF32's rounding unit at the result's scale, the 16-bit types to the project's rule
# against the CPU op at the same dtype.
TF32_EPS = 2.0 ** -10
TF32_UNITS = 8


def emulator():
    """The test-only extension running the kernels (built once per session, ~1 min)."""
    return load_emulation("tensor_core_emulation.cpp")


def batch_sizes_for(layout, steps, batch):
    """The steps' batch sizes: every row every step (padded), or lengths from batch down to 1."""
    if layout == "padded":
        return torch.full((steps,), batch, dtype=torch.long)
    lengths = torch.linspace(steps, 1, batch).round().long()
    return torch.tensor([int((lengths > t).sum()) for t in range(steps)], dtype=torch.long)


def run_order_table(batch_sizes, reverse):
    """The kernels' packed_steps: (first row, rows) of each step in run order."""
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    return torch.tensor([[int(offsets[t]), int(batch_sizes[t])] for t in order], dtype=torch.int32)


def states_before(batch_sizes, states, initial, reverse):
    """[N, H]: the state each row's step started from (the step before's in run order, else the
    initial state's row)."""
    offsets = (torch.cumsum(batch_sizes, 0) - batch_sizes).tolist()
    sizes = batch_sizes.tolist()
    before = torch.empty_like(states)
    for t, (offset, rows) in enumerate(zip(offsets, sizes)):
        previous = t + 1 if reverse else t - 1
        start = initial[:rows].clone()
        if 0 <= previous < len(sizes):
            ran = min(rows, sizes[previous])
            start[:ran] = states[offsets[previous]:offsets[previous] + ran]
        before[offset:offset + rows] = start
    return before


def layer_problem(ours, cpu_same_dtype, truth, tf32=True):
    if ours.dtype == torch.float32 and tf32:
        error = (ours.double() - truth).abs().max().item()
        allowed = TF32_UNITS * TF32_EPS * max(truth.abs().max().item(), 1.0)
        return None if error <= allowed else f"error {error:.3g} against float64, over {allowed:.3g}"
    return accuracy_problem(ours, cpu_same_dtype, truth)


class Case:
    """One layer's inputs and the CPU op's results: float64 (truth) and at the dtype."""

    def __init__(self, cell, dtype, hidden, batch, steps, layout, reverse):
        self.cell, self.dtype, self.reverse = cell, dtype, reverse
        gates = GATES[cell]
        generator = torch.Generator().manual_seed(hidden * 1000 + batch * 10 + steps)
        self.batch_sizes = batch_sizes_for(layout, steps, batch)
        self.packed = None if layout == "padded" else run_order_table(self.batch_sizes, reverse)
        rows = int(self.batch_sizes.sum())
        scale = hidden ** -0.5

        def draw(*shape, s=1.0):
            return ((torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * s
                    ).to(dtype)

        # x is the input projection itself (w_ih the identity, no input bias).
        self.x, self.h0 = draw(rows, gates * hidden), draw(batch, hidden, s=0.5)
        self.c0 = draw(batch, hidden, s=0.5) if cell == "lstm" else None
        self.w_hh = draw(gates * hidden, hidden, s=scale)
        self.b_hh = draw(gates * hidden, s=scale) if cell == "gru" else None
        self.results = {d: self.cpu(d) for d in (dtype, torch.float64)}

    def cpu(self, dtype):
        """The CPU op's forward and backward at dtype: outputs, saved values, gradients."""
        def at(t):
            return None if t is None else t.to(dtype).detach().requires_grad_()
        x, h0, c0, w_hh = at(self.x), at(self.h0), at(self.c0), self.w_hh.to(dtype)
        eye = torch.eye(x.shape[1], dtype=dtype)
        if self.cell == "lstm":
            output, hy, cy, saved, cells, _ = torch.ops.fused_rnn.lstm_layer(
                x, self.batch_sizes, h0, c0, eye, w_hh, None, None, None, self.reverse)
            finals, inputs = (output, hy, cy), (x, h0, c0)
        else:
            output, hy, saved = torch.ops.fused_rnn.gru_layer(
                x, self.batch_sizes, h0, eye, w_hh, None, self.b_hh.to(dtype), self.reverse)
            cells, finals, inputs = None, (output, hy), (x, h0)
        generator = torch.Generator().manual_seed(7)
        grads_out = [torch.randn(t.shape, generator=generator, dtype=torch.float64).to(dtype)
                     for t in finals]
        grads = torch.autograd.grad(finals, inputs, grads_out)
        return dict(output=output.detach(), saved=saved.detach(),
                    cells=None if cells is None else cells.detach(), grads_out=grads_out,
                    grads=grads)


def check(name, ours, case, pick, tf32=True):
    problem = layer_problem(ours, pick(case.results[case.dtype]), pick(case.results[torch.float64]),
                            tf32)
    assert problem is None, f"{name}: {problem}"


def forward_buffers(case):
    """The forward's tensors as the kernels take them: xproj (a copy: the LSTM writes its gates
    there), and NaN-filled output, cell states (LSTM) and workspace (GRU)."""
    hidden = case.h0.shape[1]
    xproj = case.x.clone()
    output = torch.full((xproj.shape[0], hidden), float("nan"), dtype=case.dtype)
    lstm = case.cell == "lstm"
    cells = torch.full_like(output, float("nan")) if lstm else None
    workspace = None if lstm else torch.full((xproj.shape[0], 4 * hidden), float("nan"),
                                             dtype=case.dtype)
    return xproj, output, cells, workspace


def run_forward(case, barrier, split):
    """The emulated tensor-core kernel's forward of case: output, saved values (and cell
    states)."""
    xproj, output, cells, workspace = forward_buffers(case)
    blocks, cluster = emulator().forward(
        case.cell, xproj, case.h0, case.c0, case.w_hh, case.b_hh, output, cells, workspace, True,
        len(case.batch_sizes), case.reverse, case.packed, barrier, split)
    assert (blocks, cluster) == (split * output.shape[1] // 16, split)
    return output, (xproj if case.cell == "lstm" else workspace), cells


def run_backward(case, barrier, split):
    """The emulated kernel's backward of case from the CPU op's saved values: the gate gradients
    (input side; the GRU's hidden side too) and the initial states' gradients."""
    res = case.results[case.dtype]
    rows, columns = case.x.shape
    lstm = case.cell == "lstm"
    grad_output, grad_hy = res["grads_out"][0], res["grads_out"][1]
    grad_h = grad_hy.clone()
    grad_c = res["grads_out"][2].clone() if lstm else None
    output = res["output"]
    h_before = None if lstm else states_before(case.batch_sizes, output, case.h0, case.reverse)
    c_before = (states_before(case.batch_sizes, res["cells"], case.c0, case.reverse) if lstm
                else None)
    grad_input_gates = torch.full((rows, columns), float("nan"), dtype=case.dtype)
    grad_hidden_gates = None if lstm else torch.full_like(grad_input_gates, float("nan"))
    blocks, cluster = emulator().backward(
        case.cell, grad_output, res["saved"], h_before, c_before, res["cells"], case.w_hh,
        grad_h, grad_c, grad_input_gates, grad_hidden_gates, len(case.batch_sizes),
        case.reverse, case.packed, barrier, split)
    assert (blocks, cluster) == (split * grad_h.shape[1] // 16, split)
    return grad_input_gates, grad_hidden_gates, grad_h, grad_c


BARRIERS = ["grid", "flags", "tagged"]
DTYPE_IDS = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
# (hidden, batch, steps, split): one block a group with partial n-tiles; a cluster of two a
# group where the second block holds K too (H=80: 5 k-tiles, 8 shares).
SHAPES = [(48, 9, 6, 1), (80, 5, 5, 2)]
LAYOUTS = [("padded", False), ("padded", True), ("packed", False), ("packed", True)]


def shape_id(shape):
    hidden, batch, steps, split = shape
    return f"H{hidden}-B{batch}-T{steps}-split{split}"


@pytest.mark.parametrize("layout,reverse", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("barrier", BARRIERS)
@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("cell", list(GATES))
def test_forward_matches_cpu(cell, dtype, barrier, shape, layout, reverse):
    hidden, batch, steps, split = shape
    case = Case(cell, dtype, hidden, batch, steps, layout, reverse)
    output, saved, cells = run_forward(case, barrier, split)
    check("output", output, case, lambda r: r["output"])
    check("saved", saved, case, lambda r: r["saved"])
    if cells is not None:
        check("cell states", cells, case, lambda r: r["cells"])


@pytest.mark.parametrize("layout,reverse", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("barrier", ["grid", "flags"])
@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("cell", list(GATES))
def test_backward_matches_cpu(cell, dtype, barrier, shape, layout, reverse):
    hidden, batch, steps, split = shape
    case = Case(cell, dtype, hidden, batch, steps, layout, reverse)
    grad_input_gates, grad_hidden_gates, grad_h, grad_c = run_backward(case, barrier, split)
    # With w_ih the identity, the input's gradient is the input side's gate gradients.
    check("input-side gate gradients", grad_input_gates, case, lambda r: r["grads"][0])
    check("h0's gradient", grad_h, case, lambda r: r["grads"][1])
    if grad_c is not None:
        check("c0's gradient", grad_c, case, lambda r: r["grads"][2])
    if grad_hidden_gates is not None:
        # The GRU's hidden side: r and z as the input side's, n's times r (saved block 0).
        def hidden_side(r):
            g = r["grads"][0].double().clone()
            g[:, 2 * hidden:] *= r["saved"][:, :hidden].double()
            return g.to(r["grads"][0].dtype)
        check("hidden-side gate gradients", grad_hidden_gates, case, hidden_side)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("hidden", [40, 139], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("dtype", [torch.float64, *DTYPE_IDS], ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_simt_forward_matches_cpu(cell, dtype, hidden, reverse):
    # H=40: a unit a block; H=139: two, the last block one.
    case = Case(cell, dtype, hidden, 3, 4, "padded", reverse)
    xproj, output, cells, workspace = forward_buffers(case)
    blocks, units = emulator().simt_forward(
        case.cell, xproj, case.h0, case.c0, case.w_hh, case.b_hh, output, cells, workspace,
        len(case.batch_sizes), case.reverse)
    assert (blocks, units) == ((40, 1) if hidden == 40 else (70, 2))
    check("output", output, case, lambda r: r["output"], tf32=False)
    check("saved", xproj if cell == "lstm" else workspace, case, lambda r: r["saved"], tf32=False)
    if cells is not None:
        check("cell states", cells, case, lambda r: r["cells"], tf32=False)
