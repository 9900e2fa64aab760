"""Drop-in replacements for torch.nn.LSTM, GRU, LSTMCell and GRUCell, and convert().

They are built from torch.nn's own classes, so constructor, argument checks, parameter names,
shapes, initialization, state_dict, repr and flatten_parameters are torch.nn's; only forward runs
the fused ops. Input checks and their messages follow torch.nn's. The cells subclass
torch.nn.LSTMCell / GRUCell. LSTM and GRU subclass torch.nn.RNNBase, as torch.nn's do, but not
torch.nn.LSTM / GRU themselves: torch.compile refuses to trace any instance of those, and
compiling a model with fullgraph=True is one of the things ours are for.
"""

import torch
from torch.nn.utils.rnn import PackedSequence

from . import functional

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "LayerNormGRU", "LayerNormGRUCell",
           "LayerNormLSTM", "LayerNormLSTMCell", "convert"]


class _NotScriptable:
    """torch.jit.script (deprecated by PyTorch) cannot compile our forward, which calls the
    registered ops through Python; this fails at once, naming the way that works."""

    def __prepare_scriptable__(self):
        name = type(self).__name__
        raise RuntimeError(
            f"fused_rnn.{name} cannot be compiled by torch.jit.script. Use "
            f"torch.compile(model) (fullgraph=True works) or torch.export.export(model, args), "
            f"which trace fused_rnn's ops; or torch.nn.{name} where TorchScript is required.")


class _Zoneout:
    """The `zoneout` constructor argument (Krueger et al. 2016): the probability p that a unit of
    the carried state (h; the LSTMs' c too, with masks of its own) keeps its value at a step, per
    step, row and unit, in training; evaluation moves each state by 1 - p of its change. 0 (the
    class default, which modules convert() turns into ours keep) changes nothing."""

    zoneout = 0.0

    def _set_zoneout(self, zoneout):
        name = type(self).__name__
        if isinstance(zoneout, bool) or not isinstance(zoneout, (int, float)):
            raise TypeError(f"{name}: expected zoneout to be a float, got "
                            f"{type(zoneout).__name__}")
        if not 0 <= zoneout <= 1:
            raise ValueError(f"{name}: expected zoneout to be a probability in [0, 1], got "
                             f"{zoneout}")
        if zoneout and getattr(self, "proj_size", 0) > 0:
            raise ValueError(f"{name}: zoneout is not supported with proj_size > 0")
        self.zoneout = float(zoneout)

    def extra_repr(self):
        text = super().extra_repr()
        return f"{text}, zoneout={self.zoneout}" if self.zoneout else text


def _check_rank(cell: str, what: str, t: torch.Tensor) -> None:
    if t.dim() not in (1, 2):
        raise ValueError(f"{cell}: Expected {what} to be 1D or 2D, got {t.dim()}D instead")


def _lstm_cell_forward(cell, input, hx, step):
    """torch.nn.LSTMCell's forward (its checks, unbatched input, hx=None) around step(input, hx)
    -> (h', c')."""
    # The common call (a batch, its state, no zoneout) skips the rest: on a GPU the cells' time
    # is the host's (benchmarks/NOTES.md entry 72).
    if (hx is not None and not cell.zoneout and input.dim() == 2 and len(hx) == 2
            and hx[0].dim() == 2 and hx[1].dim() == 2):
        return step(input, hx)
    name = type(cell).__name__
    _check_rank(name, "input", input)
    if hx is not None:
        for idx, value in enumerate(hx):
            _check_rank(name, f"hx[{idx}]", value)
    batched = input.dim() == 2
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        zeros = input.new_zeros(input.size(0), cell.hidden_size)
        hx = (zeros, zeros)
    elif not batched:
        hx = tuple(value.unsqueeze(0) for value in hx)
    hy, cy = step(input, hx)
    weights = functional.zoneout_weights(cell.zoneout, cell.training, (2, *hy.shape), hy)
    if weights is not None:
        hy, cy = (functional.zone_out(hx[0], hy, weights[0]),
                  functional.zone_out(hx[1], cy, weights[1]))
    if not batched:
        return hy.squeeze(0), cy.squeeze(0)
    return hy, cy


def _gru_cell_forward(cell, input, hx, step):
    """torch.nn.GRUCell's forward around step(input, hx) -> h'."""
    if hx is not None and not cell.zoneout and input.dim() == 2 and hx.dim() == 2:
        return step(input, hx)  # (as in _lstm_cell_forward)
    name = type(cell).__name__
    _check_rank(name, "input", input)
    if hx is not None:
        _check_rank(name, "hidden", hx)
    batched = input.dim() == 2
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        hx = input.new_zeros(input.size(0), cell.hidden_size)
    elif not batched:
        hx = hx.unsqueeze(0)
    hy = functional.zone_out(
        hx, step(input, hx), functional.zoneout_weights(cell.zoneout, cell.training, hx.shape, hx))
    return hy if batched else hy.squeeze(0)


class LSTMCell(_NotScriptable, _Zoneout, torch.nn.LSTMCell):
    """torch.nn.LSTMCell computed by one fused op. Same arguments, parameters and results; plus
    zoneout (keyword; _Zoneout), on h and c, drawn per call."""

    def __init__(self, *args, zoneout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_zoneout(zoneout)

    def forward(self, input, hx=None):
        return _lstm_cell_forward(self, input, hx, lambda x, state: functional.lstm_cell(
            x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh))


class GRUCell(_NotScriptable, _Zoneout, torch.nn.GRUCell):
    """torch.nn.GRUCell computed by one fused op. Same arguments, parameters and results; plus
    zoneout (keyword; _Zoneout), on h, drawn per call."""

    def __init__(self, *args, zoneout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_zoneout(zoneout)

    def forward(self, input, hx=None):
        return _gru_cell_forward(self, input, hx, lambda x, h: functional.gru_cell(
            x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh))


class _LayerNormCellBase(_NotScriptable, _Zoneout, torch.nn.modules.rnn.RNNCellBase):
    """torch.nn's cell parameters (weight_ih, weight_hh, bias_ih, bias_hh, initialized as
    torch.nn's) plus the layer norms' weights (ones) and biases (zeros): layernorm_ih_* and
    layernorm_hh_* over the G*H gate rows of each product, and `extra_norms` more over H; and
    zoneout (_Zoneout), drawn per call."""

    def __init__(self, input_size, hidden_size, bias, num_chunks, extra_norms, device, dtype,
                 zoneout):
        self._norms = [("ih", num_chunks * hidden_size), ("hh", num_chunks * hidden_size)]
        self._norms += [(name, hidden_size) for name in extra_norms]
        super().__init__(input_size, hidden_size, bias, num_chunks, device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        for name, size in self._norms:
            setattr(self, f"layernorm_{name}_weight",
                    torch.nn.Parameter(torch.ones(size, **factory)))
            setattr(self, f"layernorm_{name}_bias", torch.nn.Parameter(torch.zeros(size, **factory)))
        self._set_zoneout(zoneout)

    def reset_parameters(self):
        super().reset_parameters()  # every parameter uniform, as torch.nn's cells
        with torch.no_grad():
            for name, _size in self._norms:
                if hasattr(self, f"layernorm_{name}_weight"):
                    getattr(self, f"layernorm_{name}_weight").fill_(1.0)
                    getattr(self, f"layernorm_{name}_bias").zero_()

    def _norm_parameters(self):
        params = []
        for name, _size in self._norms:
            params += [getattr(self, f"layernorm_{name}_weight"),
                       getattr(self, f"layernorm_{name}_bias")]
        return params


class LayerNormLSTMCell(_LayerNormCellBase):
    """A layer-normalized LSTM cell (Ba et al. 2016), one fused op a step.

    torch.nn.LSTMCell's arguments, parameters and call, plus layernorm_ih_weight/_bias,
    layernorm_hh_weight/_bias [4H] and layernorm_c_weight/_bias [H]:
    a = LN_ih(x W_ih^T) + LN_hh(h W_hh^T) + b_ih + b_hh, split into i, f, g, o;
    c' = sigmoid(f) c + sigmoid(i) tanh(g); h' = sigmoid(o) tanh(LN_c(c')).
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 zoneout=0.0):
        super().__init__(input_size, hidden_size, bias, 4, ["c"], device, dtype, zoneout)

    def forward(self, input, hx=None):
        return _lstm_cell_forward(self, input, hx, lambda x, state: functional.layernorm_lstm_cell(
            x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
            *self._norm_parameters()))


class LayerNormGRUCell(_LayerNormCellBase):
    """A layer-normalized GRU cell, one fused op a step.

    torch.nn.GRUCell's arguments, parameters and call, plus layernorm_ih_weight/_bias and
    layernorm_hh_weight/_bias [3H]: gx = LN_ih(x W_ih^T) + b_ih, gh = LN_hh(h W_hh^T) + b_hh;
    r = sigmoid(gx_r + gh_r), z = sigmoid(gx_z + gh_z), n = tanh(gx_n + r gh_n);
    h' = (1 - z) n + z h.
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 zoneout=0.0):
        super().__init__(input_size, hidden_size, bias, 3, [], device, dtype, zoneout)

    def forward(self, input, hx=None):
        return _gru_cell_forward(self, input, hx, lambda x, h: functional.layernorm_gru_cell(
            x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
            *self._norm_parameters()))


def _check_state_rank(batched: bool, hx, lstm: bool) -> None:
    """torch.nn's rank checks of the initial state (their messages)."""
    want = 3 if batched else 2
    ranks = tuple(h.dim() for h in hx) if lstm else (hx.dim(),)
    if all(r == want for r in ranks):
        return
    kind = "batched 3-D" if batched else "unbatched 2-D"
    if lstm:
        raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                           f"({ranks[0]}-D, {ranks[1]}-D) tensors")
    raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {ranks[0]}-D tensor")


def _check_resets(resets, shape, device):
    """resets must be a bool tensor of `shape` on `device`."""
    if not isinstance(resets, torch.Tensor):
        raise TypeError(f"resets: expected a bool tensor, got {type(resets).__name__}")
    if resets.dtype != torch.bool or tuple(resets.shape) != tuple(shape):
        raise ValueError(f"resets: expected a bool tensor of shape {tuple(shape)} (the input's "
                         f"without its feature dimension), got {resets.dtype} of shape "
                         f"{tuple(resets.shape)}")
    if resets.device != device:
        raise ValueError(f"resets: expected a tensor on {device} (the input's device), got "
                         f"{resets.device}")


def _sequence_forward(module, input, hx, lstm: bool, resets=None):
    """The forward of the sequence modules: torch.nn's input handling (packed, batch_first,
    unbatched, default and permuted states), with the layers run by module._run_layers(data,
    batch_sizes, hx, resets) -> (output, hidden), over fused_rnn.functional. resets (episode
    starts) is shaped as the input without its feature dimension ([N] for a PackedSequence,
    aligned with its data) and goes to the layers a row per data row."""
    module._update_flat_weights()
    num_directions = 2 if module.bidirectional else 1
    state_size = module.proj_size if lstm and module.proj_size > 0 else module.hidden_size
    packed = isinstance(input, PackedSequence)
    if packed:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        batch = int(batch_sizes[0])
        if resets is not None:
            _check_resets(resets, data.shape[:1], data.device)
    else:
        if input.dim() not in (2, 3):
            name = "LSTM" if lstm else "GRU"
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        batch_dim = 0 if module.batch_first else 1
        if resets is not None:
            _check_resets(resets, input.shape[:-1], input.device)
        if not batched:
            input = input.unsqueeze(batch_dim)
        if hx is not None:
            _check_state_rank(batched, hx, lstm)
            if not batched:
                hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
        batch = input.size(batch_dim)
        batch_sizes = sorted_indices = unsorted_indices = None
    if hx is None:
        like = data if packed else input
        zeros = like.new_zeros(module.num_layers * num_directions, batch, state_size)
        hx = (zeros, like.new_zeros(zeros.shape[:2] + (module.hidden_size,))) if lstm else zeros
    else:
        hx = module.permute_hidden(hx, sorted_indices)
    module.check_forward_args(data if packed else input, hx, batch_sizes)

    if not packed:
        steps = input.transpose(0, 1) if module.batch_first else input  # [T, B, I]
        if steps.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        data = steps.reshape(steps.size(0) * batch, steps.size(2))
        batch_sizes = torch.full((steps.size(0),), batch, dtype=torch.long)
        if resets is not None:
            time_major = resets.transpose(0, 1) if batched and module.batch_first else resets
            resets = time_major.reshape(-1)
    output, hidden = module._run_layers(data, batch_sizes, hx, resets)

    if packed:
        return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                module.permute_hidden(hidden, unsorted_indices))
    output = output.view(steps.size(0), batch, output.size(1))
    if module.batch_first:
        output = output.transpose(0, 1)
    if not batched:
        output = output.squeeze(batch_dim)
        hidden = tuple(h.squeeze(1) for h in hidden) if lstm else hidden.squeeze(1)
    return output, hidden


class LSTM(_NotScriptable, _Zoneout, torch.nn.RNNBase):
    """torch.nn.LSTM computed by fused whole-sequence ops. Same arguments, parameters, results;
    plus zoneout (keyword; _Zoneout), on h and c, not with proj_size."""

    # torch.nn.LSTM's own checks of the (h, c) state and its reordering for packed sequences.
    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    check_forward_args = torch.nn.LSTM.check_forward_args
    permute_hidden = torch.nn.LSTM.permute_hidden

    def __init__(self, *args, zoneout=0.0, **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self._set_zoneout(zoneout)

    def forward(self, input, hx=None, *, resets=None):
        """torch.nn.LSTM's forward; resets (optional, bool, shaped as the input without its
        feature dimension: [T, B], [B, T] with batch_first, [T] unbatched, [N] aligned with a
        PackedSequence's data): where true, an episode starts at that step for that row, in
        every layer: the state entering it is the initial state (hx's row, else zeros), and no
        gradient crosses the boundary; in the reverse direction the state entering the step
        before it is the initial state."""
        return _sequence_forward(self, input, hx, lstm=True, resets=resets)

    def _run_layers(self, data, batch_sizes, hx, resets):
        output, h_n, c_n = functional.lstm(data, batch_sizes, hx, self._flat_weights, self.bias,
                                           self.num_layers, self.dropout, self.training,
                                           self.bidirectional, proj_size=self.proj_size,
                                           resets=resets, zoneout=self.zoneout)
        return output, (h_n, c_n)


class GRU(_NotScriptable, _Zoneout, torch.nn.RNNBase):
    """torch.nn.GRU computed by fused whole-sequence ops. Same arguments, parameters, results;
    plus zoneout (keyword; _Zoneout), on h."""

    def __init__(self, *args, zoneout=0.0, **kwargs):
        if "proj_size" in kwargs:  # torch.nn.GRU's check and message
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)
        self._set_zoneout(zoneout)

    def forward(self, input, hx=None, *, resets=None):
        """torch.nn.GRU's forward; resets as for LSTM.forward."""
        return _sequence_forward(self, input, hx, lstm=False, resets=resets)

    def _run_layers(self, data, batch_sizes, hx, resets):
        return functional.gru(data, batch_sizes, hx, self._flat_weights, self.bias,
                              self.num_layers, self.dropout, self.training, self.bidirectional,
                              resets=resets, zoneout=self.zoneout)


class _LayerNormSequence(_NotScriptable, _Zoneout, torch.nn.RNNBase):
    """torch.nn.LSTM's / GRU's constructor, parameters and call (no proj_size), plus per layer k
    (suffix _reverse for the reverse direction) the layer norms' weights (ones) and biases
    (zeros): layernorm_ih_*_l{k} and layernorm_hh_*_l{k} [G*H], and for the LSTM
    layernorm_c_*_l{k} [H]; and zoneout (_Zoneout)."""

    _mode = None
    _extra_norms = ()

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, zoneout=0.0,
                 **kwargs):
        name = type(self).__name__
        if kwargs:
            raise TypeError(f"{name}.__init__() got unexpected keyword argument(s) "
                            f"{sorted(kwargs)} (proj_size is not supported)")
        gates = 4 if self._mode == "LSTM" else 3
        self._norms = []
        super().__init__(self._mode, input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            for suffix in ("", "_reverse")[:2 if bidirectional else 1]:
                group = []
                sizes = [("ih", gates * hidden_size), ("hh", gates * hidden_size)]
                sizes += [(n, hidden_size) for n in self._extra_norms]
                for norm, size in sizes:
                    for part, fill in (("weight", 1.0), ("bias", 0.0)):
                        param_name = f"layernorm_{norm}_{part}_l{layer}{suffix}"
                        self.register_parameter(
                            param_name, torch.nn.Parameter(torch.full((size,), fill, **factory)))
                        group.append(param_name)
                self._norms.append(group)
        self._set_zoneout(zoneout)

    def reset_parameters(self):
        super().reset_parameters()  # every parameter uniform, as torch.nn's
        with torch.no_grad():
            for group in getattr(self, "_norms", []):
                for param_name in group:
                    getattr(self, param_name).fill_(1.0 if "_weight_" in param_name else 0.0)

    def _norm_groups(self):
        return [[getattr(self, n) for n in group] for group in self._norms]


class LayerNormLSTM(_LayerNormSequence):
    """A layer-normalized LSTM (Ba et al. 2016) over whole sequences, one fused op per layer and
    direction: torch.nn.LSTM's arguments (but proj_size), call and results, each step as
    LayerNormLSTMCell computes it."""

    _mode = "LSTM"
    _extra_norms = ("c",)
    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    check_forward_args = torch.nn.LSTM.check_forward_args
    permute_hidden = torch.nn.LSTM.permute_hidden

    def forward(self, input, hx=None, *, resets=None):
        """As LSTM.forward (resets included)."""
        return _sequence_forward(self, input, hx, lstm=True, resets=resets)

    def _run_layers(self, data, batch_sizes, hx, resets):
        output, h_n, c_n = functional.layernorm_lstm(
            data, batch_sizes, hx, self._flat_weights, self._norm_groups(), self.bias,
            self.num_layers, self.dropout, self.training, self.bidirectional, resets=resets,
            zoneout=self.zoneout)
        return output, (h_n, c_n)


class LayerNormGRU(_LayerNormSequence):
    """A layer-normalized GRU over whole sequences, one fused op per layer and direction:
    torch.nn.GRU's arguments, call and results, each step as LayerNormGRUCell computes it."""

    _mode = "GRU"

    def forward(self, input, hx=None, *, resets=None):
        """As GRU.forward (resets included)."""
        return _sequence_forward(self, input, hx, lstm=False, resets=resets)

    def _run_layers(self, data, batch_sizes, hx, resets):
        return functional.layernorm_gru(data, batch_sizes, hx, self._flat_weights,
                                        self._norm_groups(), self.bias, self.num_layers,
                                        self.dropout, self.training, self.bidirectional,
                                        resets=resets, zoneout=self.zoneout)


_DROP_INS = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.LSTMCell: LSTMCell,
             torch.nn.GRUCell: GRUCell}


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces, in place, every torch.nn LSTM, GRU, LSTMCell and GRUCell in `model` (the model
    itself included) by fused_rnn's, keeping parameters, buffers, hooks and device; returns it.

    Subclasses of those torch.nn modules are left alone: their own code may depend on the class.
    """
    for module in model.modules():
        drop_in = _DROP_INS.get(type(module))
        if drop_in is not None:
            # Ours hold exactly the state torch.nn's do, so switching the class is the whole move.
            module.__class__ = drop_in
    return model
