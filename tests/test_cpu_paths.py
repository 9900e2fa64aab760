"""fused_rnn.cpu_layer_path against what a layer call does: the path it names must be the one that
runs, as the profiler sees it. A per-step path narrows its tensors step by step (at least one
aten::narrow a step); a whole-sequence path does not; a path with the input side inside the steps
runs no product of its own for the input projection; a chunked one, one product per chunk."""

import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import fused_rnn

PRODUCTS = {"aten::addmm", "aten::mm", "aten::linear", "mkldnn::_linear_pointwise"}


def op_counts(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events()]
    return names.count("aten::narrow"), sum(n in PRODUCTS for n in names)


def check_forward(path, steps, narrows, products):
    if path.startswith("sequence from input"):
        assert narrows < steps and products == 0
        return
    assert path.startswith("input projection")
    chunked = path.startswith("input projection in chunks of ")
    if "sequence:" in path:
        assert narrows < steps
        assert products == 1 if not chunked else products >= 2
    else:
        assert "per step:" in path and narrows >= steps
    if chunked:
        chunk = int(path.split("chunks of ")[1].split(" ")[0])
        assert products >= math.ceil(steps / chunk)


# (mode, steps, batch, input, hidden, proj, dtype, training): shapes that take each path here;
# which path is the CPU's choice (thread count, oneDNN), the test only checks that it is named.
SHAPES = [
    ("LSTM", 20, 2, 16, 32, 0, torch.float32, True),
    ("GRU", 20, 2, 16, 32, 0, torch.float32, True),
    ("GRU", 20, 8, 16, 32, 0, torch.float32, True),
    ("LSTM", 20, 16, 16, 32, 0, torch.float32, False),
    ("LSTM", 12, 256, 64, 64, 0, torch.float32, True),
    ("GRU", 20, 256, 256, 512, 0, torch.float32, False),
    ("GRU", 20, 256, 256, 512, 0, torch.float32, True),
    ("LSTM", 20, 4, 16, 32, 8, torch.float32, True),
    ("GRU", 20, 4, 16, 32, 0, torch.float64, True),
    ("LSTM", 20, 4, 16, 32, 0, torch.bfloat16, False),
]


@pytest.mark.parametrize("mode,steps,batch,input_size,hidden,proj,dtype,training", SHAPES)
def test_cpu_layer_path_is_the_path_taken(mode, steps, batch, input_size, hidden, proj, dtype,
                                          training):
    torch.manual_seed(0)
    kwargs = {"proj_size": proj} if proj else {}
    layer = getattr(fused_rnn, mode)(input_size, hidden, dtype=dtype, **kwargs)
    x = torch.randn(steps, batch, input_size, dtype=dtype, requires_grad=training)
    paths = fused_rnn.cpu_layer_path(mode, steps, batch, input_size, hidden, proj, dtype,
                                     training)
    if not training:
        with torch.no_grad():
            narrows, products = op_counts(lambda: layer(x))
        check_forward(paths["forward"], steps, narrows, products)
        return
    narrows, products = op_counts(lambda: layer(x))
    check_forward(paths["forward"], steps, narrows, products)
    out = layer(x)[0]
    narrows, _ = op_counts(lambda: out.sum().backward())
    if paths["backward"].startswith("sequence:"):
        assert narrows < steps
    else:
        assert paths["backward"].startswith("per step:") and narrows >= steps


def test_cpu_layer_path_names_every_kind_of_path():
    """The shapes above cover each path this CPU takes: the test checks them all."""
    forwards = {fused_rnn.cpu_layer_path(*s[:6], dtype=s[6], training=s[7])["forward"]
                for s in SHAPES}
    assert any(p.startswith("sequence from input") for p in forwards)
    assert any("sequence:" in p for p in forwards)
    assert any("per step:" in p for p in forwards)
    assert any("chunks of" in p for p in forwards)


@pytest.mark.parametrize("args,kwargs,match", [
    (("RNN", 10, 4, 8, 8), {}, "mode"),
    (("LSTM", 0, 4, 8, 8), {}, "steps"),
    (("GRU", 10, 4, 8, -1), {}, "hidden_size"),
    (("GRU", 10, 4, 8, 8), {"proj_size": 4}, "proj_size"),
    (("LSTM", 10, 4, 8, 8), {"dtype": torch.int32}, "dtype"),
])
def test_cpu_layer_path_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fused_rnn.cpu_layer_path(*args, **kwargs)
