"""Self-check: how fused_rnn was built, and each op's error against torch.nn on every device.

Run as `python -m fused_rnn.selfcheck`. For each cell, device and dtype it runs one step forward
and backward with our drop-in cell and with torch.nn's, and measures both against torch.nn in
float64 (the truth). It prints a table of the largest absolute errors and exits non-zero when any
result breaks the project's accuracy rule (fused_rnn.accuracy).
"""

import sys

import torch

import fused_rnn
from fused_rnn.accuracy import accuracy_problem

BATCH, INPUT, HIDDEN = 16, 64, 128
CELLS = {"lstm_cell": (torch.nn.LSTMCell, fused_rnn.LSTMCell, 2),
         "gru_cell": (torch.nn.GRUCell, fused_rnn.GRUCell, 1)}


def _devices():
    devices = ["cpu"]
    if torch.cuda.is_available() and fused_rnn.build_info()["cuda"]:
        devices.append("cuda")
    return devices


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _step(cell, x, states, out_weights):
    """Outputs and gradients (input, states, parameters) of a weighted sum of the outputs."""
    outs = cell(x, states if len(states) == 2 else states[0])
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o * w.to(o)).sum() for o, w in zip(outs, out_weights))
    grads = torch.autograd.grad(loss, [x, *states, *cell.parameters()])
    return [t.detach() for t in (*outs, *grads)]


def _max_error(results, truth):
    return max((r.double().cpu() - t).abs().max().item() for r, t in zip(results, truth))


def check(op, device, dtype):
    torch_cls, our_cls, n_states = CELLS[op]
    torch.manual_seed(0)
    theirs = torch_cls(INPUT, HIDDEN, device=device, dtype=dtype)
    ours = our_cls(INPUT, HIDDEN, device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    truth_cell = torch_cls(INPUT, HIDDEN, dtype=torch.float64)
    truth_cell.load_state_dict(theirs.state_dict())

    x = torch.randn(BATCH, INPUT, device=device, dtype=dtype, requires_grad=True)
    states = [torch.randn(BATCH, HIDDEN, device=device, dtype=dtype, requires_grad=True)
              for _ in range(n_states)]
    out_weights = [torch.randn(BATCH, HIDDEN, dtype=torch.float64) for _ in range(n_states)]

    def as_truth(t):
        return t.detach().double().cpu().requires_grad_()

    truth = _step(truth_cell, as_truth(x), [as_truth(s) for s in states], out_weights)
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
    print(f"\nOne step, forward and backward, B={BATCH} I={INPUT} H={HIDDEN}; largest absolute "
          "error of outputs and gradients against torch.nn in float64:\n")
    header = f"{'op':<10} {'device':<6} {'dtype':<9} {'fused_rnn':>10} {'torch.nn':>10}  status"
    print(header)
    print("-" * len(header))
    failures = 0
    for op in CELLS:
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
