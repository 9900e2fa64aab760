"""Plain functions over tensors: one fused LSTM or GRU cell step, differentiable.

Shapes: input [B, I], h and c [B, H], w_ih [G*H, I], w_hh [G*H, H], biases [G*H], with G = 4 gates
(i, f, g, o) for the LSTM and 3 (r, z, n) for the GRU, in torch.nn's layout.
"""

import contextlib

import torch

from . import ops  # noqa: F401  (registers the fake implementations and autograd)

__all__ = ["gru", "gru_cell", "layernorm_gru", "layernorm_gru_cell", "layernorm_lstm",
           "layernorm_lstm_cell", "lstm", "lstm_cell", "use_concurrent_directions",
           "use_pipelined_layers", "zone_out", "zoneout_weights"]

# Whether a bidirectional layer on CUDA runs its reverse direction on a second stream
# (use_concurrent_directions); into how many chunks of steps a unidirectional stack on CUDA
# splits its sequence, each layer on a stream of its own (use_pipelined_layers; 0: not
# pipelined), and on which devices that applies (tests add the CPU, which has no streams, to
# run the same schedule); the side streams, per device and index.
_concurrent_directions = False
_pipeline_chunks = 0
_pipelined_devices = ("cuda",)
_side_streams = {}


def use_concurrent_directions(enabled: bool = True) -> None:
    """Whether the two directions of a bidirectional layer on CUDA run concurrently: the reverse
    direction on a second CUDA stream beside the forward one, so that the GPU can overlap the two
    directions' steps where one step's work leaves SMs idle (the step-wise path at small batches;
    persistent kernels that take few SMs). Off by default until measured (benchmarks/NOTES.md
    entry 69). No effect on the CPU, nor while torch.compile traces."""
    if not isinstance(enabled, bool):
        raise ValueError(f"use_concurrent_directions: expected True or False, got {enabled!r}")
    global _concurrent_directions
    _concurrent_directions = enabled


def use_pipelined_layers(enabled: bool = True, chunks: int = 4) -> None:
    """Whether a unidirectional stack of layers on CUDA runs as a pipeline: the sequence split
    into `chunks` runs of consecutive steps, each layer on a CUDA stream of its own, layer l + 1
    taking chunk k as soon as layer l has made it, so that the GPU can run layer l's chunk k + 1
    beside it (as cuDNN overlaps its layers). Each chunk is one call of the layer's op (with its
    own input product), the state carried between them. Padded sequences of more than one layer
    and one direction without episode starts (resets); others run as before. Off by default
    until measured (benchmarks/NOTES.md entry 73). No effect on the CPU, nor while torch.compile
    traces."""
    if not isinstance(enabled, bool):
        raise ValueError(f"use_pipelined_layers: expected enabled to be True or False, got "
                         f"{enabled!r}")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 2:
        raise ValueError(f"use_pipelined_layers: expected chunks to be an int of at least 2, got "
                         f"{chunks!r}")
    global _pipeline_chunks
    _pipeline_chunks = chunks if enabled else 0


def _side_stream(device, index=1):
    """A CUDA device's side stream number `index` (>= 1; made on first use)."""
    device_index = device.index if device.index is not None else torch.cuda.current_device()
    key = (device_index, index)
    if key not in _side_streams:
        _side_streams[key] = torch.cuda.Stream(device=device_index)
    return _side_streams[key]


def _record_on(stream, tensors):
    """Marks tensors (None skipped) made on another stream as used by `stream`, so that the
    caching allocator does not hand their memory out again before that stream is done."""
    for t in tensors:
        if t is not None:
            t.record_stream(stream)


def _layer_directions(step_layer, data, batch_sizes, resets, states, groups, first,
                      num_directions):
    """Each direction's (output, final states) of the layer whose groups start at `first`; the
    reverse direction on a second stream where use_concurrent_directions says so. That stream
    starts after what the current one has queued before the forward direction (its inputs), and
    the current one waits for it after; the reverse direction's results, made on it, are marked
    as used by the current stream. Autograd runs each direction's backward on its forward's
    stream and orders the gradients between them."""
    def run(direction):
        return step_layer(data, batch_sizes, resets, states[first + direction],
                          groups[first + direction], direction == 1)
    if num_directions == 1:
        return [run(0)]
    if not (_concurrent_directions and data.is_cuda) or torch.compiler.is_compiling():
        return [run(0), run(1)]
    main = torch.cuda.current_stream(data.device)
    side = _side_stream(data.device)
    side.wait_stream(main)
    forward = run(0)
    # (What the reverse direction reads was made on the current stream.)
    _record_on(side, (data, resets, *_flat(states[first + 1]), *groups[first + 1]))
    with torch.cuda.stream(side):
        reverse = run(1)
    main.wait_stream(side)
    output, final = reverse
    _record_on(main, (output, *_flat(final)))
    return [forward, reverse]


def _flat(state):
    """A layer's state as a tuple: (h, c) as it is, a lone h as (h,)."""
    return state if isinstance(state, tuple) else (state,)


def zoneout_weights(p, training, shape, like):
    """Zoneout's (Krueger et al. 2016) weights of a step's new state, a tensor of `shape` in like's
    dtype and device: in training, draws of Bernoulli(1 - p) (1 takes the new value, 0 keeps the
    state before) from the device's generator (on the CPU, our bernoulli_weights from a seed it
    draws); in evaluation their expectation 1 - p (broadcast, not stored). None where p = 0."""
    if p == 0:
        return None
    if not training:
        return torch.full((1,) * len(shape), 1 - p, dtype=like.dtype,
                          device=like.device).expand(shape)
    if like.device.type == "cpu":
        seed = torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)
        return torch.ops.fused_rnn.bernoulli_weights(seed, list(shape), 1 - p, like.dtype)
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1 - p)


def zone_out(before, new, weight):
    """The state carried on: weight * new + (1 - weight) * before, written as the kernels' one
    formula (csrc/cell_math.h's zoneout: exact where the weight is 0 or 1); new itself where
    weight is None."""
    return new if weight is None else weight * new - (weight * before - before)


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step, as torch.nn.LSTMCell computes it. hx = (h, c); returns (h', c')."""
    if len(hx) != 2:
        raise RuntimeError("lstm_cell expects two hidden states")
    h, c = hx
    hy, cy, _gates = torch.ops.fused_rnn.lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh)
    return hy, cy


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step, as torch.nn.GRUCell computes it; returns h'."""
    hy, _workspace = torch.ops.fused_rnn.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    return hy


def layernorm_lstm_cell(input, hx, w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight,
                        ln_hh_bias, ln_c_weight, ln_c_bias):
    """One layer-normalized LSTM step (fused_rnn.reference.layernorm_lstm_cell). hx = (h, c);
    returns (h', c')."""
    if len(hx) != 2:
        raise RuntimeError("layernorm_lstm_cell expects two hidden states")
    h, c = hx
    hy, cy, _saved = torch.ops.fused_rnn.layernorm_lstm_cell(
        input, h, c, w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias,
        ln_c_weight, ln_c_bias)
    return hy, cy


def layernorm_gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight,
                       ln_hh_bias):
    """One layer-normalized GRU step (fused_rnn.reference.layernorm_gru_cell); returns h'."""
    hy, _saved = torch.ops.fused_rnn.layernorm_gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh,
                                                        ln_ih_weight, ln_ih_bias, ln_hh_weight,
                                                        ln_hh_bias)
    return hy


def _layer_weights(flat_weights, num_layers, num_directions, has_biases, has_proj):
    """torch.nn's flat weight list, grouped per (layer, direction) as (w_ih, w_hh, b_ih, b_hh,
    w_hr), absent entries None."""
    per_group = 2 + 2 * has_biases + has_proj
    if len(flat_weights) != num_layers * num_directions * per_group:
        raise ValueError(f"expected {num_layers * num_directions * per_group} weights for "
                         f"{num_layers} layer(s) x {num_directions} direction(s), got "
                         f"{len(flat_weights)}")
    groups = []
    for k in range(num_layers * num_directions):
        w = list(flat_weights[k * per_group:(k + 1) * per_group])
        w_ih, w_hh = w[0], w[1]
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        w_hr = w[-1] if has_proj else None
        groups.append((w_ih, w_hh, b_ih, b_hh, w_hr))
    return groups


# A direction's output (a pipelined stack's last output) from which _OutputsSavedAsViews holds
# the parts the ops saved as views, in bytes: its hooks cost about 2 us of host time per saved
# tensor (about 50 us per bidirectional layer and pass, measured on the CPU), worth it where
# they free outputs of this size or more (8 MiB a bidirectional layer; the shapes:
# 6.5-50 MB an output).
_VIEWS_FROM_BYTES = 4 << 20


class _OutputsSavedAsViews:
    """Saved-tensor hooks around a bidirectional layer's two directions (or a pipelined stack's
    last layer's chunks): what their ops save for the backward is held as given, except each op's
    own output, which is held as a view of the layer's concatenated output once that is made
    (point_into), so that the parts do not outlive the concatenation (for two directions, two
    [N, H] tensors fewer alive from the forward to the backward: one output, as cuDNN keeps;
    the hooks may be entered around several calls). A view read after the concatenated output was
    modified in place raises, as autograd does for a saved tensor. Inactive where nothing is
    saved (no grad mode), while torch.compile traces (it sees the ops' saved tensors itself),
    where saved-tensor hooks are disabled (torch.func's transforms), and where the caller has
    hooks of its own (torch.autograd.graph.save_on_cpu, checkpointing), which then see every
    saved tensor as they would without ours."""

    class _View:
        def __init__(self, whole, dim, start, length):
            self.whole, self.dim, self.start, self.length = whole, dim, start, length
            self.version = whole._version

        def get(self):
            if self.whole._version != self.version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by "
                    f"an inplace operation: the output of a fused_rnn layer is at "
                    f"version {self.whole._version}; expected version {self.version} instead")
            return self.whole.narrow(self.dim, self.start, self.length)

    def __init__(self, active):
        self.active = (active and torch.is_grad_enabled() and not torch.compiler.is_compiling()
                       and torch._C._autograd._saved_tensors_hooks_is_enabled()
                       and torch._C._autograd._top_saved_tensors_default_hooks(False) is None)
        self.held = []

    def _pack(self, t):
        holder = [t]
        self.held.append(holder)
        return holder

    @staticmethod
    def _unpack(holder):
        value = holder[0]
        return value.get() if isinstance(value, _OutputsSavedAsViews._View) else value

    def __enter__(self):
        if self.active:
            self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        if self.active:
            self.hooks.__exit__(*exc)

    def point_into(self, whole, outputs, dim=1):
        """Holds each of `outputs` that an op saved as its part of whole, their concatenation
        along dim (the directions' columns; the pipelined chunks' rows)."""
        starts = [0]
        for out in outputs:
            starts.append(starts[-1] + out.shape[dim])
        for holder in self.held:
            for out, start in zip(outputs, starts):
                if holder[0] is out:
                    holder[0] = self._View(whole, dim, start, out.shape[dim])


def _run_layers(step_layer, data, batch_sizes, resets, states, groups, num_layers, bidirectional,
                dropout, training):
    """Runs every layer and direction over the packed data [N, I]; the directions' outputs are
    concatenated per step (what their ops save of them, held as views of the concatenation:
    _OutputsSavedAsViews), with dropout between layers in training. states[k] is the initial
    state of group k ((h, c) or h); step_layer(data, batch_sizes, resets, state, weights,
    reverse) -> (output, final state), for the rows of data that batch_sizes and resets (None or
    a bool per row) describe. A unidirectional stack may run as a pipeline
    (use_pipelined_layers)."""
    # (Not with episode starts: a chunk's op would restart them from the state it starts from,
    # not from the initial state.)
    if (_pipeline_chunks and num_layers > 1 and not bidirectional and resets is None
            and data.device.type in _pipelined_devices and batch_sizes.numel() > 1
            and not torch.compiler.is_compiling()
            and bool((batch_sizes == batch_sizes[0]).all())):
        return _pipelined_layers(step_layer, data, batch_sizes, states, groups, num_layers,
                                 dropout, training)
    num_directions = 2 if bidirectional else 1
    finals = []
    for layer in range(num_layers):
        with _OutputsSavedAsViews(num_directions > 1 and _output_bytes(
                data, groups[layer * num_directions]) >= _VIEWS_FROM_BYTES) as saved:
            directions = _layer_directions(step_layer, data, batch_sizes, resets, states, groups,
                                           layer * num_directions, num_directions)
        outputs = [out for out, _ in directions]
        finals += [final for _, final in directions]
        del directions
        if num_directions == 1:
            data = outputs[0]
        else:
            data = torch.cat(outputs, dim=1)
            saved.point_into(data, outputs)
        del outputs
        data = _between_layers(data, layer, num_layers, dropout, training)
    return data, finals


def _output_bytes(data, weights):
    """The bytes of a layer's output over data's rows (w_hh [G*H, P]: P columns, the
    projection's or H)."""
    return data.shape[0] * weights[1].shape[1] * data.element_size()


def _between_layers(output, layer, num_layers, dropout, training):
    """A layer's output as the next layer reads it: with dropout in training, as torch.nn's."""
    if dropout > 0 and training and layer < num_layers - 1:
        return torch.nn.functional.dropout(output, dropout, training=True)
    return output


def _pipelined_layers(step_layer, data, batch_sizes, states, groups, num_layers, dropout, training):
    """_run_layers for a unidirectional stack over a padded sequence, as a pipeline: the steps
    split into _pipeline_chunks runs (fewer if there are fewer steps), layer l on stream l (the
    current one for layer 0, side streams for the others, where the device has streams), each
    chunk one call of step_layer from the state the chunk before left, issued wave by wave so
    that layer l + 1's chunk k waits (by an event) only for layer l's chunk k. The last layer's
    chunks are concatenated (what their ops save of them, held as views of it). No resets."""
    steps, batch = batch_sizes.numel(), int(batch_sizes[0])
    chunks = min(_pipeline_chunks, steps)
    bounds = [steps * k // chunks for k in range(chunks + 1)]
    cuda = data.device.type == "cuda"
    streams = [None] * num_layers
    if cuda:
        main = streams[0] = torch.cuda.current_stream(data.device)
        for layer in range(1, num_layers):
            streams[layer] = _side_stream(data.device, layer)
            streams[layer].wait_stream(main)
            # (What the layer reads beyond the layer below's chunks was made on the current
            # stream.)
            _record_on(streams[layer], (*_flat(states[layer]), *groups[layer]))
    last = num_layers - 1
    saved = _OutputsSavedAsViews(_output_bytes(data, groups[last]) >= _VIEWS_FROM_BYTES)
    made = [[None] * chunks for _ in range(num_layers)]  # (output, event) per layer and chunk
    carried = list(states[:num_layers])
    for wave in range(chunks + num_layers - 1):
        for layer in range(max(0, wave - chunks + 1), min(num_layers, wave + 1)):
            k = wave - layer
            with torch.cuda.stream(streams[layer]) if cuda else contextlib.nullcontext():
                if layer == 0:
                    x = data.narrow(0, bounds[k] * batch, (bounds[k + 1] - bounds[k]) * batch)
                else:
                    x, below = made[layer - 1][k]
                    if cuda:
                        streams[layer].wait_event(below)
                        x.record_stream(streams[layer])
                with saved if layer == last else contextlib.nullcontext():
                    out, carried[layer] = step_layer(x, batch_sizes[bounds[k]:bounds[k + 1]], None,
                                                     carried[layer], groups[layer], False)
                out = _between_layers(out, layer, num_layers, dropout, training)
                made[layer][k] = (out, streams[layer].record_event() if cuda else None)
    outputs = [out for out, _ in made[last]]
    if cuda:
        for stream in streams[1:]:
            main.wait_stream(stream)
        _record_on(main, (*outputs, *(t for state in carried[1:] for t in _flat(state))))
    del made
    output = torch.cat(outputs)
    saved.point_into(output, outputs, dim=0)
    return output, carried


def lstm(data, batch_sizes, hx, flat_weights, has_biases, num_layers, dropout, training,
         bidirectional, proj_size=0, resets=None, zoneout=0.0):
    """A multi-layer, optionally bidirectional LSTM over a packed sequence, as torch.nn.LSTM.

    data [N, I] and batch_sizes (int64, CPU) as in a PackedSequence (a padded [T, B, I] batch is
    data = input.reshape(T * B, I), batch_sizes = [B] * T); hx = (h0 [L*D, B, P], c0 [L*D, B, H]);
    flat_weights in torch.nn.LSTM's order (its _flat_weights). resets: None, or a bool [N] (a row
    per row of data): where true, an episode starts at that row's step, in every layer: the state
    entering that step is the row's initial state (in the reverse direction, the state entering
    the step before it in time), and no gradient crosses the boundary. zoneout: the probability
    p that a unit of h, and independently of c, keeps its value at a step (zoneout_weights, drawn
    per layer and direction; in evaluation each state moves by 1 - p of its change); not with
    proj_size. Returns output [N, D*P], h_n [L*D, B, P] and c_n [L*D, B, H].
    """
    h0, c0 = hx
    groups = _layer_weights(flat_weights, num_layers, 2 if bidirectional else 1, has_biases,
                            proj_size > 0)

    def step_layer(x, batch_sizes, resets, state, weights, reverse):
        # keep_saved=False: the op's autograd keeps what a recorded call's backward needs.
        out, hy, cy, *_saved = torch.ops.fused_rnn.lstm_layer(
            x, batch_sizes, *state, *weights, reverse, keep_saved=False, resets=resets,
            zoneout=_layer_zoneout(zoneout, training, 2, x, state[1]))
        return out, (hy, cy)

    output, finals = _run_layers(step_layer, data, batch_sizes, resets, list(zip(h0, c0)), groups,
                                 num_layers, bidirectional, dropout, training)
    return output, torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals])


def gru(data, batch_sizes, hx, flat_weights, has_biases, num_layers, dropout, training,
        bidirectional, resets=None, zoneout=0.0):
    """A multi-layer, optionally bidirectional GRU over a packed sequence, as torch.nn.GRU.

    Arguments as for lstm (zoneout on h), with hx = h0 [L*D, B, H]. Returns output [N, D*H] and
    h_n [L*D, B, H].
    """
    groups = _layer_weights(flat_weights, num_layers, 2 if bidirectional else 1, has_biases, False)

    def step_layer(x, batch_sizes, resets, state, weights, reverse):
        out, hy, _workspace = torch.ops.fused_rnn.gru_layer(
            x, batch_sizes, state, *weights[:4], reverse, keep_saved=False, resets=resets,
            zoneout=_layer_zoneout(zoneout, training, 1, x, state))
        return out, hy

    output, finals = _run_layers(step_layer, data, batch_sizes, resets, list(hx), groups,
                                 num_layers, bidirectional, dropout, training)
    return output, torch.stack(finals)


def _layer_zoneout(p, training, states, x, h0):
    """A layer op's zoneout argument: weights [states, N, H] for its N rows x, H of h0 [B, H]."""
    return zoneout_weights(p, training, (states, x.shape[0], h0.shape[-1]), x)


def layernorm_lstm(data, batch_sizes, hx, flat_weights, norms, has_biases, num_layers, dropout,
                   training, bidirectional, resets=None, zoneout=0.0):
    """A multi-layer, optionally bidirectional layer-normalized LSTM over a packed sequence.

    As lstm (no projection), plus norms: per (layer, direction), in lstm's order, the six
    layer-norm parameters (ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_c_weight,
    ln_c_bias); resets and zoneout as for lstm. Returns output [N, D*H], h_n and c_n [L*D, B, H].
    """
    h0, c0 = hx
    groups = _layer_weights(flat_weights, num_layers, 2 if bidirectional else 1, has_biases, False)
    groups = [(*weights[:4], *group_norms) for weights, group_norms in zip(groups, norms)]

    def step_layer(x, batch_sizes, resets, state, weights, reverse):
        out, hy, cy, _saved, _cells = torch.ops.fused_rnn.layernorm_lstm_layer(
            x, batch_sizes, *state, *weights, reverse, keep_saved=False, resets=resets,
            zoneout=_layer_zoneout(zoneout, training, 2, x, state[1]))
        return out, (hy, cy)

    output, finals = _run_layers(step_layer, data, batch_sizes, resets, list(zip(h0, c0)), groups,
                                 num_layers, bidirectional, dropout, training)
    return output, torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals])


def layernorm_gru(data, batch_sizes, hx, flat_weights, norms, has_biases, num_layers, dropout,
                  training, bidirectional, resets=None, zoneout=0.0):
    """A multi-layer, optionally bidirectional layer-normalized GRU over a packed sequence: as
    gru, plus norms (per (layer, direction): ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias);
    resets and zoneout as for gru. Returns output [N, D*H] and h_n [L*D, B, H]."""
    groups = _layer_weights(flat_weights, num_layers, 2 if bidirectional else 1, has_biases, False)
    groups = [(*weights[:4], *group_norms) for weights, group_norms in zip(groups, norms)]

    def step_layer(x, batch_sizes, resets, state, weights, reverse):
        out, hy, _saved = torch.ops.fused_rnn.layernorm_gru_layer(
            x, batch_sizes, state, *weights, reverse, keep_saved=False, resets=resets,
            zoneout=_layer_zoneout(zoneout, training, 1, x, state))
        return out, hy

    output, finals = _run_layers(step_layer, data, batch_sizes, resets, list(hx), groups,
                                 num_layers, bidirectional, dropout, training)
    return output, torch.stack(finals)
