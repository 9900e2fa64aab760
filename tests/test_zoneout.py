"""Zoneout (Krueger et al. 2016): the state a step carries on is weight * its new value +
(1 - weight) * the state before, per row and unit, with 0/1 draws of Bernoulli(1 - p) in training
and 1 - p in evaluation. The layer ops (given the weights) are checked against fused_rnn.reference's
cells and reference.zoneout step by step: outputs, final states and every gradient, over the four
cell kinds, directions, packed batches, dtypes, with episode starts too; gradcheck and opcheck.
The modules: evaluation mode against the reference, p = 0 as no zoneout, p = 1 keeping the
initial state, the kept fraction of a large call near p, reproducibility under a seed,
torch.compile, bad arguments."""

import pytest
import torch

import fused_rnn
from conftest import DEVICES, DTYPES, assert_near_truth
from fused_rnn import reference

INPUT, HIDDEN, BATCH, STEPS = 5, 6, 4, 7
KINDS = ["lstm", "gru", "layernorm_lstm", "layernorm_gru"]
MODULES = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "layernorm_lstm": fused_rnn.LayerNormLSTM,
           "layernorm_gru": fused_rnn.LayerNormGRU}
CELLS = {"lstm": fused_rnn.LSTMCell, "gru": fused_rnn.GRUCell,
         "layernorm_lstm": fused_rnn.LayerNormLSTMCell, "layernorm_gru": fused_rnn.LayerNormGRUCell}


def has_cell_state(kind):
    return kind.endswith("lstm")


def gates(kind):
    return 4 if has_cell_state(kind) else 3


def make_params(kind, dtype=torch.float64, device="cpu", seed=0, input_size=INPUT, hidden=HIDDEN):
    """w_ih, w_hh, b_ih, b_hh (weights of torch.nn's scale, 1 / sqrt(hidden): larger ones make a
    long float32 recurrence chaotic) and, for the layer-normalized kinds, their norms'
    parameters."""
    g = torch.Generator().manual_seed(seed)
    rows, scale = gates(kind) * hidden, hidden ** -0.5
    params = [torch.randn(rows, input_size, generator=g) * scale,
              torch.randn(rows, hidden, generator=g) * scale,
              torch.randn(rows, generator=g) * 0.1, torch.randn(rows, generator=g) * 0.1]
    if kind.startswith("layernorm"):
        sizes = [rows, rows] + ([hidden] if has_cell_state(kind) else [])
        for size in sizes:
            params += [1 + 0.1 * torch.randn(size, generator=g),
                       0.1 * torch.randn(size, generator=g)]
    return [p.to(dtype=dtype, device=device) for p in params]


def reference_step(kind, x, h, c, params):
    """One step of fused_rnn.reference's cell: (h', c'), c' None for the GRUs."""
    w_ih, w_hh, b_ih, b_hh, *norms = params
    if kind == "lstm":
        hy, cy, _gates = reference.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
        return hy, cy
    if kind == "gru":
        return reference.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)[0], None
    if kind == "layernorm_lstm":
        return reference.layernorm_lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, *norms)
    return reference.layernorm_gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, *norms), None


def reference_layer(kind, x, batch_sizes, h0, c0, params, weights, reverse, resets=None):
    """A layer op by the reference, step by step over the packed x [N, I] (weights [K, N, H];
    resets, forward direction only: where true, the rows' state entering the step is h0/c0's):
    output [N, H], h_n and c_n (None for the GRUs)."""
    sizes = batch_sizes.tolist()
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    h, c = h0, c0
    outputs = [None] * len(sizes)
    for t in reversed(range(len(sizes))) if reverse else range(len(sizes)):
        rows, rows_at = sizes[t], slice(offsets[t], offsets[t] + sizes[t])
        if resets is not None and t > 0:
            restart = resets[rows_at].unsqueeze(1)
            h = torch.cat([torch.where(restart, h0[:rows], h[:rows]), h[rows:]])
            if c is not None:
                c = torch.cat([torch.where(restart, c0[:rows], c[:rows]), c[rows:]])
        new_h, new_c = reference_step(kind, x[rows_at], h[:rows], None if c is None else c[:rows],
                                      params)
        outputs[t] = reference.zoneout(h[:rows], new_h, weights[0, rows_at])
        h = torch.cat([outputs[t], h[rows:]])
        if c is not None:
            c = torch.cat([reference.zoneout(c[:rows], new_c, weights[1, rows_at]), c[rows:]])
    return torch.cat(outputs), h, c


def call_op(kind, x, batch_sizes, h0, c0, params, weights, reverse, resets=None):
    """The layer op with zoneout weights: output, h_n and c_n (None for the GRUs)."""
    op = getattr(torch.ops.fused_rnn, f"{kind}_layer")
    states = [h0] if c0 is None else [h0, c0]
    projection = [None] if kind == "lstm" else []  # the plain LSTM's w_hr
    out = op(x, batch_sizes, *states, *params, *projection, reverse, keep_saved=True,
             resets=resets, zoneout=weights)
    return out[0], out[1], out[2] if c0 is not None else None


def layer_inputs(kind, packed, dtype, device, weights_kind, seed=0, steps=STEPS, batch=BATCH,
                 input_size=INPUT, hidden=HIDDEN):
    """A batch (padded, or packed with lengths T, T - 2, T - 2, 2), initial states, parameters and
    zoneout weights: 0/1 draws ("draws", p = 0.4) or the expectation ("expectation", 0.6
    broadcast)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [steps, steps - 2, steps - 2, 2] if packed else [steps] * batch
    batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(steps)])
    rows = int(batch_sizes.sum())
    x = torch.randn(rows, input_size, generator=g)
    h0 = torch.randn(batch, hidden, generator=g) * 0.5
    c0 = torch.randn(batch, hidden, generator=g) * 0.5 if has_cell_state(kind) else None
    states = 2 if has_cell_state(kind) else 1
    if weights_kind == "draws":
        weights = (torch.rand(states, rows, hidden, generator=g) >= 0.4).double()
    else:
        weights = torch.full((1, 1, 1), 0.6, dtype=torch.float64).expand(states, rows, hidden)
    to = dict(dtype=dtype, device=device)
    return (x.to(**to), batch_sizes, h0.to(**to), None if c0 is None else c0.to(**to),
            make_params(kind, dtype, device, seed, input_size, hidden), weights.to(**to))


def results_and_grads(run, x, h0, c0, params, seed=1):
    """run(x, h0, c0, params) -> (output, h_n, c_n); returns those and the gradients of every
    input under random output gradients (in float64 for comparison)."""
    states = [h0] if c0 is None else [h0, c0]
    leaves = [t.detach().clone().requires_grad_() for t in [x, *states, *params]]
    n = 3 if c0 is not None else 2
    outs = [o for o in run(leaves[0], leaves[1], leaves[2] if c0 is not None else None,
                           leaves[n:]) if o is not None]
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device))
               .sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs] + list(grads)


NAMES = ["output", "h_n", "c_n"]


# The zoneout code is the same for every dtype. The layer-normalized kinds' half-type layers are
# held to their reference by test_layernorm_sequence.py; here (seven steps, H = 6) their error
# ratio to the reference's swings with the inputs, with zoneout or without (a bfloat16 LN-LSTM
# seed misses it either way), so they run in float64 and float32.
KIND_DTYPES = [(kind, dtype) for kind in KINDS for dtype in DTYPES
               if not kind.startswith("layernorm") or dtype in (torch.float64, torch.float32)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weights_kind", ["draws", "expectation"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind,dtype", KIND_DTYPES, ids=lambda v: str(v).replace("torch.", ""))
def test_layer_op_matches_reference(kind, packed, reverse, weights_kind, dtype, device):
    check_against_reference(kind, layer_inputs(kind, packed, dtype, device, weights_kind),
                            reverse)


def check_against_reference(kind, inputs, reverse):
    x, batch_sizes, h0, c0, params, weights = inputs

    def ours(x, h0, c0, params):
        return call_op(kind, x, batch_sizes, h0, c0, params, weights, reverse)

    def theirs(x, h0, c0, params):
        return reference_layer(kind, x, batch_sizes, h0, c0, params, weights.to(x.dtype), reverse)

    got = results_and_grads(ours, x, h0, c0, params)
    want = results_and_grads(theirs, x, h0, c0, params)
    as64 = [t.double() if t is not None else None for t in (x, h0, c0)]
    truth = results_and_grads(theirs, *as64, [p.double() for p in params])
    names = NAMES[:3 if c0 is not None else 2] + ["grad input", "grad h0"] + \
        (["grad c0"] if c0 is not None else []) + [f"grad param {i}" for i in range(len(params))]
    for name, a, b, t in zip(names, got, want, truth):
        assert_near_truth(a.cpu(), b.cpu(), t.cpu(), name)


# (steps, batch, input, hidden) and the CPU paths (cpu_layer_path's words) they take in float32
# training: the fused whole-sequence forward on the input projection and its backward split by
# units; the forward computing its input side in the step and the backward split by batch rows
# (two threads); the GRU's input projection in chunks with the step-wise recurrence.
# (The LSTM's training keeps its input projection whole, not in chunks.)
FUSED_SHAPES = [("lstm", (12, 4, 5, 6), "sequence: the fused", "sequence:"),
                ("gru", (12, 4, 5, 6), "sequence: the fused", "sequence:"),
                ("lstm", (12, 40, 5, 6), "sequence from input", "batch split over"),
                ("gru", (12, 40, 5, 6), "sequence from input", "batch split over"),
                ("gru", (30, 200, 256, 256), "input projection in chunks", "per step")]


@pytest.mark.parametrize("weights_kind", ["draws", "expectation"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind,shape,forward,backward", FUSED_SHAPES,
                         ids=["lstm-units", "gru-units", "lstm-rows", "gru-rows", "gru-chunks"])
def test_cpu_paths_zone_out(kind, shape, forward, backward, reverse, weights_kind):
    steps, batch, input_size, hidden = shape
    paths = fused_rnn.cpu_layer_path(kind.upper(), steps, batch, input_size, hidden, 0,
                                     torch.float32, True)
    assert forward in paths["forward"] and backward in paths["backward"], paths
    inputs = layer_inputs(kind, False, torch.float32, "cpu", weights_kind, steps=steps,
                          batch=batch, input_size=input_size, hidden=hidden)
    check_against_reference(kind, inputs, reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_packed_float32_steps_zone_out(kind, reverse):
    """A packed batch of twelve steps in float32: step by step, each on the fused recurrent step
    (W_hh packed for it), which zones out itself."""
    check_against_reference(kind, layer_inputs(kind, True, torch.float32, "cpu", "draws",
                                               steps=12), reverse)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_op_with_episode_starts(kind):
    """Zoneout across an episode start blends into the initial state the step starts from."""
    x, batch_sizes, h0, c0, params, weights = layer_inputs(kind, False, torch.float64, "cpu",
                                                           "draws")
    resets = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(3)) < 0.3

    got = results_and_grads(lambda *a: call_op(kind, *a[:1], batch_sizes, *a[1:3], a[3], weights,
                                               False, resets), x, h0, c0, params)
    want = results_and_grads(lambda *a: reference_layer(kind, a[0], batch_sizes, a[1], a[2], a[3],
                                                        weights, False, resets), x, h0, c0, params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_op_gradcheck(kind, reverse):
    x, batch_sizes, h0, c0, params, weights = layer_inputs(kind, True, torch.float64, "cpu",
                                                           "draws")
    inputs = [t.requires_grad_() for t in [x, h0] + ([c0] if c0 is not None else []) + params]
    n = 3 if c0 is not None else 2

    def fn(*leaves):
        out = call_op(kind, leaves[0], batch_sizes, leaves[1], leaves[2] if n == 3 else None,
                      list(leaves[n:]), weights, reverse)
        return tuple(o for o in out if o is not None)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_op_opcheck(kind):
    x, batch_sizes, h0, c0, params, weights = layer_inputs(kind, True, torch.float64, "cpu",
                                                           "draws")
    states = [h0] if c0 is None else [h0, c0]
    projection = [None] if kind == "lstm" else []
    args = (x.requires_grad_(), batch_sizes, *states, *params, *projection, False, True, None,
            weights)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, f"{kind}_layer"), args)


def module_params(module, layer, suffix):
    """A sequence module's parameters of one layer and direction, as make_params orders them."""
    names = [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}",
             f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
    norms = ["ih", "hh", "c"] if isinstance(module, fused_rnn.LayerNormLSTM) else \
        ["ih", "hh"] if isinstance(module, fused_rnn.LayerNormGRU) else []
    for norm in norms:
        names += [f"layernorm_{norm}_weight_l{layer}{suffix}",
                  f"layernorm_{norm}_bias_l{layer}{suffix}"]
    return [getattr(module, name) for name in names]


def make_module(kind, zoneout, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return MODULES[kind](INPUT, HIDDEN, zoneout=zoneout, dtype=dtype, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluation_matches_the_reference(kind):
    """Two bidirectional layers, batch_first, in evaluation: each state moves by 1 - p of its
    change at every step."""
    p = 0.3
    module = make_module(kind, p, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(BATCH, STEPS, INPUT, dtype=torch.float64)
    h0 = torch.randn(4, BATCH, HIDDEN, dtype=torch.float64)
    c0 = torch.randn(4, BATCH, HIDDEN, dtype=torch.float64) if has_cell_state(kind) else None
    out, final = module(x, (h0, c0) if c0 is not None else h0)

    data = x.transpose(0, 1).reshape(STEPS * BATCH, INPUT)
    batch_sizes = torch.full((STEPS,), BATCH)
    finals_h, finals_c = [], []
    for layer in range(2):
        outputs = []
        for direction, suffix in enumerate(["", "_reverse"]):
            k = 2 * layer + direction
            weights = torch.full((2 if c0 is not None else 1, data.shape[0], HIDDEN), 1 - p,
                                 dtype=torch.float64)
            o, h, c = reference_layer(kind, data, batch_sizes, h0[k],
                                      None if c0 is None else c0[k],
                                      module_params(module, layer, suffix), weights, direction == 1)
            outputs.append(o)
            finals_h.append(h)
            finals_c.append(c)
        data = torch.cat(outputs, dim=1)
    want = data.view(STEPS, BATCH, -1).transpose(0, 1)
    torch.testing.assert_close(out, want)
    if c0 is not None:
        torch.testing.assert_close(final[0], torch.stack(finals_h))
        torch.testing.assert_close(final[1], torch.stack(finals_c))
    else:
        torch.testing.assert_close(final, torch.stack(finals_h))


@pytest.mark.parametrize("kind", KINDS)
def test_training_without_zoneout_is_unchanged(kind):
    """p = 0 draws nothing: the same results and gradients as a module built without zoneout."""
    plain = make_module(kind, 0.0).train()
    torch.manual_seed(0)
    unset = MODULES[kind](INPUT, HIDDEN, dtype=torch.float64).train()
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64, requires_grad=True)
    a, b = plain(x)[0], unset(x)[0]
    assert torch.equal(a, b)
    assert torch.equal(torch.autograd.grad(a.sum(), x)[0], torch.autograd.grad(b.sum(), x)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_training_with_p_one_keeps_the_initial_state(kind):
    module = make_module(kind, 1.0).train()
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, BATCH, HIDDEN, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, BATCH, HIDDEN, dtype=torch.float64) if has_cell_state(kind) else None
    out, final = module(x, (h0, c0) if c0 is not None else h0)
    assert torch.equal(out, h0.expand(STEPS, -1, -1))
    if c0 is not None:
        assert torch.equal(final[0], h0) and torch.equal(final[1], c0)
    else:
        assert torch.equal(final, h0)
    grad_x, grad_h0 = torch.autograd.grad(out.sum(), (x, h0))
    assert torch.equal(grad_x, torch.zeros_like(x))
    torch.testing.assert_close(grad_h0, torch.full_like(h0, float(STEPS)))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_kept_fraction_is_near_p(kind):
    """On a large call, the units that keep their value (h_t = h_{t-1}) are about p of all."""
    p = 0.25
    module = MODULES[kind](32, 64, zoneout=p).train()
    torch.manual_seed(1)
    with torch.no_grad():
        out = module(torch.randn(100, 32, 32))[0]
    kept = (out[1:] == out[:-1]).double().mean().item()
    # About 200k draws: the standard deviation of the fraction is about 0.001.
    assert abs(kept - p) < 0.01, kept


@pytest.mark.parametrize("kind", KINDS)
def test_reproducible_under_a_seed(kind):
    module = make_module(kind, 0.5).train()
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(module(x)[0])
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("kind", KINDS)
def test_cells(kind):
    """A cell in evaluation against the reference step and zoneout (outputs and gradients); in
    training with p = 1 it keeps its state; the same seed draws the same masks."""
    p = 0.3
    torch.manual_seed(0)
    cell = CELLS[kind](INPUT, HIDDEN, zoneout=p, dtype=torch.float64)
    x = torch.randn(BATCH, INPUT, dtype=torch.float64)
    h = torch.randn(BATCH, HIDDEN, dtype=torch.float64)
    c = torch.randn(BATCH, HIDDEN, dtype=torch.float64) if has_cell_state(kind) else None
    state = (h, c) if c is not None else h
    params = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    if kind.startswith("layernorm"):
        params += cell._norm_parameters()

    got = cell.eval()(x, state)
    new_h, new_c = reference_step(kind, x, h, c, params)
    want_h = reference.zoneout(h, new_h, 1 - p)
    if c is not None:
        torch.testing.assert_close(got[0], want_h)
        torch.testing.assert_close(got[1], reference.zoneout(c, new_c, 1 - p))
        got, want = got[0] + got[1], want_h + reference.zoneout(c, new_c, 1 - p)
    else:
        torch.testing.assert_close(got, want_h)
        want = want_h
    grads = zip(torch.autograd.grad(got.sum(), params), torch.autograd.grad(want.sum(), params))
    for a, b in grads:
        torch.testing.assert_close(a, b)

    cell.zoneout = 1.0
    kept = cell.train()(x, state)
    assert all(torch.equal(a, b) for a, b in zip(kept if c is not None else (kept,),
                                                 state if c is not None else (state,)))
    cell.zoneout = 0.5
    torch.manual_seed(4)
    first = cell(x, state)
    torch.manual_seed(4)
    again = cell(x, state)
    assert all(torch.equal(a, b) for a, b in zip(first if c is not None else (first,),
                                                 again if c is not None else (again,)))


@pytest.mark.parametrize("kind", ["lstm", "layernorm_gru"])
def test_compile_fullgraph_matches_eager(kind):
    module = make_module(kind, 0.2, dtype=torch.float32, bidirectional=True).eval()
    x = torch.randn(STEPS, BATCH, INPUT)
    compiled = torch.compile(lambda x: module(x)[0], fullgraph=True)(x)
    torch.testing.assert_close(compiled, module(x)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_bad_zoneout_names_the_argument(kind):
    with pytest.raises(ValueError, match=r"expected zoneout to be a probability in \[0, 1\], got"):
        MODULES[kind](INPUT, HIDDEN, zoneout=-0.1)
    with pytest.raises(ValueError, match=r"expected zoneout to be a probability in \[0, 1\], got"):
        CELLS[kind](INPUT, HIDDEN, zoneout=1.5)
    with pytest.raises(TypeError, match="expected zoneout to be a float, got str"):
        MODULES[kind](INPUT, HIDDEN, zoneout="0.1")


def test_zoneout_with_a_projection_is_refused():
    with pytest.raises(ValueError, match="zoneout is not supported with proj_size > 0"):
        fused_rnn.LSTM(INPUT, HIDDEN, proj_size=3, zoneout=0.1)
    x, batch_sizes, h0, c0, params, weights = layer_inputs("lstm", False, torch.float64, "cpu",
                                                           "draws")
    w_hr = torch.randn(3, HIDDEN, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"zoneout with a projection \(w_hr\) is not supported"):
        torch.ops.fused_rnn.lstm_layer(x, batch_sizes, h0[:, :3], c0, params[0],
                                       params[1][:, :3], params[2], params[3], w_hr, False,
                                       zoneout=weights)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_op_rejects_bad_weights(kind):
    x, batch_sizes, h0, c0, params, weights = layer_inputs(kind, False, torch.float64, "cpu",
                                                           "draws")
    with pytest.raises(RuntimeError, match=r"expected zoneout of shape \["):
        call_op(kind, x, batch_sizes, h0, c0, params, weights[:, 1:], False)
    with pytest.raises(RuntimeError, match="expected zoneout to be Double"):
        call_op(kind, x, batch_sizes, h0, c0, params, weights.float(), False)


def test_cpu_draws():
    """bernoulli_weights (the CPU's training weights): 0/1 at the rate asked, the two elements
    that share a hash independent, the last of an odd count drawn, reproducible by seed, the
    same pattern in every dtype; keep 0 and 1 exact."""
    def draw(seed, keep, size=(3, 1001, 7), dtype=torch.float32):
        return torch.ops.fused_rnn.bernoulli_weights(torch.tensor(seed), list(size), keep, dtype)

    w = draw(11, 0.3).flatten()
    assert set(w.unique().tolist()) == {0.0, 1.0}
    # 21021 draws: a rate's standard deviation is about 0.003, a pair product's about 0.003.
    for part in (w, w[0::2], w[1::2]):
        assert abs(part.mean().item() - 0.3) < 0.015
    assert abs((w[0:-1:2] * w[1::2]).mean().item() - 0.09) < 0.015
    assert torch.equal(w, draw(11, 0.3).flatten())
    assert not torch.equal(w, draw(12, 0.3).flatten())
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        assert torch.equal(draw(11, 0.3, dtype=dtype).flatten().float(), w)
    odd = draw(5, 0.5, size=(1, 3))
    assert odd.shape == (1, 3) and torch.equal(odd, draw(5, 0.5, size=(4,))[:3].view(1, 3))
    assert torch.equal(draw(3, 0.0), torch.zeros(3, 1001, 7))
    assert torch.equal(draw(3, 1.0), torch.ones(3, 1001, 7))
    with pytest.raises(RuntimeError, match=r"expected keep in \[0, 1\], got 1.5"):
        draw(3, 1.5)
    with pytest.raises(RuntimeError, match="expected seed to be one int64 on the CPU"):
        torch.ops.fused_rnn.bernoulli_weights(torch.tensor(1.0), [3], 0.5, torch.float32)
    torch.library.opcheck(torch.ops.fused_rnn.bernoulli_weights,
                          (torch.tensor(9), [3, 5], 0.25, torch.float32))
