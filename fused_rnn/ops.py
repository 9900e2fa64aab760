"""Typed wrappers over torch.ops.fused_rnn.*: fake (meta) implementations, autograd Functions,
build info.

The C++ library (fused_rnn._C) defines the ops, their CPU/CUDA kernels and their autograd (in C++,
so a call pays no Python on its way). Here each op gets a fake implementation (shapes only, for
torch.compile and meta tensors), and LSTMCellFunction and GRUCellFunction expose the cells'
forward/backward pairs as torch.autograd.Function classes.
"""

import torch

from . import _C

__all__ = ["GRUCellFunction", "LSTMCellFunction", "build_info", "cpu_cache_bytes",
           "cpu_layer_path", "cuda_layer_path", "empty_cpu_cache", "use_persistent_kernels"]

_LSTM_GATES = 4
_GRU_SAVED_PER_UNIT = 4  # r, z, n and h_n per hidden unit


def build_info() -> dict:
    """How the extension was built and which CPU kernels run here.

    Keys: version, torch_version (the torch it was built against), cuda (CUDA kernels compiled
    in), cuda_archs, cpu_isas (instruction sets the CPU kernels are built for) and cpu_isa (the one
    chosen for this CPU, as ATen chooses; ATEN_CPU_CAPABILITY can lower it).
    """
    info = dict(_C.build_info())
    for key in ("cuda_archs", "cpu_isas"):
        info[key] = [a for a in info[key].split(";") if a]
    return info


def cpu_cache_bytes() -> int:
    """Bytes of freed CPU memory fused_rnn holds for reuse (at most 512 MB).

    The CPU backward writes its products' fresh outputs of 256 KB and more (above all the weight
    gradients, new tensors every call), and the layers their saved values and gate gradients,
    into blocks freed by earlier ones of the same size, so their pages need not be mapped and
    faulted in again (benchmarks/NOTES.md entries 37 and 59). Like
    torch.cuda.memory_reserved(), this counts memory held but not in use.
    """
    return _C.cpu_cache_bytes()


def empty_cpu_cache() -> None:
    """Returns the freed CPU blocks fused_rnn holds (cpu_cache_bytes()) to the system."""
    _C.empty_cpu_cache()


_GATES = {"LSTM": 4, "GRU": 3}


def use_persistent_kernels(enabled: bool | None = True, barrier: str = "flags",
                           cluster_split: int | None = None) -> None:
    """Chooses when the persistent whole-sequence CUDA layer kernels run.

    enabled: True, wherever a layer's shape suits them (cuda_layer_path): its forward and
    backward time loops in one launch each, on the tensor-core kernels (float16, bfloat16,
    float32 as TF32 where torch.backends.cudnn.allow_tf32; not yet measured, benchmarks/NOTES.md
    entries 55-58) or else the SIMT forward; False, never; None (the default), the path measured
    fastest near the layer's shape, from the table of measured paths (csrc/measured_paths.h,
    written by benchmarks/path_table.py from a sweep on the GPU; NOTES entry 62). So far it
    holds the SIMT forward at batch 1 (the LSTM at hidden 128-1024, the GRU at 128-512, not
    float64: 0.05-0.27x of the step-wise time, and from H=256 0.21-0.42x of cuDNN's; NOTES
    entries 15 and 61); every other layer runs step by step.

    barrier: how the tensor-core kernels' blocks wait for each step's h: "flags" (each group of
    warps for the blocks whose h it reads), "grid" (grid.sync(): every block for the slowest) or
    "tagged" (the forward's groups poll h itself, each value written with its step's tag in one
    32-bit word: no flags, no fences; NOTES entry 65; the backward waits at flags).
    cluster_split: blocks sharing each 16 hidden units' weights in the tensor-core kernels: None
    takes one block where the weights fit an SM's registers and a thread-block cluster of 2
    (sm_90) where they do not; 1 or 2 asks for that (a shape it does not suit runs step-wise).
    """
    if not (enabled is None or isinstance(enabled, bool)):
        raise ValueError("use_persistent_kernels: expected enabled True, False or None, got "
                         f"{enabled!r}")
    if barrier not in ("flags", "grid", "tagged"):
        raise ValueError("use_persistent_kernels: expected barrier 'flags', 'grid' or 'tagged', "
                         f"got {barrier!r}")
    if cluster_split is not None and (type(cluster_split) is not int
                                      or cluster_split not in (1, 2)):
        raise ValueError("use_persistent_kernels: expected cluster_split None, 1 or 2, got "
                         f"{cluster_split!r}")
    _C.set_persistent_kernels({True: "on", False: "off", None: "measured"}[enabled])
    _C.set_persistent_barrier(barrier)
    _C.set_persistent_cluster_split(cluster_split or 0)


def _check_layer_path_args(fn: str, mode: str, dtype: torch.dtype, **sizes) -> None:
    """The arguments cpu_layer_path and cuda_layer_path share: mode, positive int sizes, dtype."""
    if mode not in _GATES:
        raise ValueError(f"{fn}: expected mode 'LSTM' or 'GRU', got {mode!r}")
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{fn}: expected {name} to be a positive int, got {value!r}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"{fn}: expected a floating dtype fused_rnn supports, got {dtype}")


def cpu_layer_path(mode: str, steps: int, batch: int, input_size: int, hidden_size: int,
                   proj_size: int = 0, dtype: torch.dtype = torch.float32,
                   training: bool = False) -> dict:
    """Which paths a fused_rnn LSTM or GRU layer (one direction) takes on the CPU.

    For a padded batch: `steps` steps of `batch` rows (packed sequences of varying lengths run
    step by step). training: the forward saves what the backward needs, as under autograd.
    Returns {"forward": ..., "backward": ...}, each the path in words, as the CPU's choices
    (csrc/cpu/path_choice.h) take it at ATen's present thread count.
    """
    _check_layer_path_args("cpu_layer_path", mode, dtype, steps=steps, batch=batch,
                           input_size=input_size, hidden_size=hidden_size)
    if not isinstance(proj_size, int) or proj_size < 0 or (proj_size and mode != "LSTM"):
        raise ValueError("cpu_layer_path: expected proj_size to be an int >= 0 (an LSTM's only), "
                         f"got {proj_size!r} for {mode}")
    return _C.cpu_layer_path(_GATES[mode], steps, batch, input_size, hidden_size, proj_size,
                             dtype.itemsize, bool(training))


def cuda_layer_path(mode: str, batch: int, hidden_size: int, dtype: torch.dtype = torch.float32,
                    device=None, backward: bool = False) -> str:
    """Which forward (with backward=True: backward) path a fused_rnn LSTM or GRU layer takes on
    CUDA.

    For a padded batch (every step runs `batch` rows) without projection; packed sequences of
    several lengths take the tensor-core kernels where their largest batch would (the SIMT one
    not), LSTM projections always run step-wise. Returns "persistent (tensor cores)",
    "persistent (tensor cores, clusters of 2)" (each 16 hidden units' weights split over two
    SMs), "persistent (SIMT; no tensor cores: " and why (forward only), or "step-wise: " and why,
    as use_persistent_kernels last chose; by default each names the measured point behind the
    choice, e.g. "persistent (SIMT; measured fastest at batch 1, hidden 512)".
    float32's choice follows torch.backends.cudnn.allow_tf32 as it is when asked.
    """
    _check_layer_path_args("cuda_layer_path", mode, dtype, batch=batch, hidden_size=hidden_size)
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        raise ValueError(f"cuda_layer_path: expected a CUDA device, got {device}")
    if not torch.cuda.is_available():
        return "step-wise: no CUDA device"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"cuda_layer_path: expected a CUDA device index below "
                         f"{torch.cuda.device_count()}, got {index}")
    acc_bytes = 8 if dtype == torch.float64 else 4
    return _C.cuda_layer_path(_GATES[mode], batch, hidden_size, dtype.itemsize, acc_bytes, index,
                              bool(backward))


def _check_one_device(op: str, **tensors) -> None:
    """Mixed devices fail here for meta tensors, as they fail in the device kernels."""
    device = tensors["input"].device
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise RuntimeError(f"{op}: expected {name} on {device} (the device of input), "
                               f"got {t.device}")


# ---------------------------------------------------------------------------------------------
# Fake implementations: output shapes and devices only.

@torch.library.register_fake("fused_rnn::lstm_cell")
def _lstm_cell_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    _check_one_device("fused_rnn.lstm_cell", input=input, hx=hx, cx=cx, w_ih=w_ih, w_hh=w_hh,
                      b_ih=b_ih, b_hh=b_hh)
    batch, hidden = input.shape[0], w_hh.shape[1]
    return (input.new_empty(batch, hidden), input.new_empty(batch, hidden),
            input.new_empty(batch, _LSTM_GATES * hidden))


@torch.library.register_fake("fused_rnn::gru_cell")
def _gru_cell_fake(input, hx, w_ih, w_hh, b_ih, b_hh):
    _check_one_device("fused_rnn.gru_cell", input=input, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                      b_hh=b_hh)
    batch, hidden = input.shape[0], w_hh.shape[1]
    return input.new_empty(batch, hidden), input.new_empty(batch, _GRU_SAVED_PER_UNIT * hidden)


def _empty_like_if(wanted: bool, like: torch.Tensor, shape=None):
    if not wanted:
        return None
    return like.new_empty(like.shape if shape is None else shape)


@torch.library.register_fake("fused_rnn::lstm_cell_backward")
def _lstm_cell_backward_fake(grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, gates, cy, output_mask):
    return (_empty_like_if(output_mask[0], input), _empty_like_if(output_mask[1], hx),
            _empty_like_if(output_mask[2], cx), _empty_like_if(output_mask[3], w_ih),
            _empty_like_if(output_mask[4], w_hh),
            _empty_like_if(output_mask[5], w_hh, (w_hh.shape[0],)))


@torch.library.register_fake("fused_rnn::gru_cell_backward")
def _gru_cell_backward_fake(grad_hy, input, hx, w_ih, w_hh, workspace, output_mask):
    return (_empty_like_if(output_mask[0], input), _empty_like_if(output_mask[1], hx),
            _empty_like_if(output_mask[2], w_ih), _empty_like_if(output_mask[3], w_hh),
            _empty_like_if(output_mask[4], w_hh, (w_hh.shape[0],)),
            _empty_like_if(output_mask[5], w_hh, (w_hh.shape[0],)))


@torch.library.register_fake("fused_rnn::bernoulli_weights")
def _bernoulli_weights_fake(seed, size, keep, dtype):
    return seed.new_empty(size, dtype=dtype)


@torch.library.register_fake("fused_rnn::lstm_layer")
def _lstm_layer_fake(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                     keep_saved=True, resets=None, zoneout=None):
    _check_one_device("fused_rnn.lstm_layer", input=input, hx=hx, cx=cx, w_ih=w_ih, w_hh=w_hh,
                      b_ih=b_ih, b_hh=b_hh, w_hr=w_hr, resets=resets, zoneout=zoneout)
    rows, batch = input.shape[0], hx.shape[0]
    hidden = w_hh.shape[0] // _LSTM_GATES
    state = w_hh.shape[1]
    saved = rows if keep_saved else 0
    return (input.new_empty(rows, state), input.new_empty(batch, state),
            input.new_empty(batch, hidden), input.new_empty(saved, _LSTM_GATES * hidden),
            input.new_empty(saved, hidden),
            input.new_empty(saved if w_hr is not None else 0, hidden))


@torch.library.register_fake("fused_rnn::gru_layer")
def _gru_layer_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, keep_saved=True,
                    resets=None, zoneout=None):
    _check_one_device("fused_rnn.gru_layer", input=input, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                      b_hh=b_hh, resets=resets, zoneout=zoneout)
    rows, batch, hidden = input.shape[0], hx.shape[0], w_hh.shape[1]
    return (input.new_empty(rows, hidden), input.new_empty(batch, hidden),
            input.new_empty(rows if keep_saved else 0, _GRU_SAVED_PER_UNIT * hidden))


@torch.library.register_fake("fused_rnn::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx, w_ih,
                              w_hh, w_hr, output, gates, cell_states, hidden_pre_proj, reverse,
                              output_mask, resets=None, zoneout=None):
    return (_empty_like_if(output_mask[0], input), _empty_like_if(output_mask[1], hx),
            _empty_like_if(output_mask[2], cx), _empty_like_if(output_mask[3], w_ih),
            _empty_like_if(output_mask[4], w_hh),
            _empty_like_if(output_mask[5], w_hh, (w_hh.shape[0],)),
            _empty_like_if(output_mask[6] and w_hr is not None, w_hh, w_hr.shape
                           if w_hr is not None else None))


@torch.library.register_fake("fused_rnn::gru_layer_backward")
def _gru_layer_backward_fake(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output,
                             workspace, reverse, output_mask, resets=None, zoneout=None):
    return _gru_cell_backward_fake(grad_hy, input, hx, w_ih, w_hh, workspace, output_mask)


# The layer-normalized cells' saved rows: values per unit and per row (kLayerNorm*SavedPerUnit,
# kLayerNorm*SavedPerRow in csrc/layernorm_cell_math.h), in the op-math dtype.
_LAYERNORM_SAVED = {"lstm": (13, 3), "gru": (10, 2)}


def _layernorm_saved_columns(kind, hidden):
    per_unit, per_row = _LAYERNORM_SAVED[kind]
    return per_unit * hidden + per_row


def _saved_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.register_fake("fused_rnn::layernorm_lstm_cell")
def _layernorm_lstm_cell_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias,
                              ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias):
    _check_one_device("fused_rnn.layernorm_lstm_cell", input=input, hx=hx, cx=cx, w_ih=w_ih,
                      w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, ln_ih_weight=ln_ih_weight,
                      ln_ih_bias=ln_ih_bias, ln_hh_weight=ln_hh_weight, ln_hh_bias=ln_hh_bias,
                      ln_c_weight=ln_c_weight, ln_c_bias=ln_c_bias)
    batch, hidden = input.shape[0], w_hh.shape[1]
    return (input.new_empty(batch, hidden), input.new_empty(batch, hidden),
            input.new_empty(batch, _layernorm_saved_columns("lstm", hidden),
                            dtype=_saved_dtype(input.dtype)))


@torch.library.register_fake("fused_rnn::layernorm_lstm_cell_backward")
def _layernorm_lstm_cell_backward_fake(grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, ln_ih_weight,
                                       ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_c_weight,
                                       ln_c_bias, saved, cy, output_mask):
    likes = (input, hx, cx, w_ih, w_hh, ln_ih_weight, ln_ih_weight, ln_ih_bias, ln_hh_weight,
             ln_hh_bias, ln_c_weight, ln_c_bias)
    return tuple(_empty_like_if(wanted, like) for wanted, like in zip(output_mask, likes))


@torch.library.register_fake("fused_rnn::layernorm_gru_cell")
def _layernorm_gru_cell_fake(input, hx, w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias,
                             ln_hh_weight, ln_hh_bias):
    _check_one_device("fused_rnn.layernorm_gru_cell", input=input, hx=hx, w_ih=w_ih, w_hh=w_hh,
                      b_ih=b_ih, b_hh=b_hh, ln_ih_weight=ln_ih_weight, ln_ih_bias=ln_ih_bias,
                      ln_hh_weight=ln_hh_weight, ln_hh_bias=ln_hh_bias)
    batch, hidden = input.shape[0], w_hh.shape[1]
    return (input.new_empty(batch, hidden),
            input.new_empty(batch, _layernorm_saved_columns("gru", hidden),
                            dtype=_saved_dtype(input.dtype)))


@torch.library.register_fake("fused_rnn::layernorm_gru_cell_backward")
def _layernorm_gru_cell_backward_fake(grad_hy, input, hx, w_ih, w_hh, ln_ih_weight, ln_ih_bias,
                                      ln_hh_weight, ln_hh_bias, saved, output_mask):
    likes = (input, hx, w_ih, w_hh, ln_ih_weight, ln_ih_weight, ln_ih_weight, ln_ih_bias,
             ln_hh_weight, ln_hh_bias)
    return tuple(_empty_like_if(wanted, like) for wanted, like in zip(output_mask, likes))


@torch.library.register_fake("fused_rnn::layernorm_lstm_layer")
def _layernorm_lstm_layer_fake(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, ln_ih_weight,
                               ln_ih_bias, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias,
                               reverse, keep_saved=True, resets=None, zoneout=None):
    _check_one_device("fused_rnn.layernorm_lstm_layer", input=input, hx=hx, cx=cx, w_ih=w_ih,
                      w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, ln_ih_weight=ln_ih_weight,
                      ln_ih_bias=ln_ih_bias, ln_hh_weight=ln_hh_weight, ln_hh_bias=ln_hh_bias,
                      ln_c_weight=ln_c_weight, ln_c_bias=ln_c_bias, resets=resets, zoneout=zoneout)
    rows, batch, hidden = input.shape[0], hx.shape[0], w_hh.shape[1]
    saved = rows if keep_saved else 0
    return (input.new_empty(rows, hidden), input.new_empty(batch, hidden),
            input.new_empty(batch, hidden),
            input.new_empty(saved, _layernorm_saved_columns("lstm", hidden),
                            dtype=_saved_dtype(input.dtype)),
            input.new_empty(saved, hidden))


@torch.library.register_fake("fused_rnn::layernorm_lstm_layer_backward")
def _layernorm_lstm_layer_backward_fake(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx,
                                        w_ih, w_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight,
                                        ln_hh_bias, ln_c_weight, ln_c_bias, output, saved,
                                        cell_states, reverse, output_mask, resets=None,
                                        zoneout=None):
    return _layernorm_lstm_cell_backward_fake(grad_hy, grad_cy, input, hx, cx, w_ih, w_hh,
                                              ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias,
                                              ln_c_weight, ln_c_bias, saved, None, output_mask)


@torch.library.register_fake("fused_rnn::layernorm_gru_layer")
def _layernorm_gru_layer_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, ln_ih_weight,
                              ln_ih_bias, ln_hh_weight, ln_hh_bias, reverse, keep_saved=True,
                              resets=None, zoneout=None):
    _check_one_device("fused_rnn.layernorm_gru_layer", input=input, hx=hx, w_ih=w_ih, w_hh=w_hh,
                      b_ih=b_ih, b_hh=b_hh, ln_ih_weight=ln_ih_weight, ln_ih_bias=ln_ih_bias,
                      ln_hh_weight=ln_hh_weight, ln_hh_bias=ln_hh_bias, resets=resets,
                      zoneout=zoneout)
    rows, batch, hidden = input.shape[0], hx.shape[0], w_hh.shape[1]
    return (input.new_empty(rows, hidden), input.new_empty(batch, hidden),
            input.new_empty(rows if keep_saved else 0, _layernorm_saved_columns("gru", hidden),
                            dtype=_saved_dtype(input.dtype)))


@torch.library.register_fake("fused_rnn::layernorm_gru_layer_backward")
def _layernorm_gru_layer_backward_fake(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh,
                                       ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias, output,
                                       saved, reverse, output_mask, resets=None, zoneout=None):
    return _layernorm_gru_cell_backward_fake(grad_hy, input, hx, w_ih, w_hh, ln_ih_weight,
                                             ln_ih_bias, ln_hh_weight, ln_hh_bias, saved,
                                             output_mask)


# The layer-normalized cells' autograd, registered here (the plain cells' and every layer's is in
# C++, csrc/autograd.cpp): the backward op computes only what needs_input_grad asks for. Their
# backward is not itself differentiable yet (it has no composite form): a backward asked for its
# own graph fails at once, saying so.
def _no_double_backward(op):
    if torch.is_grad_enabled():
        raise NotImplementedError(
            f"fused_rnn.{op}: double backward (a backward with create_graph=True, as "
            f"torch.func's grad and vjp run) is not supported yet by the layer-normalized cells "
            f"and layers")

def _layernorm_lstm_setup_context(ctx, inputs, output):
    input, hx, cx, w_ih, w_hh, _b_ih, _b_hh, *norms = inputs
    _hy, cy, saved = output
    ctx.save_for_backward(input, hx, cx, w_ih, w_hh, *norms, saved, cy)
    ctx.mark_non_differentiable(saved)
    ctx.set_materialize_grads(False)


def _lstm_mask(need):
    """needs_input_grad of (.., w_hh, b_ih, b_hh, norms...) as the backward ops' output_mask, whose
    one bias gradient serves b_ih and b_hh; and the results back in the inputs' order."""
    return [*need[:5], need[5] or need[6], *need[7:]]


def _lstm_grads(need, grads):
    return (*grads[:5], grads[5] if need[5] else None, grads[5] if need[6] else None,
            *grads[6:])


def _layernorm_lstm_backward(ctx, grad_hy, grad_cy, _grad_saved):
    _no_double_backward("layernorm_lstm_cell")
    input, hx, cx, w_ih, w_hh, *norms, saved, cy = ctx.saved_tensors
    need = ctx.needs_input_grad
    grads = torch.ops.fused_rnn.layernorm_lstm_cell_backward(
        _or_zeros(grad_hy, hx), _or_zeros(grad_cy, cx), input, hx, cx, w_ih, w_hh, *norms, saved,
        cy, _lstm_mask(need))
    return _lstm_grads(need, grads)


def _layernorm_gru_setup_context(ctx, inputs, output):
    input, hx, w_ih, w_hh, _b_ih, _b_hh, *norms = inputs
    _hy, saved = output
    ctx.save_for_backward(input, hx, w_ih, w_hh, *norms, saved)
    ctx.mark_non_differentiable(saved)
    ctx.set_materialize_grads(False)


def _layernorm_gru_backward(ctx, grad_hy, _grad_saved):
    _no_double_backward("layernorm_gru_cell")
    input, hx, w_ih, w_hh, *norms, saved = ctx.saved_tensors
    return tuple(torch.ops.fused_rnn.layernorm_gru_cell_backward(
        _or_zeros(grad_hy, hx), input, hx, w_ih, w_hh, *norms, saved,
        list(ctx.needs_input_grad)))


torch.library.register_autograd("fused_rnn::layernorm_lstm_cell", _layernorm_lstm_backward,
                                setup_context=_layernorm_lstm_setup_context)
torch.library.register_autograd("fused_rnn::layernorm_gru_cell", _layernorm_gru_backward,
                                setup_context=_layernorm_gru_setup_context)


# ---------------------------------------------------------------------------------------------
# The ops themselves are differentiable through their autograd kernels in C++ (csrc/autograd.cpp).
# The same forward/backward pairs as torch.autograd.Function classes, for code that wants one:
# their backward asks the backward op only for what is needed.

# As in C++: no zero gradient is made for the saved activations; the backward op gets zeros only
# for the outputs a loss did not reach.
def _or_zeros(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def _lstm_setup_context(ctx, inputs, output):
    input, hx, cx, w_ih, w_hh, _b_ih, _b_hh = inputs
    _hy, cy, gates = output
    ctx.save_for_backward(input, hx, cx, w_ih, w_hh, gates, cy)
    ctx.mark_non_differentiable(gates)
    ctx.set_materialize_grads(False)


def _lstm_backward(ctx, grad_hy, grad_cy, _grad_gates):
    input, hx, cx, w_ih, w_hh, gates, cy = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2], need[3], need[4], need[5] or need[6]]
    grads = torch.ops.fused_rnn.lstm_cell_backward(_or_zeros(grad_hy, hx), _or_zeros(grad_cy, cx),
                                                   input, hx, cx, w_ih, w_hh, gates, cy, mask)
    grad_bias = grads[5]
    return (*grads[:5], grad_bias if need[5] else None, grad_bias if need[6] else None)


def _gru_setup_context(ctx, inputs, output):
    input, hx, w_ih, w_hh, _b_ih, _b_hh = inputs
    _hy, workspace = output
    ctx.save_for_backward(input, hx, w_ih, w_hh, workspace)
    ctx.mark_non_differentiable(workspace)
    ctx.set_materialize_grads(False)


def _gru_backward(ctx, grad_hy, _grad_workspace):
    input, hx, w_ih, w_hh, workspace = ctx.saved_tensors
    mask = list(ctx.needs_input_grad)
    return tuple(torch.ops.fused_rnn.gru_cell_backward(_or_zeros(grad_hy, hx), input, hx, w_ih,
                                                       w_hh, workspace, mask))


class LSTMCellFunction(torch.autograd.Function):
    """One LSTM step as an autograd Function over the registered ops.

    apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh) -> (hy, cy, gates); gates is the saved
    activation workspace and is not differentiable.
    """

    @staticmethod
    def forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
        return torch.ops.fused_rnn.lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh)

    setup_context = staticmethod(_lstm_setup_context)
    backward = staticmethod(_lstm_backward)


class GRUCellFunction(torch.autograd.Function):
    """One GRU step as an autograd Function over the registered ops.

    apply(input, hx, w_ih, w_hh, b_ih, b_hh) -> (hy, workspace); workspace is not differentiable.
    """

    @staticmethod
    def forward(input, hx, w_ih, w_hh, b_ih, b_hh):
        return torch.ops.fused_rnn.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)

    setup_context = staticmethod(_gru_setup_context)
    backward = staticmethod(_gru_backward)
