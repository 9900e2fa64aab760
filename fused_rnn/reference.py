"""Pure-PyTorch reference of every fused_rnn op: the executable spec.

Each function has the signature and results of the op of the same name in torch.ops.fused_rnn,
written with plain tensor operations and independent of the kernels' shared gate math, so that
tests and benchmarks can hold the kernels to it.
"""

import torch

__all__ = ["gru_cell", "gru_cell_backward", "lstm_cell", "lstm_cell_backward"]


def _linear(x, w, b):
    return x @ w.t() if b is None else x @ w.t() + b


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None):
    """input [B,I], hx, cx [B,H] -> hy, cy [B,H], gates [B,4H] (activated i, f, g, o)."""
    pre = _linear(input, w_ih, b_ih) + _linear(hx, w_hh, b_hh)
    a_i, a_f, a_g, a_o = pre.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    cy = f * cx + i * g
    hy = o * torch.tanh(cy)
    return hy, cy, torch.cat([i, f, g, o], dim=1)


def lstm_cell_backward(grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, gates, cy, output_mask):
    """Gradients (input, hx, cx, w_ih, w_hh, bias), None where output_mask is False."""
    i, f, g, o = gates.chunk(4, dim=1)
    tanh_cy = torch.tanh(cy)
    grad_c = grad_cy + grad_hy * o * (1 - tanh_cy * tanh_cy)
    grad_gates = torch.cat([
        grad_c * g * i * (1 - i),
        grad_c * cx * f * (1 - f),
        grad_c * i * (1 - g * g),
        grad_hy * tanh_cy * o * (1 - o),
    ], dim=1)
    grads = (grad_gates @ w_ih, grad_gates @ w_hh, grad_c * f, grad_gates.t() @ input,
             grad_gates.t() @ hx, grad_gates.sum(0))
    return tuple(gr if wanted else None for gr, wanted in zip(grads, output_mask))


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """input [B,I], hx [B,H] -> hy [B,H], workspace [B,4H] (r, z, n, h_n)."""
    x_r, x_z, x_n = _linear(input, w_ih, b_ih).chunk(3, dim=1)
    h_r, h_z, h_n = _linear(hx, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    hy = (1 - z) * n + z * hx
    return hy, torch.cat([r, z, n, h_n], dim=1)


def gru_cell_backward(grad_hy, input, hx, w_ih, w_hh, workspace, output_mask):
    """Gradients (input, hx, w_ih, w_hh, b_ih, b_hh), None where output_mask is False."""
    r, z, n, h_n = workspace.chunk(4, dim=1)
    grad_x_n = grad_hy * (1 - z) * (1 - n * n)
    grad_r = grad_x_n * h_n * r * (1 - r)
    grad_z = grad_hy * (hx - n) * z * (1 - z)
    grad_input_gates = torch.cat([grad_r, grad_z, grad_x_n], dim=1)
    grad_hidden_gates = torch.cat([grad_r, grad_z, grad_x_n * r], dim=1)
    grads = (grad_input_gates @ w_ih, grad_hidden_gates @ w_hh + grad_hy * z,
             grad_input_gates.t() @ input, grad_hidden_gates.t() @ hx, grad_input_gates.sum(0),
             grad_hidden_gates.sum(0))
    return tuple(gr if wanted else None for gr, wanted in zip(grads, output_mask))
