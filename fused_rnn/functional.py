"""Plain functions over tensors: one fused LSTM or GRU cell step, differentiable.

Shapes: input [B, I], h and c [B, H], w_ih [G*H, I], w_hh [G*H, H], biases [G*H], with G = 4 gates
(i, f, g, o) for the LSTM and 3 (r, z, n) for the GRU, in torch.nn's layout.
"""

import torch

from . import ops  # noqa: F401  (registers the fake implementations and autograd)

__all__ = ["gru_cell", "lstm_cell"]


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
