"""Parity of fused_rnn.LSTM / GRU with torch.nn.LSTM / GRU: outputs, final states, every gradient."""

import copy
import pickle

import pytest
import torch

import fused_rnn
from conftest import (CUDA_READY, DEFAULT_SIZES, DEVICES, TOLERANCES, Sizes,
                      assert_compiles_like_eager, assert_matches_torch, check_against_torch,
                      config_id, flatten, make_inputs, make_modules)
from conftest import SEQUENCE_CONFIGS as CONFIGS
from conftest import SEQUENCE_MODULES as MODULES

INPUT_SIZE, HIDDEN = DEFAULT_SIZES.input_size, DEFAULT_SIZES.hidden

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_matches_torch_nn(cfg, dtype, device):
    check_against_torch(*cfg, dtype, device)


@pytest.fixture
def concurrent_directions():
    """use_concurrent_directions(True) for the test, off again after it."""
    fused_rnn.use_concurrent_directions(True)
    yield
    fused_rnn.use_concurrent_directions(False)


BIDIRECTIONAL_CONFIGS = [cfg for cfg in CONFIGS if cfg[1].get("bidirectional")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", BIDIRECTIONAL_CONFIGS, ids=config_id)
def test_concurrent_directions_give_the_same_numbers(cfg, device, concurrent_directions):
    """With the reverse direction on a second stream (CUDA; the CPU ignores the setting), a
    bidirectional layer's outputs and every gradient are bit for bit those of the directions run
    one after the other, and within torch.nn's tolerance: the same kernels, ordered by events."""
    kind, kw, mode, steps, given = cfg
    _, ours, _ = make_modules(kind, kw, torch.float32, device)
    x, states, build = make_inputs(kind, kw, mode, steps, given, torch.float32, device)

    def results():
        got = flatten(ours(*build(x, states)))
        loss = sum((r * (k + 1)).sum() for k, r in enumerate(got))
        return [r.detach() for r in got] + list(
            torch.autograd.grad(loss, [x, *states, *ours.parameters()]))

    concurrent = results()
    fused_rnn.use_concurrent_directions(False)
    one_after_the_other = results()
    for a, b in zip(concurrent, one_after_the_other):
        assert torch.equal(a, b)
    fused_rnn.use_concurrent_directions(True)
    check_against_torch(*cfg, torch.float32, device)


def test_concurrent_directions_checks_its_argument():
    with pytest.raises(ValueError, match="expected True or False, got 'yes'"):
        fused_rnn.use_concurrent_directions("yes")


@pytest.fixture
def pipelined_layers(monkeypatch):
    """use_pipelined_layers(True, chunks=3) for the test, on the CPU too (which has no streams:
    the same chunks, one after the other), off again after it; the list counts the stacks run
    as a pipeline."""
    monkeypatch.setattr(fused_rnn.functional, "_pipelined_devices", ("cuda", "cpu"))
    runs = []
    pipelined = fused_rnn.functional._pipelined_layers

    def counting(*args):
        runs.append(args[1].device)
        return pipelined(*args)
    monkeypatch.setattr(fused_rnn.functional, "_pipelined_layers", counting)
    fused_rnn.use_pipelined_layers(True, chunks=3)
    yield runs
    fused_rnn.use_pipelined_layers(False)


# The unidirectional stacks over padded input (unbatched too), plus a projection and a sequence
# longer than its chunks.
PIPELINED_CONFIGS = [cfg for cfg in CONFIGS if cfg[1].get("num_layers", 1) > 1
                     and not cfg[1].get("bidirectional") and cfg[2] in ("padded", "unbatched")] + [
    ("lstm", dict(num_layers=2, proj_size=3), "padded", 9, True),
    ("gru", dict(num_layers=2), "padded", 40, True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", PIPELINED_CONFIGS, ids=config_id)
def test_pipelined_layers_match_torch_nn(cfg, dtype, device, pipelined_layers):
    """Run as a pipeline (each chunk of steps one op call, from the state the chunk before left;
    on CUDA each layer on its own stream), a stack's outputs, final states and every gradient
    are torch.nn's."""
    check_against_torch(*cfg, dtype, device)
    assert len(pipelined_layers) == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("module", [fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.LayerNormLSTM,
                                    fused_rnn.LayerNormGRU])
def test_pipelined_layers_of_every_kind_with_zoneout(module, device, pipelined_layers):
    """Every kind of stack, with zoneout (in evaluation: no draws) cut into chunks as the rows
    are: the numbers of the stack run whole, to float64's rounding (only the weights' gradients
    sum in another order)."""
    torch.manual_seed(0)
    layer = module(INPUT_SIZE, HIDDEN, num_layers=3, zoneout=0.25, device=device,
                   dtype=torch.float64).eval()
    x = torch.randn(11, 4, INPUT_SIZE, device=device, dtype=torch.float64, requires_grad=True)

    def results():
        out, hidden = layer(x)
        got = [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
        loss = sum((r * (k + 1)).sum() for k, r in enumerate(got))
        return [r.detach() for r in got] + list(torch.autograd.grad(loss, [x, *layer.parameters()]))

    pipelined = results()
    fused_rnn.use_pipelined_layers(False)
    whole = results()
    assert len(pipelined_layers) == 1
    for a, b in zip(pipelined, whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", [
    ("lstm", dict(num_layers=2), "packed", 8, True),
    ("gru", dict(num_layers=2, bidirectional=True), "padded", 9, True),
    ("lstm", dict(), "padded", 40, True),
], ids=config_id)
def test_pipelining_leaves_other_layers_as_they_run(cfg, device, pipelined_layers):
    """Packed sequences, bidirectional stacks and single layers run whole, as before."""
    check_against_torch(*cfg, torch.float64, device)
    assert pipelined_layers == []


@pytest.mark.parametrize("device", DEVICES)
def test_a_stack_with_episode_starts_runs_whole(device, pipelined_layers):
    """With episode starts a stack runs whole (each episode restarts from the initial state,
    which a chunk's op would take to be the state it starts from): the numbers of a run without
    the setting."""
    torch.manual_seed(0)
    layer = fused_rnn.LSTM(INPUT_SIZE, HIDDEN, num_layers=2, device=device, dtype=torch.float64)
    x = torch.randn(11, 4, INPUT_SIZE, device=device, dtype=torch.float64)
    resets = torch.rand(11, 4, device=device) < 0.2
    with torch.no_grad():
        with_setting = layer(x, resets=resets)[0]
        fused_rnn.use_pipelined_layers(False)
        without = layer(x, resets=resets)[0]
    assert pipelined_layers == []
    assert torch.equal(with_setting, without)


@pytest.mark.parametrize("device", DEVICES)
def test_a_pipelined_stack_keeps_one_output(device, pipelined_layers, held_outputs, monkeypatch):
    """What the last layer's ops save of their chunks' outputs are views of the concatenated
    output (here from any size): past it, nothing but this test holds the chunks' own."""
    monkeypatch.setattr(fused_rnn.functional, "_VIEWS_FROM_BYTES", 0)
    layer = fused_rnn.GRU(INPUT_SIZE, HIDDEN, num_layers=2, device=device)
    out, _ = layer(torch.randn(7, 3, INPUT_SIZE, device=device, requires_grad=True))
    assert use_counts(held_outputs) == [1] * 3
    out.sum().backward()


def test_pipelined_layers_checks_its_arguments():
    with pytest.raises(ValueError, match="expected enabled to be True or False, got 'yes'"):
        fused_rnn.use_pipelined_layers("yes")
    for chunks in (1, True, 2.0):
        with pytest.raises(ValueError, match=f"expected chunks to be an int of at least 2, got "
                                             f"{chunks!r}"):
            fused_rnn.use_pipelined_layers(True, chunks=chunks)


@pytest.fixture
def held_outputs(monkeypatch):
    """The storages of the directions' outputs that bidirectional layers concatenate (the list
    fills as they run): the test's references to them."""
    held = []
    point_into = fused_rnn.functional._OutputsSavedAsViews.point_into

    def recording(self, whole, outputs, dim=1):
        held.extend(out.untyped_storage() for out in outputs)
        return point_into(self, whole, outputs, dim)
    monkeypatch.setattr(fused_rnn.functional._OutputsSavedAsViews, "point_into", recording)
    return held


def use_counts(storages):
    return [torch._C._storage_Use_Count(storage._cdata) for storage in storages]


@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("module", [fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.LayerNormLSTM])
def test_a_bidirectional_layer_keeps_one_output(module, device, concurrent, held_outputs,
                                                monkeypatch):
    """What each direction's op saves of its output for the backward is a view of the layer's
    concatenated output (here from any size): past the concatenation, in every layer, nothing
    but this test holds the directions' own outputs (their memory is free before the backward);
    with the reverse direction on a second stream too. (The gradients, with views at every
    size: test_matches_torch_nn_with_outputs_saved_as_views.)"""
    monkeypatch.setattr(fused_rnn.functional, "_VIEWS_FROM_BYTES", 0)
    fused_rnn.use_concurrent_directions(concurrent)
    try:
        layer = module(INPUT_SIZE, HIDDEN, num_layers=2, bidirectional=True, device=device)
        out, _ = layer(torch.randn(5, 3, INPUT_SIZE, device=device, requires_grad=True))
    finally:
        fused_rnn.use_concurrent_directions(False)
    assert use_counts(held_outputs) == [1] * 4
    out.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_a_small_bidirectional_layer_saves_its_directions_outputs(device, held_outputs):
    """Below _VIEWS_FROM_BYTES an output, the directions' ops save their own outputs (the views'
    hooks would cost more host time than the memory is worth)."""
    layer = fused_rnn.GRU(INPUT_SIZE, HIDDEN, bidirectional=True, device=device)
    out, _ = layer(torch.randn(5, 3, INPUT_SIZE, device=device, requires_grad=True))
    assert use_counts(held_outputs) == [2, 2]
    out.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", BIDIRECTIONAL_CONFIGS, ids=config_id)
def test_matches_torch_nn_with_outputs_saved_as_views(cfg, device, monkeypatch):
    monkeypatch.setattr(fused_rnn.functional, "_VIEWS_FROM_BYTES", 0)
    check_against_torch(*cfg, torch.float64, device)


@pytest.mark.parametrize("device", DEVICES)
def test_the_callers_saved_tensor_hooks_see_the_directions_outputs(device, held_outputs,
                                                                   monkeypatch):
    """Under saved-tensor hooks of the caller's (here a stand-in for save_on_cpu or
    checkpointing), the layer adds none of its own: the caller's see and hold each direction's
    output, and the gradients are those without any hooks."""
    monkeypatch.setattr(fused_rnn.functional, "_VIEWS_FROM_BYTES", 0)
    layer = fused_rnn.LSTM(INPUT_SIZE, HIDDEN, bidirectional=True, device=device)
    x = torch.randn(5, 3, INPUT_SIZE, device=device, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = layer(x)
    assert use_counts(held_outputs) == [2, 2]
    assert all(any(t.untyped_storage()._cdata == s._cdata for t in packed) for s in held_outputs)
    hooked = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])
    plain = torch.autograd.grad(layer(x)[0].square().sum(), [x, *layer.parameters()])
    for a, b in zip(hooked, plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_an_output_changed_in_place_stops_the_backward(bidirectional, device, monkeypatch):
    """A layer's output is among what its backward reads (as cuDNN's; a bidirectional layer's
    where its directions' outputs are saved as views): changed in place, the backward raises as
    autograd does for any saved tensor."""
    monkeypatch.setattr(fused_rnn.functional, "_VIEWS_FROM_BYTES", 0)
    layer = fused_rnn.GRU(INPUT_SIZE, HIDDEN, bidirectional=bidirectional, device=device)
    out, _ = layer(torch.randn(5, 3, INPUT_SIZE, device=device, requires_grad=True))
    out.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


# The CPU's fused recurrent step and per-step products (float32, sequences of 8 steps or more)
# tile the weights into blocks of 16 (AVX-512) or 8 units, or 4 times that many columns, and h
# into chunks of a few rows: sizes spanning several of each, with partial blocks and chunks, and
# batches that shrink and grow (packed, both directions).
WIDE_CONFIGS = [
    ("lstm", dict(num_layers=2, bidirectional=True), "padded", 12, True),
    ("lstm", dict(proj_size=7, bidirectional=True), "unsorted", 12, True),
    ("gru", dict(bidirectional=True), "padded", 12, True),
    ("gru", dict(bidirectional=True), "unsorted", 12, False),
]


@pytest.mark.parametrize("cfg", WIDE_CONFIGS, ids=config_id)
def test_matches_torch_nn_over_many_blocks_and_rows(cfg):
    sizes = Sizes(hidden=70, batch=13, lengths=(12, 3, 12, 1, 9, 12, 5, 8, 12, 2, 10, 7, 11))
    check_against_torch(*cfg, torch.float32, "cpu", sizes=sizes)


@pytest.mark.parametrize("kind", MODULES)
def test_matches_torch_nn_past_32_rows(kind):
    """B = 70: the CPU's fused steps (forward and backward) take up to 128 rows where W_hh fits
    in cache, in 12 row chunks; the backward splits the batch over the threads (35 rows each on
    two)."""
    check_against_torch(kind, dict(bidirectional=True), "padded", 9, True, torch.float32, "cpu",
                        sizes=Sizes(hidden=40, batch=70))


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("batch", [8, 21])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
def test_steps_with_their_input_side_match_torch_nn(kind, batch, bias, grad):
    """From 8 rows the CPU's fused steps compute x_t @ W_ih^T beside h @ W_hh^T themselves (no
    input projection buffer): I = 24 (the second layer's 80) != H = 40, a partial row chunk (21
    rows), both directions, with and without biases; every gradient in training, the outputs
    and states in inference (where the LSTM writes no activated gates and the GRU reuses one
    step's workspace)."""
    sizes = Sizes(input_size=24, hidden=40, batch=batch)
    cfg = (kind, dict(num_layers=2, bidirectional=True, bias=bias), "padded", 9, True)
    if grad:
        check_against_torch(*cfg, torch.float32, "cpu", sizes=sizes)
        return
    theirs, ours, truth = make_modules(*cfg[:2], torch.float32, "cpu", sizes=sizes)
    x, states, build = make_inputs(*cfg, torch.float32, "cpu", sizes)
    with torch.no_grad():
        got, want = flatten(ours(*build(x, states))), flatten(theirs(*build(x, states)))
        true = flatten(truth(*build(x.double(), [s.double() for s in states])))
    for name, a, b, t in zip(["output", "h_n", "c_n"], got, want, true):
        assert_matches_torch(a, b, t, name)


@pytest.mark.parametrize("kind", MODULES)
def test_matches_torch_nn_with_a_large_recurrent_weight(kind):
    """H = 1024: W_hh is 12-16 MB, which the CPU's fused steps (forward and backward) take while
    it fits the last-level cache."""
    check_against_torch(kind, dict(), "padded", 9, True, torch.float32, "cpu",
                        sizes=Sizes(hidden=1024, batch=3))


@pytest.mark.parametrize("kind", MODULES)
def test_matches_torch_nn_over_a_thousand_rows(kind):
    """T * B = 1280 rows and G * H > 128: the CPU's input gradient over all steps is oneDNN's
    product with W_ih^T packed, and the weight gradients oneDNN's products by blocks of rows
    (fewer rows take MKL's or our tile kernel). Summed over 1280 rows in another order than
    MKL's, the weight gradients are held to float64's accuracy, as close as torch.nn's."""
    check_against_torch(kind, dict(bidirectional=True), "padded", 64, True, torch.float32, "cpu",
                        long_sums=True, sizes=Sizes(hidden=48, batch=20))


def test_gru_training_in_chunks_matches_torch_nn():
    """The GRU saves its workspace, not its input projection, so on the CPU its training forward
    too runs in chunks of about 16 MB of projection: B=40 H=512 makes 68 steps a chunk, so 150
    steps are three, the last one shorter (both directions)."""
    # The weight gradients sum 6000 rows: float32 orders differ by ~1e-4 there (the code before
    # this path, one chunk, too), so they are held to float64's accuracy, as close as torch.nn.
    check_against_torch("gru", dict(bidirectional=True), "padded", 150, True, torch.float32,
                        "cpu", long_sums=True, sizes=Sizes(hidden=512, batch=40))


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_half_types_on_cuda_match_torch_nn(cfg, dtype):
    check_against_torch(*cfg, dtype, "cuda")


@pytest.mark.parametrize("kind", MODULES)
def test_streaming_in_chunks_equals_whole_sequence(kind):
    """Online mode: feeding chunks with the carried state gives the whole-sequence result."""
    _, ours, _ = make_modules(kind, dict(num_layers=2), torch.float64, "cpu")
    x = torch.randn(30, 3, INPUT_SIZE, dtype=torch.float64)
    whole, whole_state = ours(x)
    outputs, state = [], None
    for chunk in x.split([1, 7, 12, 10]):
        out, state = ours(chunk, state)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs), whole, **TOLERANCES[torch.float64])
    for a, b in zip(state if kind == "lstm" else (state,),
                    whole_state if kind == "lstm" else (whole_state,)):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,reached", [("lstm", "output"), ("lstm", "h_n"), ("lstm", "c_n"),
                                          ("gru", "output"), ("gru", "h_n")])
def test_a_loss_that_reaches_one_output(kind, reached, device):
    """The outputs a loss does not reach send no gradient back (not even zeros) into the layer
    ops; their backward must count them as zero, as torch.nn does."""
    theirs, ours, _ = make_modules(kind, dict(num_layers=2, bidirectional=True), torch.float64,
                                   device)
    x = torch.randn(7, 3, INPUT_SIZE, dtype=torch.float64, device=device, requires_grad=True)
    grads = []
    for module in (ours, theirs):
        output, state = module(x)
        states = state if kind == "lstm" else (state,)
        value = dict(zip(["output", "h_n", "c_n"], [output, *states]))[reached]
        weights = torch.randn(value.shape, dtype=torch.float64, device=device,
                              generator=torch.Generator(device).manual_seed(1))
        grads.append(torch.autograd.grad((value * weights).sum(), [x, *module.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("kind", MODULES)
def test_dropout_between_layers_only_in_training(kind):
    theirs, ours, _ = make_modules(kind, dict(num_layers=3, dropout=0.5), torch.float64, "cpu")
    x = torch.randn(6, 2, INPUT_SIZE, dtype=torch.float64)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **TOLERANCES[torch.float64])
    ours.train()
    first, second = ours(x)[0], ours(x)[0]
    assert not torch.allclose(first, second), "dropout changed nothing in training"
    # The first layer has no dropout before it: a 1-layer module ignores dropout (as torch.nn).
    _, single, _ = make_modules(kind, dict(num_layers=1), torch.float64, "cpu")
    with pytest.warns(UserWarning, match="dropout"):
        dropped = MODULES[kind][1](INPUT_SIZE, HIDDEN, dropout=0.5, dtype=torch.float64)
    dropped.load_state_dict(single.state_dict())
    dropped.train()
    torch.testing.assert_close(dropped(x)[0], single(x)[0], **TOLERANCES[torch.float64])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [False, True])
def test_lstm_layer_gradcheck(reverse, proj):
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    hidden, state = 3, (2 if proj else 3)
    batch_sizes = torch.tensor([3, 3, 2, 1])
    args = (rand(9, 2), batch_sizes, rand(3, state), rand(3, hidden), rand(4 * hidden, 2),
            rand(4 * hidden, state), rand(4 * hidden), rand(4 * hidden),
            rand(state, hidden) if proj else None, reverse)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.fused_rnn.lstm_layer(*a)[:3], args)


@pytest.mark.parametrize("reverse", [False, True])
def test_gru_layer_gradcheck(reverse):
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    batch_sizes = torch.tensor([3, 3, 2, 1])
    args = (rand(9, 2), batch_sizes, rand(3, 3), rand(9, 2), rand(9, 3), rand(9), rand(9),
            reverse)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.fused_rnn.gru_layer(*a)[:2], args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,proj", [("lstm", False), ("lstm", True), ("gru", False)])
def test_opcheck_layer_ops(kind, proj, device):
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_()

    batch_sizes = torch.tensor([3, 2, 2])
    for reverse in (False, True):
        if kind == "lstm":
            state = 2 if proj else 3
            args = [rand(7, 2), batch_sizes, rand(3, state), rand(3, 3), rand(12, 2),
                    rand(12, state), rand(12), rand(12), rand(state, 3) if proj else None,
                    reverse]
            op, backward = torch.ops.fused_rnn.lstm_layer, torch.ops.fused_rnn.lstm_layer_backward
        else:
            args = [rand(7, 2), batch_sizes, rand(3, 3), rand(9, 2), rand(9, 3), rand(9), rand(9),
                    reverse]
            op, backward = torch.ops.fused_rnn.gru_layer, torch.ops.fused_rnn.gru_layer_backward
        torch.library.opcheck(op.default, args)
        plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        torch.library.opcheck(op.default, plain + [False])  # keep_saved=False
        outs = op(*plain)
        if kind == "lstm":
            out, hy, cy, gates, cells, pre_proj = outs
            bargs = [torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy), *plain[:6],
                     plain[8], out, gates, cells, pre_proj, reverse, [True] * 7]
        else:
            out, hy, workspace = outs
            bargs = [torch.randn_like(out), torch.randn_like(hy), *plain[:5], out, workspace,
                     reverse, [True] * 6]
        torch.library.opcheck(backward.default, bargs)


def _layer_args(kind, batch_sizes, batch, hidden, device, requires_grad=False):
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_(requires_grad)

    rows, gates = int(batch_sizes.sum()), 4 if kind == "lstm" else 3
    states = [rand(batch, hidden) for _ in range(2 if kind == "lstm" else 1)]
    args = [rand(rows, 5), batch_sizes, *states, rand(gates * hidden, 5),
            rand(gates * hidden, hidden), rand(gates * hidden), rand(gates * hidden)]
    return args + ([None] if kind == "lstm" else [])


LAYER_OPS = {"lstm": torch.ops.fused_rnn.lstm_layer, "gru": torch.ops.fused_rnn.gru_layer}
FIRST_SAVED = {"lstm": 3, "gru": 2}  # the index of the first tensor kept for the backward


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch_sizes", [[4] * 9, [40] * 9, [4, 4, 3, 1]],
                         ids=["padded", "padded-B40", "packed"])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_ops_without_saved_tensors_give_the_same_outputs(kind, batch_sizes, reverse,
                                                               device):
    """keep_saved=False (what the modules ask for): the same output and states, bit for bit, and
    the tensors for the backward come back empty."""
    sizes = torch.tensor(batch_sizes)
    args = _layer_args(kind, sizes, batch_sizes[0], 24, device) + [reverse]
    op = LAYER_OPS[kind]
    kept, dropped = op(*args), op(*args, keep_saved=False)
    outputs = FIRST_SAVED[kind]
    for a, b in zip(kept[:outputs], dropped[:outputs]):
        assert torch.equal(a, b)
    for a, b in zip(kept[outputs:], dropped[outputs:]):
        assert b.shape == (0, a.shape[1])
    assert kept[outputs].shape[0] == sizes.sum()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch, hidden, steps", [(4, 1024, 400), (40, 512, 120)],
                         ids=["B4-2chunks", "B40-3chunks"])
@pytest.mark.parametrize("reverse", [False, True])
def test_inference_in_chunks_matches_the_whole_sequence(kind, batch, hidden, steps, reverse,
                                                        device):
    """Without saved tensors a padded batch on the CPU runs in chunks of steps of about 16 MB of
    input projection (these sizes make two or three, the last one shorter): the same outputs and
    states as the whole sequence at once (on CUDA, which runs it at once, a plain comparison).
    The GRU's training forward runs in the same chunks (held to torch.nn by
    test_gru_training_in_chunks_matches_torch_nn)."""
    sizes = torch.tensor([batch] * steps)
    args = _layer_args(kind, sizes, batch, hidden, device) + [reverse]
    op, outputs = LAYER_OPS[kind], FIRST_SAVED[kind]
    kept, dropped = op(*args), op(*args, keep_saved=False)
    for name, a, b in zip(["output", "h", "c"], kept[:outputs], dropped[:outputs]):
        torch.testing.assert_close(b, a, **TOLERANCES[torch.float32], msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_recorded_layer_call_keeps_its_saved_tensors(kind):
    """Where autograd records the call, keep_saved=False is overruled: its backward needs them."""
    sizes = torch.tensor([3, 3, 2])
    args = _layer_args(kind, sizes, 3, 4, "cpu", requires_grad=True) + [False]
    op, saved = LAYER_OPS[kind], FIRST_SAVED[kind]
    grads = []
    for keep in (True, False):
        outs = op(*args, keep_saved=keep)
        assert outs[saved].shape[0] == sizes.sum()
        grads.append(torch.autograd.grad(outs[0].sum(), args[0]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    with torch.no_grad():
        assert op(*args, keep_saved=False)[saved].shape[0] == 0


@pytest.mark.parametrize("kind", MODULES)
def test_compile_fullgraph(kind):
    """torch.compile(fullgraph=True) compiles a model using our RNN, forward and backward."""
    torch._dynamo.reset()
    _, ours, _ = make_modules(kind, dict(num_layers=2, bidirectional=True), torch.float32, "cpu")
    x = torch.randn(5, 3, INPUT_SIZE, requires_grad=True)

    def loss_of(x):
        output, _ = ours(x)
        return output.square().sum()

    assert_compiles_like_eager(loss_of, x)
    # What this buys over torch.nn, whose RNN modules Dynamo will not trace with fullgraph=True.
    torch._dynamo.reset()
    theirs = MODULES[kind][0](INPUT_SIZE, HIDDEN)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(lambda x: theirs(x)[0].sum(), fullgraph=True)(x)


@pytest.mark.parametrize("kind", MODULES)
def test_module_behaves_like_torch_nn(kind):
    torch_cls, our_cls = MODULES[kind]
    extra = dict(proj_size=2) if kind == "lstm" else {}
    torch.manual_seed(1)
    theirs = torch_cls(3, 4, num_layers=2, bidirectional=True, **extra)
    torch.manual_seed(1)
    ours = our_cls(3, 4, num_layers=2, bidirectional=True, **extra)
    assert isinstance(ours, torch.nn.RNNBase)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    fresh = torch_cls(3, 4, num_layers=2, bidirectional=True, **extra)
    fresh.load_state_dict(ours.state_dict())
    ours.flatten_parameters()
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(clone) is our_cls
        x = torch.randn(4, 2, 3)
        torch.testing.assert_close(clone(x)[0], ours(x)[0])
    assert next(ours.double().parameters()).dtype == torch.float64
    assert ours(torch.randn(4, 2, 3, dtype=torch.float64))[0].dtype == torch.float64
    assert next(ours.half().parameters()).dtype == torch.float16
    assert next(ours.to(torch.float32).parameters()).dtype == torch.float32


def test_convert_replaces_in_place_and_keeps_weights():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 4, bidirectional=True)
            self.blocks = torch.nn.ModuleList([torch.nn.GRU(8, 4), torch.nn.LSTMCell(4, 4),
                                               torch.nn.GRUCell(4, 4)])

        def forward(self, x):
            y, _ = self.lstm(x)
            y, _ = self.blocks[0](y)
            h, _ = self.blocks[1](y[-1])
            return self.blocks[2](h)

    torch.manual_seed(0)
    model = Model()
    x = torch.randn(5, 2, 3)
    before = model(x)
    params = list(model.parameters())
    assert fused_rnn.convert(model) is model
    assert [type(m) for m in (model.lstm, *model.blocks)] == [
        fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.LSTMCell, fused_rnn.GRUCell]
    assert all(a is b for a, b in zip(params, model.parameters()))
    torch.testing.assert_close(model(x), before)
    assert type(fused_rnn.convert(torch.nn.GRU(2, 2))) is fused_rnn.GRU


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.type, str(info.value)


# Bad inputs (module: input_size 3, hidden_size 4, 2 layers) on which torch.nn raises; ours must
# raise the same type with the same message.
BAD_INPUTS = {
    "input_size": lambda kind: (torch.randn(5, 2, 7),),
    "input_rank": lambda kind: (torch.randn(5, 2, 3, 1),),
    "input_rank_1d": lambda kind: (torch.randn(3),),
    "seq_len_0": lambda kind: (torch.randn(0, 2, 3),),
    "hx_batch": lambda kind: (torch.randn(5, 2, 3), _state(kind, (2, 3, 4))),
    "hx_layers": lambda kind: (torch.randn(5, 2, 3), _state(kind, (1, 2, 4))),
    "hx_size": lambda kind: (torch.randn(5, 2, 3), _state(kind, (2, 2, 5))),
    "hx_rank_batched": lambda kind: (torch.randn(5, 2, 3), _state(kind, (2, 4))),
    "hx_rank_unbatched": lambda kind: (torch.randn(5, 3), _state(kind, (2, 1, 4))),
    "dtype": lambda kind: (torch.randn(5, 2, 3, dtype=torch.float64),),
}


def _state(kind, shape):
    return (torch.randn(shape), torch.randn(shape)) if kind == "lstm" else torch.randn(shape)


@pytest.mark.parametrize("case", BAD_INPUTS)
@pytest.mark.parametrize("kind", MODULES)
def test_bad_input_raises_like_torch_nn(kind, case):
    torch_cls, our_cls = MODULES[kind]
    theirs, ours = torch_cls(3, 4, num_layers=2), our_cls(3, 4, num_layers=2)
    ours.load_state_dict(theirs.state_dict())
    args = BAD_INPUTS[case](kind)
    snapshot = copy.deepcopy(args)
    expected = _raised(lambda: theirs(*args))
    assert _raised(lambda: ours(*args)) == expected
    for a, b in zip(torch.utils._pytree.tree_leaves(args), torch.utils._pytree.tree_leaves(snapshot)):
        assert torch.equal(a, b)


BAD_ARGUMENTS = [dict(dropout=1.5), dict(dropout=True), dict(num_layers=0), dict(num_layers=1.5),
                 dict(hidden_size=0), dict(proj_size=-1), dict(proj_size=4)]


@pytest.mark.parametrize("kwargs", BAD_ARGUMENTS, ids=str)
@pytest.mark.parametrize("kind", MODULES)
def test_bad_constructor_arguments_raise_like_torch_nn(kind, kwargs):
    torch_cls, our_cls = MODULES[kind]
    full = dict(input_size=3, hidden_size=4) | kwargs
    assert _raised(lambda: our_cls(**full)) == _raised(lambda: torch_cls(**full))


def test_layer_op_rejects_bad_batch_sizes():
    x, h, c = torch.randn(5, 2), torch.randn(3, 3), torch.randn(3, 3)
    w_ih, w_hh = torch.randn(12, 2), torch.randn(12, 3)
    layer = torch.ops.fused_rnn.lstm_layer
    with pytest.raises(RuntimeError, match="non-increasing"):
        layer(x, torch.tensor([2, 3]), h, c, w_ih, w_hh, None, None, None, False)
    with pytest.raises(RuntimeError, match=r"batch_sizes sum to 6 but input has 5 rows"):
        layer(x, torch.tensor([3, 3]), h, c, w_ih, w_hh, None, None, None, False)
    with pytest.raises(RuntimeError, match=r"expected batch_sizes\[0\] = 3"):
        layer(x, torch.tensor([2, 2, 1]), h, c, w_ih, w_hh, None, None, None, False)
    with pytest.raises(RuntimeError, match="1-D int64 tensor on the CPU"):
        layer(x, torch.tensor([3.0, 2.0]), h, c, w_ih, w_hh, None, None, None, False)


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float32_products_follow_cudnns_tf32_flag(kind):
    """torch.nn's float32 RNNs take TF32 tensor-core products where torch.backends.cudnn.allow_tf32
    is True (its default; conftest turns it off for the other tests), and so do ours: with it on,
    our outputs and gradients are as close to float64 as torch.nn's (the accuracy rule for large
    problems), and they differ from full float32's by TF32's rounding."""
    torch_cls, ours_cls = MODULES[kind]
    torch.manual_seed(0)
    theirs = torch_cls(256, 256, num_layers=2).cuda()
    ours = ours_cls(256, 256, num_layers=2).cuda()
    ours.load_state_dict(theirs.state_dict())
    truth = copy.deepcopy(theirs).double()
    x = torch.randn(50, 8, 256, device="cuda")

    def output_and_grad(module, x, tf32):
        x = x.detach().requires_grad_()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
            out = module(x)[0]
            (grad,) = torch.autograd.grad(out.square().sum(), x)
        return out.detach(), grad

    want, want_grad = output_and_grad(truth, x.double(), False)
    got, got_grad = output_and_grad(ours, x, True)
    theirs_out, theirs_grad = output_and_grad(theirs, x, True)
    assert_matches_torch(got, theirs_out, want, "output", against_truth=True)
    assert_matches_torch(got_grad, theirs_grad, want_grad, "input gradient", against_truth=True)
    full, _ = output_and_grad(ours, x, False)
    assert (got - full).abs().max() > 1e-5


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float32_layers_ignore_the_matmul_tf32_flag(kind):
    """With cuDNN's TF32 flag off, torch.nn's float32 layers run full float32 whatever
    torch.backends.cuda.matmul.allow_tf32 says (the flag ATen's own products and cuBLAS handle
    follow), and so do ours: outputs and gradients within float32's tolerance of torch.nn's."""
    torch_cls, ours_cls = MODULES[kind]
    torch.manual_seed(0)
    theirs = torch_cls(256, 256).cuda()
    ours = ours_cls(256, 256).cuda()
    ours.load_state_dict(theirs.state_dict())
    truth = copy.deepcopy(theirs).double()
    x = torch.randn(20, 8, 256, device="cuda")

    def output_and_grads(module, x):
        x = x.detach().requires_grad_()
        out = module(x)[0]
        grads = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
        return [out.detach(), *grads]

    matmul_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            got = output_and_grads(ours, x)
            want = output_and_grads(theirs, x)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_before
    true = output_and_grads(truth, x.double())
    names = ["output", "input gradient", *(name for name, _ in ours.named_parameters())]
    for name, a, b, t in zip(names, got, want, true):
        assert_matches_torch(a, b, t, name, against_truth=True)
