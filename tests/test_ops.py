"""The registered ops: reference parity, gradcheck, opcheck, torch.compile, build info."""

import pytest
import torch

import fused_rnn
from fused_rnn import reference
from conftest import DEVICES, TOLERANCES, assert_compiles_like_eager

GATES = {"lstm": 4, "gru": 3}


def op_args(kind, batch, input_size, hidden, bias=True, dtype=torch.float64, device="cpu",
            requires_grad=False, seed=0):
    """Arguments of torch.ops.fused_rnn.<kind>_cell: input, hx, (cx), w_ih, w_hh, b_ih, b_hh."""
    gen = torch.Generator().manual_seed(seed)
    g = GATES[kind]

    def rand(*shape, scale=1.0):
        t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        return t.to(device).requires_grad_(requires_grad)

    scale = hidden ** -0.5
    states = [rand(batch, hidden) for _ in range(2 if kind == "lstm" else 1)]
    weights = [rand(g * hidden, input_size, scale=scale), rand(g * hidden, hidden, scale=scale)]
    biases = [rand(g * hidden, scale=scale), rand(g * hidden, scale=scale)] if bias else [None, None]
    return [rand(batch, input_size), *states, *weights, *biases]


def cell_op(kind):
    return getattr(torch.ops.fused_rnn, f"{kind}_cell").default


def backward_op(kind):
    return getattr(torch.ops.fused_rnn, f"{kind}_cell_backward").default


def backward_args(kind, args, outputs, gen_seed=1):
    """Arguments of the backward op for random incoming gradients and an all-true mask."""
    gen = torch.Generator().manual_seed(gen_seed)
    x, h = args[0], args[1]

    def rand_like(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t)

    if kind == "lstm":
        c, w_ih, w_hh = args[2], args[3], args[4]
        hy, cy, gates = outputs
        return [rand_like(hy), rand_like(cy), x, h, c, w_ih, w_hh, gates, cy, [True] * 6]
    w_ih, w_hh = args[2], args[3]
    hy, workspace = outputs
    return [rand_like(hy), x, h, w_ih, w_hh, workspace, [True] * 6]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", GATES)
def test_ops_match_reference(kind, bias, device):
    """Forward outputs (saved state included) and every backward output against reference.py."""
    args = op_args(kind, 6, 21, 35, bias=bias, device=device)
    outputs = cell_op(kind)(*args)
    expected = getattr(reference, f"{kind}_cell")(*args)
    for a, b in zip(outputs, expected):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])
    bargs = backward_args(kind, args, outputs)
    grads = backward_op(kind)(*bargs)
    expected_grads = getattr(reference, f"{kind}_cell_backward")(*bargs)
    assert len(grads) == len(expected_grads) == 6
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("kind", GATES)
def test_backward_computes_only_what_is_asked(kind):
    args = op_args(kind, 3, 4, 5)
    bargs = backward_args(kind, args, cell_op(kind)(*args))
    full = backward_op(kind)(*bargs)
    for i in range(6):
        bargs[-1] = [j == i for j in range(6)]
        grads = backward_op(kind)(*bargs)
        assert [g is not None for g in grads] == bargs[-1]
        torch.testing.assert_close(grads[i], full[i])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", GATES)
def test_gradcheck_float64(kind, bias):
    args = op_args(kind, 3, 4, 5, bias=bias, requires_grad=True)
    fn = getattr(fused_rnn.functional, f"{kind}_cell")
    if kind == "lstm":
        x, h, c, *params = args
        assert torch.autograd.gradcheck(lambda x, h, c, *p: fn(x, (h, c), *p), (x, h, c, *params))
        function = fused_rnn.LSTMCellFunction
        assert torch.autograd.gradcheck(lambda *a: function.apply(*a)[:2], args)
    else:
        assert torch.autograd.gradcheck(fn, args)
        function = fused_rnn.GRUCellFunction
        assert torch.autograd.gradcheck(lambda *a: function.apply(*a)[:1], args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", GATES)
def test_opcheck(kind, dtype, device):
    for bias in (True, False):
        args = op_args(kind, 4, 6, 5, bias=bias, dtype=dtype, device=device, requires_grad=True)
        torch.library.opcheck(cell_op(kind), args)
        plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        bargs = backward_args(kind, plain, cell_op(kind)(*plain))
        torch.library.opcheck(backward_op(kind), bargs)
        bargs[-1] = [True, False, True, False, True, False]
        torch.library.opcheck(backward_op(kind), bargs)


@pytest.mark.parametrize("kind", GATES)
def test_compile_fullgraph(kind):
    """torch.compile traces a step using the cell, forward and backward, without graph breaks."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    cell = getattr(fused_rnn, {"lstm": "LSTMCell", "gru": "GRUCell"}[kind])(12, 10)
    x = torch.randn(5, 12, requires_grad=True)

    def two_steps(x):
        state = cell(x)
        state = cell(x * 2, state)
        return sum(s.square().sum() for s in (state if kind == "lstm" else (state,)))

    assert_compiles_like_eager(two_steps, x)


def test_build_info():
    info = fused_rnn.build_info()
    assert info["version"] == fused_rnn.__version__
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda"], bool)
    assert bool(info["cuda_archs"]) == info["cuda"]
