"""Second-order gradients (a backward with create_graph=True, then a backward through it): the
cells and layers give torch.nn's, in every dtype, and gradgradcheck holds in float64; a
first-order backward still runs the fused backward ops."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fused_rnn
from conftest import DEVICES, assert_matches_torch, config_id, flatten, make_inputs, make_modules
from conftest import SEQUENCE_CONFIGS as CONFIGS
from conftest import native_rnn

HALF_TYPES = [torch.bfloat16, torch.float16]


def _rand_like_all(tensors, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in tensors]


def second_order(results, leaves, seed=1):
    """First-order gradients of a weighted sum of `results` with respect to `leaves` (with their
    graph), then the gradients of a weighted sum of those: the Hessian-vector products a gradient
    penalty or MAML takes."""
    loss = sum((r * w.to(r)).sum() for r, w in zip(results, _rand_like_all(results, seed)))
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    penalty = sum((g * w.to(g)).sum() for g, w in zip(grads, _rand_like_all(grads, seed + 1)))
    return torch.autograd.grad(penalty, leaves, allow_unused=True, materialize_grads=True)


def leaves_of(module, x, states):
    return [x, *states, *module.parameters()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_layers_second_order_gradients_match_torch_nn(cfg, dtype, device):
    check_second_order(cfg, dtype, device)


HALF_CONFIGS = [cfg for cfg in CONFIGS if cfg[2] in ("padded", "unsorted")][::2]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("cfg", HALF_CONFIGS, ids=config_id)
def test_layers_second_order_gradients_in_half_types_match_torch_nn(cfg, dtype, device):
    check_second_order(cfg, dtype, device)


def check_second_order(cfg, dtype, device):
    kind, kw, mode, steps, given = cfg
    theirs, ours, truth = make_modules(kind, kw, dtype, device)
    x, states, build = make_inputs(kind, kw, mode, steps, given, dtype, device)
    got = second_order(flatten(ours(*build(x, states))), leaves_of(ours, x, states))
    with native_rnn():
        want = second_order(flatten(theirs(*build(x, states))), leaves_of(theirs, x, states))

    def to_truth(t):
        return t.detach().double().cpu().requires_grad_()

    x64, states64 = to_truth(x), [to_truth(s) for s in states]
    true = second_order(flatten(truth(*build(x64, states64))), leaves_of(truth, x64, states64))
    names = ["input", *(f"state {i}" for i in range(len(states))),
             *(n for n, _ in ours.named_parameters())]
    assert len(got) == len(names)
    for name, a, b, t in zip(names, got, want, true):
        assert_matches_torch(a, b, t, f"second-order grad of {name}", against_truth=True)


CELLS = {"lstm": (torch.nn.LSTMCell, fused_rnn.LSTMCell),
         "gru": (torch.nn.GRUCell, fused_rnn.GRUCell)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *HALF_TYPES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("kind", CELLS)
def test_cells_second_order_gradients_match_torch_nn(kind, bias, dtype, device):
    torch_cls, our_cls = CELLS[kind]
    torch.manual_seed(0)
    theirs = torch_cls(5, 7, bias=bias, dtype=dtype, device=device)
    ours = our_cls(5, 7, bias=bias, dtype=dtype, device=device)
    ours.load_state_dict(theirs.state_dict())
    truth = torch_cls(5, 7, bias=bias, dtype=torch.float64)
    truth.load_state_dict({k: v.double().cpu() for k, v in theirs.state_dict().items()})
    x = torch.randn(3, 5, dtype=dtype, device=device, requires_grad=True)
    states = [torch.randn(3, 7, dtype=dtype, device=device, requires_grad=True)
              for _ in range(2 if kind == "lstm" else 1)]

    def run(cell, x, states):
        out = cell(x, tuple(states) if kind == "lstm" else states[0])
        return second_order(list(out) if kind == "lstm" else [out], leaves_of(cell, x, states))

    got = run(ours, x, states)
    with native_rnn():
        want = run(theirs, x, states)
    x64, states64 = (x.detach().double().cpu().requires_grad_(),
                     [s.detach().double().cpu().requires_grad_() for s in states])
    true = run(truth, x64, states64)
    for k, (a, b, t) in enumerate(zip(got, want, true)):
        assert_matches_torch(a, b, t, f"second-order grad {k}", against_truth=True)


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_cell_ops_gradgradcheck(bias):
    gen = torch.Generator().manual_seed(0)
    b = (lambda n: _rand(gen, n)) if bias else (lambda n: None)
    lstm_args = (_rand(gen, 3, 2), _rand(gen, 3, 4), _rand(gen, 3, 4), _rand(gen, 16, 2),
                 _rand(gen, 16, 4), b(16), b(16))
    assert torch.autograd.gradgradcheck(lambda *a: torch.ops.fused_rnn.lstm_cell(*a)[:2],
                                        lstm_args)
    gru_args = (_rand(gen, 3, 2), _rand(gen, 3, 4), _rand(gen, 12, 2), _rand(gen, 12, 4), b(12),
                b(12))
    assert torch.autograd.gradgradcheck(lambda *a: torch.ops.fused_rnn.gru_cell(*a)[:1],
                                        gru_args)


# Packed (rows leave the batch), reverse (rows join it) and projected layers.
@pytest.mark.parametrize("batch_sizes", [[3, 3, 3], [3, 2, 2, 1]], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", ["lstm", "lstm-proj", "gru"])
def test_layer_ops_gradgradcheck(kind, reverse, batch_sizes):
    gen = torch.Generator().manual_seed(0)
    rows, batch = sum(batch_sizes), batch_sizes[0]
    sizes = torch.tensor(batch_sizes)
    if kind == "gru":
        args = (_rand(gen, rows, 2), sizes, _rand(gen, batch, 3), _rand(gen, 9, 2),
                _rand(gen, 9, 3), _rand(gen, 9), _rand(gen, 9), reverse)
        op, results = torch.ops.fused_rnn.gru_layer, 2
    else:
        state = 2 if kind == "lstm-proj" else 3
        args = (_rand(gen, rows, 2), sizes, _rand(gen, batch, state), _rand(gen, batch, 3),
                _rand(gen, 12, 2), _rand(gen, 12, state), _rand(gen, 12), _rand(gen, 12),
                _rand(gen, state, 3) if kind == "lstm-proj" else None, reverse)
        op, results = torch.ops.fused_rnn.lstm_layer, 3
    assert torch.autograd.gradgradcheck(lambda *a: op(*a)[:results], args)


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_first_order_backward_runs_the_fused_backward_and_second_order_recomputes(kind):
    module = (fused_rnn.LSTM if kind == "lstm" else fused_rnn.GRU)(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    fused_backward = f"fused_rnn.{kind}_layer_backward"
    for create_graph in (False, True):
        loss = module(x)[0].sum()
        with OpLog() as log:
            torch.autograd.grad(loss, x, create_graph=create_graph)
        assert (fused_backward in log.ops) == (not create_graph), log.ops
