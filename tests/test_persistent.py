"""The persistent whole-sequence CUDA layer kernels: their plan (checked anywhere) and, on a GPU,
parity with torch.nn with the kernels switched on."""

import pytest
import torch

import fused_rnn
from conftest import CUDA_READY
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


def test_cuda_layer_path_names_the_path_and_checks_mode():
    path = fused_rnn.cuda_layer_path("LSTM", 64, 512)
    assert path == "persistent" or path.startswith("step-wise: ")
    with pytest.raises(ValueError, match="mode"):
        fused_rnn.cuda_layer_path("RNN", 64, 512)


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
    assert path == "persistent" or steps < 2, path
    check_against_torch(kind, kw, mode, steps, given, dtype, "cuda")


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
def test_persistent_kernels_are_off_by_default(request):
    if request.config.getoption("--persistent-kernels"):
        pytest.skip("this run switched them on (--persistent-kernels)")
    assert fused_rnn.cuda_layer_path("LSTM", 4, 6) == "step-wise: persistent kernels are off"
