"""Shared test parameters: devices, dtypes and the per-dtype accuracy rules."""

import contextlib

import pytest
import torch

import fused_rnn
from fused_rnn.accuracy import TOLERANCES, accuracy_problem

__all__ = ["CUDA_READY", "DEVICES", "DTYPES", "TOLERANCES", "assert_compiles_like_eager",
           "assert_matches_torch", "native_rnn"]

CUDA_READY = torch.cuda.is_available() and fused_rnn.build_info()["cuda"]
# torch.nn's float32 layers run cuDNN, which by default takes TF32 tensor-core products (about
# 1e-3 relative error): the reference our float32 results are held to must be full float32.
torch.backends.cudnn.allow_tf32 = False
_NO_CUDA = pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")

DEVICES = ["cpu", pytest.param("cuda", marks=_NO_CUDA)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def pytest_addoption(parser):
    parser.addoption("--persistent-kernels", action="store_true",
                     help="run every test with the persistent CUDA layer kernels switched on")


def pytest_configure(config):
    if config.getoption("--persistent-kernels"):
        fused_rnn.use_persistent_kernels(True)


def native_rnn():
    """A context in which torch.nn's RNNs run ATen's own implementation: cuDNN's and oneDNN's
    lack forward-mode derivatives, and cuDNN's double backward, which the tests compare against."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.backends.cudnn.flags(enabled=False))
    stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
    return stack


def assert_matches_torch(ours: torch.Tensor, theirs: torch.Tensor, truth: torch.Tensor,
                         what: str, against_truth: bool = False) -> None:
    """`ours` and `theirs` (torch.nn) at the test dtype; `truth` is torch.nn in float64;
    against_truth as in fused_rnn.accuracy (for sums over many steps)."""
    problem = accuracy_problem(ours, theirs, truth, against_truth=against_truth)
    assert problem is None, f"{what}: {problem}"


def assert_compiles_like_eager(loss_of, x: torch.Tensor) -> None:
    """torch.compile(loss_of, fullgraph=True) gives eager's loss and gradient with respect to x."""
    compiled = torch.compile(loss_of, fullgraph=True)
    got = compiled(x)
    (grad_got,) = torch.autograd.grad(got, x)
    want = loss_of(x)
    (grad_want,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])
    torch.testing.assert_close(grad_got, grad_want, **TOLERANCES[torch.float32])
