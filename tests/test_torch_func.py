"""torch.func over fused_rnn's cells and layers: grad, vjp, jvp and vmap (and their compositions)
give torch.nn's numbers. Where torch.nn itself has no batching rule (vmap over its cells and
layers), the reference is torch.nn run on each sample."""

import pytest
import torch
from torch.func import functional_call, grad, jvp, vjp, vmap

import fused_rnn
from conftest import DEVICES, TOLERANCES, native_rnn

MODULES = {
    "lstm-cell": (torch.nn.LSTMCell, fused_rnn.LSTMCell, {}),
    "gru-cell": (torch.nn.GRUCell, fused_rnn.GRUCell, {}),
    "lstm": (torch.nn.LSTM, fused_rnn.LSTM, dict(num_layers=2, bidirectional=True)),
    "lstm-proj": (torch.nn.LSTM, fused_rnn.LSTM, dict(proj_size=2, batch_first=True)),
    "gru": (torch.nn.GRU, fused_rnn.GRU, dict(num_layers=2, bidirectional=True)),
}
INPUT_SIZE, HIDDEN, BATCH, STEPS = 3, 4, 2, 5


def make_pair(name, dtype, device):
    torch_cls, our_cls, kw = MODULES[name]
    torch.manual_seed(0)
    theirs = torch_cls(INPUT_SIZE, HIDDEN, dtype=dtype, device=device, **kw)
    ours = our_cls(INPUT_SIZE, HIDDEN, dtype=dtype, device=device, **kw)
    ours.load_state_dict(theirs.state_dict())
    shape = (BATCH, INPUT_SIZE) if name.endswith("cell") else (STEPS, BATCH, INPUT_SIZE)
    x = torch.randn(shape, dtype=dtype, device=device)
    return theirs, ours, x


def first_output(module):
    """x -> the module's first result (h' of a cell, the output sequence of a layer)."""
    def run(x):
        out = module(x)
        return out[0] if isinstance(out, tuple) else out
    return run


def assert_same(ours, theirs, dtype):
    torch.testing.assert_close(ours, theirs, **TOLERANCES[dtype])


TRANSFORMS = {
    "grad": lambda f, x, v: grad(lambda x: (f(x) * v).sum())(x),
    "vjp": lambda f, x, v: vjp(f, x)[1](v)[0],
    "jvp": lambda f, x, v: jvp(f, (x,), (torch.ones_like(x),))[1] * v,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("name", MODULES)
def test_transforms_match_torch_nn(name, transform, dtype, device):
    theirs, ours, x = make_pair(name, dtype, device)
    v = torch.randn_like(first_output(theirs)(x))
    got = TRANSFORMS[transform](first_output(ours), x, v)
    with native_rnn():
        want = TRANSFORMS[transform](first_output(theirs), x, v)
    assert_same(got, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODULES)
def test_grad_over_parameters_matches_torch_nn(name, device):
    theirs, ours, x = make_pair(name, torch.float64, device)

    def loss_of(module):
        return lambda params: functional_call(module, params, (x,))[0].pow(2).sum()

    got = grad(loss_of(ours))(dict(ours.named_parameters()))
    with native_rnn():
        want = grad(loss_of(theirs))(dict(theirs.named_parameters()))
    for key in want:
        assert_same(got[key], want[key], torch.float64)


def per_sample(module, xs, batch_dim):
    """torch.nn on each sample of xs along batch_dim, stacked there: what vmap must give."""
    return torch.stack([first_output(module)(x) for x in xs.unbind(batch_dim)], batch_dim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", MODULES)
def test_vmap_matches_torch_nn_per_sample(name, dtype, device):
    theirs, ours, x = make_pair(name, dtype, device)
    samples = torch.stack([x, 2 * x, -x], 1)  # three samples of x's shape along dim 1
    assert_same(vmap(first_output(ours), in_dims=1, out_dims=1)(samples),
                per_sample(theirs, samples, 1), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODULES)
def test_per_sample_gradients_match_torch_nn(name, device):
    theirs, ours, x = make_pair(name, torch.float64, device)
    samples = torch.stack([x, 2 * x, -x])

    def loss_of(module):
        return lambda x: first_output(module)(x).pow(2).sum()

    got = vmap(grad(loss_of(ours)))(samples)
    with native_rnn():
        want = torch.stack([grad(loss_of(theirs))(s) for s in samples])
    assert_same(got, want, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODULES)
def test_forward_mode_ad_matches_torch_nn(name, device):
    import torch.autograd.forward_ad as fwAD

    theirs, ours, x = make_pair(name, torch.float64, device)
    tangent = torch.randn_like(x)

    def tangent_of(module):
        with fwAD.dual_level():
            return fwAD.unpack_dual(first_output(module)(fwAD.make_dual(x, tangent))).tangent

    got = tangent_of(ours)
    with native_rnn():
        want = tangent_of(theirs)
    assert got is not None
    assert_same(got, want, torch.float64)
