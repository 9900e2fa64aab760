"""fused_rnn.LayerNormLSTM / LayerNormGRU (and the layer ops under them) against a reference that
runs fused_rnn.reference's cells over each sequence alone, step by step: outputs, final states
and every gradient, over layers, directions, batch_first, packed (unsorted lengths), unbatched,
no bias and dtypes; gradcheck and opcheck of the layer ops, torch.compile, the parameters."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from conftest import DEVICES, assert_near_truth
from fused_rnn import reference


MODULES = {"lstm": fused_rnn.LayerNormLSTM, "gru": fused_rnn.LayerNormGRU}
CELLS = {"lstm": reference.layernorm_lstm_cell, "gru": reference.layernorm_gru_cell}
NORMS = {"lstm": ("ih", "hh", "c"), "gru": ("ih", "hh")}

CONFIGS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(bias=False),
]
MODES = ["padded", "packed", "unbatched"]


def make_module(kind, kw, input_size, hidden, dtype, seed=0):
    torch.manual_seed(seed)
    module = MODULES[kind](input_size, hidden, dtype=torch.float64, **kw)
    with torch.no_grad():  # the norms away from 1 and 0, so that their gradients are tested
        for name, p in module.named_parameters():
            if name.startswith("layernorm"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "_weight_" in name else 0.0))
    return module.to(dtype)


def group_parameters(module, kind, layer, suffix):
    get = lambda name: getattr(module, f"{name}_l{layer}{suffix}", None)  # noqa: E731
    params = [get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")]
    for norm in NORMS[kind]:
        params += [get(f"layernorm_{norm}_weight"), get(f"layernorm_{norm}_bias")]
    return params


def reference_forward(kind, module, x, lengths, h0, c0):
    """x [T, B, I] (time-major), h0/c0 [L*D, B, H]: each sequence alone through the reference
    cells. Returns output [T, B, D*H] (zeros past each length), h_n and c_n."""
    directions = 2 if module.bidirectional else 1
    outputs, finals_h, finals_c = [], [], []
    for b, length in enumerate(lengths):
        seq = x[:length, b]
        h_b, c_b = [], []  # this sequence's final states, per (layer, direction)
        for layer in range(module.num_layers):
            outs = []
            for d in range(directions):
                k = layer * directions + d
                params = group_parameters(module, kind, layer, "_reverse" if d else "")
                h = h0[k, b:b + 1]
                c = c0[k, b:b + 1] if kind == "lstm" else None
                out = [None] * length
                for t in (reversed(range(length)) if d else range(length)):
                    if kind == "lstm":
                        h, c = CELLS[kind](seq[t:t + 1], h, c, *params)
                    else:
                        h = CELLS[kind](seq[t:t + 1], h, *params)
                    out[t] = h
                outs.append(torch.cat(out, 0))
                h_b.append(h)
                c_b.append(c)
            seq = torch.cat(outs, 1)
        pad = seq.new_zeros(x.size(0) - length, seq.size(1))
        outputs.append(torch.cat([seq, pad], 0))
        finals_h.append(torch.cat(h_b, 0))
        finals_c.append(torch.cat(c_b, 0) if kind == "lstm" else None)
    h_n = torch.stack(finals_h, 1)
    c_n = torch.stack(finals_c, 1) if kind == "lstm" else None
    return torch.stack(outputs, 1), h_n, c_n


def run_ours(kind, module, x, lengths, h0, c0, mode):
    """Our module on x [T, B, I] given as the mode asks; output back as [T, B, D*H]."""
    state = (h0, c0) if kind == "lstm" else h0
    if mode == "unbatched":
        state = tuple(s[:, 0] for s in state) if kind == "lstm" else state[:, 0]
        out, final = module(x[:, 0] if not module.batch_first else x[:, 0], state)
        final = tuple(f.unsqueeze(1) for f in final) if kind == "lstm" else final.unsqueeze(1)
        return out.unsqueeze(1), final
    inp = x.transpose(0, 1) if module.batch_first else x
    if mode == "packed":
        inp = pack_padded_sequence(inp, torch.tensor(lengths), batch_first=module.batch_first,
                                   enforce_sorted=False)
    out, final = module(inp, state)
    if mode == "packed":
        out, _ = pad_packed_sequence(out, batch_first=module.batch_first,
                                     total_length=x.size(0))
    if module.batch_first:
        out = out.transpose(0, 1)
    return out, final


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items())
                         or "default")
@pytest.mark.parametrize("kind", MODULES)
def test_matches_reference(kind, kw, mode, dtype, device):
    batch = 1 if mode == "unbatched" else 3
    check_matches_reference(kind, kw, mode, dtype, device, steps=5, batch=batch,
                            lengths=[5, 2, 4][:batch] if mode == "packed" else None)


@pytest.mark.parametrize("mode", ["padded", "packed"])
@pytest.mark.parametrize("kind", MODULES)
def test_long_sequences_match_reference(kind, mode):
    """350 rows: the backward sums the norms' gradients over groups of steps of about 256 rows
    (51 steps of 5 rows here), the last group shorter; packed, the steps' rows vary within a
    group; the reverse direction's groups run the other way."""
    check_matches_reference(kind, dict(bidirectional=True), mode, torch.float64, "cpu", steps=70,
                            batch=5, lengths=[70, 23, 61, 70, 2] if mode == "packed" else None)


def check_matches_reference(kind, kw, mode, dtype, device, steps, batch, lengths):
    input_size, hidden = 6, 9
    lengths = lengths or [steps] * batch
    module = make_module(kind, kw, input_size, hidden, dtype).to(device)
    directions = 2 if module.bidirectional else 1
    torch.manual_seed(1)
    x = torch.randn(steps, batch, input_size, dtype=torch.float64)
    h0 = torch.randn(module.num_layers * directions, batch, hidden, dtype=torch.float64)
    c0 = torch.randn_like(h0)
    w_out = torch.randn(steps, batch, directions * hidden, dtype=torch.float64)
    w_h, w_c = torch.randn_like(h0), torch.randn_like(c0)
    mask = (torch.arange(steps)[:, None] < torch.tensor(lengths)[None, :]).double()[..., None]

    def results(run_module, run_dtype, run):
        on = next(run_module.parameters()).device
        xs = [t.to(on, run_dtype).requires_grad_() for t in (x, h0, c0)]
        out, h_n, c_n = run(run_module, *xs)
        loss = (out * mask.to(out) * w_out.to(out)).sum() + (h_n * w_h.to(h_n)).sum()
        if c_n is not None:
            loss = loss + (c_n * w_c.to(c_n)).sum()
        leaves = xs[:2] + ([xs[2]] if kind == "lstm" else []) + list(run_module.parameters())
        grads = torch.autograd.grad(loss, leaves)
        return [out * mask.to(out), h_n] + ([c_n] if c_n is not None else []) + list(grads)

    def ours_run(m, xx, hh, cc):
        out, final = run_ours(kind, m, xx, lengths, hh, cc, mode)
        return (out, *final) if kind == "lstm" else (out, final, None)

    def reference_run(m, xx, hh, cc):
        return reference_forward(kind, m, xx, lengths, hh, cc)

    ours = results(module, dtype, ours_run)
    theirs = results(module, dtype, reference_run)
    truth = results(make_module(kind, kw, input_size, hidden, torch.float64), torch.float64,
                    reference_run)
    names = ["output", "h_n"] + (["c_n"] if kind == "lstm" else []) + ["grad input", "grad h0"]
    names += (["grad c0"] if kind == "lstm" else []) + [f"grad {n}" for n, _ in
                                                        module.named_parameters()]
    for name, a, b, t in zip(names, ours, theirs, truth):
        assert_near_truth(a, b, t, name)


def layer_op_args(kind, reverse, dtype=torch.float64):
    module = make_module(kind, {}, 4, 5, dtype)
    torch.manual_seed(2)
    x = torch.randn(7, 4, dtype=dtype, requires_grad=True)
    batch_sizes = torch.tensor([3, 2, 2])  # a packed batch: lengths 3, 3, 1
    h0 = torch.randn(3, 5, dtype=dtype, requires_grad=True)
    states = (h0, torch.randn(3, 5, dtype=dtype, requires_grad=True)) if kind == "lstm" else (h0,)
    params = [p.detach().requires_grad_() for p in group_parameters(module, kind, 0, "")]
    return x, batch_sizes, states, params


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", MODULES)
def test_layer_op_gradcheck(kind, reverse):
    x, batch_sizes, states, params = layer_op_args(kind, reverse)
    op = getattr(torch.ops.fused_rnn, f"layernorm_{kind}_layer")

    def fn(x, *rest):
        n = len(states)
        out = op(x, batch_sizes, *rest[:n], *rest[n:], reverse)
        return out[:3] if kind == "lstm" else out[:2]

    assert torch.autograd.gradcheck(fn, (x, *states, *params))


@pytest.mark.parametrize("kind", MODULES)
def test_layer_ops_opcheck(kind):
    x, batch_sizes, states, params = layer_op_args(kind, False)
    op = getattr(torch.ops.fused_rnn, f"layernorm_{kind}_layer")
    args = (x, batch_sizes, *states, *params, False)
    torch.library.opcheck(op, args)
    outs = op(*args)
    detached = [t.detach() for t in (x, *states, *params)]
    xd, statesd, paramsd = detached[0], detached[1:1 + len(states)], detached[1 + len(states):]
    norms = [p for i, p in enumerate(paramsd) if i >= 4]
    grads = [torch.randn_like(outs[0]), torch.randn_like(outs[1])]
    if kind == "lstm":
        grads.append(torch.randn_like(outs[2]))
        backward_args = (*grads, xd, batch_sizes, *statesd, *paramsd[:2], *norms, outs[0],
                         outs[3], outs[4], False, [True] * 12)
    else:
        backward_args = (*grads, xd, batch_sizes, *statesd, *paramsd[:2], *norms, outs[0],
                         outs[2], False, [True] * 10)
    backward = getattr(torch.ops.fused_rnn, f"layernorm_{kind}_layer_backward")
    torch.library.opcheck(backward, tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                          for a in backward_args))


@pytest.mark.parametrize("kind", MODULES)
def test_compile_fullgraph_matches_eager(kind):
    module = make_module(kind, dict(num_layers=2, bidirectional=True), 6, 8, torch.float32)
    x = torch.randn(5, 3, 6)
    eager = module(x)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(eager[0], compiled[0])


@pytest.mark.parametrize("kind", MODULES)
def test_parameters_names_and_initialization(kind):
    module = MODULES[kind](3, 4, num_layers=2, bidirectional=True)
    gates = 4 if kind == "lstm" else 3
    names = dict(module.named_parameters())
    for layer in range(2):
        for suffix in ("", "_reverse"):
            for norm in NORMS[kind]:
                size = 4 if norm == "c" else gates * 4
                w = names[f"layernorm_{norm}_weight_l{layer}{suffix}"]
                b = names[f"layernorm_{norm}_bias_l{layer}{suffix}"]
                assert torch.equal(w, torch.ones(size)) and torch.equal(b, torch.zeros(size))
    assert names["weight_ih_l1_reverse"].shape == (gates * 4, 8)
    with pytest.raises(TypeError, match="proj_size"):
        MODULES[kind](3, 4, proj_size=2)
    state = module.state_dict()
    again = MODULES[kind](3, 4, num_layers=2, bidirectional=True)
    again.load_state_dict(state)


@pytest.mark.parametrize("kind", MODULES)
def test_bad_norm_names_the_argument(kind):
    x, batch_sizes, states, params = layer_op_args(kind, False, torch.float32)
    params[4] = torch.ones(2)
    op = getattr(torch.ops.fused_rnn, f"layernorm_{kind}_layer")
    with pytest.raises(RuntimeError, match=r"ln_ih_weight of shape \[\d+\], got \[2\]"):
        op(x, batch_sizes, *states, *params, False)


@pytest.mark.parametrize("cls", [fused_rnn.LayerNormLSTM, fused_rnn.LayerNormGRU,
                                 fused_rnn.LayerNormLSTMCell, fused_rnn.LayerNormGRUCell])
def test_double_backward_says_it_is_not_supported(cls):
    module = cls(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True) if "Cell" not in cls.__name__ else \
        torch.randn(2, 3, requires_grad=True)
    out = module(x)
    first = out[0] if isinstance(out, tuple) else out
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(first.sum(), x, create_graph=True)
    (grad,) = torch.autograd.grad(module(x)[0].sum() if isinstance(out, tuple)
                                  else module(x).sum(), x)
    assert grad.shape == x.shape


@pytest.mark.parametrize("kind", MODULES)
def test_torch_func_gradients_say_they_are_not_supported(kind):
    """torch.func's grad cannot see into the layers' C++ autograd and they have no composite form:
    it fails at once, naming the op; vmap without gradients runs (the batching fallback)."""
    module = MODULES[kind](3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(NotImplementedError, match=f"layernorm_{kind}_layer: torch.func"):
        torch.func.grad(lambda x: module(x)[0].sum())(x)
    with torch.no_grad():
        batched = torch.func.vmap(lambda x: module(x)[0].sum())(torch.stack([x, 2 * x]))
    torch.testing.assert_close(batched, torch.stack([module(x)[0].sum(), module(2 * x)[0].sum()]))
