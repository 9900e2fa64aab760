"""The project's accuracy rule, shared by the tests, the self-check and the benchmarks.

float64 and float32 results must match torch.nn at the same dtype within TOLERANCES. For float16 and
bfloat16, where torch.nn itself is far from exact, the error against a float64 truth may be at most
LOW_PRECISION_ERROR_RATIO times torch.nn's own error at that dtype, plus one rounding unit at the
result's scale. On large problems (long sequences, gradients summed over many steps) two correct
float32 computations can differ by more than TOLERANCES; there (against_truth) a float32 result
that misses TOLERANCES may pass the second rule instead: as close to the truth as torch.nn is.

For ops torch.nn lacks (the layer-normalized cells), `theirs` is their pure-PyTorch reference at
the same dtype: the half types keep the rule above; float32 and float64 must be within TOLERANCES
of the float64 truth at the tensor's scale (near_truth_problem), since the reference at that dtype
is one more rounded computation, not a standard (its error and ours differ by the order of
operations, and the layer norms magnify both).
"""

import torch

__all__ = ["LOW_PRECISION_ERROR_RATIO", "TOLERANCES", "accuracy_problem", "near_truth_problem"]

TOLERANCES = {
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
}
LOW_PRECISION_ERROR_RATIO = 2.0


def accuracy_problem(ours: torch.Tensor, theirs: torch.Tensor, truth: torch.Tensor,
                     against_truth: bool = False):
    """None if `ours` passes against torch.nn's `theirs` (same dtype) and the float64 `truth`,
    else a sentence saying why not. against_truth lets float32/float64 results that miss
    TOLERANCES pass the half types' rule instead."""
    if ours.shape != theirs.shape or ours.shape != truth.shape:
        return f"shape {tuple(ours.shape)}, expected {tuple(theirs.shape)}"
    if ours.dtype != theirs.dtype:
        return f"dtype {ours.dtype}, expected {theirs.dtype}"
    if ours.numel() == 0:
        return None
    ours, theirs, truth = ours.detach().cpu(), theirs.detach().cpu(), truth.detach().cpu()
    if ours.dtype in TOLERANCES:
        tol = TOLERANCES[ours.dtype]
        if torch.isclose(ours, theirs, equal_nan=True, **tol).all():
            return None
        diff = (ours.double() - theirs.double()).abs().max().item()
        if not against_truth:
            return (f"differs from torch.nn by up to {diff:.3g} "
                    f"(rtol {tol['rtol']}, atol {tol['atol']})")
    err_ours = (ours.double() - truth).abs().max().item()
    err_theirs = (theirs.double() - truth).abs().max().item()
    rounding = torch.finfo(ours.dtype).eps * truth.abs().max().item()
    if err_ours <= LOW_PRECISION_ERROR_RATIO * err_theirs + rounding:
        return None
    return (f"error {err_ours:.3g} against float64, torch.nn's is {err_theirs:.3g} "
            f"(allowed {LOW_PRECISION_ERROR_RATIO}x + rounding {rounding:.3g})")


def near_truth_problem(ours: torch.Tensor, theirs: torch.Tensor, truth: torch.Tensor):
    """None if `ours` passes against its reference `theirs` (same dtype) and the float64 `truth`
    as the rule for ops torch.nn lacks has it (module docstring), else a sentence saying why."""
    if ours.dtype not in TOLERANCES:
        return accuracy_problem(ours, theirs, truth)
    if ours.shape != truth.shape or ours.dtype != theirs.dtype:
        return f"shape {tuple(ours.shape)} {ours.dtype}, expected {tuple(truth.shape)} {theirs.dtype}"
    if ours.numel() == 0:
        return None
    tol = TOLERANCES[ours.dtype]
    error = (ours.detach().cpu().double() - truth.detach().cpu()).abs().max().item()
    scale = truth.detach().cpu().double().abs().max().item()
    if error <= tol["atol"] + tol["rtol"] * scale:
        return None
    return (f"error {error:.3g} against float64 at scale {scale:.3g} (allowed {tol['atol']} + "
            f"{tol['rtol']} x scale)")
