"""Under torch.autocast the modules run in the dtype torch.nn's do (CUDA: its RNNs and cells in
autocast's dtype; CPU: its LSTM in autocast's dtype, its GRU and cells in float32) and give its
numbers within that dtype's accuracy rule, outputs and input gradients."""

import pytest
import torch

import fused_rnn
from conftest import CUDA_READY, assert_matches_torch

MODULES = {
    "lstm": (torch.nn.LSTM, fused_rnn.LSTM, dict(num_layers=2)),
    "lstm-proj": (torch.nn.LSTM, fused_rnn.LSTM, dict(proj_size=3, bidirectional=True)),
    "gru": (torch.nn.GRU, fused_rnn.GRU, dict(bidirectional=True)),
    "lstm-cell": (torch.nn.LSTMCell, fused_rnn.LSTMCell, {}),
    "gru-cell": (torch.nn.GRUCell, fused_rnn.GRUCell, {}),
}
_CUDA = pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
SETTINGS = [("cpu", torch.bfloat16), pytest.param("cuda", torch.float16, marks=_CUDA),
            pytest.param("cuda", torch.bfloat16, marks=_CUDA)]


def first_output(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("device,dtype", SETTINGS)
@pytest.mark.parametrize("name", MODULES)
def test_autocast_runs_in_torch_nn_dtype_with_its_numbers(name, device, dtype):
    torch_cls, our_cls, kw = MODULES[name]
    torch.manual_seed(0)
    theirs = torch_cls(8, 16, device=device, **kw)
    ours = our_cls(8, 16, device=device, **kw)
    ours.load_state_dict(theirs.state_dict())
    truth = torch_cls(8, 16, dtype=torch.float64, **kw)
    truth.load_state_dict({k: v.double().cpu() for k, v in theirs.state_dict().items()})
    shape = (6, 8) if name.endswith("cell") else (12, 6, 8)
    x = torch.randn(shape, device=device, requires_grad=True)

    def run(module, x):
        out = first_output(module(x))
        (grad,) = torch.autograd.grad(out.float().square().sum(), x)
        return out, grad

    with torch.autocast(device, dtype=dtype):
        got, got_grad = run(ours, x)
        want, want_grad = run(theirs, x)
    x64 = x.detach().double().cpu().requires_grad_()
    true, true_grad = run(truth, x64)
    assert got.dtype == want.dtype
    assert_matches_torch(got, want, true, "output", against_truth=True)
    assert_matches_torch(got_grad, want_grad, true_grad, "input gradient", against_truth=True)


def test_autocast_leaves_float64_alone():
    ours = fused_rnn.LSTM(3, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = ours(torch.randn(5, 2, 3, dtype=torch.float64))
    assert out.dtype == h.dtype == c.dtype == torch.float64
