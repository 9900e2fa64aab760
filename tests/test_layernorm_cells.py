"""The layer-normalized cells (fused_rnn.LayerNormLSTMCell / LayerNormGRUCell and the ops under
them) against fused_rnn.reference, their executable spec: outputs and every gradient in each
dtype, gradcheck in float64, opcheck, torch.compile, the modules' parameters, bad inputs."""

import pytest
import torch

import fused_rnn
from conftest import DEVICES, DTYPES, assert_near_truth
from fused_rnn import reference


CELLS = {"lstm": (fused_rnn.LayerNormLSTMCell, reference.layernorm_lstm_cell),
         "gru": (fused_rnn.LayerNormGRUCell, reference.layernorm_gru_cell)}
# (B, I, H): empty and single batches, sizes that are not multiples of 8 or 32, a wide H. Not
# I = 1: LN_ih(x W_ih^T) is then the same for x and any positive multiple of it, so x's gradient is
# rounding alone (zero up to the epsilon), in the reference as in ours.
SHAPES = [(0, 5, 7), (1, 2, 1), (1, 13, 17), (3, 37, 53), (8, 64, 96), (2, 30, 512)]


def make_cell(kind, input_size, hidden, bias, dtype, seed=0):
    """Our cell with every parameter random (the layer norms' too, so that their gradients are
    tested away from 1 and 0)."""
    torch.manual_seed(seed)
    cell = CELLS[kind][0](input_size, hidden, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.startswith("layernorm"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return cell.to(dtype)


def parameters(cell):
    return [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, *cell._norm_parameters()]


def make_state(kind, batch, hidden, dtype, device="cpu"):
    def rand():
        return torch.randn(batch, hidden, dtype=dtype, requires_grad=True, device=device)
    return (rand(), rand()) if kind == "lstm" else rand()


def leaves(x, state, params):
    states = list(state) if isinstance(state, tuple) else [state]
    return [x, *states, *(p for p in params if p is not None)]


def reference_call(kind, x, state, params):
    args = [x, *state, *params] if kind == "lstm" else [x, state, *params]
    out = CELLS[kind][1](*args)
    return out if isinstance(out, tuple) else (out,)


def outputs_and_grads(outs, inputs, weights):
    loss = sum((o * w.to(o)).sum() for o, w in zip(outs, weights))
    return list(outs), list(torch.autograd.grad(loss, inputs, allow_unused=True))


def detached_copy(t, dtype, device="cpu"):
    return t.detach().to(device, dtype).requires_grad_(True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_I{}_H{}".format(*s))
@pytest.mark.parametrize("kind", CELLS)
def test_matches_reference(kind, shape, bias, dtype, device):
    batch, input_size, hidden = shape
    cell = make_cell(kind, input_size, hidden, bias, dtype).to(device)
    torch.manual_seed(1)
    x = torch.randn(batch, input_size, dtype=dtype, requires_grad=True, device=device)
    state = make_state(kind, batch, hidden, dtype, device)
    weights = [torch.randn(batch, hidden, dtype=torch.float64, device=device) for _ in range(2)]
    ours = outputs_and_grads(cell(x, state) if kind == "lstm" else (cell(x, state),),
                             leaves(x, state, parameters(cell)), weights)

    def reference_run(run_dtype):  # the float64 truth on the CPU
        on = device if run_dtype == dtype else "cpu"
        params = [None if p is None else detached_copy(p, run_dtype, on) for p in parameters(cell)]
        x_r = detached_copy(x, run_dtype, on)
        state_r = (tuple(detached_copy(s, run_dtype, on) for s in state) if kind == "lstm"
                   else detached_copy(state, run_dtype, on))
        outs = reference_call(kind, x_r, state_r, params)
        return outputs_and_grads(outs, leaves(x_r, state_r, params), weights)

    theirs, truth = reference_run(dtype), reference_run(torch.float64)
    names = [["h'", "c'"], ["input", "h", "c"] + [n for n, _ in cell.named_parameters()]]
    if kind == "gru":
        names = [["h'"], ["input", "h"] + [n for n, _ in cell.named_parameters()]]
    for part in range(2):
        for name, ours_t, theirs_t, truth_t in zip(names[part], ours[part], theirs[part],
                                                   truth[part]):
            assert_near_truth(ours_t, theirs_t, truth_t, name)


@pytest.mark.parametrize("kind", CELLS)
def test_gradcheck(kind):
    cell = make_cell(kind, 4, 5, True, torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    state = make_state(kind, 3, 5, torch.float64)
    params = [p.detach().requires_grad_(True) for p in parameters(cell)]
    if kind == "lstm":
        def fn(x, h, c, *p):
            return fused_rnn.functional.layernorm_lstm_cell(x, (h, c), *p)
        args = (x, *state, *params)
    else:
        fn = fused_rnn.functional.layernorm_gru_cell
        args = (x, state, *params)
    assert torch.autograd.gradcheck(fn, args)


def op_args(kind, batch=3, input_size=4, hidden=5, dtype=torch.float64):
    cell = make_cell(kind, input_size, hidden, True, dtype)
    x = torch.randn(batch, input_size, dtype=dtype, requires_grad=True)
    state = make_state(kind, batch, hidden, dtype)
    params = [p.detach().requires_grad_(True) for p in parameters(cell)]
    return (x, *state, *params) if kind == "lstm" else (x, state, *params)


@pytest.mark.parametrize("kind", CELLS)
def test_opcheck(kind):
    args = op_args(kind)
    op = getattr(torch.ops.fused_rnn, f"layernorm_{kind}_cell")
    torch.library.opcheck(op, args)
    outs = op(*args)
    saved = outs[-1]
    grad_hy = torch.randn_like(outs[0])
    if kind == "lstm":
        x, h, c, w_ih, w_hh, _b_ih, _b_hh, *norms = args
        backward_args = (grad_hy, torch.randn_like(c), x, h, c, w_ih, w_hh, *norms, saved,
                         outs[1], [True] * 12)
    else:
        x, h, w_ih, w_hh, _b_ih, _b_hh, *norms = args
        backward_args = (grad_hy, x, h, w_ih, w_hh, *norms, saved, [True] * 10)
    backward = getattr(torch.ops.fused_rnn, f"layernorm_{kind}_cell_backward")
    torch.library.opcheck(backward, tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                          for a in backward_args))


@pytest.mark.parametrize("kind", CELLS)
def test_compile_fullgraph_matches_eager(kind):
    cell = make_cell(kind, 6, 8, True, torch.float32)
    x = torch.randn(4, 6)
    state = make_state(kind, 4, 8, torch.float32)
    eager = cell(x, state)
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")(x, state)
    for a, b in zip(eager if kind == "lstm" else (eager,),
                    compiled if kind == "lstm" else (compiled,)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", CELLS)
def test_module_parameters_and_unbatched_call(kind):
    cls = CELLS[kind][0]
    cell = cls(3, 4)
    gates = 4 if kind == "lstm" else 3
    names = dict(cell.named_parameters())
    for side in ("ih", "hh"):
        assert names[f"layernorm_{side}_weight"].shape == (gates * 4,)
        assert torch.equal(names[f"layernorm_{side}_weight"], torch.ones(gates * 4))
        assert torch.equal(names[f"layernorm_{side}_bias"], torch.zeros(gates * 4))
    assert ("layernorm_c_weight" in names) == (kind == "lstm")
    assert names["weight_ih"].shape == (gates * 4, 3)
    with torch.no_grad():
        cell.layernorm_ih_weight.fill_(3.0)
    cell.reset_parameters()
    assert torch.equal(cell.layernorm_ih_weight, torch.ones(gates * 4))
    x = torch.randn(3)
    unbatched = cell(x)
    batched = cell(x.unsqueeze(0))
    for a, b in zip(unbatched if kind == "lstm" else (unbatched,),
                    batched if kind == "lstm" else (batched,)):
        torch.testing.assert_close(a, b.squeeze(0))
    assert not hasattr(cls(3, 4, bias=False), "bias_ih") or cls(3, 4, bias=False).bias_ih is None


@pytest.mark.parametrize("kind", CELLS)
def test_bad_layer_norm_parameters_name_the_argument(kind):
    args = list(op_args(kind, dtype=torch.float32))
    op = getattr(torch.ops.fused_rnn, f"layernorm_{kind}_cell")
    first_ln = 7 if kind == "lstm" else 6
    wrong_size = list(args)
    wrong_size[first_ln] = torch.ones(3)
    with pytest.raises(RuntimeError, match=r"ln_ih_weight of shape \[\d+\], got \[3\]"):
        op(*wrong_size)
    wrong_dtype = list(args)
    wrong_dtype[first_ln + 2] = args[first_ln + 2].double()
    with pytest.raises(RuntimeError, match="expected ln_hh_weight of dtype Float"):
        op(*wrong_dtype)
    with pytest.raises(RuntimeError, match="input has inconsistent input_size"):
        op(torch.randn(3, 9), *args[1:])
