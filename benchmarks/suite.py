"""The benchmark suite: fused_rnn against torch.nn (and a loop over torch.nn's cells, and the
pure-PyTorch reference), side by side in one process, on every device present.

    python3 benchmarks/suite.py [--preset quick|cpu|gpu|headline|targets]
                                [--device cpu|cuda|all] [--out DIR]

(headline: the GPU issue's headline layers only, against torch.nn, for a short GPU run;
targets: every shape of the GPU issue's targets, whose verdict gpu_targets.py gives.)

Method. Every implementation of a case runs from the same random weights and inputs. Its results
are first checked with the project's accuracy rule (fused_rnn.accuracy), in its form for large
problems: each result's error against torch.nn run in float64 (the truth) may be at most twice
torch.nn's own error at the case's dtype. A fast wrong answer shows as FAIL.
Then, after warm-up, the implementations run in turn, repeatedly, the order rotating every round;
each round gives each implementation's time and its ratio to torch.nn's time in that round. We
report the medians. On the CPU times come from perf_counter, a sample being the mean of as many
calls as fill MIN_CPU_SAMPLE_S (a cell step: tens of calls), so that one-off stalls of a few
microseconds do not decide a case; on CUDA from CUDA events, one call per sample, cycling through
copies of the inputs larger than L2 together so no run finds its inputs in cache.

Reported per case and implementation: median time, ratio to torch.nn, tokens (T*B) per second,
GFLOP/s of the matrix products, and, with backward, the memory saved for backward (the activations
autograd keeps) and on CUDA the peak memory allocated. Output: a table on stdout, and JSON and
markdown in benchmarks/results/ (and --out), named by date and device; with a B x H sweep, a PNG
plot of the speed-up.
"""

import argparse
import datetime
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import fused_rnn
from fused_rnn.accuracy import accuracy_problem, near_truth_problem

try:
    from gpu_targets import target_shapes, targeted
    from implementations import (IMPLEMENTATIONS, LAYER_NORM_KINDS, Case, build_truth,
                                 make_inputs)
except ImportError:  # imported as benchmarks.suite
    from .gpu_targets import target_shapes, targeted
    from .implementations import (IMPLEMENTATIONS, LAYER_NORM_KINDS, Case, build_truth,
                                  make_inputs)

RESULTS = Path(__file__).parent / "results"
L2_BYTES = 64 << 20  # at least the H200's 60 MB L2
MIN_CPU_SAMPLE_S = 0.005


def _shapes(preset):
    """(op, T, B, I, H, label[, settings]) per preset; settings: Case's fields beyond the default
    ones, as a dict."""
    fastrnns = ("layer", 100, 64, 512, 512, "fastrnns")
    long_small_batch = ("layer", 1024, 16, 768, 768, "long")
    if preset == "quick":
        return [("cell", 1, 8, 256, 256, "cell small"), ("cell", 1, 64, 512, 512, "cell fastrnns"),
                ("layer", 50, 64, 512, 512, "fastrnns T=50"), ("layer", 100, 1, 256, 256, "latency")]
    if preset == "targets":  # every shape of the GPU issue's targets (gpu_targets.py)
        return [(*shape, "targets", settings) for *shape, settings in target_shapes()]
    if preset == "headline":  # the GPU issue's headline layers, for a short GPU run
        return [fastrnns, long_small_batch, ("layer", 100, 8, 512, 512, "latency"),
                ("layer", 100, 1, 512, 512, "latency")]
    latency = ("layer", 100, 1, 512, 512, "latency")
    cells = [("cell", 1, b, h, h, "cell sweep") for b in (1, 8, 64) for h in (128, 256, 512)]
    sweep = [("layer", 100 if preset == "cpu" else 256, b, h, h, "sweep")
             for b in (1, 8, 32, 128) for h in (128, 256, 512, 1024)]
    if preset == "cpu":
        return cells + [fastrnns, latency] + sweep
    # The headline shapes first, so that a run cut short by --budget-s still has them.
    return [fastrnns, long_small_batch, latency] + cells + sweep


def cases(preset, device):
    dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if device == "cuda" else [])
    # The layer-normalized cells on the CPU only until their CUDA kernels have passed on a GPU.
    kinds = ("lstm", "gru") + (tuple(LAYER_NORM_KINDS) if device == "cpu" else ())
    for op, steps, batch, input_size, hidden, label, *settings in _shapes(preset):
        for kind in kinds:
            for backward in (False, True):
                for dtype in dtypes:
                    case = Case(op, kind, backward, steps, batch, input_size, hidden, dtype,
                                device, **(settings[0] if settings else {}))
                    if preset != "targets" or targeted(case):
                        yield label, case


def _check(case, runners, inputs):
    """Accuracy of every implementation (None = ok, else why not): against torch.nn and its
    float64 truth, or for a layer-normalized kind against its reference and that in float64 (its
    torch.nn row, a plain cell, is a time to compare with and not checked)."""
    layer_norm = case.kind in LAYER_NORM_KINDS
    theirs = runners["reference" if layer_norm else "torch.nn"](*inputs)
    x, states = inputs
    truth = build_truth(case)(x.double(), [s.double() for s in states])
    verdicts = {}
    for name, run in runners.items():
        if layer_norm and name == "torch.nn":
            verdicts[name] = None
            continue
        results = run(*inputs)
        problems = [near_truth_problem(a, b, t) if layer_norm else
                    accuracy_problem(a, b, t, against_truth=True)
                    for a, b, t in zip(results, theirs, truth)]
        problems = [p for p in problems if p] + ([] if len(results) == len(theirs) else
                                                 [f"{len(results)} results, expected {len(theirs)}"])
        verdicts[name] = problems[0] if problems else None
    return verdicts


def _saved_bytes(run, inputs):
    """Bytes autograd keeps for backward during one run (each storage counted once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(*inputs)
    return sum(storages.values())


def _input_copies(case, first):
    """The inputs, plus copies with other random values up to about 2 x L2 on CUDA."""
    copies = [first]
    if case.device == "cuda":
        size = sum(t.numel() * t.element_size() for t in (first[0], *first[1]))
        for seed in range(2, 2 + min(7, math.ceil(2 * L2_BYTES / max(size, 1)) - 1)):
            copies.append(make_inputs(case, seed))
    return copies


def _time_once(case, run, inputs, calls=1, clock=time.perf_counter):
    """Seconds per call of run(*inputs), over `calls` calls (CPU, timed by `clock`)."""
    if case.device == "cuda":
        start, stop = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        run(*inputs)
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) * 1e-3
    begin = clock()
    for _ in range(calls):
        run(*inputs)
    return (clock() - begin) / calls


def _calls_per_sample(case, run, inputs, clock):
    """Calls per timed sample: on the CPU, enough of them to last MIN_CPU_SAMPLE_S."""
    if case.device == "cuda":
        return 1
    return max(1, min(1000, math.ceil(MIN_CPU_SAMPLE_S / _time_once(case, run, inputs, 1, clock))))


# Implementations a preset leaves out: the GPU runs of the headline and targets presets have no
# time for the Python loops.
PRESET_SKIPS = {"headline": {"nn cell loop", "reference"},
                "targets": {"nn cell loop", "reference"}}


def measure(case, repeats, warmup=2, clock=time.perf_counter, skip=()):
    """Every implementation of `case` (but those in `skip`), checked and timed; `clock` times CPU
    samples (tests pass a fake one)."""
    runners = {name: build(case) for name, (build, applies) in IMPLEMENTATIONS.items()
               if applies(case) and name not in skip}
    inputs = make_inputs(case)
    verdicts = _check(case, runners, inputs)
    copies = _input_copies(case, inputs)
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name](*inputs)
    calls = _calls_per_sample(case, runners["torch.nn"], inputs, clock)
    times = {name: [] for name in names}
    ratios = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        round_times = {name: _time_once(case, runners[name], copies[r % len(copies)], calls,
                                        clock)
                       for name in order}
        for name in names:
            times[name].append(round_times[name])
            ratios[name].append(round_times[name] / round_times["torch.nn"])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        row = dict(implementation=name, op=case.op, kind=case.kind,
                   pass_="fwd+bwd" if case.backward else "fwd", steps=case.steps,
                   batch=case.batch, input_size=case.input_size, hidden=case.hidden,
                   dtype=str(case.dtype).replace("torch.", ""), device=case.device,
                   layers=case.layers, bidirectional=case.bidirectional, packed=case.packed,
                   tf32=case.tf32, variant=case.variant,
                   median_s=median, ratio_to_torch_nn=statistics.median(ratios[name]),
                   tokens_per_s=case.tokens / median, gflops=case.flops / median / 1e9,
                   correct=verdicts[name] is None, problem=verdicts[name],
                   calls_per_sample=calls)
        if case.backward:
            row["saved_for_backward_mb"] = _saved_bytes(runners[name], inputs) / 2**20
            if case.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                runners[name](*inputs)
                row["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append(row)
    return rows


def device_tag(device):
    if device == "cuda":
        return torch.cuda.get_device_name().lower().replace("nvidia", "").strip().split()[0]
    return "cpu"


def _op(row):
    """A row's op and its case's settings beyond the default ones (rows of older runs have
    none)."""
    return f"{row['op']} {row['variant']}" if row.get("variant") else row["op"]


def _format_row(label, row):
    memory = row.get("peak_mb", row.get("saved_for_backward_mb"))
    return (f"{label:<14} {row['kind']:<4} {_op(row):<5} {row['pass_']:<7} "
            f"T={row['steps']:<4} B={row['batch']:<3} H={row['hidden']:<4} {row['dtype']:<8} "
            f"{row['implementation']:<16} {row['median_s'] * 1e3:10.3f} ms "
            f"{row['ratio_to_torch_nn']:6.2f}x {row['tokens_per_s']:12.0f} tok/s "
            f"{row['gflops']:7.1f} GF/s "
            f"{'' if memory is None else f'{memory:8.1f} MB'} "
            f"{'ok' if row['correct'] else 'FAIL: ' + row['problem']}")


def write_markdown(path, meta, rows):
    lines = [f"# fused_rnn benchmarks, {meta['date']}, {meta['device_name']}", "",
             f"torch {meta['torch']}, fused_rnn {meta['fused_rnn']}, CPU kernels "
             f"{meta['cpu_isa']}, {meta['threads']} threads; median of {meta['repeats']} "
             "interleaved rounds; ratio = time / torch.nn's time (below 1: faster)."
             + (f" Stopped by the time budget: {meta['cases_not_run']} case(s) of the preset "
                "not run." if meta["cases_not_run"] else ""), "",
             "| case | op | pass | T | B | I | H | dtype | implementation | median ms | ratio | "
             "tokens/s | GFLOP/s | memory MB | correct |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        memory = row.get("peak_mb", row.get("saved_for_backward_mb"))
        lines.append(
            f"| {row['label']} | {row['kind']} {_op(row)} | {row['pass_']} | {row['steps']} | "
            f"{row['batch']} | {row['input_size']} | {row['hidden']} | {row['dtype']} | "
            f"{row['implementation']} | {row['median_s'] * 1e3:.3f} | "
            f"{row['ratio_to_torch_nn']:.2f} | {row['tokens_per_s']:.0f} | {row['gflops']:.1f} | "
            f"{'' if memory is None else f'{memory:.1f}'} | "
            f"{'yes' if row['correct'] else 'NO: ' + row['problem']} |")
    path.write_text("\n".join(lines) + "\n")


def plot_sweep(path, rows, device):
    """Speed-up of fused_rnn over torch.nn against B (one line per H), per layer case."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r["label"] == "sweep" and r["implementation"] == "fused_rnn"]
    if not sweep:
        return False
    panels = sorted({(r["kind"], r["pass_"], r["dtype"]) for r in sweep})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (kind, pass_, dtype) in zip(axes[0], panels):
        mine = [r for r in sweep if (r["kind"], r["pass_"], r["dtype"]) == (kind, pass_, dtype)]
        for hidden in sorted({r["hidden"] for r in mine}):
            points = sorted((r["batch"], 1 / r["ratio_to_torch_nn"]) for r in mine
                            if r["hidden"] == hidden)
            ax.plot(*zip(*points), marker="o", label=f"H={hidden}")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{kind} layer {pass_} {dtype}")
        ax.set_xlabel("batch size B")
        ax.set_ylabel("speed-up over torch.nn")
        ax.legend(fontsize=7)
    fig.suptitle(f"fused_rnn vs torch.nn on {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _write_reports(stems, meta, rows):
    for stem in stems:
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        write_markdown(stem.with_suffix(".md"), meta, rows)


def run(preset, devices, repeats, out_dirs, budget_s=None):
    info = fused_rnn.build_info()
    archs = ", ".join(info["cuda_archs"]) or "-"
    print(f"fused_rnn {info['version']} built against torch {info['torch_version']}, running on "
          f"torch {torch.__version__}; CUDA kernels compiled in: "
          f"{'yes' if info['cuda'] else 'no'} (archs: {archs}); GPU visible: "
          f"{'yes' if torch.cuda.is_available() else 'no'}; CPU kernels built for "
          f"{', '.join(info['cpu_isas'])}, running {info['cpu_isa']}")
    failures = 0
    for device in devices:
        rows = []
        name = torch.cuda.get_device_name() if device == "cuda" else platform.machine()
        print(f"\n== {device} ({name}), preset {preset}, {repeats} rounds; ratio = time / "
              "torch.nn's; memory = saved for backward (and CUDA peak)", flush=True)
        date = datetime.date.today().isoformat()
        meta = dict(date=date, device=device, device_name=torch.cuda.get_device_name()
                    if device == "cuda" else f"CPU ({platform.machine()})",
                    torch=torch.__version__, fused_rnn=info["version"], cpu_isa=info["cpu_isa"],
                    threads=torch.get_num_threads(), preset=preset, repeats=repeats,
                    cases_not_run=0)
        stems = [out / f"{date}-{preset}-{device_tag(device)}" for out in out_dirs]
        started = time.monotonic()
        for label, case in cases(preset, device):
            if budget_s is not None and time.monotonic() - started >= budget_s:
                meta["cases_not_run"] += 1
                continue
            for row in measure(case, repeats, skip=PRESET_SKIPS.get(preset, ())):
                row["label"] = label
                rows.append(row)
                failures += not row["correct"]
                print(_format_row(label, row), flush=True)
            _write_reports(stems, meta, rows)  # after every case: a run cut short keeps its rows
        if meta["cases_not_run"]:
            print(f"time budget of {budget_s} s spent: {meta['cases_not_run']} case(s) of the "
                  "preset not run")
        _write_reports(stems, meta, rows)
        for stem in stems:
            if plot_sweep(stem.with_suffix(".png"), rows, meta["device_name"]):
                print(f"plot: {stem.with_suffix('.png')}")
            print(f"results: {stem}.json / .md")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick",
                        choices=["quick", "cpu", "gpu", "headline", "targets"])
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds per case (default: 5 quick, 15 otherwise)")
    parser.add_argument("--out", type=Path, default=None, help="another folder for the results")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new case after this many seconds per device (the rest "
                             "are counted as not run in the report)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and fused_rnn.build_info()["cuda"]
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu"] + (["cuda"] if cuda else [])}
    repeats = args.repeats or (5 if args.preset == "quick" else 15)
    failures = run(args.preset, devices[args.device], repeats,
                   [RESULTS] + ([args.out] if args.out else []), args.budget_s)
    print(f"\n{'all results correct' if not failures else f'{failures} incorrect result(s)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
