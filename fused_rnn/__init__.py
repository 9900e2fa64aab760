"""fused_rnn: fused LSTM and GRU kernels for PyTorch (CUDA, with a C++ CPU fallback).

Drop-in modules (LSTMCell, GRUCell), plain functions (fused_rnn.functional) and the autograd
Functions over the registered ops torch.ops.fused_rnn.*.
"""

from . import functional, ops, reference
from .modules import GRUCell, LSTMCell
from .ops import GRUCellFunction, LSTMCellFunction, build_info

__version__ = build_info()["version"]

__all__ = [
    "GRUCell",
    "GRUCellFunction",
    "LSTMCell",
    "LSTMCellFunction",
    "build_info",
    "functional",
    "ops",
    "reference",
]
