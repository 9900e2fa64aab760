"""Training memory on CUDA: a layer's forward+backward at issue 16's shapes allocates at its peak no
more than torch.nn's (cuDNN's) does, by the default path, in the caching allocator's exact count
(benchmarks/NOTES.md entry 66)."""

import pytest
import torch

from conftest import CUDA_READY
from conftest import SEQUENCE_MODULES as LAYERS


def peak_training_bytes(module, x, states):
    """The most memory a forward+backward of module over x allocates beyond what was allocated
    before it (inputs and weights), gradients of the input, the states and the weights included."""
    x = x.detach().requires_grad_()
    states = [s.detach().requires_grad_() for s in states]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    output, hidden = module(x, tuple(states) if len(states) == 2 else states[0])
    finals = hidden if isinstance(hidden, tuple) else (hidden,)
    loss = output.sum() + sum(h.sum() for h in finals)
    grads = torch.autograd.grad(loss, [x, *states, *module.parameters()])
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del grads
    return peak


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("steps, batch, hidden, bidirectional", [
    (100, 64, 512, False), (100, 64, 512, True), (1024, 16, 768, False)],
    ids=["fastrnns", "fastrnns-bidirectional", "headline"])
def test_training_peak_memory_is_no_higher_than_torch_nn(kind, dtype, steps, batch, hidden,
                                                         bidirectional):
    torch.manual_seed(0)
    nn_cls, our_cls = LAYERS[kind]
    theirs = nn_cls(hidden, hidden, bidirectional=bidirectional, device="cuda", dtype=dtype)
    ours = our_cls(hidden, hidden, bidirectional=bidirectional, device="cuda", dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    directions = 2 if bidirectional else 1
    x = torch.randn(steps, batch, hidden, device="cuda", dtype=dtype)
    states = [torch.randn(directions, batch, hidden, device="cuda", dtype=dtype)
              for _ in range(2 if kind == "lstm" else 1)]
    for module in (theirs, ours):  # (cuDNN's plans and workspaces, our first-call set-up)
        peak_training_bytes(module, x, states)
    ours_peak = peak_training_bytes(ours, x, states)
    theirs_peak = peak_training_bytes(theirs, x, states)
    assert ours_peak <= theirs_peak, (
        f"{kind} {dtype} T={steps} B={batch} H={hidden}: fused_rnn's training peak "
        f"{ours_peak / 2**20:.1f} MB over torch.nn's {theirs_peak / 2**20:.1f} MB")
