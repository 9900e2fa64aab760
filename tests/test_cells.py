"""Parity of fused_rnn.LSTMCell / GRUCell (and the ops under them) with torch.nn's cells."""

import pytest
import torch

import fused_rnn
from conftest import CUDA_READY, DEVICES, DTYPES, TOLERANCES, assert_matches_torch

CELLS = {
    "lstm": (torch.nn.LSTMCell, fused_rnn.LSTMCell),
    "gru": (torch.nn.GRUCell, fused_rnn.GRUCell),
}
# (B, I, H): empty and single batches, sizes that are not multiples of 8 or 32, H up to 1024;
# on CUDA the last takes the tiled kernel, the others a warp per unit (at most 152 SMs).
SHAPES = [(0, 5, 7), (1, 1, 1), (1, 13, 17), (3, 37, 53), (8, 64, 96), (2, 30, 1024),
          (64, 40, 600)]


def make_cells(kind, input_size, hidden, bias, dtype, device, seed=0):
    """torch.nn's cell, ours with the same weights, and torch.nn's in float64 on the CPU."""
    torch_cls, our_cls = CELLS[kind]
    torch.manual_seed(seed)
    theirs = torch_cls(input_size, hidden, bias=bias, device=device, dtype=dtype)
    ours = our_cls(input_size, hidden, bias=bias, device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    truth = torch_cls(input_size, hidden, bias=bias, dtype=torch.float64)
    truth.load_state_dict({k: v.double().cpu() for k, v in theirs.state_dict().items()})
    return theirs, ours, truth


def make_state(kind, batch, hidden, dtype, device, requires_grad=False):
    def rand():
        return torch.randn(batch, hidden, dtype=dtype, device=device, requires_grad=requires_grad)
    return (rand(), rand()) if kind == "lstm" else rand()


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def state_leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


def to_truth(t):
    return t.detach().double().cpu().requires_grad_(t.requires_grad)


def run_and_grad(cell, x, state, out_weights):
    """Outputs of cell(x, state) and the gradients of a weighted sum of them."""
    outs = as_tuple(cell(x, state))
    loss = sum((o * w.to(o)).sum() for o, w in zip(outs, out_weights))
    leaves = [x, *state_leaves(state), *cell.parameters()]
    return outs, torch.autograd.grad(loss, leaves)


def grad_names(kind, cell):
    states = ["h", "c"] if kind == "lstm" else ["h"]
    return ["input", *states, *(name for name, _ in cell.named_parameters())]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_I{}_H{}".format(*s))
@pytest.mark.parametrize("kind", CELLS)
def test_forward_and_backward_match_torch_nn(kind, shape, bias, dtype, device):
    batch, input_size, hidden = shape
    theirs, ours, truth = make_cells(kind, input_size, hidden, bias, dtype, device)
    x = torch.randn(batch, input_size, dtype=dtype, device=device, requires_grad=True)
    state = make_state(kind, batch, hidden, dtype, device, requires_grad=True)
    out_weights = [torch.randn(batch, hidden, dtype=torch.float64) for _ in as_tuple(state)]

    outs, grads = run_and_grad(ours, x, state, out_weights)
    ref_outs, ref_grads = run_and_grad(theirs, x, state, out_weights)
    x64 = to_truth(x)
    state64 = tuple(map(to_truth, state)) if kind == "lstm" else to_truth(state)
    true_outs, true_grads = run_and_grad(truth, x64, state64, out_weights)

    for name, a, b, t in zip(["h'", "c'"], outs, ref_outs, true_outs):
        assert_matches_torch(a, b, t, f"output {name}")
    names = grad_names(kind, ours)
    assert len(grads) == len(names)
    for name, a, b, t in zip(names, grads, ref_grads, true_grads):
        assert_matches_torch(a, b, t, f"grad of {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("function", [False, True], ids=["module", "autograd_function"])
@pytest.mark.parametrize("kind,reached", [("lstm", 0), ("lstm", 1), ("gru", 0)])
def test_a_loss_that_reaches_one_output(kind, reached, function, device):
    """h' alone or c' alone: the other outputs (and the saved gates) send no gradient back, and
    the backward counts them as zero, as torch.nn does. Through the module (the ops' autograd in
    C++) and through LSTMCellFunction / GRUCellFunction."""
    theirs, ours, _ = make_cells(kind, 6, 5, True, torch.float64, device)
    x = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    state = make_state(kind, 4, 5, torch.float64, device, requires_grad=True)
    weights = torch.randn(4, 5, dtype=torch.float64, device=device)
    run_ours = ours
    if function:
        cls = fused_rnn.LSTMCellFunction if kind == "lstm" else fused_rnn.GRUCellFunction

        def run_ours(x, state):
            return cls.apply(x, *state_leaves(state), *ours.parameters())
    grads = []
    for run, cell in ((run_ours, ours), (theirs, theirs)):
        value = as_tuple(run(x, state))[reached]
        leaves = [x, *state_leaves(state), *cell.parameters()]
        grads.append(torch.autograd.grad((value * weights).sum(), leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", CELLS)
def test_inference_without_grad(kind, device):
    theirs, ours, _ = make_cells(kind, 19, 23, True, torch.float32, device)
    x = torch.randn(4, 19, device=device)
    state = make_state(kind, 4, 23, torch.float32, device)
    with torch.no_grad():
        for a, b in zip(as_tuple(ours(x, state)), as_tuple(theirs(x, state))):
            assert not a.requires_grad
            torch.testing.assert_close(a, b, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", CELLS)
def test_unbatched_input_and_default_state(kind, device):
    theirs, ours, _ = make_cells(kind, 6, 9, True, torch.float32, device)
    x = torch.randn(6, device=device)
    state = make_state(kind, 9, 1, torch.float32, device)
    state = tuple(s.squeeze(1) for s in state) if kind == "lstm" else state.squeeze(1)
    for args in [(x, state), (x,), (x, None), (x.unsqueeze(0),)]:
        got, want = as_tuple(ours(*args)), as_tuple(theirs(*args))
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", CELLS)
def test_non_contiguous_arguments(kind, device):
    """Strided views everywhere, weights included, against the contiguous reference."""
    batch, input_size, hidden = 5, 11, 13
    gates = 4 if kind == "lstm" else 3
    dt = torch.float64

    def strided(*shape):
        return torch.randn(*reversed(shape), dtype=dt, device=device).t()

    x = torch.randn(batch, 2 * input_size, dtype=dt, device=device)[:, ::2]
    w_ih, w_hh = strided(gates * hidden, input_size), strided(gates * hidden, hidden)
    b_ih = torch.randn(2 * gates * hidden, dtype=dt, device=device)[::2]
    b_hh = torch.randn(gates * hidden, dtype=dt, device=device)
    h = strided(batch, hidden)
    assert not any(t.is_contiguous() for t in (x, w_ih, w_hh, b_ih, h))
    if kind == "lstm":
        c = strided(batch, hidden)
        got = fused_rnn.functional.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        want = fused_rnn.reference.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)[:2]
    else:
        got = (fused_rnn.functional.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh),)
        want = fused_rnn.reference.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)[:1]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOLERANCES[dt])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", CELLS)
def test_nan_and_inf_propagate_as_in_torch_nn(kind, device):
    theirs, ours, _ = make_cells(kind, 8, 10, True, torch.float32, device)
    x = torch.randn(4, 8, device=device)
    state = make_state(kind, 4, 10, torch.float32, device)
    first = state[0] if kind == "lstm" else state
    x[0, 3] = float("nan")
    x[1, 0] = float("inf")
    first[2, 5] = float("-inf")
    if kind == "lstm":
        state[1][3, 1] = float("nan")
    for a, b in zip(as_tuple(ours(x, state)), as_tuple(theirs(x, state))):
        assert torch.equal(a.isnan(), b.isnan())
        assert a.isnan().any()
        torch.testing.assert_close(a, b, equal_nan=True, **TOLERANCES[torch.float32])


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", CELLS)
def test_cuda_cell_step_takes_a_warp_per_unit_where_the_tiles_leave_sms_idle(kind):
    """B/8 x H/32 tiles against the SM count: a warp per unit at B=9 H=512 (32 tiles), the tiled
    kernel at B=64 H=600 (152 tiles) on a GPU of at most 152 SMs."""
    if torch.cuda.get_device_properties(0).multi_processor_count > 152:
        pytest.skip("more SMs than the tiles of the larger shape")
    for (batch, input_size, hidden), kernel in (((9, 30, 512), "cell_forward_unit_kernel"),
                                                ((64, 40, 600), "cell_forward_kernel<")):
        _, cell, _ = make_cells(kind, input_size, hidden, True, torch.float32, "cuda")
        x = torch.randn(batch, input_size, device="cuda")
        state = make_state(kind, batch, hidden, torch.float32, "cuda")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            with torch.no_grad():
                cell(x, state)
            torch.cuda.synchronize()
        names = [e.name for e in prof.events() if "cell_forward" in e.name]
        assert len(names) == 1 and kernel in names[0], names


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", CELLS)
def test_float32_cells_follow_the_matmul_flag_not_cudnns(kind):
    """torch.nn's cells take their products through ATen's matmul, in full float32 unless
    torch.backends.cuda.matmul.allow_tf32 is on; cuDNN's TF32 flag, on by default (conftest
    turns it off for the other tests), is the layers' rule, not theirs. Under torch's defaults our
    float32 cells' gradients are full float32 too: within float32's tolerance of torch.nn's,
    which TF32 products (about 1e-3 relative error at K = 256) would miss."""
    batch, size = 64, 256
    theirs, ours, truth = make_cells(kind, size, size, True, torch.float32, "cuda")
    x = torch.randn(batch, size, device="cuda", requires_grad=True)
    state = make_state(kind, batch, size, torch.float32, "cuda", requires_grad=True)
    out_weights = [torch.randn(batch, size, dtype=torch.float64) for _ in as_tuple(state)]
    matmul_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
            _, grads = run_and_grad(ours, x, state, out_weights)
            _, ref_grads = run_and_grad(theirs, x, state, out_weights)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_before
    state64 = tuple(map(to_truth, state)) if kind == "lstm" else to_truth(state)
    _, true_grads = run_and_grad(truth, to_truth(x), state64, out_weights)
    for name, a, b, t in zip(grad_names(kind, ours), grads, ref_grads, true_grads):
        assert_matches_torch(a, b, t, f"grad of {name}")


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", CELLS)
def test_cuda_matches_our_cpu_path(kind, dtype):
    """The CUDA kernels against our CPU path, with the CPU path in float64 as the truth."""
    batch, input_size, hidden = 9, 70, 130
    _, cpu_cell, _ = make_cells(kind, input_size, hidden, True, dtype, "cpu")
    cuda_cell = CELLS[kind][1](input_size, hidden, dtype=dtype, device="cuda")
    cuda_cell.load_state_dict(cpu_cell.state_dict())
    cpu64_cell = CELLS[kind][1](input_size, hidden, dtype=torch.float64)
    cpu64_cell.load_state_dict(cpu_cell.state_dict())

    x = torch.randn(batch, input_size, dtype=dtype, requires_grad=True)
    state = make_state(kind, batch, hidden, dtype, "cpu", requires_grad=True)
    out_weights = [torch.randn(batch, hidden, dtype=torch.float64) for _ in as_tuple(state)]

    def moved(t, fn):
        return fn(t.detach()).requires_grad_()

    def run_on(cell, fn):
        st = tuple(moved(s, fn) for s in state) if kind == "lstm" else moved(state, fn)
        outs, grads = run_and_grad(cell, moved(x, fn), st, out_weights)
        return [*outs, *grads]

    on_cpu = run_on(cpu_cell, lambda t: t)
    on_cuda = run_on(cuda_cell, lambda t: t.cuda())
    truth = run_on(cpu64_cell, lambda t: t.double())
    for i, (a, b, t) in enumerate(zip(on_cuda, on_cpu, truth)):
        assert_matches_torch(a.cpu(), b, t, f"result {i}")


def ulps_off(ours, exact):
    """The largest |ours - exact| in units of float32's spacing at the exact (float64) value."""
    exact32 = exact.float()
    spacing = (torch.nextafter(exact32.abs(), torch.tensor(float("inf"))) - exact32.abs()).double()
    return ((ours.double() - exact).abs() / spacing).max().item()


def lstm_activations(x):
    """sigmoid(x) and tanh(x) as the LSTM cell op computes them on the CPU, for x [rows, H]
    float32: with w_ih four identities, W_hh zero and no bias, each gate's pre-activation is x
    itself, and the op returns the activated gates i, f, g, o."""
    hidden = x.size(1)
    w_ih = torch.eye(hidden).repeat(4, 1)
    w_hh = torch.zeros(4 * hidden, hidden)
    h, c = torch.zeros(2, x.size(0), hidden)
    _, _, gates = torch.ops.fused_rnn.lstm_cell(x, h, c, w_ih, w_hh, None, None)
    i, f, g, o = gates.view(-1, 4, hidden).unbind(1)
    for same in (f, o):
        torch.testing.assert_close(same, i, atol=0.0, rtol=0.0, equal_nan=True)
    return i, g


def test_cpu_float32_activations_within_a_few_ulps():
    # The CPU's own float32 exp and tanh (the CUDA kernels use libdevice's), against float64's.
    hidden = 64
    special = [0.0, 1e-30, -1e-30, 0.625, -0.625, 0.62499994]  # the last three: tanh's switch
    grid = torch.cat([torch.linspace(-87.0, 87.0, 200_000), torch.linspace(-1.0, 1.0, 99_968),
                      torch.tensor(special + [0.5] * (hidden - len(special)))]).view(-1, hidden)
    sigmoid, tanh = lstm_activations(grid)
    # Measured 1.27 and 2.98 (1 / (1 + e^-x) rounds three times after exp's error; torch.sigmoid
    # measures 2.34 here), the same on every instruction set.
    assert ulps_off(tanh, grid.double().tanh()) <= 2.0
    assert ulps_off(sigmoid, grid.double().sigmoid()) <= 3.0
    # Saturation, and NaN kept: one value per row, on the diagonal (off it, inf * 0 is NaN).
    ends = torch.tensor([100.0, -100.0, float("inf"), float("-inf"), float("nan")])
    sigmoid, tanh = (a.diagonal() for a in lstm_activations(torch.diag(ends)))
    nan = float("nan")
    exact = dict(atol=0.0, rtol=0.0, equal_nan=True)
    torch.testing.assert_close(sigmoid, torch.tensor([1.0, 0.0, 1.0, 0.0, nan]), **exact)
    torch.testing.assert_close(tanh, torch.tensor([1.0, -1.0, 1.0, -1.0, nan]), **exact)
