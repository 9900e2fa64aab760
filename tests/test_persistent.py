"""The persistent whole-sequence CUDA layer kernels: their plans and the tensor-core kernel's
index maps (checked anywhere) and, on a GPU, parity with torch.nn with the kernels switched on."""

import copy
import sys
from pathlib import Path

import pytest
import torch

import fused_rnn
from conftest import CUDA_READY, Sizes, assert_matches_torch
from fused_rnn import _C
from test_sequence import CONFIGS, check_against_torch, config_id

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import path_table  # noqa: E402  (how benchmarks read cuda_layer_path's descriptions)

# An H200's limits: 132 SMs, 227 KiB of shared memory per block (opt-in).
H200 = dict(sm_count=132, shared_limit=227 * 1024)


def dtype_id(dtype):
    """A dtype's test id, "bfloat16" for torch.bfloat16 (so that -k can select it: run_gpu.sh)."""
    return str(dtype).removeprefix("torch.")


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

# Clusters of 2 blocks an H200 runs at once: its 132 SMs in pairs (what
# _C.tensor_core_device() measures on the GPU; benchmarks/run_gpu.sh prints it).
H200_CLUSTER_PAIRS = 66


def tensor_core_plan(batch, hidden, gates=4, elem_bytes=2, tf32=True, sm_count=H200["sm_count"],
                     shared_limit=H200["shared_limit"], cluster_pairs=H200_CLUSTER_PAIRS,
                     backward=False, cluster_split=0):
    return _C.tensor_core_plan(batch, hidden, gates, elem_bytes, tf32, sm_count, shared_limit,
                               cluster_pairs, backward, cluster_split)


def check_tensor_core_plan(p, batch, hidden, gates, elem_bytes, backward):
    """What every plan that runs must hold (persistent_plan.h)."""
    assert p["runs"], p["reason"]
    split = p["cluster_split"]
    assert p["blocks"] == split * hidden // 16 <= H200["sm_count"]
    assert split == 1 or hidden // 16 <= H200_CLUSTER_PAIRS
    warps = BACKWARD_WARPS if backward else gates * K_SPLITS
    assert p["threads"] == 32 * warps
    k_tiles = gates * hidden // 16 if backward else hidden // 16
    shares = split * (BACKWARD_WARPS if backward else K_SPLITS)
    assert p["k_tiles"] * shares >= k_tiles > (p["k_tiles"] - 1) * shares
    assert p["k_tile_bound"] in (4, 8, 12, 16) and 0 <= p["k_tile_bound"] - p["k_tiles"] < 4
    assert p["k_tile_bound"] * 2 * elem_bytes <= 64  # weight registers a thread
    assert p["batch_pad"] % 16 == 0 and 0 <= p["batch_pad"] - batch < 16
    partial_bytes = warps * 16 * p["part_pitch"] * 4
    if backward:
        carried = 2 if gates == 4 else 1  # h's gradient, and c's
        assert p["shared_bytes"] == partial_bytes + carried * batch * 16 * 4
    else:
        # h's rows hold a block's K range, the widest block's
        block_columns = min(16 * K_SPLITS * p["k_tiles"], hidden)
        assert p["h_pitch"] * elem_bytes == block_columns * elem_bytes + 16
        h_bytes = p["batch_pad"] * p["h_pitch"] * elem_bytes
        c_bytes = batch * 16 * 4 if gates == 4 else 0
        assert p["shared_bytes"] == h_bytes + partial_bytes + c_bytes
    assert p["shared_bytes"] <= H200["shared_limit"]


@pytest.mark.parametrize("batch, hidden, gates, elem_bytes, split", [
    (16, 768, 4, 2, 1), (16, 768, 3, 2, 1),  # the long-sequence cases
    (64, 512, 4, 2, 1), (64, 512, 3, 2, 1),  # fastrnns
    (1, 256, 4, 2, 1), (8, 1024, 3, 2, 1),   # latency
    (64, 1024, 4, 2, 1),
    (64, 512, 4, 4, 1), (64, 512, 3, 4, 1), (8, 256, 4, 4, 1),  # float32 as TF32
    (16, 768, 4, 4, 2), (16, 768, 3, 4, 2), (64, 1024, 4, 4, 2), (8, 1024, 3, 4, 2),
    (16, 1040, 4, 2, 2),
])
def test_tensor_core_plan_fits_the_benchmark_shapes_on_an_h200(batch, hidden, gates, elem_bytes,
                                                               split):
    """One block a group of 16 units where its weights fit, else a cluster of 2."""
    p = tensor_core_plan(batch, hidden, gates, elem_bytes)
    check_tensor_core_plan(p, batch, hidden, gates, elem_bytes, backward=False)
    assert p["cluster_split"] == split


@pytest.mark.parametrize("batch, hidden, gates, elem_bytes, split", [
    (16, 768, 4, 2, 1), (16, 768, 3, 2, 1), (64, 512, 4, 2, 1), (64, 512, 3, 2, 1),
    (1, 256, 4, 2, 1), (8, 1024, 3, 2, 1), (64, 256, 4, 4, 1), (64, 512, 3, 4, 1),
    (256, 512, 4, 2, 1),
    (16, 1024, 4, 2, 2), (64, 512, 4, 4, 2), (16, 768, 4, 4, 2), (8, 1024, 3, 4, 2),
])
def test_tensor_core_backward_plan_fits_the_benchmark_shapes_on_an_h200(batch, hidden, gates,
                                                                         elem_bytes, split):
    p = tensor_core_plan(batch, hidden, gates, elem_bytes, backward=True)
    check_tensor_core_plan(p, batch, hidden, gates, elem_bytes, backward=True)
    assert p["cluster_split"] == split


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("batch, hidden, gates, elem_bytes", [
    (1, 16, 4, 2), (9, 48, 3, 2), (16, 512, 4, 2), (17, 272, 3, 4)])
def test_tensor_core_plan_takes_a_cluster_split_asked_for(batch, hidden, gates, elem_bytes,
                                                          backward):
    for split in (1, 2):
        p = tensor_core_plan(batch, hidden, gates, elem_bytes, backward=backward,
                             cluster_split=split)
        check_tensor_core_plan(p, batch, hidden, gates, elem_bytes, backward)
        assert p["cluster_split"] == split


@pytest.mark.parametrize("kwargs, why", [
    (dict(batch=16, hidden=1024, gates=4, cluster_pairs=0),
     "registers (96 of them, over 64, 1 block a group"),
    (dict(batch=16, hidden=1024, gates=4, elem_bytes=4),
     "registers (96 of them, over 64, 2 blocks a group"),
    (dict(batch=16, hidden=512, elem_bytes=4, cluster_split=1),
     "registers (96 of them, over 64, 1 block a group"),
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
    (dict(batch=16, hidden=1040, cluster_pairs=0), "registers (80 of them, over 64, 1 block"),
    (dict(batch=16, hidden=768, elem_bytes=4, cluster_split=1), "registers (96 of them, over 64"),
    (dict(batch=16, hidden=1024, elem_bytes=4, cluster_pairs=60),
     "needs 64 clusters of 2 blocks, over the 60 the device runs at once"),
    (dict(batch=16, hidden=1024, sm_count=32),
     "64 blocks (1 a group of 16 units), over the device's 32 SMs"),
    (dict(batch=16, hidden=2048), "registers (128 of them, over 64, 1 block a group of 16 "
     "units); split over a cluster: the hidden size needs 256 blocks (2 a group"),
    (dict(batch=256, hidden=512), "shared memory"),
    (dict(batch=16, hidden=64, cluster_split=2, cluster_pairs=0), "needs thread-block clusters"),
    (dict(batch=16, hidden=64, cluster_split=3), "the cluster split asked for is 3, not 1 or 2"),
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


def test_tagged_words_leave_room_for_the_value_and_never_match_a_stale_word():
    """The tagged exchange (NOTES entry 65): a 16-bit value above a 16-bit tag, TF32's 19 bits
    above a 13-bit tag (float32's mantissa bits TF32 drops); a tag is never the zeros the words
    start as, and a word not yet overwritten (the one kTaggedSlots steps before) never carries
    the tag a reader waits for, across the tags' wrap."""
    exchange = _C.tagged_exchange()
    slots, (mask_16bit, mask_tf32) = exchange["slots"], exchange["masks"]
    assert mask_16bit == (1 << 16) - 1
    assert mask_tf32 == (1 << (23 - 10)) - 1
    for mask in (mask_16bit, mask_tf32):
        steps = list(range(0, 3 * slots)) + list(range(mask - 3 * slots, mask + 3 * slots)) + \
            list(range(slots * mask - 2 * slots, slots * mask + 2 * slots))
        for n in steps:
            tag = _C.tensor_core_step_tag(n, mask)
            assert 1 <= tag <= mask, (n, tag)
            if n >= slots:
                assert tag != _C.tensor_core_step_tag(n - slots, mask), n


def a_fragment(a_map, width, values):
    """A 16 x 16 A tile as the threads' registers hold it: values(row, col) gives the `width`
    elements from (row, col) along K."""
    a = torch.zeros(16, 16, dtype=torch.float64)
    for row, col in a_map:
        a[row, col:col + width] = values(row, col)
    return a


def b_fragment(b_map, width, values):
    """A 16 x 8 B tile likewise, `width` elements from (row, col) down K."""
    b = torch.zeros(16, 8, dtype=torch.float64)
    for row, col in b_map:
        b[row:row + width, col] = values(row, col)
    return b


def row_gate_unit(maps, tile, row, hidden):
    """W_hh's row (less the group's first unit) for row `row` of gate tile `tile`."""
    unit, gate = maps["tile_rows"][16 * tile + row]
    return gate * hidden + unit


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("gates, hidden, batch", [(4, 48, 5), (3, 80, 9), (4, 16, 1), (3, 32, 16),
                                                  (4, 272, 3)])
def test_tensor_core_indexing_replayed_on_the_cpu_gives_the_hidden_product(gates, hidden, batch,
                                                                         fmt, split):
    """The kernel's indexing of W_hh, h (staged: each block's K range), the partial sums and the
    pairs each block finishes, replayed with the plan and maps it uses (a k-tile's mma as a
    16 x 16 by 16 x 8 product of the fragments' elements): every (row, unit, gate) sum must come
    out as h @ W_hh^T, each pair finished by one block of its group, and each K share's flags
    must be those of the blocks that write its columns of h."""
    a_key, b_key, width = FORMATS[fmt]
    plan = tensor_core_plan(batch, hidden, gates, elem_bytes=4 if fmt == "tf32" else 2,
                            cluster_split=split)
    assert plan["runs"], plan["reason"]
    pad = plan["h_pitch"] - min(16 * K_SPLITS * plan["k_tiles"], hidden)
    maps = _C.tensor_core_maps(gates)
    w = torch.randn(gates * hidden, hidden, dtype=torch.float64)
    h = torch.zeros(plan["batch_pad"], hidden, dtype=torch.float64)
    h[:batch] = torch.randn(batch, hidden, dtype=torch.float64)
    want = h[:batch] @ w.T
    for group in range(hidden // 16):
        j0 = 16 * group
        # partial[rank]: the block's shared memory, which its peers read.
        partial = torch.zeros(split, K_SPLITS, 16 * gates, plan["batch_pad"], dtype=torch.float64)
        finished = torch.zeros(batch, 16, dtype=torch.int64)
        for rank in range(split):
            block_k0 = 16 * rank * K_SPLITS * plan["k_tiles"]
            block_columns = max(0, min(16 * K_SPLITS * plan["k_tiles"], hidden - block_k0))
            s_h = h[:, block_k0:block_k0 + block_columns]
            assert block_columns <= plan["h_pitch"] - pad
            for warp in range(plan["threads"] // 32):
                tile, share = warp % gates, warp // gates
                k_tile0 = (rank * K_SPLITS + share) * plan["k_tiles"]
                count = min(plan["k_tiles"], hidden // 16 - k_tile0)
                waited = set(range(split * k_tile0, split * (k_tile0 + max(count, 0))))
                writers = {split * (k // 16) + r for k in range(16 * k_tile0, 16 * (k_tile0 + count))
                           for r in range(split)}
                assert waited == writers
                for kt in range(count):
                    k = 16 * (k_tile0 + kt)
                    a = a_fragment(maps[a_key], width, lambda row, col: w[
                        row_gate_unit(maps, tile, row, hidden) + j0, k + col:k + col + width])
                    for nt in range(plan["batch_pad"] // 8):

                        def staged_h(row, col):
                            at = k - block_k0 + row
                            assert 0 <= at and at + width <= block_columns
                            return s_h[8 * nt + col, at:at + width]

                        d = a @ b_fragment(maps[b_key], width, staged_h)
                        for row, col in maps["c"]:
                            partial[rank, share, 16 * tile + row, 8 * nt + col] += d[row, col]
        # (The cluster barrier: every block's partial sums are written.)
        for rank in range(split):
            rows = (batch - rank + split - 1) // split
            for e in range(rows * 16):
                row, unit = e // 16 * split + rank, e % 16
                finished[row, unit] += 1
                for gate in range(gates):
                    got = partial[:, :, maps["block_rows"][unit * gates + gate], row].sum()
                    torch.testing.assert_close(got, want[row, gate * hidden + j0 + unit])
        assert (finished == 1).all()


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("gates, hidden, batch", [(4, 48, 5), (3, 80, 17), (4, 16, 1)])
def test_tensor_core_backward_indexing_replayed_on_the_cpu_gives_the_state_gradient(
        gates, hidden, batch, fmt, split):
    """The backward kernel's indexing replayed likewise: W_hh^T's rows for a group's units (A,
    pairs along K a row of W_hh apart), the gate gradients (B, [batch, G H]), the warps' partial
    sums, the pairs each block carries: each unit's sum must come out as grad_gates @ W_hh, and
    each warp's flags must be those of the blocks that write its columns of the gradients."""
    a_key, b_key, width = FORMATS[fmt]
    plan = tensor_core_plan(batch, hidden, gates, elem_bytes=4 if fmt == "tf32" else 2,
                            backward=True, cluster_split=split)
    assert plan["runs"], plan["reason"]
    maps = _C.tensor_core_maps(gates)
    groups = hidden // 16
    w = torch.randn(gates * hidden, hidden, dtype=torch.float64)
    grads = torch.zeros(plan["batch_pad"], gates * hidden, dtype=torch.float64)
    grads[:batch] = torch.randn(batch, gates * hidden, dtype=torch.float64)
    want = grads[:batch] @ w
    for group in range(groups):
        j0 = 16 * group
        partial = torch.zeros(split, BACKWARD_WARPS, 16, plan["batch_pad"], dtype=torch.float64)
        got = torch.full((batch, 16), float("nan"), dtype=torch.float64)
        for rank in range(split):
            for warp in range(BACKWARD_WARPS):
                k_tile0 = (rank * BACKWARD_WARPS + warp) * plan["k_tiles"]
                count = min(plan["k_tiles"], gates * hidden // 16 - k_tile0)
                waited = {(k_tile0 + e // split) % groups * split + e % split
                          for e in range(split * max(count, 0))}
                writers = {split * ((c % hidden) // 16) + r
                           for c in range(16 * k_tile0, 16 * (k_tile0 + count))
                           for r in range(split)}
                assert waited == writers
                for kt in range(count):
                    k = 16 * (k_tile0 + kt)
                    a = a_fragment(maps[a_key], width,
                                   lambda row, col: w[k + col:k + col + width, j0 + row])
                    for nt in range(plan["batch_pad"] // 8):
                        d = a @ b_fragment(maps[b_key], width, lambda row, col: grads[
                            8 * nt + col, k + row:k + row + width])
                        for row, col in maps["c"]:
                            partial[rank, warp, row, 8 * nt + col] += d[row, col]
        for rank in range(split):
            pairs = (batch - rank + split - 1) // split * 16
            for e in range(pairs):
                row, unit = e // 16 * split + rank, e % 16
                assert got[row, unit].isnan()  # one block carries each pair
                got[row, unit] = partial[:, :, unit, row].sum()
        torch.testing.assert_close(got, want[:, j0:j0 + 16])


def test_cuda_layer_path_names_the_path_and_checks_mode():
    path = fused_rnn.cuda_layer_path("LSTM", 64, 512)
    assert path.startswith(("persistent (", "step-wise: ")), path
    backward = fused_rnn.cuda_layer_path("GRU", 64, 512, torch.bfloat16, backward=True)
    assert backward == "persistent (tensor cores)" or backward.startswith("step-wise: "), backward
    with pytest.raises(ValueError, match="mode"):
        fused_rnn.cuda_layer_path("RNN", 64, 512)


@pytest.mark.parametrize("args,kwargs,match", [
    (("LSTM", 0, 512), {}, "batch to be a positive int, got 0"),
    (("GRU", 8, -1), {}, "hidden_size to be a positive int, got -1"),
    (("GRU", 8, 64.0), {}, "hidden_size to be a positive int, got 64.0"),
    (("LSTM", 8, 64), {"dtype": torch.int32}, "floating dtype"),
    (("LSTM", 8, 64), {"device": "cpu"}, "expected a CUDA device, got cpu"),
])
def test_cuda_layer_path_checks_its_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fused_rnn.cuda_layer_path(*args, **kwargs)


def test_a_device_index_past_the_last_is_a_clear_error():
    past = torch.cuda.device_count()
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=f"index below {past}, got {past}"):
            fused_rnn.cuda_layer_path("LSTM", 8, 64, device=f"cuda:{past}")
    # The plans' device query: with no GPU (a CUDA build on a CPU machine), index 0 is past it.
    built = "CUDA device index in \\[0, {0}\\), got {0}".format(past)
    with pytest.raises(RuntimeError, match=built if fused_rnn.build_info()["cuda"] else
                       "built without the CUDA kernels"):
        fused_rnn._C.tensor_core_device(past)


def test_persistent_barrier_and_cluster_split_are_checked():
    with pytest.raises(ValueError, match="barrier 'flags', 'grid' or 'tagged', got 'spin'"):
        fused_rnn.use_persistent_kernels(False, barrier="spin")
    for split in (0, 3, True, 2.0):
        with pytest.raises(ValueError, match=f"cluster_split None, 1 or 2, got {split!r}"):
            fused_rnn.use_persistent_kernels(False, cluster_split=split)


@pytest.fixture
def persistent_on(request):
    fused_rnn.use_persistent_kernels(True)
    yield
    fused_rnn.use_persistent_kernels(True if request.config.getoption("--persistent-kernels")
                                     else None)


# The configurations the persistent path takes: padded batches without projection.
PERSISTENT_CONFIGS = [c for c in CONFIGS if c[2] == "padded" and not c[1].get("proj_size")]


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=dtype_id)
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


TENSOR_CORE_PATHS = {1: "persistent (tensor cores)", 2: "persistent (tensor cores, clusters of 2)"}


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("sizes, barrier, split", [
    (s, barrier, 1) for s in TENSOR_CORE_SIZES for barrier in ("flags", "tagged")] + [
    (TENSOR_CORE_SIZES[2], "grid", 1)] + [(s, "flags", 2) for s in TENSOR_CORE_SIZES] + [
    (TENSOR_CORE_SIZES[2], barrier, 2) for barrier in ("grid", "tagged")],
    ids=lambda v: f"H{v.hidden}-B{v.batch}" if isinstance(v, Sizes)
    else f"split{v}" if isinstance(v, int) else v)
def test_tensor_core_kernel_matches_torch_nn(kind, sizes, barrier, split, dtype, persistent_on):
    """Both kernels, each barrier, one block or a cluster of two a group of 16 units (H = 16 and
    48: the second block of a cluster holds no k-tile). (Tagged words: the forward's; its
    backward waits at flags.)"""
    fused_rnn.use_persistent_kernels(True, barrier=barrier, cluster_split=split)
    for backward in (False, True):
        path = fused_rnn.cuda_layer_path(kind.upper(), sizes.batch, sizes.hidden, dtype,
                                         backward=backward)
        assert path == TENSOR_CORE_PATHS[split], (backward, path)
    names = cuda_kernels_run(lambda: check_against_torch(
        kind, dict(num_layers=2, bidirectional=True), "padded", 11, True, dtype, "cuda",
        sizes=sizes))
    assert ran_tensor_core_kernels(names) == {"tensor_core_layer_kernel",
                                              "tensor_core_backward_kernel"}


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("mode", ["packed", "unsorted"])
@pytest.mark.parametrize("barrier, split",
                         [("flags", 1), ("grid", 1), ("flags", 2), ("tagged", 1)])
def test_tensor_core_kernels_take_packed_sequences(kind, mode, barrier, split, dtype,
                                                   persistent_on):
    """Sequences of several lengths: the batch shrinks step by step forward and grows in the
    reverse direction (rows starting from h0 and c0 mid-run), each row's final state is its own
    last step's, and in the backward each row's gradients enter at its last step and leave for
    its initial state at its first. (Tagged words: rows that start mid-run, in the reverse
    direction, read h0, and a row's words in the ring are its last step's.)"""
    fused_rnn.use_persistent_kernels(True, barrier=barrier, cluster_split=split)
    sizes = Sizes(input_size=24, hidden=48, batch=9, lengths=(11, 3, 11, 1, 7, 11, 5, 8, 2))
    names = cuda_kernels_run(lambda: check_against_torch(
        kind, dict(num_layers=2, bidirectional=True), mode, 11, True, dtype, "cuda",
        sizes=sizes))
    assert ran_tensor_core_kernels(names) == {"tensor_core_layer_kernel",
                                              "tensor_core_backward_kernel"}


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_tensor_core_kernel_at_the_largest_bound_matches_torch_nn(kind, persistent_on):
    """H = 1024 (16 k-tiles a warp forward; the GRU's backward too, the LSTM's backward on
    clusters of 2), B = 64 (eight n-tiles), one direction, given states."""
    sizes = Sizes(input_size=32, hidden=1024, batch=64)
    path = fused_rnn.cuda_layer_path(kind.upper(), sizes.batch, sizes.hidden, torch.bfloat16)
    assert path == TENSOR_CORE_PATHS[1], path
    backward = fused_rnn.cuda_layer_path(kind.upper(), sizes.batch, sizes.hidden, torch.bfloat16,
                                         backward=True)
    assert backward == TENSOR_CORE_PATHS[2 if kind == "lstm" else 1], backward
    names = cuda_kernels_run(lambda: check_against_torch(
        kind, dict(batch_first=True), "padded", 6, True, torch.bfloat16, "cuda", sizes=sizes))
    assert ran_tensor_core_kernels(names) == {"tensor_core_layer_kernel",
                                              "tensor_core_backward_kernel"}


def cuda_modules_and_truth(kind, input_size, hidden):
    """torch.nn's layer on the GPU, ours with its weights, and torch.nn's in float64 (the truth)."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind.upper())(input_size, hidden).cuda()
    ours = getattr(fused_rnn, kind.upper())(input_size, hidden).cuda()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours, copy.deepcopy(theirs).double()


def output_and_grad(module, x):
    out = module(x)[0]
    return out.detach(), torch.autograd.grad(out.square().sum(), x)[0]


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("steps, batch, hidden, path", [(40, 8, 256, TENSOR_CORE_PATHS[1]),
                                                        (30, 16, 768, TENSOR_CORE_PATHS[2])])
@pytest.mark.parametrize("barrier", ["flags", "tagged"])
def test_tensor_core_kernels_in_float32_follow_cudnns_tf32_flag(kind, steps, batch, hidden, path,
                                                                 barrier, persistent_on):
    """float32 runs as TF32 on the tensor-core kernels where torch.backends.cudnn.allow_tf32 (as
    cuDNN does; conftest turns it off for the other tests): as close to float64 as torch.nn's
    TF32 run (the accuracy rule for large problems), and apart from full float32 by TF32's
    rounding; with the flag off, the SIMT kernel. At H = 768 (the long-sequence shape) a block's
    share of W_hh is over its registers, so both kernels split each group of units over a
    cluster of two. (Tagged words: TF32's 19 bits of h and a 13-bit tag.)"""
    fused_rnn.use_persistent_kernels(True, barrier=barrier)
    theirs, ours, truth = cuda_modules_and_truth(kind, 64, hidden)
    x = torch.randn(steps, batch, 64, device="cuda", requires_grad=True)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        for backward in (False, True):
            got_path = fused_rnn.cuda_layer_path(kind.upper(), batch, hidden, backward=backward)
            assert got_path == path, (backward, got_path)
        names = cuda_kernels_run(lambda: output_and_grad(ours, x))
        got, got_grad = output_and_grad(ours, x)
        theirs_out, theirs_grad = output_and_grad(theirs, x)
    assert ran_tensor_core_kernels(names) == {"tensor_core_layer_kernel",
                                              "tensor_core_backward_kernel"}
    want, want_grad = output_and_grad(truth, x.double())
    assert_matches_torch(got, theirs_out, want, "output", against_truth=True)
    assert_matches_torch(got_grad, theirs_grad, want_grad, "input gradient", against_truth=True)
    full = ours(x)[0].detach()
    assert fused_rnn.cuda_layer_path(kind.upper(), batch, hidden).startswith("persistent (SIMT; ")
    assert (got - full).abs().max() > 1e-5


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
def test_float64_and_odd_sizes_take_the_simt_kernel(persistent_on):
    assert fused_rnn.cuda_layer_path("LSTM", 16, 768, torch.float64).startswith(
        "persistent (SIMT; no tensor cores: tensor cores take float16, bfloat16 and float32")
    assert fused_rnn.cuda_layer_path("GRU", 4, 6, torch.bfloat16).startswith(
        "persistent (SIMT; no tensor cores: the hidden size is not a positive multiple of 16")


STEP, SIMT, TC = "step-wise", "SIMT", "tensor cores"


# A table of the shape a sweep writes (benchmarks/path_table.py): LSTM 16-bit forward.
GRID = [(4, 2, False, b, h, [TC if b >= 16 else SIMT, STEP, STEP])
        for b in (1, 4, 16, 64) for h in (256, 512, 1024)]


@pytest.mark.parametrize("batch, hidden, want", [
    (1, 256, (1, 256)), (4, 1024, (4, 1024)),   # on the grid
    (2, 384, (1, 512)),    # batch 2 is as near 1 as 4 (by ratio): the smaller; 384 nearer 512
    (3, 360, (4, 256)),    # 3 nearer 4; 360 nearer 256
    (8, 700, (4, 512)),    # 8 as near 4 as 16: the smaller; 700 nearer 512
    (9, 1000, (16, 1024)),
    (64, 256, (64, 256)),
])
def test_a_shape_takes_the_nearest_measured_point(batch, hidden, want):
    got = _C.measured_point(GRID, 4, 2, False, batch, hidden)
    assert (got["batch"], got["hidden"]) == want
    assert got["order"][0] == (TC if want[0] >= 16 else SIMT)


def test_nothing_measured_near_a_shape_gives_no_point():
    for batch, hidden in ((65, 512), (4, 255), (4, 1025)):  # past the span measured
        assert _C.measured_point(GRID, 4, 2, False, batch, hidden) is None
    assert _C.measured_point(GRID, 3, 2, False, 4, 512) is None   # the GRU: not in the table
    assert _C.measured_point(GRID, 4, 4, False, 4, 512) is None   # float32: neither
    assert _C.measured_point(GRID, 4, 2, True, 4, 512) is None    # nor the backward
    with pytest.raises(RuntimeError, match='unknown path "cuDNN"'):
        _C.measured_point([(4, 2, False, 1, 256, [STEP, "cuDNN", STEP])], 4, 2, False, 1, 256)


def test_use_persistent_kernels_takes_true_false_or_none():
    for enabled in (1, "on", 0.0):
        with pytest.raises(ValueError, match=f"enabled True, False or None, got {enabled!r}"):
            fused_rnn.use_persistent_kernels(enabled)
    with pytest.raises(RuntimeError, match='expected the persistent mode "measured", "on", '
                                           '"simt" or "off", got "sometimes"'):
        _C.set_persistent_kernels("sometimes")


def default_path(kind, batch, hidden, dtype, backward=False):
    """The path the default takes for this shape by the table (csrc/measured_paths.h): the first
    of the measured point's order that applies, as the forced modes report what applies; and the
    point (None where nothing near was measured)."""
    point = _C.measured_point([], {"LSTM": 4, "GRU": 3}[kind], dtype.itemsize, backward, batch,
                              hidden)
    if point is None or dtype == torch.float64:
        return STEP, None
    applies = {STEP: True}
    for mode, path in (("on", TC), ("simt", SIMT)):
        _C.set_persistent_kernels(mode)
        description = fused_rnn.cuda_layer_path(kind, batch, hidden, dtype, backward=backward)
        applies[path] = path_table.path_of(description) == path
    fused_rnn.use_persistent_kernels(None)
    return next(path for path in point["order"] if applies[path]), point


# Shapes on both sides of the table's span: batch 1 to 64, hidden 256 to 1024.
DEFAULT_SHAPES = [("LSTM", 1, 512), ("GRU", 1, 256), ("LSTM", 4, 512), ("GRU", 16, 768),
                  ("LSTM", 64, 512), ("GRU", 1, 1024)]


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
def test_the_default_path_is_the_measured_one(request):
    if request.config.getoption("--persistent-kernels"):
        pytest.skip("this run switched them on everywhere (--persistent-kernels)")
    for kind, batch, hidden in DEFAULT_SHAPES:
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for backward in (False, True):
                want, point = default_path(kind, batch, hidden, dtype, backward)
                got = fused_rnn.cuda_layer_path(kind, batch, hidden, dtype, backward=backward)
                assert path_table.path_of(got) == want, (kind, batch, hidden, dtype, backward, got)
                if point is None:
                    assert got.startswith("step-wise: the persistent kernels run by default "
                                          "only where measured faster, and nothing near this "
                                          "shape was measured"), got
                else:
                    assert f"at batch {point['batch']}, hidden {point['hidden']}" in got, got
    fused_rnn.use_persistent_kernels(False)
    try:
        assert fused_rnn.cuda_layer_path("LSTM", 1, 512) == "step-wise: persistent kernels are off"
    finally:
        fused_rnn.use_persistent_kernels(None)


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_simt_mode_forces_the_simt_forward_and_matches_torch_nn(kind, request):
    """The mode benchmarks/path_table.py measures the SIMT kernel in: its forward wherever it
    fits (here at batch 9, where the tensor-core kernels would run), the backward step by step."""
    if request.config.getoption("--persistent-kernels"):
        pytest.skip("this run switched them on everywhere (--persistent-kernels)")
    sizes = Sizes(input_size=24, hidden=64, batch=9)
    _C.set_persistent_kernels("simt")
    try:
        assert fused_rnn.cuda_layer_path(kind.upper(), 9, 64, torch.bfloat16) == \
            "persistent (SIMT)"
        assert fused_rnn.cuda_layer_path(kind.upper(), 9, 64, backward=True) == \
            "step-wise: the SIMT kernel runs the forward only"
        names = cuda_kernels_run(lambda: check_against_torch(
            kind, {}, "padded", 7, True, torch.bfloat16, "cuda", sizes=sizes))
    finally:
        fused_rnn.use_persistent_kernels(None)
    assert any("persistent_layer_kernel" in name for name in names), names
    assert not ran_tensor_core_kernels(names)


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_default_runs_the_paths_it_names_and_matches_torch_nn(kind, batch, dtype, request):
    """Inference and training, both directions, H = 256: the kernels the profiler sees are those
    of the paths cuda_layer_path names for the default (the table's: at batch 1 so far the SIMT
    forward and the step-wise backward)."""
    if request.config.getoption("--persistent-kernels"):
        pytest.skip("this run switched them on everywhere (--persistent-kernels)")
    forward, _ = default_path(kind.upper(), batch, 256, dtype)
    backward, _ = default_path(kind.upper(), batch, 256, dtype, backward=True)
    sizes = Sizes(input_size=24, hidden=256, batch=batch)
    names = cuda_kernels_run(lambda: check_against_torch(
        kind, dict(bidirectional=True), "padded", 9, True, dtype, "cuda", sizes=sizes))
    assert any("persistent_layer_kernel" in name for name in names) == (forward == SIMT), names
    assert ran_tensor_core_kernels(names) == (
        {"tensor_core_layer_kernel"} if forward == TC else set()) | (
        {"tensor_core_backward_kernel"} if backward == TC else set())
