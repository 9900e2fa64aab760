"""Shared test parameters and helpers: devices, dtypes, the per-dtype accuracy rules, and the
sequence modules' parity check against torch.nn (configurations, sizes, inputs)."""

import contextlib
import dataclasses
import functools
import os
import pathlib
import sys

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils import cpp_extension

import fused_rnn
from fused_rnn.accuracy import TOLERANCES, accuracy_problem, near_truth_problem

__all__ = ["CUDA_READY", "DEFAULT_SIZES", "DEVICES", "DTYPES", "SEQUENCE_CONFIGS",
           "SEQUENCE_MODULES", "TOLERANCES", "Sizes", "assert_compiles_like_eager",
           "assert_matches_torch", "assert_near_truth", "check_against_torch", "config_id",
           "flatten", "load_emulation", "make_inputs", "make_modules", "native_rnn",
           "run_and_grad"]

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
    parser.addoption("--skip-cpu-cases", action="store_true",
                     help="leave out the cases parametrized with device 'cpu' and the tests "
                          "marked cpu_only (a GPU run whose time goes to the CUDA cases; the "
                          "CPU's are CI's)")


def pytest_configure(config):
    if config.getoption("--persistent-kernels"):
        fused_rnn.use_persistent_kernels(True)


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--skip-cpu-cases"):
        return
    keep, drop = [], []
    for item in items:
        on_cpu = (getattr(item, "callspec", None) and item.callspec.params.get("device") == "cpu"
                  or item.get_closest_marker("cpu_only") is not None)
        (drop if on_cpu else keep).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def cuda_context_lost():
    """Why this process's CUDA context is broken for good, or None: a kernel's fault (an illegal
    address, a device-side assert) is sticky, every later CUDA call of the process failing with
    it. A pending error that a second synchronization no longer raises was not sticky."""
    if not (CUDA_READY and torch.cuda.is_initialized()):
        return None
    try:
        torch.cuda.synchronize()
        return None
    except RuntimeError as error:
        first = error
    try:
        torch.cuda.synchronize()
    except RuntimeError:
        return str(first).strip().splitlines()[0]
    return None


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    """After a test that broke the process's CUDA context, the process stops: every later test
    would fail on the same error and hide which tests fail on their own. A pytest-xdist worker
    exits (xdist names this test as the crash and starts a fresh worker for the rest); a plain
    run ends here, its report naming the test."""
    lost = cuda_context_lost()
    if lost is None:
        return
    message = f"{item.nodeid} left the CUDA context broken ({lost}): stopping this process"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # (Past pytest's capture, which an exit without unwinding would lose.)
        item.config.pluginmanager.getplugin("capturemanager").suspend_global_capture()
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        os._exit(3)
    pytest.exit(message, returncode=3)


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


def assert_near_truth(ours: torch.Tensor, theirs: torch.Tensor, truth: torch.Tensor,
                      what: str) -> None:
    """For ops torch.nn lacks: `theirs` is their reference at the test dtype, `truth` it in
    float64 (fused_rnn.accuracy.near_truth_problem)."""
    problem = near_truth_problem(ours, theirs, truth)
    assert problem is None, f"{what}: {problem}"


@functools.cache
def load_emulation(source: str):
    """The test-only extension built from tests/emulator/<source>, which runs CUDA kernels' own
    source on the CPU under the emulated GPU of emulated_device.h (built once per session), its
    functions called through GuardedCalls."""
    tests = pathlib.Path(__file__).resolve().parent
    return GuardedCalls(cpp_extension.load(
        name="fused_rnn_" + pathlib.Path(source).stem,
        sources=[str(tests / "emulator" / source)],
        extra_include_paths=[str(tests.parent / "csrc"), str(tests / "emulator")],
        extra_cflags=["-O1", "-std=c++20", "-Wno-unknown-pragmas"]))


class GuardedCalls:
    """An emulation's functions, each call's tensors copied between guards as large as the
    tensor (at least MIN_GUARD elements) either side: NaN beside a tensor that holds values (an
    input: a kernel reading past it, by up to its size, reads NaN into its results), OUTPUT_GUARD
    beside one that is all NaN (an output: a kernel writing past it, even NaN, changes the
    guard's bits), an integer type's least value beside an integer tensor. A changed guard is an
    assertion error naming the function. Each tensor then receives what the kernel left in its
    copy; a tensor passed twice (an output written over an input) is one copy."""

    MIN_GUARD = 64
    OUTPUT_GUARD = 12345.0

    def __init__(self, module):
        self.module = module

    def __getattr__(self, name):
        function = getattr(self.module, name)

        def call(*args):
            copies = {}

            def placed(t):
                if isinstance(t, list):
                    return [placed(x) for x in t]
                if not isinstance(t, torch.Tensor):
                    return t
                if id(t) not in copies:
                    if not t.is_floating_point():
                        fill = torch.iinfo(t.dtype).min
                    else:
                        fill = self.OUTPUT_GUARD if t.isnan().all() else float("nan")
                    guard = max(self.MIN_GUARD, t.numel())
                    guarded = torch.full((t.numel() + 2 * guard,), fill, dtype=t.dtype)
                    inner = guarded[guard:guard + t.numel()].view(t.shape)
                    inner.copy_(t)
                    copies[id(t)] = (t, guarded, inner, guard, edges(guarded, guard).clone())
                return copies[id(t)][2]

            def edges(guarded, guard):
                bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
                return torch.cat([guarded[:guard], guarded[-guard:]]).view(
                    bits[guarded.element_size()])

            result = function(*[placed(a) for a in args])
            for t, guarded, inner, guard, before in copies.values():
                assert torch.equal(edges(guarded, guard), before), (
                    f"{name}: the kernel wrote past a tensor's ends")
                t.copy_(inner)
            return result
        return call


def assert_compiles_like_eager(loss_of, x: torch.Tensor) -> None:
    """torch.compile(loss_of, fullgraph=True) gives eager's loss and gradient with respect to x."""
    compiled = torch.compile(loss_of, fullgraph=True)
    got = compiled(x)
    (grad_got,) = torch.autograd.grad(got, x)
    want = loss_of(x)
    (grad_want,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])
    torch.testing.assert_close(grad_got, grad_want, **TOLERANCES[torch.float32])


# ---------------------------------------------------------------------------------------------
# fused_rnn.LSTM / GRU against torch.nn.LSTM / GRU: outputs, final states, every gradient.

SEQUENCE_MODULES = {"lstm": (torch.nn.LSTM, fused_rnn.LSTM), "gru": (torch.nn.GRU, fused_rnn.GRU)}

# Configurations covering every feature: (kind, constructor kwargs, input mode, T, hx given).
# Input modes: "padded" [T, B, I] (or batch_first), "packed" / "unsorted" PackedSequence,
# "unbatched" [T, I].
SEQUENCE_CONFIGS = [
    ("lstm", dict(), "padded", 1, False),
    ("lstm", dict(), "padded", 40, True),
    ("lstm", dict(num_layers=2, bidirectional=True), "padded", 9, True),
    ("lstm", dict(num_layers=3, batch_first=True), "padded", 7, False),
    ("lstm", dict(bias=False, bidirectional=True), "packed", 8, True),
    ("lstm", dict(num_layers=2, bidirectional=True, batch_first=True), "unsorted", 8, True),
    ("lstm", dict(proj_size=3), "padded", 6, True),
    ("lstm", dict(num_layers=2, proj_size=4, bidirectional=True), "unsorted", 8, False),
    ("lstm", dict(num_layers=2, bidirectional=True), "unbatched", 5, True),
    ("lstm", dict(proj_size=2, batch_first=True), "unbatched", 5, False),
    ("gru", dict(), "padded", 1, False),
    ("gru", dict(), "padded", 40, True),
    ("gru", dict(num_layers=2, bidirectional=True), "padded", 9, True),
    ("gru", dict(num_layers=3, batch_first=True, bias=False), "padded", 7, False),
    ("gru", dict(bidirectional=True), "packed", 8, True),
    ("gru", dict(num_layers=2, bidirectional=True, batch_first=True), "unsorted", 8, False),
    ("gru", dict(num_layers=2), "unbatched", 5, True),
]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """A sequence test's sizes; lengths (one per batch row) for the packed modes."""
    input_size: int = 5
    hidden: int = 6
    batch: int = 4
    lengths: tuple = (8, 3, 8, 1)  # unsorted on purpose


DEFAULT_SIZES = Sizes()


def config_id(cfg):
    kind, kw, mode, steps, given = cfg
    args = "-".join(f"{k}={v}" for k, v in kw.items()) or "default"
    return f"{kind}-{args}-{mode}-T{steps}-{'hx' if given else 'nohx'}"


def make_modules(kind, kw, dtype, device, seed=0, sizes=DEFAULT_SIZES):
    torch_cls, our_cls = SEQUENCE_MODULES[kind]
    torch.manual_seed(seed)
    theirs = torch_cls(sizes.input_size, sizes.hidden, dtype=dtype, device=device, **kw)
    ours = our_cls(sizes.input_size, sizes.hidden, dtype=dtype, device=device, **kw)
    ours.load_state_dict(theirs.state_dict())
    truth = torch_cls(sizes.input_size, sizes.hidden, dtype=torch.float64, **kw)
    truth.load_state_dict({k: v.double().cpu() for k, v in theirs.state_dict().items()})
    return theirs, ours, truth


def make_inputs(kind, kw, mode, steps, given, dtype, device, sizes=DEFAULT_SIZES):
    """Leaves (input tensor, initial states) and a builder turning them into the module's args."""
    batch_first = kw.get("batch_first", False)
    layers = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    state = kw.get("proj_size", 0) or sizes.hidden
    batched = mode != "unbatched"

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)

    if not batched:
        x = rand(steps, sizes.input_size)
    elif batch_first:
        x = rand(sizes.batch, steps, sizes.input_size)
    else:
        x = rand(steps, sizes.batch, sizes.input_size)
    states = []
    if given:
        shape = (layers, sizes.batch) if batched else (layers,)
        states = [rand(*shape, state)] + ([rand(*shape, sizes.hidden)] if kind == "lstm" else [])

    def build(x, states):
        inp = x
        if mode in ("packed", "unsorted"):
            lengths = sorted(sizes.lengths, reverse=True) if mode == "packed" else list(sizes.lengths)
            inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                       enforce_sorted=mode == "packed")
        if not states:
            return (inp,)
        return (inp, tuple(states) if kind == "lstm" else states[0])

    return x, states, build


def flatten(result):
    """Output tensor (packed data for a PackedSequence) and final states, as a list."""
    output, hidden = result
    data = output.data if isinstance(output, PackedSequence) else output
    return [data, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def run_and_grad(module, x, states, build, out_weights):
    results = flatten(module(*build(x, states)))
    loss = sum((r * w.to(r)).sum() for r, w in zip(results, out_weights))
    leaves = [x, *states, *module.parameters()]
    return results, torch.autograd.grad(loss, leaves)


def check_against_torch(kind, kw, mode, steps, given, dtype, device, long_sums=False,
                        sizes=DEFAULT_SIZES):
    theirs, ours, truth = make_modules(kind, kw, dtype, device, sizes=sizes)
    x, states, build = make_inputs(kind, kw, mode, steps, given, dtype, device, sizes)
    shapes = [r.shape for r in flatten(theirs(*build(x, states)))]
    out_weights = [torch.randn(s, dtype=torch.float64) for s in shapes]

    got, got_grads = run_and_grad(ours, x, states, build, out_weights)
    want, want_grads = run_and_grad(theirs, x, states, build, out_weights)

    def to_truth(t):
        return t.detach().double().cpu().requires_grad_()

    true, true_grads = run_and_grad(truth, to_truth(x), [to_truth(s) for s in states], build,
                                    out_weights)
    names = ["output", "h_n", "c_n"][:len(got)]
    for name, a, b, t in zip(names, got, want, true):
        assert_matches_torch(a, b, t, name)
    state_names = ["input", *(f"state {i}" for i in range(len(states)))]
    parameter_names = [n for n, _ in ours.named_parameters()]
    assert len(got_grads) == len(state_names) + len(parameter_names)
    for k, (a, b, t) in enumerate(zip(got_grads, want_grads, true_grads)):
        # A parameter's gradient sums every step of every row. On CUDA cuDNN and cuBLAS sum in
        # different orders (float32 results ~1e-6 relative apart, past rtol 1e-5 on the H200):
        # there such sums are held to the accuracy rule's form for them (as close to float64 as
        # torch.nn is). The CPU keeps the fixed tolerance, but for sums over thousands of rows
        # (long_sums), where any two summation orders drift apart as far.
        summed = k >= len(state_names)
        name = parameter_names[k - len(state_names)] if summed else state_names[k]
        assert_matches_torch(a, b, t, f"grad of {name}",
                             against_truth=summed and (device == "cuda" or long_sums))
