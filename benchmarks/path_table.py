"""The CUDA layer's table of measured paths: a sweep that times each path of fused_rnn's CUDA
layers (step-wise, the SIMT persistent forward, the tensor-core persistent forward and backward)
over batch and hidden sizes on the GPU at hand, and the header the default reads, written from
the sweep (csrc/measured_paths.h; persistent_plan.h: nearest_measured_point).

    python3 benchmarks/path_table.py sweep --out DIR [--budget-s S] [--steps T]
    python3 benchmarks/path_table.py header RESULTS.json [--write]

sweep: per cell kind (LSTM, GRU), dtype (bfloat16 for the 16-bit types, float32 with TF32
allowed, cuDNN's default), batch and hidden size: the forward's time on each path that runs the
shape (modes "off", "simt", "on" of fused_rnn._C.set_persistent_kernels; the path each took from
fused_rnn.cuda_layer_path), and the backward's alone (torch.autograd.grad over one forward's
graph, the step-wise and the tensor-core backward). The modes run in turn, the order rotating
every round; a path's time is the median of its rounds (CUDA events). Each path's output and
gradients are checked against the step-wise path's on the same inputs (a sanity check for gross
errors, the tests check precisely); a path that fails it never enters the table. Writes
DATE-paths-GPU.json (and .md) to benchmarks/results/ and --out, again after each shape.
The shapes run in a worker process (sweep-worker; workers.py), which says before each timed run
which shape, direction and path it is on: a path that raises (a GPU fault leaves the process's
CUDA context broken), crashes the worker or hangs it (a persistent kernel's barrier that never
opens) is recorded as failed there, and a fresh worker goes on without it at that shape, and
without it anywhere after its second failure.

header: the table from a sweep's JSON: at each measured point the paths by median time, fastest
first, a persistent path ahead of the step-wise one only where it took at most
PERSISTENT_MARGIN of its time (the step-wise path serves every feature: a tie goes to it). Prints
the header; --write puts it in csrc/measured_paths.h (rebuild, and say in benchmarks/NOTES.md what
changed).
"""

import argparse
import collections
import datetime
import json
import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

import fused_rnn
from fused_rnn import _C
from workers import STALL_S, announce, run_in_workers, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
HEADER = ROOT / "csrc" / "measured_paths.h"

GATES = {"lstm": 4, "gru": 3}
LAYERS = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU}
# The table's dtype sizes and the dtype each is measured in (float16 runs the same kernels as
# bfloat16).
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HIDDENS = (128, 256, 512, 768, 1024, 2048)
STEPS = 64
ROUNDS = 5
# The paths by the words fused_rnn.cuda_layer_path starts with, and the C++ names of the table.
PATHS = {"tensor cores": "kTensorCores", "SIMT": "kSimt", "step-wise": "kStepwise"}
# A persistent path goes ahead of the step-wise one where it takes at most this share of its time.
PERSISTENT_MARGIN = 0.95
# The sanity check against the step-wise path's results: the largest difference, relative to the
# largest magnitude of the step-wise result, a path may show (gross errors only).
SANITY = {"bfloat16": 0.05, "float32": 0.01}
# A path that failed this many times is left out of the rest of the sweep.
FAILURES_TO_DROP = 2


def path_of(description):
    """The path a cuda_layer_path description names: "tensor cores", "SIMT" or "step-wise"."""
    if description.startswith("step-wise"):
        return "step-wise"
    if description.startswith("persistent (tensor cores"):
        return "tensor cores"
    if description.startswith("persistent (SIMT"):
        return "SIMT"
    raise ValueError(f"path_of: not a path description: {description!r}")


# ---------------------------------------------------------------------------------------------
# The sweep (GPU).

def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _timed(fn, device):
    """(seconds, result) of fn(): CUDA events on the GPU; perf_counter elsewhere (the CPU tests
    of the sweep's own code)."""
    if device != "cuda":
        begin = time.perf_counter()
        result = fn()
        return time.perf_counter() - begin, result
    start, stop = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    start.record()
    result = fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) * 1e-3, result


def _relative_difference(got, want):
    """The largest difference of a result from the step-wise path's, relative to the largest
    magnitude of that result, over the results."""
    return max(float((g.float() - w.float()).abs().max()) / max(float(w.abs().max()), 1e-30)
               for g, w in zip(got, want))


def _modes_by_path(kind, batch, hidden, dtype, backward, device):
    """{path: mode} of the modes whose path differs for this shape (the step-wise one first)."""
    if device != "cuda":
        return {"step-wise": "off"}
    found = {}
    for mode in ("off", "simt", "on"):
        _C.set_persistent_kernels(mode)
        found.setdefault(path_of(fused_rnn.cuda_layer_path(kind.upper(), batch, hidden, dtype,
                                                           backward=backward)), mode)
    return found


def _measure_paths(modes, run, rounds, device, announce):
    """{path: (median seconds, results)} of run() under each mode of `modes` ({path: mode}), the
    modes taking turns, their order rotating every round; the first round warms up.
    announce(path) before each run."""
    times = {path: [] for path in modes}
    results = {}
    for r in range(rounds + 1):
        order = list(modes)[r % len(modes):] + list(modes)[:r % len(modes)]
        for path in order:
            announce(path)
            _C.set_persistent_kernels(modes[path])
            seconds, results[path] = _timed(run, device)
            if r:
                times[path].append(seconds)
    return {path: (statistics.median(times[path]), results[path]) for path in modes}


def measure_shape(kind, dtype_name, batch, hidden, steps, rounds, device="cuda", skip=(),
                  announce=lambda direction, path: None):
    """The rows of one shape: forward and backward times per path, each sanity-checked against
    the step-wise path's results (on a device other than CUDA: its one path, to test this
    code). The (direction, path) pairs in `skip` are left out (a shape whose step-wise path is
    among them is not measured: its results are the reference); announce(direction, path)
    before each run (the setup counts as the step-wise forward)."""
    if any(path == "step-wise" for _, path in skip):
        return []
    announce("forward", "step-wise")
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    layer = LAYERS[kind](hidden, hidden, device=device, dtype=dtype)
    x = torch.randn(steps, batch, hidden, device=device, dtype=dtype, requires_grad=True)
    params = [x, *layer.parameters()]
    base = dict(kind=kind, dtype=dtype_name, elem_bytes=dtype.itemsize, batch=batch,
                hidden=hidden, steps=steps)

    def forward():  # inference
        with torch.no_grad():
            return [layer(x)[0]]

    rows = []
    try:
        # The backward alone, over one step-wise forward's graph.
        _C.set_persistent_kernels("off")
        out = layer(x)[0]
        grad_out = torch.randn_like(out)
        for direction, run in (
                ("forward", forward),
                ("backward", lambda: torch.autograd.grad(out, params, grad_out,
                                                         retain_graph=True))):
            modes = {path: mode for path, mode in
                     _modes_by_path(kind, batch, hidden, dtype, direction == "backward",
                                    device).items() if (direction, path) not in skip}
            measured = _measure_paths(modes, run, rounds, device,
                                      lambda path: announce(direction, path))
            for path, (median_s, results) in measured.items():
                problem = _relative_difference(results, measured["step-wise"][1])
                rows.append(dict(base, direction=direction, path=path, mode=modes[path],
                                 median_s=median_s, difference=problem,
                                 sane=problem <= SANITY[dtype_name]))
    finally:
        fused_rnn.use_persistent_kernels(None)
    return rows


def sweep_shapes():
    """The sweep's shapes (kind, dtype, batch, hidden), batches outermost: a run cut short by its
    budget leaves out the largest, beyond whose measured span the default stays step-wise."""
    return [(kind, dtype_name, batch, hidden) for batch in BATCHES for hidden in HIDDENS
            for kind in GATES for dtype_name in DTYPES]


def _shape_of(failure):
    return (failure["kind"], failure["dtype"], failure["batch"], failure["hidden"])


def _skipped(failures, shape):
    """The (direction, path) pairs a worker leaves out at `shape`: those that failed there, and
    each path that failed FAILURES_TO_DROP times, anywhere."""
    dropped = [path for path, n in collections.Counter(f["path"] for f in failures).items()
               if n >= FAILURES_TO_DROP]
    return ({(f["direction"], f["path"]) for f in failures if _shape_of(f) == tuple(shape)} |
            {(direction, path) for path in dropped for direction in ("forward", "backward")})


def sweep_worker(state_path):
    """A worker of the sweep: measures the shapes of the state (a JSON file: shapes, device,
    steps, rounds, deadline (time.time(), or null), rows, done, failures) it has not done, the
    state rewritten after each; before each timed run, writes which shape, direction and path it
    is on to the file beside it (.running). Stops at the deadline."""
    state = json.loads(state_path.read_text())
    for shape in state["shapes"]:
        if shape in state["done"]:
            continue
        if state["deadline"] is not None and time.time() >= state["deadline"]:
            break
        kind, dtype_name, batch, hidden = shape

        def on(direction, path):
            announce(state_path, kind=kind, dtype=dtype_name, batch=batch, hidden=hidden,
                     direction=direction, path=path)
        rows = measure_shape(kind, dtype_name, batch, hidden, state["steps"], state["rounds"],
                             state["device"], _skipped(state["failures"], shape), on)
        for r in rows:
            print(f"{r['kind']} {r['dtype']} B={r['batch']} H={r['hidden']} {r['direction']} "
                  f"{r['path']}: {r['median_s'] * 1e3:.3f} ms{'' if r['sane'] else ' WRONG'}",
                  flush=True)
        state["rows"] += rows
        state["done"].append(shape)
        write_json(state_path, state)


WORKER = [sys.executable, str(Path(__file__).resolve()), "sweep-worker"]


def sweep(out_dirs, steps, rounds, budget_s, shapes=None, device="cuda", worker=WORKER,
          stall_s=STALL_S):
    """Times every shape of `shapes` (sweep_shapes()) in worker processes (sweep_worker), a new
    one after each that failed, that failure recorded against the shape, direction and path it
    was on; writes the results to out_dirs after each shape. Returns (rows, failures).
    `device`, `worker`: for the CPU tests of this code."""
    name = torch.cuda.get_device_name() if device == "cuda" else device.upper()
    tag = name.lower().replace("nvidia", "").strip().split()[0]
    meta = dict(date=datetime.date.today().isoformat(), device_name=name, torch=torch.__version__,
                commit=_git_commit(), steps=steps, rounds=rounds,
                sm_count=torch.cuda.get_device_properties(0).multi_processor_count
                if device == "cuda" else None,
                tf32=torch.backends.cudnn.allow_tf32, shapes_not_run=0, failures=[])
    stems = [d / f"{meta['date']}-paths-{tag}" for d in out_dirs]
    shapes = [list(shape) for shape in (shapes or sweep_shapes())]
    deadline = None if budget_s is None else time.time() + budget_s
    state = dict(shapes=shapes, device=device, steps=steps, rounds=rounds, deadline=deadline,
                 rows=[], done=[], failures=[])

    def report(state):
        meta.update(shapes_not_run=len(shapes) - len(state["done"]), failures=state["failures"])
        for stem in stems:
            _write(stem, meta, state["rows"])

    def record_failure(state, announced, how):
        failure = dict(announced, error=how)
        print(f"sweep: {failure['kind']} {failure['dtype']} B={failure['batch']} "
              f"H={failure['hidden']} {failure['direction']} {failure['path']} failed: {how}",
              flush=True)
        state["failures"].append(failure)

    state = run_in_workers(worker, state, record_failure, report, stall_s)
    for stem in stems:
        print(f"results: {stem}.json / .md")
    return state["rows"], state["failures"]


def _write(stem, meta, rows):
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = [f"# Paths of fused_rnn's CUDA layers, {meta['device_name']} ({meta['date']}, commit "
             f"{meta['commit']}, T={meta['steps']}, {meta['rounds']} rounds)", "",
             "| kind | dtype | B | H | direction | path | median ms | x step-wise | sane |",
             "|---|---|---|---|---|---|---|---|---|"]
    step = {_point_key(r): r["median_s"] for r in rows if r["path"] == "step-wise"}
    for r in rows:
        ratio = r["median_s"] / step[_point_key(r)] if _point_key(r) in step else float("nan")
        lines.append(f"| {r['kind']} | {r['dtype']} | {r['batch']} | {r['hidden']} | "
                     f"{r['direction']} | {r['path']} | {r['median_s'] * 1e3:.3f} | {ratio:.2f} | "
                     f"{'yes' if r['sane'] else 'NO'} |")
    if meta["shapes_not_run"]:
        lines.append(f"\n{meta['shapes_not_run']} shape(s) not run (time budget).")
    if meta.get("failures"):
        lines += ["", "Failed (left out of the sweep where they failed):", ""]
        lines += [f"- {f['kind']} {f['dtype']} B={f['batch']} H={f['hidden']} {f['direction']} "
                  f"{f['path']}: {f['error']}" for f in meta["failures"]]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# The header (anywhere).

def _point_key(row):
    return (GATES[row["kind"]], row["elem_bytes"], row["direction"] == "backward", row["batch"],
            row["hidden"])


def table_points(rows):
    """[(gates, elem_bytes, backward, batch, hidden, [3 paths, fastest first])] from a sweep's
    rows: a point per shape and direction whose step-wise time was measured; paths that failed
    the sanity check left out; a persistent path ahead of the step-wise one only within
    PERSISTENT_MARGIN; the order padded with the step-wise path."""
    by_point = {}
    for r in rows:
        if r["sane"]:
            by_point.setdefault(_point_key(r), {})[r["path"]] = r["median_s"]
    points = []
    for key in sorted(by_point):
        times = by_point[key]
        if "step-wise" not in times:
            continue
        step = times["step-wise"]
        ahead = sorted((t, path) for path, t in times.items()
                       if path != "step-wise" and t <= PERSISTENT_MARGIN * step)
        order = [path for _, path in ahead] + ["step-wise"]
        points.append((*key, order + ["step-wise"] * (3 - len(order))))
    return points


HEADER_INTRO = """\
// The CUDA layer's measured paths, the table the default reads (through default_paths.h, which
// includes it after the types it fills): per cell kind (gates), dtype size, direction, batch and
// hidden size, the paths fastest first. Written by benchmarks/path_table.py; rerun it with a new
// sweep rather than editing by hand."""


def header_text(points, source):
    """csrc/measured_paths.h for `points` (table_points); `source` says where they come from."""
    lines = [HEADER_INTRO, *textwrap.wrap(f"Source: {source}", 97, initial_indent="// ",
                                          subsequent_indent="// "),
             "#pragma once", "", "namespace fused_rnn {", "",
             "inline constexpr MeasuredPoint kMeasuredPaths[] = {",
             "    // gates, elem_bytes, backward, batch, hidden, order (fastest first)"]
    for gates, elem_bytes, backward, batch, hidden, order in points:
        paths = ", ".join(f"CudaPath::{PATHS[p]}" for p in order)
        lines.append(f"    {{{gates}, {elem_bytes}, {'true' if backward else 'false'}, {batch}, "
                     f"{hidden}, {{{paths}}}}},")
    lines += ["};", "", "}  // namespace fused_rnn", ""]
    return "\n".join(lines)


def header_source(text):
    """The source a measured_paths.h names (header_text's `source`)."""
    comment = " ".join(line.removeprefix("// ") for line in text.splitlines()
                       if line.startswith("// "))
    return comment.split("Source: ", 1)[1]


_POINT = re.compile(r"^\s*\{(\d+), (\d+), (true|false), (\d+), (\d+), \{(.*)\}\},$")
_NAMES = {cpp: path for path, cpp in PATHS.items()}


def parse_header(text):
    """The points of a measured_paths.h, as table_points gives them."""
    points = []
    for line in text.splitlines():
        m = _POINT.match(line)
        if m:
            order = [_NAMES[name.strip().removeprefix("CudaPath::")]
                     for name in m.group(6).split(",")]
            points.append((int(m.group(1)), int(m.group(2)), m.group(3) == "true",
                           int(m.group(4)), int(m.group(5)), order))
    return points


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("sweep", help="time every path on the GPU")
    run.add_argument("--out", type=Path, default=None, help="another folder for the results")
    run.add_argument("--steps", type=int, default=STEPS)
    run.add_argument("--rounds", type=int, default=ROUNDS)
    run.add_argument("--budget-s", type=float, default=None,
                     help="start no new shape after this many seconds")
    worker = sub.add_parser("sweep-worker", help="(the sweep's own worker process)")
    worker.add_argument("state", type=Path)
    write = sub.add_parser("header", help="the table from a sweep's JSON")
    write.add_argument("results", type=Path)
    write.add_argument("--write", action="store_true", help=f"write it to {HEADER}")
    args = parser.parse_args(argv)
    if args.command == "sweep":
        if not (torch.cuda.is_available() and fused_rnn.build_info()["cuda"]):
            print("path_table.py sweep: needs a GPU and fused_rnn built with its CUDA kernels",
                  file=sys.stderr)
            return 2
        rows, failures = sweep([RESULTS] + ([args.out] if args.out else []), args.steps,
                               args.rounds, args.budget_s)
        wrong = [r for r in rows if not r["sane"]]
        print(f"{len(rows)} rows, {len(wrong)} failing the sanity check, {len(failures)} "
              f"failed run(s)")
        return 1 if wrong or failures else 0
    if args.command == "sweep-worker":
        sweep_worker(args.state)
        return 0
    data = json.loads(args.results.read_text())
    meta = data["meta"]
    source = (f"benchmarks/results/{args.results.name} ({meta['device_name']}, "
              f"{meta['date']}, commit {meta['commit']}, T={meta['steps']})")
    text = header_text(table_points(data["rows"]), source)
    if args.write:
        HEADER.write_text(text)
        print(f"wrote {HEADER.relative_to(ROOT)}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
