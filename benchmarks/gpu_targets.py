"""The GPU issue's targets (issue 16: faster than torch.nn / cuDNN by default on the H200), and
their verdict on a suite run.

    python3 benchmarks/gpu_targets.py RESULTS.json [RESULTS.json ...]

TARGETS is the one list of the target shapes: suite.py's "targets" preset runs exactly them
(`suite.py --preset targets --device cuda`; run_gpu.sh does). For every target, dtype and pass
this prints the worst ratio of fused_rnn's default path to torch.nn's time over the target's
cases (medians of interleaved rounds, as the suite reports them), its limit and whether it
holds; a case not measured, or measured wrong, keeps a target from holding. Then the persistent
forward's growth from B=1 to B=64 at H=768, and training's peak memory against torch.nn's.
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
    forward_backward: float | None  # and forward+backward (None: not a target)
    settings: tuple = ()    # the cases' settings beyond the default (Case's fields), as pairs


_FASTRNNS = ((100, 64, 512, 512),)
_ALL_DTYPES = ("float32", "bfloat16", "float16")
_LATENCY = tuple((100, b, h, h) for b in (1, 4, 8) for h in (256, 512, 1024))
_CELLS = tuple((1, b, h, h) for b in (1, 8, 64) for h in (256, 512, 1024))
TARGETS = (
    Target("fastrnns", "layer", _FASTRNNS, ("lstm", "gru"), _ALL_DTYPES, 1.0, 1.0),
    Target("fastrnns, 2 layers", "layer", _FASTRNNS, ("lstm", "gru"), _ALL_DTYPES, 1.0, 1.0,
           (("layers", 2),)),
    Target("fastrnns, bidirectional", "layer", _FASTRNNS, ("lstm", "gru"), _ALL_DTYPES, 1.0, 1.0,
           (("bidirectional", True),)),
    # torch.backends.cudnn.allow_tf32 off: both sides in full float32 (the pair).
    Target("fastrnns, TF32 off", "layer", _FASTRNNS, ("lstm", "gru"), ("float32",), 1.0, 1.0,
           (("tf32", False),)),
    Target("FlashRNN's LSTM", "layer", ((1024, 16, 768, 768),), ("lstm",),
           ("float16", "bfloat16", "float32"), 0.5, 0.8),
    Target("GRU T=1024 B=16 H=768", "layer", ((1024, 16, 768, 768),), ("gru",),
           ("float16", "bfloat16", "float32"), 0.5, 0.8),
    Target("latency", "layer", _LATENCY, ("lstm", "gru"), ("bfloat16", "float32"), 0.5, 1.0),
    Target("large", "layer", ((100, 256, 512, 512), (50, 64, 2048, 2048)), ("lstm", "gru"),
           ("float32", "bfloat16"), 1.0, 1.0),
    Target("cells", "cell", _CELLS, ("lstm", "gru"), ("float32", "bfloat16"), 0.67, 1.0),
    Target("packed", "layer", _FASTRNNS, ("lstm", "gru"), ("float32", "bfloat16"), 0.8, 0.8,
           (("packed", True),)),
)
# The persistent forward's time per step may grow less than this from its first shape (B=1) to
# its second (B=64), on fused_rnn's persistent kernels ("fused persistent").
GROWTH = Target("persistent forward, B=1 -> B=64 at H=768", "layer",
                ((100, 1, 768, 768), (100, 64, 768, 768)), ("lstm", "gru"),
                ("bfloat16", "float32"), 2.0, None)


# Case's settings of a layer at their defaults: one layer, one direction, a padded batch, TF32
# allowed (torch.nn's own default).
_DEFAULT_SETTINGS = dict(layers=1, bidirectional=False, packed=False, tf32=True)


def target_shapes():
    """(op, T, B, I, H, settings as a dict) of every target, each once, in the order of TARGETS
    (GROWTH last)."""
    shapes = []
    for target in TARGETS + (GROWTH,):
        for shape in target.shapes:
            if (target.op, *shape, dict(target.settings)) not in shapes:
                shapes.append((target.op, *shape, dict(target.settings)))
    return shapes


def targeted(case):
    """Whether a suite Case is one of a target's."""
    dtype = str(case.dtype).replace("torch.", "")
    settings = _settings_key({name: getattr(case, name) for name in _DEFAULT_SETTINGS})
    for t in TARGETS + (GROWTH,):
        limit = t.forward_backward if case.backward else t.forward
        if (limit is not None and case.op == t.op and case.kind in t.kinds and dtype in t.dtypes
                and (case.steps, case.batch, case.input_size, case.hidden) in t.shapes
                and settings == _settings_key(t.settings)):
            return True
    return False


def _settings_key(pairs):
    """A target's or row's settings, in full, as a key."""
    return tuple(sorted(dict(_DEFAULT_SETTINGS, **dict(pairs)).items()))


def _case_key(row):
    settings = {k: row[k] for k in _DEFAULT_SETTINGS if k in row}  # (older runs: none)
    return (row["op"], row["kind"], row["pass_"], row["steps"], row["batch"], row["input_size"],
            row["hidden"], row["dtype"], _settings_key(settings))


def _opt_in(name):
    """Whether a suite implementation is one of ours that a setting switches on (the persistent
    kernels forced, concurrent directions, pipelined layers): not the default, "fused_rnn"."""
    return name.startswith("fused ")


def verdicts(rows):
    """One dict per target, dtype and pass: cases expected and found, the worst ratio and its
    case, the limit, and `holds`; and, where each case took the fastest correct one of ours
    (the default or a setting's), the worst such ratio, its case and implementation
    (`best_ratio`, `best_case`), and whether the target would hold so (`holds_with_settings`):
    what switching a setting on by default could win."""
    ours = {_case_key(r): r for r in rows if r["implementation"] == "fused_rnn"}
    fastest = {}
    for r in rows:
        if (r["implementation"] == "fused_rnn" or _opt_in(r["implementation"])) and r["correct"]:
            key = _case_key(r)
            if key not in fastest or r["ratio_to_torch_nn"] < fastest[key]["ratio_to_torch_nn"]:
                fastest[key] = r
    result = []
    for target in TARGETS:
        for dtype in target.dtypes:
            for pass_, limit in (("fwd", target.forward), ("fwd+bwd", target.forward_backward)):
                keys = [(target.op, kind, pass_, *shape, dtype, _settings_key(target.settings))
                        for kind in target.kinds for shape in target.shapes]
                found = [ours[k] for k in keys if k in ours]
                wrong = [r for r in found if not r["correct"]]
                worst = max(found, key=lambda r: r["ratio_to_torch_nn"], default=None)
                bests = [fastest[k] for k in keys if k in fastest]
                best = max(bests, key=lambda r: r["ratio_to_torch_nn"], default=None)
                result.append(dict(
                    target=target.name, dtype=dtype, pass_=pass_, limit=limit,
                    expected=len(keys), found=len(found), wrong=len(wrong),
                    worst_ratio=worst["ratio_to_torch_nn"] if worst else None,
                    worst_case=_describe(worst) if worst else None,
                    holds=bool(found) and len(found) == len(keys) and not wrong
                    and worst["ratio_to_torch_nn"] <= limit,
                    best_ratio=best["ratio_to_torch_nn"] if best else None,
                    best_case=f"{_describe(best)}: {best['implementation']}" if best else None,
                    holds_with_settings=len(bests) == len(keys)
                    and best["ratio_to_torch_nn"] <= limit))
    return result


def growth_verdicts(rows):
    """GROWTH per kind and dtype: the persistent forward's time at its second shape over its
    first (one T, so per step as well), and `holds`."""
    persistent = {_case_key(r): r for r in rows if r["implementation"] == "fused persistent"}
    result = []
    for kind in GROWTH.kinds:
        for dtype in GROWTH.dtypes:
            small, large = (persistent.get((GROWTH.op, kind, "fwd", *shape, dtype,
                                            _settings_key(())))
                            for shape in GROWTH.shapes)
            measured = small is not None and large is not None
            growth = large["median_s"] / small["median_s"] if measured else None
            result.append(dict(kind=kind, dtype=dtype, growth=growth, limit=GROWTH.forward,
                               holds=measured and small["correct"] and large["correct"]
                               and growth < GROWTH.forward))
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
    variant = f" {row['variant']}" if row.get("variant") else ""
    return f"{row['kind']} {row['op']}{variant} T={row['steps']} B={row['batch']} H={row['hidden']}"


def _describe_key(key):
    op, kind, pass_, steps, batch, _, hidden, dtype, settings = key
    changed = [f"{k}={v}" for k, v in settings if _DEFAULT_SETTINGS[k] != v]
    return " ".join([kind, op, *changed, pass_, f"T={steps} B={batch} H={hidden}", dtype])


_WORST_SHOWN = 5  # training cases named where the peak memory is over torch.nn's


def report(rows):
    """The verdict as markdown lines."""
    lines = ["| target | dtype | pass | cases | worst ratio (case) | limit | holds | with the "
             "fastest of ours per case: worst (case: implementation) | would hold |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts(rows):
        cases = f"{v['found']} of {v['expected']}" + (f", {v['wrong']} wrong" if v["wrong"] else "")
        worst = "-" if v["worst_ratio"] is None else f"{v['worst_ratio']:.2f}x ({v['worst_case']})"
        best = "-" if v["best_ratio"] is None else f"{v['best_ratio']:.2f}x ({v['best_case']})"
        lines.append(f"| {v['target']} | {v['dtype']} | {v['pass_']} | {cases} | {worst} | "
                     f"<= {v['limit']}x | {'yes' if v['holds'] else 'no'} | {best} | "
                     f"{'yes' if v['holds_with_settings'] else 'no'} |")
    for v in growth_verdicts(rows):
        growth = "not measured" if v["growth"] is None else f"{v['growth']:.2f}x"
        lines.append(f"| {GROWTH.name} | {v['dtype']} | fwd | {v['kind']} | {growth} | "
                     f"< {v['limit']}x | {'yes' if v['holds'] else 'no'} | - | - |")
    compared = peak_memory(rows)
    over = [(key, ours, theirs) for key, ours, theirs in compared if ours > theirs]
    lines.append("")
    over.sort(key=lambda o: o[1] / max(o[2], 1e-9), reverse=True)
    lines.append(f"Training peak memory, {len(compared)} cases against torch.nn's: " + (
        "none above it" if not over else f"above it in {len(over)}, the most in " + "; ".join(
            f"{_describe_key(key)} ({ours:.1f} vs {theirs:.1f} MB)"
            for key, ours, theirs in over[:_WORST_SHOWN])) + ".")
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
