"""Where a CUDA layer path goes wrong: each persistent path, forced, against the step-wise path on
the same inputs, and the pattern of its errors, for a session without a GPU to read.

    python3 benchmarks/diagnose_paths.py --out DIR [--budget-s S] [--only TEXT]

Per case (cell kind, dtype, batch, hidden size, padded or packed, path: the tensor-core kernels
under each barrier, on one block or clusters of 2 a group of units, the SIMT forward): a
bidirectional layer of T=6 steps, forward and backward, once on the step-wise path and once on
the forced one (use_persistent_kernels); and, the reference's own check, the step-wise path
against torch.nn's layer (cuDNN) with the same weights. Reports the paths that ran
(cuda_layer_path), and where
the results depart from the step-wise ones by more than a gross-error share of their largest
magnitude: per direction, the output's steps, batch rows and hidden units (as ranges: a fragment
map's error shows as units in blocks of 8 or 16, a barrier's from the second step on), the final
states, and every gradient. Cases run in worker processes (workers.py): one that crashes its
worker (a GPU fault) or hangs it is reported as such, and the others still run. Writes
paths-diagnosis.md and .json to DIR; exits 1 where any case is wrong.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from workers import announce, run_in_workers, write_json

STEPS = 6
# A departure of more than this share of a result's largest magnitude is an error (gross errors:
# the tests hold each path to the accuracy rules).
GROSS = {torch.bfloat16: 0.05, torch.float16: 0.01, torch.float32: 0.01}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# (batch, hidden): one row; partial n-tiles; k shares split unevenly over warps (272); the
# headline's hidden size; the fastrnns shape.
SHAPES = [(1, 16), (9, 48), (17, 272), (16, 768), (64, 512)]
# The forced paths: (name, use_persistent_kernels' enabled, barrier, cluster_split); the mode
# "simt" of _C.set_persistent_kernels forces the SIMT forward.
TORCH_NN = "step-wise against torch.nn"
PATHS = [(TORCH_NN, False, "flags", None),
         ("tensor cores, flags", True, "flags", 1), ("tensor cores, tagged", True, "tagged", 1),
         ("tensor cores, grid", True, "grid", 1), ("tensor cores, clusters of 2", True, "flags", 2),
         ("SIMT", "simt", "flags", None)]
LAYERS = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU}
TORCH_LAYERS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def cases(device="cuda"):
    """Every case as a dict; on a device other than CUDA the step-wise path against torch.nn
    and against itself (to test this code)."""
    paths = PATHS if device == "cuda" else [PATHS[0], ("step-wise", False, "flags", None)]
    found = []
    for kind in LAYERS:
        for dtype in DTYPES:
            for batch, hidden in SHAPES:
                for packed in (False, True):
                    if packed and (batch, hidden) != (9, 48):
                        continue
                    for path, enabled, barrier, split in paths:
                        found.append(dict(kind=kind, dtype=dtype, batch=batch, hidden=hidden,
                                          packed=packed, path=path, enabled=enabled,
                                          barrier=barrier, split=split, device=device))
    return found


def case_name(case):
    return (f"{case['kind']} {case['dtype']} B={case['batch']} H={case['hidden']}"
            f"{' packed' if case['packed'] else ''} {case['path']}")


def ranges(indices):
    """Sorted distinct ints as "a-b, c, d-e"."""
    spans = []
    for i in sorted(set(indices)):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def departure(got, want, gross):
    """Where got departs from want (same shape) by more than gross x want's largest magnitude
    (non-finite values count): {"error": the largest departure in that unit, "bad": count,
    "of": elements, "nonfinite": count, and for 3-D [T, B, X] results with bad elements, "steps",
    "rows", "columns" as ranges}."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = max(float(want.abs().max()) if want.numel() else 0.0, 1e-30)
    difference = (got - want).abs() / scale
    bad = ~(difference <= gross)
    finite = difference[torch.isfinite(difference)]
    found = dict(error=float(finite.max()) if finite.numel() else 0.0, bad=int(bad.sum()),
                 of=got.numel(), nonfinite=int((~torch.isfinite(got)).sum()))
    if found["bad"] and got.dim() == 3:
        where = bad.nonzero()
        for axis, name in enumerate(("steps", "rows", "columns")):
            found[name] = ranges(where[:, axis].tolist())
    return found


def _inputs(case, layer):
    dtype, device = DTYPES[case["dtype"]], case["device"]
    batch, hidden = case["batch"], case["hidden"]
    x = torch.randn(STEPS, batch, hidden, dtype=dtype, device=device)
    states = [torch.randn(2, batch, hidden, dtype=dtype, device=device)
              for _ in range(2 if case["kind"] == "lstm" else 1)]
    lengths = None
    if case["packed"]:  # every length from 1 to STEPS, unsorted
        lengths = torch.tensor([1 + (b * 5) % STEPS for b in range(batch)])
        lengths[0] = STEPS
    return x, states, lengths


def _run(layer, x, states, lengths):
    """(output [T, B, 2H], final states, gradients) of a forward and backward."""
    x = x.detach().requires_grad_()
    states = [s.detach().requires_grad_() for s in states]
    given = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, final = layer(given, tuple(states) if len(states) == 2 else states[0])
    if lengths is not None:
        out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=STEPS)[0]
    finals = list(final) if isinstance(final, tuple) else [final]
    # (A weight per element, so that no gradient is a plain sum.)
    weights = torch.linspace(0.5, 1.5, out.numel(), device=out.device).view_as(out)
    loss = (out.float() * weights).sum() + sum(f.float().square().sum() for f in finals)
    names = ["input", *(["h0", "c0"][:len(states)]), *(n for n, _ in layer.named_parameters())]
    grads = torch.autograd.grad(loss, [x, *states, *layer.parameters()])
    return out, finals, dict(zip(names, grads))


def _set_path(enabled, barrier, split):
    if enabled == "simt":
        fused_rnn.use_persistent_kernels(None, barrier=barrier)
        fused_rnn._C.set_persistent_kernels("simt")
    else:
        fused_rnn.use_persistent_kernels(enabled, barrier=barrier, cluster_split=split)


def diagnose(case):
    """A case's report (see the module's docstring)."""
    dtype, hidden, batch = DTYPES[case["dtype"]], case["hidden"], case["batch"]
    torch.manual_seed(0)
    layer = LAYERS[case["kind"]](hidden, hidden, bidirectional=True, device=case["device"],
                                 dtype=dtype)
    x, states, lengths = _inputs(case, layer)
    report = dict(case=case_name(case))
    try:
        _set_path(False, "flags", None)
        if case["path"] == TORCH_NN:
            reference = TORCH_LAYERS[case["kind"]](hidden, hidden, bidirectional=True,
                                                   device=case["device"], dtype=dtype)
            reference.load_state_dict(layer.state_dict())
            want = _run(reference, x, states, lengths)
        else:
            want = _run(layer, x, states, lengths)
        _set_path(case["enabled"], case["barrier"], case["split"])
        if case["device"] == "cuda":
            report["ran"] = {direction: fused_rnn.cuda_layer_path(
                case["kind"].upper(), batch, hidden, dtype, backward=direction == "backward")
                for direction in ("forward", "backward")}
        got = _run(layer, x, states, lengths)
        if case["device"] == "cuda":
            torch.cuda.synchronize()
    finally:
        fused_rnn.use_persistent_kernels(None)
    gross = GROSS[dtype]
    report["output"] = {direction: departure(got[0][..., k * hidden:(k + 1) * hidden],
                                             want[0][..., k * hidden:(k + 1) * hidden], gross)
                        for k, direction in enumerate(("forward", "reverse"))}
    report["final"] = [departure(g, w, gross) for g, w in zip(got[1], want[1])]
    report["grads"] = {name: departure(got[2][name], want[2][name], gross) for name in got[2]}
    parts = [*report["output"].values(), *report["final"], *report["grads"].values()]
    report["verdict"] = "ok" if all(p["bad"] == 0 for p in parts) else "WRONG"
    return report


def worker(state_path):
    """Diagnoses the cases of the state file it has not done (workers.py)."""
    state = json.loads(state_path.read_text())
    for index, case in enumerate(state["cases"]):
        if index in state["done"]:
            continue
        if state["deadline"] is not None and time.time() >= state["deadline"]:
            break
        announce(state_path, case=index)
        report = diagnose(case)
        print(f"{report['case']}: {report['verdict']}", flush=True)
        state["reports"].append(report)
        state["done"].append(index)
        write_json(state_path, state)


def summary_lines(report):
    """A case's report as markdown lines (one where it is ok)."""
    ran = report.get("ran", {})
    lines = [f"- {report['case']}: **{report['verdict']}**"
             + (f" (ran: forward {ran['forward']}; backward {ran['backward']})" if ran else "")]
    if report["verdict"] != "WRONG":
        return lines
    for direction, d in report["output"].items():
        if d["bad"]:
            lines.append(f"  - output, {direction}: {d['bad']}/{d['of']} wrong "
                         f"({d['nonfinite']} not finite), largest {d['error']:.3g}; steps "
                         f"{d['steps']}; rows {d['rows']}; units {d['columns']}")
    for k, d in enumerate(report["final"]):
        if d["bad"]:
            lines.append(f"  - final state {k}: {d['bad']}/{d['of']} wrong, largest "
                         f"{d['error']:.3g}")
    for name, d in report["grads"].items():
        if d["bad"]:
            where = (f"; steps {d['steps']}; rows {d['rows']}; columns {d['columns']}"
                     if "steps" in d else "")
            lines.append(f"  - grad {name}: {d['bad']}/{d['of']} wrong ({d['nonfinite']} not "
                         f"finite), largest {d['error']:.3g}{where}")
    return lines


def write_reports(out, state, started):
    done = {r["case"] for r in state["reports"]}
    not_run = [case_name(c) for c in state["cases"] if case_name(c) not in done]
    wrong = [r for r in state["reports"] if r["verdict"] != "ok"]
    lines = [f"# Paths of fused_rnn's CUDA layers against the step-wise path "
             f"({state['device_name']}, {time.strftime('%Y-%m-%d')}, T={STEPS}, "
             f"{time.time() - started:.0f} s)", "",
             f"{len(state['reports']) - len(wrong)} ok, {len(wrong)} not; {len(not_run)} not run "
             "(time budget).", "", "## Not ok", ""]
    for report in wrong:
        lines += summary_lines(report)
    lines += ["", "## Ok", ""]
    for report in state["reports"]:
        if report["verdict"] == "ok":
            lines += summary_lines(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paths-diagnosis.md").write_text("\n".join(lines) + "\n")
    (out / "paths-diagnosis.json").write_text(json.dumps(state, indent=1))


WORKER = [sys.executable, str(Path(__file__).resolve()), "--worker"]


def run(out, budget_s=None, only=None, device="cuda", worker_command=WORKER):
    """Diagnoses every case (containing `only` in its name, where given) in worker processes;
    writes the reports to `out`. Returns the reports."""
    selected = [c for c in cases(device) if only is None or only in case_name(c)]
    started = time.time()
    state = dict(cases=selected, reports=[], done=[],
                 deadline=None if budget_s is None else started + budget_s,
                 device_name=torch.cuda.get_device_name() if device == "cuda" else device)

    def record_failure(state, announced, how):
        index = announced["case"]
        state["reports"].append(dict(case=case_name(state["cases"][index]),
                                     verdict=f"failed: {how}"))
        state["done"].append(index)
        print(f"{case_name(state['cases'][index])}: failed: {how}", flush=True)

    state = run_in_workers(worker_command, state, record_failure,
                           lambda s: write_reports(out, s, started))
    return state["reports"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=False)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new case after this many seconds")
    parser.add_argument("--only", default=None, help="only the cases whose name holds this")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return 0
    if args.out is None:
        parser.error("--out is required")
    if not (torch.cuda.is_available() and fused_rnn.build_info()["cuda"]):
        print("diagnose_paths.py: needs a GPU and fused_rnn built with its CUDA kernels",
              file=sys.stderr)
        return 2
    reports = run(args.out, args.budget_s, args.only)
    wrong = [r for r in reports if r["verdict"] != "ok"]
    print(f"{len(reports)} case(s), {len(wrong)} not ok: {args.out / 'paths-diagnosis.md'}")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
