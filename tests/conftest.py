"""Shared test parameters: devices, dtypes and the per-dtype accuracy rules."""

import pytest
import torch

import fused_rnn

CUDA_READY = torch.cuda.is_available() and fused_rnn.build_info()["cuda"]
_NO_CUDA = pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")

DEVICES = ["cpu", pytest.param("cuda", marks=_NO_CUDA)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

# Exact-precision dtypes are compared with torch.nn directly, within these tolerances.
TOLERANCES = {
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
}
# For the half types, the error against a float64 truth may be at most this many times torch.nn's
# own error at that dtype (plus one unit of rounding at the output's scale).
LOW_PRECISION_ERROR_RATIO = 2.0


def assert_matches_torch(ours: torch.Tensor, theirs: torch.Tensor, truth: torch.Tensor,
                         what: str) -> None:
    """`ours` and `theirs` (torch.nn) at the test dtype; `truth` is torch.nn in float64."""
    assert ours.shape == theirs.shape == truth.shape, what
    assert ours.dtype == theirs.dtype, what
    if ours.dtype in TOLERANCES:
        torch.testing.assert_close(ours, theirs, **TOLERANCES[ours.dtype], msg=what)
        return
    truth = truth.to(ours.device)
    if truth.numel() == 0:
        return
    err_ours = (ours.double() - truth).abs().max().item()
    err_theirs = (theirs.double() - truth).abs().max().item()
    rounding = torch.finfo(ours.dtype).eps * truth.abs().max().item()
    assert err_ours <= LOW_PRECISION_ERROR_RATIO * err_theirs + rounding, (
        f"{what}: error {err_ours:.3g} vs torch.nn's {err_theirs:.3g} (rounding {rounding:.3g})")
