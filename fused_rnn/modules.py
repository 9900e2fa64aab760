"""Drop-in replacements for torch.nn.LSTMCell and torch.nn.GRUCell.

They subclass the torch.nn cells, so constructor, parameter names, shapes, initialization,
state_dict, repr and isinstance checks are torch.nn's own; only forward runs the fused op. Input
checks and their messages follow torch.nn's.
"""

import torch

from . import functional

__all__ = ["GRUCell", "LSTMCell"]


def _check_rank(cell: str, what: str, t: torch.Tensor) -> None:
    if t.dim() not in (1, 2):
        raise ValueError(f"{cell}: Expected {what} to be 1D or 2D, got {t.dim()}D instead")


class LSTMCell(torch.nn.LSTMCell):
    """torch.nn.LSTMCell computed by one fused op. Same arguments, parameters and results."""

    def forward(self, input, hx=None):
        _check_rank("LSTMCell", "input", input)
        if hx is not None:
            for idx, value in enumerate(hx):
                _check_rank("LSTMCell", f"hx[{idx}]", value)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = input.new_zeros(input.size(0), self.hidden_size)
            hx = (zeros, zeros)
        elif not batched:
            hx = tuple(value.unsqueeze(0) for value in hx)
        hy, cy = functional.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                      self.bias_hh)
        if not batched:
            return hy.squeeze(0), cy.squeeze(0)
        return hy, cy


class GRUCell(torch.nn.GRUCell):
    """torch.nn.GRUCell computed by one fused op. Same arguments, parameters and results."""

    def forward(self, input, hx=None):
        _check_rank("GRUCell", "input", input)
        if hx is not None:
            _check_rank("GRUCell", "hidden", hx)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = input.new_zeros(input.size(0), self.hidden_size)
        elif not batched:
            hx = hx.unsqueeze(0)
        hy = functional.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                 self.bias_hh)
        return hy if batched else hy.squeeze(0)
