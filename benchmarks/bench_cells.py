"""Cell-step benchmark: fused_rnn.LSTMCell / GRUCell against torch.nn's, side by side.

    python3 benchmarks/bench_cells.py [--device cpu|cuda] [--repeats N]

For each shape it runs one step forward (no grad) and forward+backward with both implementations,
interleaved (ours, theirs, ours, ...) so that drift in the machine's speed hits both alike, and
reports the median of the per-pair time ratios ours/torch.nn (below 1 means we are faster). On CUDA
the times come from CUDA events after warm-up. Every case is first checked for correctness with the
project's accuracy rule, so a fast wrong answer cannot pass.
"""

import argparse
import statistics
import time

import torch

import fused_rnn
from fused_rnn.accuracy import accuracy_problem

CELLS = {"lstm": (torch.nn.LSTMCell, fused_rnn.LSTMCell),
         "gru": (torch.nn.GRUCell, fused_rnn.GRUCell)}
# (B, I, H): latency (B=1), small, and PyTorch's fastrnns size.
SHAPES = [(1, 256, 256), (8, 256, 256), (64, 512, 512), (64, 1024, 1024)]


def _timer(device):
    if device == "cuda":
        def run(fn):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop) * 1e-3
    else:
        def run(fn):
            begin = time.perf_counter()
            fn()
            return time.perf_counter() - begin
    return run


def _case(kind, shape, device, backward):
    """Two closures running one step of ours and of torch.nn's cell on the same random data."""
    batch, input_size, hidden = shape
    torch_cls, our_cls = CELLS[kind]
    torch.manual_seed(0)
    theirs = torch_cls(input_size, hidden, device=device)
    ours = our_cls(input_size, hidden, device=device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(batch, input_size, device=device, requires_grad=backward)
    state = tuple(torch.randn(batch, hidden, device=device) for _ in range(2 if kind == "lstm" else 1))
    state = state if kind == "lstm" else state[0]

    def step(cell):
        def run():
            if not backward:
                with torch.no_grad():
                    return cell(x, state)
            out = cell(x, state)
            loss = sum(o.sum() for o in (out if kind == "lstm" else (out,)))
            return torch.autograd.grad(loss, [x, *cell.parameters()])
        return run

    return step(ours), step(theirs)


def _check(ours_fn, theirs_fn):
    for a, b in zip(ours_fn(), theirs_fn()):
        problem = accuracy_problem(a, b, b.double())
        if problem:
            raise AssertionError(problem)


def measure(kind, shape, device, backward, repeats):
    ours_fn, theirs_fn = _case(kind, shape, device, backward)
    _check(ours_fn, theirs_fn)
    timer = _timer(device)
    for _ in range(5):
        ours_fn(), theirs_fn()
    ratios, ours_times = [], []
    for _ in range(repeats):
        t_ours, t_theirs = timer(ours_fn), timer(theirs_fn)
        ratios.append(t_ours / t_theirs)
        ours_times.append(t_ours)
    return statistics.median(ratios), statistics.median(ours_times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved pairs; ratio = fused_rnn / torch.nn time")
    absolute = args.device == "cuda"
    header = f"{'cell':<5} {'B':>4} {'I':>5} {'H':>5} {'pass':<9} {'ratio':>6}"
    print(header + ("  fused_rnn us" if absolute else ""))
    for kind in CELLS:
        for shape in SHAPES:
            for backward in (False, True):
                ratio, t = measure(kind, shape, args.device, backward, args.repeats)
                line = f"{kind:<5} {shape[0]:>4} {shape[1]:>5} {shape[2]:>5} " \
                       f"{'fwd+bwd' if backward else 'fwd':<9} {ratio:>6.2f}"
                print(line + (f"  {t * 1e6:12.1f}" if absolute else ""))


if __name__ == "__main__":
    main()
