"""Self-check: how fused_rnn was built, and each op's error against torch.nn on every device.

Run as `python -m fused_rnn.selfcheck`. For each op, device and dtype it runs forward and backward
with our drop-in module and with torch.nn's (one cell step; a 2-layer bidirectional LSTM / GRU
over a sequence), and measures both against torch.nn in float64 (the truth). It prints a table of the largest absolute errors and exits non-zero when any
result breaks the project's accuracy rule (fused_rnn.accuracy).
"""

import sys

import torch

import fused_rnn
from fused_rnn.accuracy import accuracy_problem

BATCH, INPUT, HIDDEN, STEPS, LAYERS = 16, 64, 128, 20, 2
# op -> (torch.nn class, ours, number of states, constructor arguments, leading input dimensions,
# leading state dimensions)
CASES = {
    "lstm_cell": (torch.nn.LSTMCell, fused_rnn.LSTMCell, 2, {}, (BATCH,), (BATCH,)),
    "gru_cell": (torch.nn.GRUCell, fused_rnn.GRUCell, 1, {}, (BATCH,), (BATCH,)),
    "lstm": (torch.nn.LSTM, fused_rnn.LSTM, 2, dict(num_layers=LAYERS, bidirectional=True),
             (STEPS, BATCH), (2 * LAYERS, BATCH)),
    "gru": (torch.nn.GRU, fused_rnn.GRU, 1, dict(num_layers=LAYERS, bidirectional=True),
            (STEPS, BATCH), (2 * LAYERS, BATCH)),
}


def _devices():
    devices = ["cpu"]
    if torch.cuda.is_available() and fused_rnn.build_info()["cuda"]:
        devices.append("cuda")
    return devices


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _flatten(result):
    """A cell's h' (and c'), or a sequence module's output and final states, as one tuple."""
    if not isinstance(result, tuple):
        return (result,)
    first, rest = result
    return (first, *rest) if isinstance(rest, tuple) else (first, rest)


def _step(module, x, states, out_weights):
    """Outputs and gradients (input, states, parameters) of a weighted sum of the outputs."""
    outs = _flatten(module(x, tuple(states) if len(states) == 2 else states[0]))
    loss = sum((o * w.to(o)).sum() for o, w in zip(outs, out_weights))
    grads = torch.autograd.grad(loss, [x, *states, *module.parameters()])
    return [t.detach() for t in (*outs, *grads)]


def _max_error(results, truth):
    return max((r.double().cpu() - t).abs().max().item() for r, t in zip(results, truth))


def check(op, device, dtype):
    torch_cls, our_cls, n_states, kwargs, x_dims, state_dims = CASES[op]
    torch.manual_seed(0)
    theirs = torch_cls(INPUT, HIDDEN, device=device, dtype=dtype, **kwargs)
    ours = our_cls(INPUT, HIDDEN, device=device, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    truth_module = torch_cls(INPUT, HIDDEN, dtype=torch.float64, **kwargs)
    truth_module.load_state_dict(theirs.state_dict())

    x = torch.randn(*x_dims, INPUT, device=device, dtype=dtype, requires_grad=True)
    states = [torch.randn(*state_dims, HIDDEN, device=device, dtype=dtype, requires_grad=True)
              for _ in range(n_states)]
    out_shapes = [r.shape for r in _flatten(theirs(x, tuple(states) if n_states == 2
                                                   else states[0]))]
    out_weights = [torch.randn(shape, dtype=torch.float64) for shape in out_shapes]

    def as_truth(t):
        return t.detach().double().cpu().requires_grad_()

    truth = _step(truth_module, as_truth(x), [as_truth(s) for s in states], out_weights)
    ours_results = _step(ours, x, states, out_weights)
    torch_results = _step(theirs, x, states, out_weights)
    ok = all(accuracy_problem(a, b, t) is None
             for a, b, t in zip(ours_results, torch_results, truth))
    return _max_error(ours_results, truth), _max_error(torch_results, truth), ok


def main() -> int:
    info = fused_rnn.build_info()
    print(f"fused_rnn {info['version']}, built against torch {info['torch_version']}, "
          f"running on torch {torch.__version__}")
    archs = ", ".join(info["cuda_archs"]) or "-"
    print(f"CUDA kernels compiled in: {'yes' if info['cuda'] else 'no'} (archs: {archs}); "
          f"GPU visible: {'yes' if torch.cuda.is_available() else 'no'}")
    print(f"CPU kernels built for: {', '.join(info['cpu_isas'])}; running: {info['cpu_isa']}")
    print(f"\nForward and backward, B={BATCH} I={INPUT} H={HIDDEN}: one step of each cell; "
          f"{LAYERS}-layer bidirectional LSTM and GRU over T={STEPS} steps. Largest absolute error "
          "of outputs and gradients against torch.nn in float64:\n")
    header = f"{'op':<10} {'device':<6} {'dtype':<9} {'fused_rnn':>10} {'torch.nn':>10}  status"
    print(header)
    print("-" * len(header))
    failures = 0
    for op in CASES:
        for device in _devices():
            for dtype in DTYPES:
                err_ours, err_torch, ok = check(op, device, dtype)
                failures += not ok
                name = str(dtype).replace("torch.", "")
                print(f"{op:<10} {device:<6} {name:<9} {err_ours:>10.2e} {err_torch:>10.2e}  "
                      f"{'ok' if ok else 'FAIL'}")
    print(f"\n{'all checks passed' if not failures else f'{failures} check(s) FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
