"""Episode starts (resets) inside the sequence ops: each row of a batch may hold several episodes
one after another; where resets marks a step, the state entering it is the initial state, in every
layer (in the reverse direction, the state entering the step before it), and no gradient crosses.
Checked against a reference that splits every row into its episodes and runs torch.nn (for the
layer-normalized kinds, our own module, itself checked against fused_rnn.reference) on each one:
outputs, h_n / c_n and every gradient, over layers, directions, batch_first, packed and unbatched
input, dtypes, and resets at the first step, the last, every step and none; gradcheck and opcheck
of the layer ops with resets; torch.compile; bad resets."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from conftest import DEVICES, assert_matches_torch, assert_near_truth

INPUT, HIDDEN, STEPS, BATCH = 5, 6, 9, 5
TORCH_MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
OUR_MODULES = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU,
               "layernorm_lstm": fused_rnn.LayerNormLSTM, "layernorm_gru": fused_rnn.LayerNormGRU}
CONFIGS = [dict(), dict(num_layers=2, bidirectional=True), dict(batch_first=True),
           dict(bidirectional=True, proj_size=3)]


def has_cell_state(kind):
    return kind.endswith("lstm")


def episode_resets(steps, batch, seed=0):
    """[T, B] resets covering the cases: row 0 marks the first step, row 1 the last, row 2 every
    step, row 3 none, the others at random."""
    g = torch.Generator().manual_seed(seed)
    resets = torch.rand(steps, batch, generator=g) < 0.3
    resets[:, :4] = False
    resets[0, 0] = True
    resets[steps - 1, 1] = True
    resets[:, 2] = True
    return resets


def split_reference(module, x, h0, c0, resets, lengths):
    """The module run on every episode of every row apart (x [T, B, I] time-major, states
    [L*D, B, H]): outputs [T, B, D*P] (zeros past a row's length), h_n and c_n (a forward
    direction's from the row's last episode, a reverse direction's from its first)."""
    directions = 2 if module.bidirectional else 1
    outputs, finals_h, finals_c = [], [], []
    for b, length in enumerate(lengths):
        starts = [0] + [t for t in range(1, length) if resets[t, b]]
        ends = starts[1:] + [length]
        pieces, first, last = [], None, None
        for s, e in zip(starts, ends):
            state = (h0[:, b:b + 1], c0[:, b:b + 1]) if c0 is not None else h0[:, b:b + 1]
            out, final = module(x[s:e, b:b + 1], state)
            pieces.append(out[:, 0])
            first = final if first is None else first
            last = final
        out = torch.cat(pieces)
        if length < x.size(0):
            out = torch.cat([out, out.new_zeros(x.size(0) - length, out.size(1))])
        outputs.append(out)

        def pick(first_state, last_state):
            return torch.stack([(last_state if k % directions == 0 else first_state)[k, 0]
                                for k in range(first_state.size(0))])
        if c0 is not None:
            finals_h.append(pick(first[0], last[0]))
            finals_c.append(pick(first[1], last[1]))
        else:
            finals_h.append(pick(first, last))
    h_n = torch.stack(finals_h, 1)
    return torch.stack(outputs, 1), h_n, (torch.stack(finals_c, 1) if c0 is not None else None)


def run_ours(module, x, h0, c0, resets, lengths, mode):
    """Ours on the whole batch with resets, as `mode` lays it out; results as split_reference's."""
    state = (h0, c0) if c0 is not None else h0
    if mode == "packed":
        packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
        flags = pack_padded_sequence(resets.double(), torch.tensor(lengths),
                                     enforce_sorted=False).data.bool().to(x.device)
        out, final = module(packed, state, resets=flags)
        out, _ = pad_packed_sequence(out, total_length=x.size(0))
    elif mode == "unbatched":
        unbatched = (h0[:, 0], c0[:, 0]) if c0 is not None else h0[:, 0]
        out, final = module(x[:, 0], unbatched, resets=resets[:, 0].to(x.device))
        out = out.unsqueeze(1)
        final = tuple(f.unsqueeze(1) for f in final) if c0 is not None else final.unsqueeze(1)
    elif module.batch_first:
        out, final = module(x.transpose(0, 1), state, resets=resets.transpose(0, 1).to(x.device))
        out = out.transpose(0, 1)
    else:
        out, final = module(x, state, resets=resets.to(x.device))
    return (out, *final) if c0 is not None else (out, final, None)


def results(module, dtype, kind, mode, run, seed=0, steps=STEPS, batch=BATCH, device="cpu"):
    """Outputs and the gradients of a weighted loss over them, for x, h0, c0 and the parameters:
    run(module, x, h0, c0, resets, lengths) -> (out, h_n, c_n or None)."""
    torch.manual_seed(seed)
    batch = 1 if mode == "unbatched" else batch
    directions = 2 if module.bidirectional else 1
    state = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    x = torch.randn(steps, batch, INPUT, dtype=torch.float64)
    h0 = torch.randn(module.num_layers * directions, batch, state, dtype=torch.float64)
    c0 = torch.randn(module.num_layers * directions, batch, HIDDEN, dtype=torch.float64)
    resets = (episode_resets(steps, batch, seed) if batch > 1
              else (torch.arange(steps) % 3 == 1)[:, None])
    lengths = [steps, steps - 2, steps, 4, 7][:batch] if mode == "packed" else [steps] * batch
    mask = (torch.arange(steps)[:, None] < torch.tensor(lengths)[None, :]).double()[..., None]
    w_out = torch.randn(steps, batch, directions * state, dtype=torch.float64)
    w_h, w_c = torch.randn_like(h0), torch.randn_like(c0)
    leaves = [t.to(device, dtype).requires_grad_() for t in (x, h0, c0)]
    if not has_cell_state(kind):
        leaves = leaves[:2]
    c = leaves[2] if has_cell_state(kind) else None
    out, h_n, c_n = run(module, leaves[0], leaves[1], c, resets, lengths)
    out = out * mask.to(out)
    loss = (out * w_out.to(out)).sum() + (h_n * w_h.to(h_n)).sum()
    if c_n is not None:
        loss = loss + (c_n * w_c.to(c_n)).sum()
    grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
    return [out, h_n] + ([c_n] if c_n is not None else []) + list(grads)


def make(cls, kind, kw, dtype):
    torch.manual_seed(3)
    if "layernorm" in kind:
        kw = {k: v for k, v in kw.items() if k != "proj_size"}
    module = cls(INPUT, HIDDEN, **kw)
    if "layernorm" in kind:
        with torch.no_grad():  # norms away from their identity start
            for name, p in module.named_parameters():
                if name.startswith("layernorm"):
                    p.add_(0.3 * torch.randn_like(p))
    return module.to(dtype)


def configs(kind):
    return [kw for kw in CONFIGS if "proj_size" not in kw or kind == "lstm"]


CASES = [(kind, kw) for kind in OUR_MODULES for kw in configs(kind)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["padded", "packed", "unbatched"])
@pytest.mark.parametrize("kind,kw", CASES, ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items())}"
                                                 for k, kw in CASES])
def test_matches_the_episodes_run_apart(kind, kw, mode, dtype, device):
    check_against_episodes(kind, kw, mode, dtype, device=device)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_whole_sequence_kernels_restart_rows(kind):
    """B=40 in float32: the CPU's fused whole-sequence forward (the input side in the step) and
    backward (the batch split over the threads where there are two) restart the rows themselves
    (B=5 above takes the fused forward on a projection and the backward split by units)."""
    paths = fused_rnn.cpu_layer_path(kind.upper(), 12, 40, INPUT, HIDDEN, 0, torch.float32, True)
    assert paths["forward"].startswith("sequence from input")
    assert paths["backward"].startswith("sequence:")
    check_against_episodes(kind, dict(bidirectional=True), "padded", torch.float32, steps=12,
                           batch=40)


def check_against_episodes(kind, kw, mode, dtype, steps=STEPS, batch=BATCH, device="cpu"):
    ours = make(OUR_MODULES[kind], kind, kw, dtype).to(device)
    if "layernorm" in kind:
        theirs = make(OUR_MODULES[kind], kind, {**kw, "batch_first": False}, dtype).to(device)
        truth = make(OUR_MODULES[kind], kind, {**kw, "batch_first": False}, torch.float64)
    else:
        theirs = TORCH_MODULES[kind](INPUT, HIDDEN, **{**kw, "batch_first": False}).to(device, dtype)
        theirs.load_state_dict(ours.state_dict())
        truth = TORCH_MODULES[kind](INPUT, HIDDEN, **{**kw, "batch_first": False}).double()
        truth.load_state_dict(ours.state_dict())

    def ours_run(m, x, h0, c0, resets, lengths):
        return run_ours(m, x, h0, c0, resets, lengths, mode)

    def reference_run(m, x, h0, c0, resets, lengths):
        return split_reference(m, x, h0, c0, resets, lengths)

    sizes = dict(steps=steps, batch=batch)
    got = results(ours, dtype, kind, mode, ours_run, device=device, **sizes)
    want = results(theirs, dtype, kind, mode, reference_run, device=device, **sizes)
    true = results(truth, torch.float64, kind, mode, reference_run, **sizes)
    names = ["output", "h_n"] + (["c_n"] if has_cell_state(kind) else []) + ["grad input",
                                                                              "grad h0"]
    names += (["grad c0"] if has_cell_state(kind) else []) + [f"grad {n}" for n, _ in
                                                               ours.named_parameters()]
    assert len(got) == len(names)
    check = assert_near_truth if "layernorm" in kind else assert_matches_torch
    for name, a, b, t in zip(names, got, want, true):
        if check is assert_matches_torch:
            # Sums over steps in another order than torch.nn's (on CUDA cuDNN's, as
            # test_sequence.py): as close to float64 as torch.nn is.
            summed = name.startswith("grad ") and (dtype != torch.float64 or device == "cuda")
            check(a, b, t, name, against_truth=summed)
        else:
            check(a, b, t, name)


@pytest.mark.parametrize("kind", list(OUR_MODULES))
def test_no_resets_and_all_false_resets_change_nothing(kind):
    module = make(OUR_MODULES[kind], kind, dict(num_layers=2, bidirectional=True), torch.float64)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64)
    plain, plain_final = module(x)
    none, none_final = module(x, resets=torch.zeros(STEPS, BATCH, dtype=torch.bool))
    assert torch.equal(plain, none)
    for a, b in zip(*(f if isinstance(f, tuple) else (f,) for f in (plain_final, none_final))):
        assert torch.equal(a, b)


def layer_op_args(kind, dtype=torch.float64):
    """A packed batch (lengths 3, 3, 1) with an episode starting at the second step of row 0."""
    torch.manual_seed(2)
    gates = 4 if kind == "lstm" else 3
    x = torch.randn(7, 4, dtype=dtype, requires_grad=True)
    batch_sizes = torch.tensor([3, 2, 2])
    states = [torch.randn(3, 5, dtype=dtype, requires_grad=True)
              for _ in range(2 if kind == "lstm" else 1)]
    weights = [torch.randn(gates * 5, 4, dtype=dtype, requires_grad=True),
               torch.randn(gates * 5, 5, dtype=dtype, requires_grad=True),
               torch.randn(gates * 5, dtype=dtype, requires_grad=True),
               torch.randn(gates * 5, dtype=dtype, requires_grad=True)]
    resets = torch.tensor([False, False, False, True, False, False, True])
    return x, batch_sizes, states, weights, resets


def call_layer(kind, x, batch_sizes, states, weights, reverse, resets, keep_saved=True):
    if kind == "lstm":
        return torch.ops.fused_rnn.lstm_layer(x, batch_sizes, *states, *weights, None, reverse,
                                              keep_saved, resets)
    return torch.ops.fused_rnn.gru_layer(x, batch_sizes, *states, *weights, reverse, keep_saved,
                                         resets)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_op_gradcheck(kind, reverse):
    x, batch_sizes, states, weights, resets = layer_op_args(kind)
    n = len(states)

    def fn(x, *rest):
        out = call_layer(kind, x, batch_sizes, list(rest[:n]), list(rest[n:]), reverse, resets)
        return out[:n + 1]

    assert torch.autograd.gradcheck(fn, (x, *states, *weights))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_ops_opcheck(kind):
    x, batch_sizes, states, weights, resets = layer_op_args(kind)
    if kind == "lstm":
        args = (x, batch_sizes, *states, *weights, None, True, True, resets)
    else:
        args = (x, batch_sizes, *states, *weights, True, True, resets)
    op = getattr(torch.ops.fused_rnn, f"{kind}_layer")
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("kind", list(OUR_MODULES))
def test_compile_fullgraph_matches_eager(kind):
    module = make(OUR_MODULES[kind], kind, dict(bidirectional=True), torch.float32)
    x = torch.randn(STEPS, BATCH, INPUT)
    resets = episode_resets(STEPS, BATCH)
    eager = module(x, resets=resets)[0]
    compiled = torch.compile(lambda x, r: module(x, resets=r)[0], fullgraph=True)(x, resets)
    torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("kind", list(OUR_MODULES))
def test_bad_resets_name_the_argument(kind):
    module = OUR_MODULES[kind](INPUT, HIDDEN)
    x = torch.randn(STEPS, BATCH, INPUT)
    with pytest.raises(ValueError, match=r"resets: expected a bool tensor of shape \(9, 5\)"):
        module(x, resets=torch.zeros(STEPS, BATCH))
    with pytest.raises(ValueError, match=r"resets: expected a bool tensor of shape \(9, 5\)"):
        module(x, resets=torch.zeros(BATCH, STEPS, dtype=torch.bool))
    with pytest.raises(TypeError, match="resets: expected a bool tensor, got list"):
        module(x, resets=[True] * STEPS)


def test_layer_op_rejects_resets_of_the_wrong_length():
    x, batch_sizes, states, weights, _ = layer_op_args("gru")
    with pytest.raises(RuntimeError, match="expected resets to be a 1-D bool tensor of 7 elements"):
        call_layer("gru", x, batch_sizes, states, weights, False, torch.zeros(6, dtype=torch.bool))
