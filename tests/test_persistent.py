"""The persistent whole-sequence CUDA layer kernels: their plans and the tensor-core kernel's
index maps (checked anywhere) and, on a GPU, parity with torch.nn with the kernels switched on."""

import copy

import pytest
import torch

import fused_rnn
from conftest import CUDA_READY, Sizes, assert_matches_torch
from fused_rnn import _C
from test_sequence import CONFIGS, check_against_torch, config_id

# An H200's limits: 132 SMs, 227 KiB of shared memory per block (opt-in).
H200 = dict(sm_count=132, shared_limit=227 * 1024)


def plan(batch, hidden, gates=4, elem_bytes=4, acc_bytes=4, sm_count=H200["sm_count"],
         shared_limit=H200["shared_limit"]):
    return _C.persistent_plan(batch, hidden, gates, elem_bytes, acc_bytes, sm_count, shared_limit)


@pytest.mark.parametrize("hidden", [1, 7, 131, 132, 133, 512, 768, 1000, 4096])
@pytest.mark.parametrize("sm_count", [1, 16, 132])
def test_plan_gives_every_unit_to_exactly_one_block(hidden, sm_count):
    p = plan(2, hidden, sm_count=sm_count, shared_limit=1 << 40)
    assert p["runs"]
    assert p["blocks"] <= sm_count  # all resident at once: one block per SM
    assert (p["blocks"] - 1) * p["units"] < hidden <= p["blocks"] * p["units"]


@pytest.mark.parametrize("batch, hidden, gates, elem_bytes", [
    (64, 512, 4, 4),     # fastrnns, float32
    (64, 512, 3, 2),     # fastrnns GRU, bfloat16
    (16, 768, 4, 2),     # the long-sequence case, bfloat16
    (8, 1024, 4, 2),     # latency
])
def test_plan_fits_the_benchmark_shapes_on_an_h200(batch, hidden, gates, elem_bytes):
    p = plan(batch, hidden, gates, elem_bytes, **H200)
    assert p["runs"], p["reason"]
    weights = gates * p["units"] * hidden * elem_bytes
    states = (batch * hidden + (batch * p["units"] if gates == 4 else 0)) * 4
    assert p["shared_bytes"] >= weights + states
    assert p["shared_bytes"] <= H200["shared_limit"]


def test_plan_refuses_what_does_not_fit_and_says_why():
    p = plan(256, 1024, **H200)  # h of the whole batch alone is 1 MiB
    assert not p["runs"]
    assert "shared memory" in p["reason"] and str(H200["shared_limit"]) in p["reason"]
    assert not plan(0, 512)["runs"]


# ---------------------------------------------------------------------------------------------
# The tensor-core kernel (csrc/cuda/persistent_tensor_core.cuh): its plan and index maps.

K_SPLITS = 4  # kTensorCoreKSplits (persistent_plan.h): warps sharing one tile's K


BACKWARD_WARPS = 12  # kTensorCoreBackwardWarps


def tensor_core_plan(batch, hidden, gates=4, elem_bytes=2, tf32=True, sm_count=H200["sm_count"],
                     shared_limit=H200["shared_limit"], backward=False):
    return _C.tensor_core_plan(batch, hidden, gates, elem_bytes, tf32, sm_count, shared_limit,
                               backward)


@pytest.mark.parametrize("batch, hidden, gates, elem_bytes", [
    (16, 768, 4, 2), (16, 768, 3, 2),  # the long-sequence cases
    (64, 512, 4, 2), (64, 512, 3, 2),  # fastrnns
    (1, 256, 4, 2), (8, 1024, 3, 2),   # latency
    (64, 1024, 4, 2),
    (64, 512, 4, 4), (64, 512, 3, 4), (8, 256, 4, 4),  # float32 as TF32
])
def test_tensor_core_plan_fits_the_benchmark_shapes_on_an_h200(batch, hidden, gates, elem_bytes):
    p = tensor_core_plan(batch, hidden, gates, elem_bytes)
    assert p["runs"], p["reason"]
    assert p["blocks"] * 16 == hidden and p["blocks"] <= H200["sm_count"]
    assert p["threads"] == 32 * gates * K_SPLITS
    assert p["k_tiles"] * K_SPLITS * 16 >= hidden > (p["k_tiles"] - 1) * K_SPLITS * 16
    assert p["k_tile_bound"] in (4, 8, 12, 16) and 0 <= p["k_tile_bound"] - p["k_tiles"] < 4
    assert p["k_tile_bound"] * 2 * elem_bytes <= 64  # weight registers a thread
    assert p["batch_pad"] % 16 == 0 and 0 <= p["batch_pad"] - batch < 16
    assert p["h_pitch"] * elem_bytes == hidden * elem_bytes + 16
    h_bytes = p["batch_pad"] * p["h_pitch"] * elem_bytes
    partial_bytes = K_SPLITS * 16 * gates * p["part_pitch"] * 4
    assert p["shared_bytes"] == h_bytes + partial_bytes + (batch * 16 * 4 if gates == 4 else 0)
    assert p["shared_bytes"] <= H200["shared_limit"]


@pytest.mark.parametrize("batch, hidden, gates, elem_bytes", [
    (16, 768, 4, 2), (16, 768, 3, 2), (64, 512, 4, 2), (64, 512, 3, 2), (1, 256, 4, 2),
    (8, 1024, 3, 2), (64, 256, 4, 4), (64, 512, 3, 4), (256, 512, 4, 2),
])
def test_tensor_core_backward_plan_fits_the_benchmark_shapes_on_an_h200(batch, hidden, gates,
                                                                         elem_bytes):
    p = tensor_core_plan(batch, hidden, gates, elem_bytes, backward=True)
    assert p["runs"], p["reason"]
    assert p["blocks"] * 16 == hidden and p["threads"] == 32 * BACKWARD_WARPS
    k_tiles = gates * hidden // 16  # of the gate gradients' columns
    assert p["k_tiles"] * BACKWARD_WARPS >= k_tiles > (p["k_tiles"] - 1) * BACKWARD_WARPS
    assert p["k_tile_bound"] * 2 * elem_bytes <= 64
    partial_bytes = BACKWARD_WARPS * 16 * p["part_pitch"] * 4
    carried = 2 if gates == 4 else 1  # h's gradient, and c's
    assert p["shared_bytes"] == partial_bytes + carried * batch * 16 * 4 <= H200["shared_limit"]


@pytest.mark.parametrize("kwargs, why", [
    (dict(batch=16, hidden=1024, gates=4), "registers (96 of them, over 64)"),
    (dict(batch=16, hidden=512, elem_bytes=4), "registers (96 of them, over 64)"),
    (dict(batch=512, hidden=512), "the partial sums need"),
])
def test_tensor_core_backward_plan_refuses_what_it_cannot_run_and_says_why(kwargs, why):
    p = tensor_core_plan(**kwargs, backward=True)
    assert not p["runs"]
    assert why in p["reason"]


@pytest.mark.parametrize("kwargs, why", [
    (dict(batch=16, hidden=768, elem_bytes=8), "float16, bfloat16 and float32 (as TF32) only"),
    (dict(batch=16, hidden=512, elem_bytes=4, tf32=False), "allow_tf32 forbids"),
    (dict(batch=16, hidden=40), "multiple of 16"),
    (dict(batch=0, hidden=64), "multiple of 16"),
    (dict(batch=16, hidden=1040), "registers (80 of them, over 64)"),
    (dict(batch=16, hidden=768, elem_bytes=4), "registers (96 of them, over 64)"),
    (dict(batch=16, hidden=1024, sm_count=32), "64 blocks of 16 units, over the device's 32 SMs"),
    (dict(batch=256, hidden=512), "shared memory"),
])
def test_tensor_core_plan_refuses_what_it_cannot_run_and_says_why(kwargs, why):
    p = tensor_core_plan(**kwargs)
    assert not p["runs"]
    assert why in p["reason"]


@pytest.mark.parametrize("gates", [3, 4])
def test_tensor_core_rows_hold_every_gate_of_every_unit_once(gates):
    maps = _C.tensor_core_maps(gates)
    rows = maps["tile_rows"]
    assert sorted(rows) == [(unit, gate) for unit in range(16) for gate in range(gates)]
    for unit in range(16):
        for gate in range(gates):
            assert rows[maps["block_rows"][unit * gates + gate]] == (unit, gate)


# A k-tile's fragments per format: (A's map, B's map, elements a register holds along K).
FORMATS = {"16-bit": ("a", "b", 2), "tf32": ("tf32_a", "tf32_b", 1)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_mma_fragment_maps_cover_each_tile_once(fmt):
    maps = _C.tensor_core_maps(4)
    a_key, b_key, width = FORMATS[fmt]
    # A register holds the element named and, in 16 bits, the next along K.
    a = sorted((row, col + v) for row, col in maps[a_key] for v in range(width))
    b = sorted((row + v, col) for row, col in maps[b_key] for v in range(width))
    assert a == [(row, col) for row in range(16) for col in range(16)]
    assert b == [(row, col) for row in range(16) for col in range(8)]
    assert sorted(maps["c"]) == [(row, col) for row in range(16) for col in range(8)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("gates, hidden, batch", [(4, 48, 5), (3, 80, 9), (4, 16, 1), (3, 32, 16)])
def test_tensor_core_indexing_replayed_on_the_cpu_gives_the_hidden_product(gates, hidden, batch,
                                                                         fmt):
    """The kernel's indexing of W_hh, h and the partial sums, replayed with the plan and maps it
    uses (a k-tile's mma as a 16 x 16 by 16 x 8 product of the fragments' elements): every
    (row, unit, gate) sum must come out as h @ W_hh^T."""
    a_key, b_key, width = FORMATS[fmt]
    plan = tensor_core_plan(batch, hidden, gates, elem_bytes=4 if fmt == "tf32" else 2)
    maps = _C.tensor_core_maps(gates)
    w = torch.randn(gates * hidden, hidden, dtype=torch.float64)
    h = torch.zeros(plan["batch_pad"], hidden, dtype=torch.float64)
    h[:batch] = torch.randn(batch, hidden, dtype=torch.float64)
    want = h[:batch] @ w.T
    for block in range(plan["blocks"]):
        j0 = 16 * block
        partial = torch.zeros(K_SPLITS, 16 * gates, plan["batch_pad"], dtype=torch.float64)
        for warp in range(plan["threads"] // 32):
            tile, split = warp % gates, warp // gates
            k_tile0 = split * plan["k_tiles"]
            for kt in range(min(plan["k_tiles"], hidden // 16 - k_tile0)):
                k = 16 * (k_tile0 + kt)
                a = torch.zeros(16, 16, dtype=torch.float64)
                for row, col in maps[a_key]:
                    unit, gate = maps["tile_rows"][16 * tile + row]
                    a[row, col:col + width] = w[gate * hidden + j0 + unit, k + col:k + col + width]
                for nt in range(plan["batch_pad"] // 8):
                    b = torch.zeros(16, 8, dtype=torch.float64)
                    for row, col in maps[b_key]:
                        b[row:row + width, col] = h[8 * nt + col, k + row:k + row + width]
                    d = a @ b
                    for row, col in maps["c"]:
                        partial[split, 16 * tile + row, 8 * nt + col] += d[row, col]
        for unit in range(16):
            for gate in range(gates):
                got = partial[:, maps["block_rows"][unit * gates + gate], :batch].sum(0)
                torch.testing.assert_close(got, want[:, gate * hidden + j0 + unit])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("gates, hidden, batch", [(4, 48, 5), (3, 80, 17), (4, 16, 1)])
def test_tensor_core_backward_indexing_replayed_on_the_cpu_gives_the_state_gradient(
        gates, hidden, batch, fmt):
    """The backward kernel's indexing replayed likewise: W_hh^T's rows for a block's units (A,
    pairs along K a row of W_hh apart), the gate gradients (B, [batch, G H]), the warps' partial
    sums: each unit's sum must come out as grad_gates @ W_hh."""
    a_key, b_key, width = FORMATS[fmt]
    plan = tensor_core_plan(batch, hidden, gates, elem_bytes=4 if fmt == "tf32" else 2,
                            backward=True)
    maps = _C.tensor_core_maps(gates)
    w = torch.randn(gates * hidden, hidden, dtype=torch.float64)
    grads = torch.zeros(plan["batch_pad"], gates * hidden, dtype=torch.float64)
    grads[:batch] = torch.randn(batch, gates * hidden, dtype=torch.float64)
    want = grads[:batch] @ w
    for block in range(plan["blocks"]):
        j0 = 16 * block
        partial = torch.zeros(BACKWARD_WARPS, 16, plan["batch_pad"], dtype=torch.float64)
        for warp in range(BACKWARD_WARPS):
            k_tile0 = warp * plan["k_tiles"]
            for kt in range(min(plan["k_tiles"], gates * hidden // 16 - k_tile0)):
                k = 16 * (k_tile0 + kt)
                a = torch.zeros(16, 16, dtype=torch.float64)
                for row, col in maps[a_key]:
                    a[row, col:col + width] = w[k + col:k + col + width, j0 + row]
                for nt in range(plan["batch_pad"] // 8):
                    b = torch.zeros(16, 8, dtype=torch.float64)
                    for row, col in maps[b_key]:
                        b[row:row + width, col] = grads[8 * nt + col, k + row:k + row + width]
                    d = a @ b
                    for row, col in maps["c"]:
                        partial[warp, row, 8 * nt + col] += d[row, col]
        torch.testing.assert_close(partial.sum(0)[:, :batch].T, want[:, j0:j0 + 16])


def test_cuda_layer_path_names_the_path_and_checks_mode():
    path = fused_rnn.cuda_layer_path("LSTM", 64, 512)
    assert path.startswith(("persistent (", "step-wise: ")), path
    backward = fused_rnn.cuda_layer_path("GRU", 64, 512, torch.bfloat16, backward=True)
    assert backward == "persistent (tensor cores)" or backward.startswith("step-wise: "), backward
    with pytest.raises(ValueError, match="mode"):
        fused_rnn.cuda_layer_path("RNN", 64, 512)


def test_persistent_barrier_is_checked():
    with pytest.raises(ValueError, match="barrier 'flags' or 'grid', got 'spin'"):
        fused_rnn.use_persistent_kernels(False, barrier="spin")


@pytest.fixture
def persistent_on(request):
    fused_rnn.use_persistent_kernels(True)
    yield
    fused_rnn.use_persistent_kernels(request.config.getoption("--persistent-kernels"))


# The configurations the persistent path takes: padded batches without projection.
PERSISTENT_CONFIGS = [c for c in CONFIGS if c[2] == "padded" and not c[1].get("proj_size")]


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cfg", PERSISTENT_CONFIGS, ids=config_id)
def test_persistent_kernels_match_torch_nn(cfg, dtype, persistent_on):
    kind, kw, mode, steps, given = cfg
    path = fused_rnn.cuda_layer_path(kind.upper(), 4, 6, dtype)
    assert path.startswith("persistent (") or steps < 2, path
    check_against_torch(kind, kw, mode, steps, given, dtype, "cuda")


def cuda_kernels_run(fn):
    """The names of the CUDA kernels fn() launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        fn()
        torch.cuda.synchronize()
    return {event.name for event in profile.events()}


def ran_tensor_core_kernels(names):
    return {kernel for kernel in ("tensor_core_layer_kernel", "tensor_core_backward_kernel")
            if any(kernel in name for name in names)}


# Hidden sizes for each of the kernel's k-tile bounds, partial K shares (272: the last warp holds 2
# of 5 k-tiles; 16: three warps of four hold none), batches of one, several and partial n-tiles.
TENSOR_CORE_SIZES = [
    Sizes(input_size=5, hidden=16, batch=1),
    Sizes(input_size=24, hidden=48, batch=9),
    Sizes(input_size=7, hidden=272, batch=17),
    Sizes(input_size=64, hidden=768, batch=16),
]


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("sizes, barrier", [(s, "flags") for s in TENSOR_CORE_SIZES] + [
    (TENSOR_CORE_SIZES[2], "grid")], ids=lambda v: f"H{v.hidden}-B{v.batch}" if isinstance(
        v, Sizes) else v)
def test_tensor_core_kernel_matches_torch_nn(kind, sizes, barrier, dtype, persistent_on):
    fused_rnn.use_persistent_kernels(True, barrier=barrier)
    for backward in (False, True):
        path = fused_rnn.cuda_layer_path(kind.upper(), sizes.batch, sizes.hidden, dtype,
                                         backward=backward)
        assert path == "persistent (tensor cores)", (backward, path)
    names = cuda_kernels_run(lambda: check_against_torch(
        kind, dict(num_layers=2, bidirectional=True), "padded", 11, True, dtype, "cuda",
        sizes=sizes))
    assert ran_tensor_core_kernels(names) == {"tensor_core_layer_kernel",
                                              "tensor_core_backward_kernel"}


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("mode", ["packed", "unsorted"])
@pytest.mark.parametrize("barrier", ["flags", "grid"])
def test_tensor_core_kernels_take_packed_sequences(kind, mode, barrier, dtype, persistent_on):
    """Sequences of several lengths: the batch shrinks step by step forward and grows in the
    reverse direction (rows starting from h0 and c0 mid-run), each row's final state is its own
    last step's, and in the backward each row's gradients enter at its last step and leave for
    its initial state at its first."""
    fused_rnn.use_persistent_kernels(True, barrier=barrier)
    sizes = Sizes(input_size=24, hidden=48, batch=9, lengths=(11, 3, 11, 1, 7, 11, 5, 8, 2))
    names = cuda_kernels_run(lambda: check_against_torch(
        kind, dict(num_layers=2, bidirectional=True), mode, 11, True, dtype, "cuda",
        sizes=sizes))
    assert ran_tensor_core_kernels(names) == {"tensor_core_layer_kernel",
                                              "tensor_core_backward_kernel"}


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_tensor_core_kernel_at_the_largest_bound_matches_torch_nn(kind, persistent_on):
    """H = 1024 (16 k-tiles a warp forward; the GRU's backward too, the LSTM's backward runs
    step-wise), B = 64 (eight n-tiles), one direction, given states."""
    sizes = Sizes(input_size=32, hidden=1024, batch=64)
    path = fused_rnn.cuda_layer_path(kind.upper(), sizes.batch, sizes.hidden, torch.bfloat16)
    assert path == "persistent (tensor cores)", path
    backward = fused_rnn.cuda_layer_path(kind.upper(), sizes.batch, sizes.hidden, torch.bfloat16,
                                         backward=True)
    if kind == "gru":
        assert backward == "persistent (tensor cores)", backward
    else:
        assert backward.startswith("step-wise: a warp's share of W_hh does not fit"), backward
    check_against_torch(kind, dict(batch_first=True), "padded", 6, True, torch.bfloat16, "cuda",
                        sizes=sizes)


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_tensor_core_kernel_in_float32_follows_cudnns_tf32_flag(kind, persistent_on):
    """float32 runs as TF32 on the tensor-core kernel where torch.backends.cudnn.allow_tf32 (as
    cuDNN does; conftest turns it off for the other tests): as close to float64 as torch.nn's
    TF32 run (the accuracy rule for large problems), and apart from full float32 by TF32's
    rounding; with the flag off, the SIMT kernel."""
    torch_cls, ours_cls = getattr(torch.nn, kind.upper()), getattr(fused_rnn, kind.upper())
    torch.manual_seed(0)
    theirs = torch_cls(64, 256).cuda()
    ours = ours_cls(64, 256).cuda()
    ours.load_state_dict(theirs.state_dict())
    truth = copy.deepcopy(theirs).double()
    x = torch.randn(40, 8, 64, device="cuda")
    x.requires_grad_()

    def output_and_grad(module, x):
        out = module(x)[0]
        return out.detach(), torch.autograd.grad(out.square().sum(), x)[0]

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        for backward in (False, True):
            path = fused_rnn.cuda_layer_path(kind.upper(), 8, 256, backward=backward)
            assert path == "persistent (tensor cores)", (backward, path)
        got, got_grad = output_and_grad(ours, x)
        theirs_out, theirs_grad = output_and_grad(theirs, x)
    want, want_grad = output_and_grad(truth, x.double())
    assert_matches_torch(got, theirs_out, want, "output", against_truth=True)
    assert_matches_torch(got_grad, theirs_grad, want_grad, "input gradient", against_truth=True)
    full = ours(x)[0].detach()
    assert fused_rnn.cuda_layer_path(kind.upper(), 8, 256).startswith("persistent (SIMT; ")
    assert (got - full).abs().max() > 1e-5


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
def test_float64_and_odd_sizes_take_the_simt_kernel(persistent_on):
    assert fused_rnn.cuda_layer_path("LSTM", 16, 768, torch.float64).startswith(
        "persistent (SIMT; no tensor cores: tensor cores take float16, bfloat16 and float32")
    assert fused_rnn.cuda_layer_path("GRU", 4, 6, torch.bfloat16).startswith(
        "persistent (SIMT; no tensor cores: the hidden size is not a positive multiple of 16")


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
def test_persistent_kernels_are_off_by_default(request):
    if request.config.getoption("--persistent-kernels"):
        pytest.skip("this run switched them on (--persistent-kernels)")
    assert fused_rnn.cuda_layer_path("LSTM", 4, 6) == "step-wise: persistent kernels are off"
