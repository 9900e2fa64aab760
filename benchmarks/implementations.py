"""What the suite times: the cases, and for each the implementations compared side by side.

A case is one op (a cell step or a whole layer), cell type, pass (forward, or forward+backward),
shape, dtype and device. Each implementation builds, from the same random weights and inputs, a
closure that runs the case once and returns its results (outputs, then gradients), so that the
suite can time it and check it against torch.nn in the same run.
"""

import contextlib
from dataclasses import dataclass

import torch

import fused_rnn
from fused_rnn import reference

GATES = {"lstm": 4, "gru": 3, "layernorm_lstm": 4, "layernorm_gru": 3}
TORCH_CELLS = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}
TORCH_LAYERS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
OUR_CELLS = {"lstm": fused_rnn.LSTMCell, "gru": fused_rnn.GRUCell,
             "layernorm_lstm": fused_rnn.LayerNormLSTMCell,
             "layernorm_gru": fused_rnn.LayerNormGRUCell}
OUR_LAYERS = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU,
              "layernorm_lstm": fused_rnn.LayerNormLSTM, "layernorm_gru": fused_rnn.LayerNormGRU}
# The layer-normalized cells, which torch.nn lacks: checked against their reference
# (fused_rnn.accuracy.near_truth_problem), timed against torch.nn's plain cell of their size.
LAYER_NORM_KINDS = {"layernorm_lstm": "lstm", "layernorm_gru": "gru"}
REFERENCE_CELLS = {"lstm": reference.lstm_cell, "gru": reference.gru_cell,
                   "layernorm_lstm": reference.layernorm_lstm_cell,
                   "layernorm_gru": reference.layernorm_gru_cell}


@dataclass(frozen=True)
class Case:
    op: str        # "cell" (one step) or "layer" (a whole sequence, one layer, one direction)
    kind: str      # "lstm", "gru", "layernorm_lstm" or "layernorm_gru"
    backward: bool
    steps: int     # T (1 for a cell step)
    batch: int     # B
    input_size: int
    hidden: int
    dtype: torch.dtype
    device: str
    # A layer case's module and input beyond one layer, one direction, a padded batch: its
    # layers, both directions, the sequences packed (lengths uniform in [T/2, T], `lengths`),
    # and whether float32 may take TF32 (torch.backends.cudnn.allow_tf32, for both sides).
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    tf32: bool = True

    @property
    def variant(self):
        """The case's settings beyond the default ones, in words ("" where none)."""
        return " ".join(([f"{self.layers} layers"] if self.layers > 1 else []) +
                        (["bidirectional"] if self.bidirectional else []) +
                        (["packed"] if self.packed else []) + ([] if self.tf32 else ["TF32 off"]))

    @property
    def name(self):
        dtype = str(self.dtype).replace("torch.", "")
        shape = f"T={self.steps} B={self.batch} I={self.input_size} H={self.hidden}"
        op = f"{self.op} {self.variant}" if self.variant else self.op
        return f"{self.kind} {op} {'fwd+bwd' if self.backward else 'fwd'} {shape} {dtype}"

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    def lengths(self):
        """A packed case's sequence lengths, uniform in [T/2, T] (the same on every call)."""
        generator = torch.Generator().manual_seed(0)
        return torch.randint(self.steps // 2, self.steps + 1, (self.batch,), generator=generator)

    @property
    def flops(self):
        """Matrix-product FLOPs: 2 * tokens * (I + H) * G * H forward per layer and direction
        (a layer above the first takes the D H outputs below it); the backward twice that."""
        inputs = [self.input_size] + [self.directions * self.hidden] * (self.layers - 1)
        forward = sum(2 * self.tokens * (i + self.hidden) * GATES[self.kind] * self.hidden
                      for i in inputs) * self.directions
        return forward * (3 if self.backward else 1)

    @property
    def tokens(self):
        return int(self.lengths().sum()) if self.packed else self.steps * self.batch

    @property
    def plain_kind(self):
        """The torch.nn cell of the case: its own, or the one a layer-normalized cell extends."""
        return LAYER_NORM_KINDS.get(self.kind, self.kind)

    @property
    def has_cell_state(self):
        return self.plain_kind == "lstm"


def _weights_module(case):
    """The module whose weights the case uses, initialised from a fixed seed (in float32, then
    cast, so every dtype of a case holds the same weights up to rounding): torch.nn's, or for the
    layer-normalized kinds ours, with the norms' parameters drawn away from 1 and 0."""
    torch.manual_seed(0)
    if case.kind in LAYER_NORM_KINDS:
        cls = OUR_CELLS[case.kind] if case.op == "cell" else OUR_LAYERS[case.kind]
    else:
        cls = TORCH_CELLS[case.kind] if case.op == "cell" else TORCH_LAYERS[case.kind]
    module = cls(case.input_size, case.hidden, device=case.device, dtype=torch.float32,
                 **_layer_settings(case))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("layernorm"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "_weight" in name else 0.0))
    return module.to(case.dtype)


def _layer_settings(case):
    """A layer module's constructor arguments beyond the sizes (none for a cell)."""
    if case.op == "cell":
        return {}
    return dict(num_layers=case.layers, bidirectional=case.bidirectional)


def make_inputs(case, seed=1):
    """Random input and initial state(s), never zeros."""
    gen = torch.Generator(device=case.device).manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=case.device, dtype=case.dtype)

    lead = (case.batch,) if case.op == "cell" else (case.layers * case.directions, case.batch)
    x = rand(case.batch, case.input_size) if case.op == "cell" else \
        rand(case.steps, case.batch, case.input_size)
    states = [rand(*lead, case.hidden) for _ in range(2 if case.has_cell_state else 1)]
    return x, states


@contextlib.contextmanager
def _tf32(allowed):
    """torch.backends.cudnn.allow_tf32 as `allowed` (torch.nn's cuDNN and fused_rnn follow it)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def _runner(case, forward, params):
    """A closure running forward(x, states) on given inputs; with backward, it also returns the
    gradients of the input, the states and `params` for a fixed random output weighting."""
    def run(x, states):
        with _tf32(case.tf32):
            if not case.backward:
                with torch.no_grad():
                    return list(forward(x, states))
            x = x.detach().requires_grad_()
            states = [s.detach().requires_grad_() for s in states]
            outs = list(forward(x, states))
            loss = sum((o * (1.0 + 0.01 * k)).sum() for k, o in enumerate(outs))
            return [o.detach() for o in outs] + list(
                torch.autograd.grad(loss, [x, *states, *params]))
    return run


def _state_arg(case, states):
    return tuple(states) if case.has_cell_state else states[0]


def _module_runner(case, module):
    """The runner of a torch.nn-style module: a cell's (h', c'), or a layer's output (a packed
    case's packed values) and states."""
    lengths = case.lengths() if case.packed else None

    def forward(x, states):
        if lengths is not None:
            x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        result = module(x, _state_arg(case, states))
        if case.op == "cell":
            return result if isinstance(result, tuple) else (result,)
        output, hidden = result
        if lengths is not None:
            output = output.data
        return (output, *(hidden if isinstance(hidden, tuple) else (hidden,)))
    return _runner(case, forward, list(module.parameters()))


def build_torch_nn(case):
    """torch.nn's module of the case (for a layer-normalized kind, its plain cell or layer of the
    same size, with weights of its own: a time to compare with, not a result)."""
    if case.kind in LAYER_NORM_KINDS:
        torch.manual_seed(0)
        kind = case.plain_kind
        cls = TORCH_CELLS[kind] if case.op == "cell" else TORCH_LAYERS[kind]
        return _module_runner(case, cls(case.input_size, case.hidden, device=case.device,
                                        dtype=case.dtype, **_layer_settings(case)))
    return _module_runner(case, _weights_module(case))


def build_truth(case):
    """The case's math in float64 on its exact weights (rounded to its dtype): torch.nn, or for a
    layer-normalized kind its reference; the truth that results are measured against. Takes
    float64 inputs."""
    if case.kind in LAYER_NORM_KINDS:
        return build_reference(case, torch.float64)
    return _module_runner(case, _weights_module(case).double())


def build_fused_rnn(case):
    cls = OUR_CELLS[case.kind] if case.op == "cell" else OUR_LAYERS[case.kind]
    module = cls(case.input_size, case.hidden, device=case.device, dtype=case.dtype,
                 **_layer_settings(case))
    module.load_state_dict(_weights_module(case).state_dict())
    return _module_runner(case, module)


def build_fused_rnn_persistent(case, barrier="flags", cluster_split=None):
    """fused_rnn's layer with the persistent whole-sequence CUDA kernels (forward and backward)
    switched on for its runs; barrier and cluster_split: the tensor-core kernels'."""
    run = build_fused_rnn(case)

    def run_persistent(x, states):
        fused_rnn.use_persistent_kernels(True, barrier=barrier, cluster_split=cluster_split)
        try:
            return run(x, states)
        finally:
            fused_rnn.use_persistent_kernels(None)
    return run_persistent


def build_fused_rnn_concurrent(case):
    """fused_rnn's layer with the two directions of each bidirectional layer run concurrently
    (use_concurrent_directions, CUDA) for its runs."""
    run = build_fused_rnn(case)

    def run_concurrent(x, states):
        fused_rnn.use_concurrent_directions(True)
        try:
            return run(x, states)
        finally:
            fused_rnn.use_concurrent_directions(False)
    return run_concurrent


def build_fused_rnn_pipelined(case, chunks=4):
    """fused_rnn's stack of layers run as a pipeline over `chunks` runs of steps
    (use_pipelined_layers, CUDA) for its runs."""
    run = build_fused_rnn(case)

    def run_pipelined(x, states):
        fused_rnn.use_pipelined_layers(True, chunks=chunks)
        try:
            return run(x, states)
        finally:
            fused_rnn.use_pipelined_layers(False)
    return run_pipelined


def _cell_weights(case, dtype=None):
    """(w_ih, w_hh, b_ih, b_hh, then a layer-normalized cell's norms) of the case's module, as
    leaf tensors (in `dtype` where given)."""
    module = _weights_module(case)
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    if case.kind in LAYER_NORM_KINDS:
        norms = ("ih", "hh", "c") if case.has_cell_state else ("ih", "hh")
        names += [f"layernorm_{n}_{part}" for n in norms for part in ("weight", "bias")]
    if case.op == "layer":
        names = [n + "_l0" for n in names]
    return [getattr(module, n).detach().to(dtype or case.dtype).clone().requires_grad_()
            for n in names]


def _loop(case, step, weights):
    """A Python loop over time steps of `step(x_t, states, weights) -> states`."""
    def forward(x, states):
        states = [s[0] for s in states]  # drop the layer dimension
        outputs = []
        for x_t in x:
            states = step(x_t, states, weights)
            outputs.append(states[0])
        return (torch.stack(outputs), *(s.unsqueeze(0) for s in states))
    return forward


def build_nn_cell_loop(case):
    """A layer as a Python loop over torch.nn's cell functions (no cuDNN/oneDNN layer kernel)."""
    weights = _cell_weights(case)

    def step(x_t, states, w):
        if case.kind == "lstm":
            return list(torch.lstm_cell(x_t, tuple(states), *w))
        return [torch.gru_cell(x_t, states[0], *w)]

    return _runner(case, _loop(case, step, weights), weights)


def build_reference(case, dtype=None):
    """fused_rnn.reference: the pure-PyTorch spec (per step for a layer), in `dtype` where given
    (the truth of a layer-normalized kind)."""
    weights = _cell_weights(case, dtype)
    cell = REFERENCE_CELLS[case.kind]

    def step(x_t, states, w):
        out = cell(x_t, *states, *w)
        if case.kind in LAYER_NORM_KINDS:
            return list(out) if case.has_cell_state else [out]
        return list(out[:2]) if case.has_cell_state else [out[0]]

    if case.op == "layer":
        return _runner(case, _loop(case, step, weights), weights)
    return _runner(case, lambda x, states: step(x, states, weights), weights)


def _python_loop_dtype(case):
    """The Python-loop baselines run on CUDA in float32 only: their time there is kernel-launch
    overhead, the same in every dtype, and it would take most of the GPU run's time."""
    return case.device == "cpu" or case.dtype == torch.float32


def _plain(case):
    return case.kind not in LAYER_NORM_KINDS


def _one_padded_layer(case):
    """The Python loops run one layer, one direction, over a padded batch."""
    return case.layers == 1 and not case.bidirectional and not case.packed


def _pipelines(case):
    """use_pipelined_layers applies: a unidirectional stack over a padded batch, on CUDA."""
    return (case.op == "layer" and case.device == "cuda" and case.layers > 1
            and not case.bidirectional and not case.packed)


# name -> (builder, applies to the case)
IMPLEMENTATIONS = {
    "fused_rnn": (build_fused_rnn, lambda case: True),
    "fused persistent": (build_fused_rnn_persistent,
                         lambda case: case.op == "layer" and case.device == "cuda" and _plain(case)),
    # The tensor-core kernel's other barrier (float16, bfloat16), measured beside the default.
    "fused persistent grid.sync": (
        lambda case: build_fused_rnn_persistent(case, barrier="grid"),
        lambda case: case.op == "layer" and case.device == "cuda" and _plain(case)
        and case.dtype in (torch.float16, torch.bfloat16)),
    # The forward's h exchanged as tagged words (NOTES entry 65), every dtype the kernels take.
    "fused persistent tagged": (
        lambda case: build_fused_rnn_persistent(case, barrier="tagged"),
        lambda case: case.op == "layer" and case.device == "cuda" and _plain(case)),
    # Each group of 16 units on a cluster of two SMs where one SM would do (float16, bfloat16).
    "fused persistent clusters": (
        lambda case: build_fused_rnn_persistent(case, cluster_split=2),
        lambda case: case.op == "layer" and case.device == "cuda" and _plain(case)
        and case.dtype in (torch.float16, torch.bfloat16)),
    # The reverse direction on a second stream (NOTES entry 69).
    "fused concurrent directions": (
        build_fused_rnn_concurrent,
        lambda case: case.op == "layer" and case.device == "cuda" and case.bidirectional),
    # A unidirectional stack's layers overlapped over 4 chunks of steps (NOTES entry 73), and
    # over 8: fuller overlap ((K + L - 1) / K layers' time) against more launches and smaller
    # input products, to choose a default's K.
    "fused pipelined layers": (build_fused_rnn_pipelined, _pipelines),
    "fused pipelined layers, 8 chunks": (
        lambda case: build_fused_rnn_pipelined(case, chunks=8), _pipelines),
    "torch.nn": (build_torch_nn, lambda case: True),
    "nn cell loop": (build_nn_cell_loop,
                     lambda case: case.op == "layer" and _python_loop_dtype(case) and _plain(case)
                     and _one_padded_layer(case)),
    "reference": (build_reference, lambda case: (_python_loop_dtype(case) or not _plain(case))
                  and _one_padded_layer(case)),
}
