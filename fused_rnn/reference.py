"""Pure-PyTorch reference of every fused_rnn op: the executable spec.

Each function has the signature and results of the op of the same name in torch.ops.fused_rnn,
written with plain tensor operations and independent of the kernels' shared gate math, so that
tests and benchmarks can hold the kernels to it.
"""

import torch

__all__ = ["gru_cell", "gru_cell_backward", "layer_norm", "layernorm_gru_cell",
           "layernorm_lstm_cell", "lstm_cell", "lstm_cell_backward", "zoneout"]

# The layer-normalized cells' epsilon, as torch.nn.functional.layer_norm's default.
LAYER_NORM_EPS = 1e-5


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


def layer_norm(v, weight, bias):
    """LN(v; w, b) over the last dimension, biased variance, LAYER_NORM_EPS."""
    mean = v.mean(dim=-1, keepdim=True)
    var = ((v - mean) ** 2).mean(dim=-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + LAYER_NORM_EPS) * weight + bias


def layernorm_lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias,
                        ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias):
    """The layer-normalized LSTM step (Ba et al. 2016): input [B,I], hx, cx [B,H] -> hy, cy.

    a = LN_ih(x W_ih^T) + LN_hh(h W_hh^T) + b_ih + b_hh, split into i, f, g, o as torch.nn does;
    c' = sigmoid(f) c + sigmoid(i) tanh(g); h' = sigmoid(o) tanh(LN_c(c')). LN_ih and LN_hh
    normalize the 4H gate rows together, LN_c the H units.
    """
    pre = (layer_norm(input @ w_ih.t(), ln_ih_weight, ln_ih_bias)
           + layer_norm(hx @ w_hh.t(), ln_hh_weight, ln_hh_bias))
    if b_ih is not None:
        pre = pre + b_ih
    if b_hh is not None:
        pre = pre + b_hh
    a_i, a_f, a_g, a_o = pre.chunk(4, dim=1)
    cy = torch.sigmoid(a_f) * cx + torch.sigmoid(a_i) * torch.tanh(a_g)
    hy = torch.sigmoid(a_o) * torch.tanh(layer_norm(cy, ln_c_weight, ln_c_bias))
    return hy, cy


def layernorm_gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight,
                       ln_hh_bias):
    """The layer-normalized GRU step: input [B,I], hx [B,H] -> hy.

    gx = LN_ih(x W_ih^T) + b_ih, gh = LN_hh(h W_hh^T) + b_hh (each over its 3H rows);
    r = sigmoid(gx_r + gh_r), z = sigmoid(gx_z + gh_z), n = tanh(gx_n + r gh_n);
    h' = (1 - z) n + z h.
    """
    gx = layer_norm(input @ w_ih.t(), ln_ih_weight, ln_ih_bias)
    gh = layer_norm(hx @ w_hh.t(), ln_hh_weight, ln_hh_bias)
    if b_ih is not None:
        gx = gx + b_ih
    if b_hh is not None:
        gh = gh + b_hh
    x_r, x_z, x_n = gx.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * hx


def zoneout(before, new, weight):
    """Zoneout (Krueger et al. 2016) of a carried state: weight * new + (1 - weight) * before, the
    weight per row and unit (a 0/1 draw of Bernoulli(1 - p) in training, 1 - p in evaluation)."""
    return weight * new + (1 - weight) * before
