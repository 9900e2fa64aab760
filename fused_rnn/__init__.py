"""fused_rnn: fused LSTM and GRU kernels for PyTorch (CUDA, with a C++ CPU fallback).

Drop-in modules (LSTM, GRU, LSTMCell, GRUCell) and convert(), plain functions
(fused_rnn.functional) and the autograd Functions over the registered ops torch.ops.fused_rnn.*.
"""

from . import functional, ops, reference
from .modules import (GRU, LSTM, GRUCell, LayerNormGRU, LayerNormGRUCell, LayerNormLSTM,
                      LayerNormLSTMCell, LSTMCell, convert)
from .functional import use_concurrent_directions, use_pipelined_layers
from .ops import (GRUCellFunction, LSTMCellFunction, build_info, cpu_cache_bytes,
                  cpu_layer_path, cuda_layer_path, empty_cpu_cache, use_persistent_kernels)

__version__ = build_info()["version"]

__all__ = [
    "GRU",
    "GRUCell",
    "GRUCellFunction",
    "LSTM",
    "LSTMCell",
    "LSTMCellFunction",
    "LayerNormGRU",
    "LayerNormGRUCell",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "build_info",
    "convert",
    "cpu_cache_bytes",
    "cpu_layer_path",
    "cuda_layer_path",
    "empty_cpu_cache",
    "functional",
    "ops",
    "reference",
    "use_concurrent_directions",
    "use_persistent_kernels",
    "use_pipelined_layers",
]
