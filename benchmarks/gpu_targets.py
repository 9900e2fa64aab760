"""The GPU issue's targets (issue 16: faster than torch.nn / cuDNN by default on the H200), and
their verdict on a suite run.

    python3 benchmarks/gpu_targets.py RESULTS.json [RESULTS.json ...]

TARGETS is the one list of the target shapes: suite.py's "targets" preset runs exactly them
(`suite.py --preset targets --device cuda`; run_gpu.sh does). For every target, dtype and pass
this prints the worst ratio of fused_rnn's default path to torch.nn's time over the target's
cases (medians of interleaved rounds, as the suite reports them), its limit and whether it
holds; a case not measured, or measured wrong, keeps a target from holding. Then training's peak
memory against torch.nn's, and the targets the suite does not measure yet.
"""

import json
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    op: str                 # "layer" or "cell"
    shapes: tuple           # (T, B, I, H) each
    kinds: tuple
    dtypes: tuple
    forward: float          # the largest ratio to torch.nn's time that holds, forward
    forward_backward: float


_LATENCY = tuple((100, b, h, h) for b in (1, 4, 8) for h in (256, 512, 1024))
_CELLS = tuple((1, b, h, h) for b in (1, 8, 64) for h in (256, 512, 1024))
TARGETS = (
    Target("fastrnns", "layer", ((100, 64, 512, 512),), ("lstm", "gru"),
           ("float32", "bfloat16", "float16"), 1.0, 1.0),
    Target("FlashRNN's LSTM", "layer", ((1024, 16, 768, 768),), ("lstm",),
           ("float16", "bfloat16", "float32"), 0.5, 0.8),
    Target("GRU T=1024 B=16 H=768", "layer", ((1024, 16, 768, 768),), ("gru",),
           ("float16", "bfloat16", "float32"), 0.5, 0.8),
    Target("latency", "layer", _LATENCY, ("lstm", "gru"), ("bfloat16", "float32"), 0.5, 1.0),
    Target("large", "layer", ((100, 256, 512, 512), (50, 64, 2048, 2048)), ("lstm", "gru"),
           ("float32", "bfloat16"), 1.0, 1.0),
    Target("cells", "cell", _CELLS, ("lstm", "gru"), ("float32", "bfloat16"), 0.67, 1.0),
)
NOT_MEASURED = (
    "fastrnns with 2 layers and bidirectional",
    "packed sequences (lengths uniform in [T/2, T]) at the fastrnns shape",
    "float32 with torch.backends.cudnn.allow_tf32 off (both sides full float32)",
    "the persistent forward's time per step from B=1 to B=64 at H=768 (less than 2x)",
)


def target_shapes():
    """(op, T, B, I, H) of every target, each once, in the order of TARGETS."""
    shapes = []
    for target in TARGETS:
        for shape in target.shapes:
            if (target.op, *shape) not in shapes:
                shapes.append((target.op, *shape))
    return shapes


def targeted(op, kind, steps, batch, input_size, hidden, dtype):
    """Whether a case (dtype by name, "bfloat16") is one of a target's."""
    return any(op == t.op and kind in t.kinds and dtype in t.dtypes
               and (steps, batch, input_size, hidden) in t.shapes for t in TARGETS)


def _case_key(row):
    return (row["op"], row["kind"], row["pass_"], row["steps"], row["batch"], row["input_size"],
            row["hidden"], row["dtype"])


def verdicts(rows):
    """One dict per target, dtype and pass: cases expected and found, the worst ratio and its
    case, the limit, and `holds`."""
    ours = {_case_key(r): r for r in rows if r["implementation"] == "fused_rnn"}
    result = []
    for target in TARGETS:
        for dtype in target.dtypes:
            for pass_, limit in (("fwd", target.forward), ("fwd+bwd", target.forward_backward)):
                keys = [(target.op, kind, pass_, *shape, dtype)
                        for kind in target.kinds for shape in target.shapes]
                found = [ours[k] for k in keys if k in ours]
                wrong = [r for r in found if not r["correct"]]
                worst = max(found, key=lambda r: r["ratio_to_torch_nn"], default=None)
                result.append(dict(
                    target=target.name, dtype=dtype, pass_=pass_, limit=limit,
                    expected=len(keys), found=len(found), wrong=len(wrong),
                    worst_ratio=worst["ratio_to_torch_nn"] if worst else None,
                    worst_case=_describe(worst) if worst else None,
                    holds=bool(found) and len(found) == len(keys) and not wrong
                    and worst["ratio_to_torch_nn"] <= limit))
    return result


def peak_memory(rows):
    """Training cases' peak memory, fused_rnn's against torch.nn's: [(case, ours MB, torch.nn's
    MB)] for every case that has both."""
    peaks = {}
    for r in rows:
        if r["pass_"] == "fwd+bwd" and r.get("peak_mb") is not None:
            peaks.setdefault(_case_key(r), {})[r["implementation"]] = r["peak_mb"]
    return [(key, p["fused_rnn"], p["torch.nn"]) for key, p in peaks.items()
            if "fused_rnn" in p and "torch.nn" in p]


def _describe(row):
    return (f"{row['kind']} {row['op']} T={row['steps']} B={row['batch']} H={row['hidden']}")


def report(rows):
    """The verdict as markdown lines."""
    lines = ["| target | dtype | pass | cases | worst ratio (case) | limit | holds |",
             "|---|---|---|---|---|---|---|"]
    for v in verdicts(rows):
        cases = f"{v['found']} of {v['expected']}" + (f", {v['wrong']} wrong" if v["wrong"] else "")
        worst = "-" if v["worst_ratio"] is None else f"{v['worst_ratio']:.2f}x ({v['worst_case']})"
        lines.append(f"| {v['target']} | {v['dtype']} | {v['pass_']} | {cases} | {worst} | "
                     f"<= {v['limit']}x | {'yes' if v['holds'] else 'no'} |")
    compared = peak_memory(rows)
    over = [(key, ours, theirs) for key, ours, theirs in compared if ours > theirs]
    lines.append("")
    lines.append(f"Training peak memory, {len(compared)} cases against torch.nn's: " + (
        "none above it" if not over else "above it in " + "; ".join(
            f"{' '.join(map(str, key))} ({ours:.1f} vs {theirs:.1f} MB)"
            for key, ours, theirs in over)) + ".")
    lines.append("Not measured by the suite: " + "; ".join(NOT_MEASURED) + ".")
    return lines


def main(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            rows += json.load(f)["rows"]
    print("\n".join(report(rows)))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
