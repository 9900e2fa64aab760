"""The drop-in cells as modules: construction, state_dicts, and bad input handled as torch.nn does."""

import copy
import pickle

import pytest
import torch

import fused_rnn
from conftest import CUDA_READY

PAIRS = {
    "lstm": (torch.nn.LSTMCell, fused_rnn.LSTMCell),
    "gru": (torch.nn.GRUCell, fused_rnn.GRUCell),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", PAIRS)
def test_construction_and_state_dict_round_trip(kind, bias):
    torch_cls, our_cls = PAIRS[kind]
    torch.manual_seed(3)
    theirs = torch_cls(7, 5, bias=bias, dtype=torch.float64)
    torch.manual_seed(3)
    ours = our_cls(7, 5, bias=bias, dtype=torch.float64)
    assert isinstance(ours, torch_cls)
    assert repr(ours).replace("fused_rnn.", "") == repr(theirs)
    # Same names, shapes, dtypes and (same seed) the same initialization.
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for name in theirs_sd:
        assert torch.equal(ours_sd[name], theirs_sd[name]), name
    # Loads in both directions.
    fresh_torch, fresh_ours = torch_cls(7, 5, bias=bias), our_cls(7, 5, bias=bias)
    fresh_torch.load_state_dict(ours.state_dict())
    fresh_ours.load_state_dict(theirs.state_dict())
    # copy, pickle and dtype changes behave as modules do.
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(clone) is our_cls
        assert all(torch.equal(a, b) for a, b in zip(clone.parameters(), ours.parameters()))
    assert next(ours.float().parameters()).dtype == torch.float32


def _clone_all(args):
    return [tuple(a.clone() for a in x) if isinstance(x, tuple) else
            (x.clone() if isinstance(x, torch.Tensor) else x) for x in args]


def _assert_unchanged(before, after):
    for b, a in zip(before, after):
        if isinstance(a, tuple):
            _assert_unchanged(b, a)
        elif isinstance(a, torch.Tensor):
            assert torch.equal(b, a)


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.type, str(info.value)


# Bad calls (input_size 3, hidden_size 4) for which torch.nn raises a documented error; ours must
# raise the same type with the same message.
LSTM_BAD = {
    "input_size": lambda: (torch.randn(2, 5),),
    "batch": lambda: (torch.randn(2, 3), (torch.randn(3, 4), torch.randn(3, 4))),
    "batch_c": lambda: (torch.randn(2, 3), (torch.randn(2, 4), torch.randn(3, 4))),
    "hidden_size_h": lambda: (torch.randn(2, 3), (torch.randn(2, 5), torch.randn(2, 4))),
    "hidden_size_c": lambda: (torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 5))),
    "input_rank": lambda: (torch.randn(2, 2, 3),),
    "input_rank_0d": lambda: (torch.tensor(1.0),),
    "hx_rank": lambda: (torch.randn(2, 3), (torch.randn(1, 2, 4), torch.randn(2, 4))),
    "unbatched_input_batched_hx": lambda: (torch.randn(3), (torch.randn(2, 4), torch.randn(2, 4))),
    "batched_input_unbatched_hx": lambda: (torch.randn(2, 3), (torch.randn(4), torch.randn(4))),
    "one_state": lambda: (torch.randn(2, 3), (torch.randn(2, 4),)),
    # Two faults at once: torch.nn reports the size before the dtype.
    "hidden_size_and_dtype_h": lambda: (torch.randn(2, 3), (torch.randn(2, 5).double(),
                                                            torch.randn(2, 4))),
    "hidden_size_c_and_dtype_h": lambda: (torch.randn(2, 3), (torch.randn(2, 4).double(),
                                                              torch.randn(2, 5))),
    "input_size_and_dtype": lambda: (torch.randn(2, 5).double(),),
}
GRU_BAD = {
    "input_size": lambda: (torch.randn(2, 5),),
    "batch": lambda: (torch.randn(2, 3), torch.randn(3, 4)),
    "hidden_size": lambda: (torch.randn(2, 3), torch.randn(2, 5)),
    "input_rank": lambda: (torch.randn(2, 2, 3),),
    "hx_rank": lambda: (torch.randn(2, 3), torch.randn(1, 2, 4)),
    "unbatched_input_batched_hx": lambda: (torch.randn(3), torch.randn(2, 4)),
    "batched_input_unbatched_hx": lambda: (torch.randn(2, 3), torch.randn(4)),
    "hidden_size_and_dtype": lambda: (torch.randn(2, 3), torch.randn(2, 5).double()),
    "batch_and_dtype": lambda: (torch.randn(2, 3), torch.randn(3, 4).double()),
}
BAD_CASES = [("lstm", name, make) for name, make in LSTM_BAD.items()] + \
    [("gru", name, make) for name, make in GRU_BAD.items()]


@pytest.mark.parametrize("kind,case,make_args", BAD_CASES, ids=[f"{k}-{n}" for k, n, _ in BAD_CASES])
def test_bad_input_raises_like_torch_nn(kind, case, make_args):
    torch_cls, our_cls = PAIRS[kind]
    theirs = torch_cls(3, 4)
    ours = our_cls(3, 4)
    ours.load_state_dict(theirs.state_dict())
    args = make_args()
    before = _clone_all([*args, *ours.parameters()])
    expected = _raised(lambda: theirs(*args))
    assert _raised(lambda: ours(*args)) == expected
    _assert_unchanged(before, [*args, *ours.parameters()])


@pytest.mark.parametrize("kind", PAIRS)
def test_wrong_dtypes_raise_clearly(kind):
    ours = PAIRS[kind][1](3, 4)
    with pytest.raises(RuntimeError, match=r"expected input of dtype float32, float64.*got Int"):
        ours(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"expected w_ih of dtype Double .*got Float"):
        ours(torch.randn(2, 3, dtype=torch.float64))
    state = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"expected hx of dtype Float .*got Double"):
        ours(torch.randn(2, 3), (state, state) if kind == "lstm" else state)


@pytest.mark.parametrize("kind", PAIRS)
def test_mixed_devices_raise_clearly(kind):
    ours = PAIRS[kind][1](3, 4)
    with pytest.raises(RuntimeError, match=r"expected w_ih on meta \(the device of input\), got cpu"):
        ours(torch.randn(2, 3, device="meta"))


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("kind", PAIRS)
def test_mixed_cpu_and_cuda_raise_clearly(kind):
    ours = PAIRS[kind][1](3, 4, device="cuda")
    state = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match=r"expected hx on cuda:0 \(the device of input\), got cpu"):
        ours(torch.randn(2, 3, device="cuda"), (state, state) if kind == "lstm" else state)


def test_direct_op_calls_with_bad_shapes_raise():
    """The ops themselves guard their kernels: no out-of-bounds access on inconsistent arguments."""
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    w_ih, w_hh, b = torch.randn(16, 3), torch.randn(16, 4), torch.randn(16)
    ops = torch.ops.fused_rnn
    with pytest.raises(RuntimeError, match=r"expected w_hh of shape \[16, 4\]"):
        ops.lstm_cell(x, h, c, w_ih, torch.randn(12, 4), b, b)
    with pytest.raises(RuntimeError, match=r"expected w_ih to be 2-D \[16, I\]"):
        ops.lstm_cell(x, h, c, torch.randn(12, 3), w_hh, b, b)
    with pytest.raises(RuntimeError, match=r"expected b_hh of shape \[16\]"):
        ops.lstm_cell(x, h, c, w_ih, w_hh, b, torch.randn(15))
    hy, cy, gates = ops.lstm_cell(x, h, c, w_ih, w_hh, b, b)
    with pytest.raises(RuntimeError, match=r"expected gates of shape \[2, 16\]"):
        ops.lstm_cell_backward(hy, cy, x, h, c, w_ih, w_hh, gates[:, :8], cy, [True] * 6)
    gw_ih, gw_hh, gb = torch.randn(12, 3), torch.randn(12, 4), torch.randn(12)
    hy, workspace = ops.gru_cell(x, h, gw_ih, gw_hh, gb, gb)
    with pytest.raises(RuntimeError, match=r"expected workspace of shape \[2, 16\]"):
        ops.gru_cell_backward(hy, x, h, gw_ih, gw_hh, workspace[:1], [True] * 6)
    with pytest.raises(RuntimeError, match=r"expected grad_hy of shape \[2, 4\]"):
        ops.gru_cell_backward(hy[:, :3], x, h, gw_ih, gw_hh, workspace, [True] * 6)


@pytest.mark.parametrize("kind", PAIRS)
def test_good_calls_modify_nothing(kind):
    ours = PAIRS[kind][1](3, 4)
    x = torch.randn(2, 3, requires_grad=True)
    state = (torch.randn(2, 4), torch.randn(2, 4)) if kind == "lstm" else torch.randn(2, 4)
    before = _clone_all([x, state, *ours.parameters()])
    out = ours(x, state)
    sum(o.sum() for o in (out if kind == "lstm" else (out,))).backward()
    _assert_unchanged(before, [x, state, *ours.parameters()])


SCRIPTED = {"lstm-cell": (fused_rnn.LSTMCell, (3, 4)), "gru-cell": (fused_rnn.GRUCell, (3, 4)),
            "lstm": (fused_rnn.LSTM, (3, 4)), "gru": (fused_rnn.GRU, (3, 4))}


@pytest.mark.parametrize("kind", SCRIPTED)
def test_torch_jit_script_fails_at_once_pointing_to_compile_and_export(kind):
    cls, args = SCRIPTED[kind]
    model = torch.nn.Sequential(torch.nn.Identity(), cls(*args))
    for target in (model[1], model):
        with pytest.raises(RuntimeError, match=rf"fused_rnn\.{cls.__name__} cannot be compiled by "
                           r"torch\.jit\.script.*torch\.compile.*torch\.export"):
            torch.jit.script(target)


@pytest.mark.parametrize("kind", SCRIPTED)
def test_torch_export_gives_eager_results(kind):
    cls, args = SCRIPTED[kind]
    module = cls(*args)
    x = torch.randn(2, 3) if kind.endswith("cell") else torch.randn(5, 2, 3)
    exported = torch.export.export(module, (x,)).module()
    for got, want in zip(torch.utils._pytree.tree_leaves(exported(x)),
                         torch.utils._pytree.tree_leaves(module(x))):
        torch.testing.assert_close(got, want)


def test_gru_cell_without_state_works():
    cell = fused_rnn.GRUCell(3, 4)
    x = torch.randn(2, 3)
    torch.testing.assert_close(cell(x), cell(x, torch.zeros(2, 4)))
    torch.testing.assert_close(cell(x[0]), cell(x, torch.zeros(2, 4))[0])
