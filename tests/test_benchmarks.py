"""The benchmark suite measures what it says, checks correctness, and writes its reports."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import diagnose_paths  # noqa: E402
import path_table  # noqa: E402
import suite  # noqa: E402
import workers  # noqa: E402
import fused_rnn  # noqa: E402
from fused_rnn import _C  # noqa: E402
from implementations import Case  # noqa: E402


@pytest.mark.parametrize("op", ["cell", "layer"])
def test_measure_reports_every_implementation_correct(op):
    case = Case(op, "gru", True, 1 if op == "cell" else 5, 3, 4, 6, torch.float32, "cpu")
    rows = suite.measure(case, repeats=2, warmup=1)
    names = [r["implementation"] for r in rows]
    assert names == ["fused_rnn", "torch.nn", "reference"] if op == "cell" else \
        ["fused_rnn", "torch.nn", "nn cell loop", "reference"]
    for row in rows:
        assert row["correct"], row["problem"]
        assert row["median_s"] > 0 and row["tokens_per_s"] > 0 and row["gflops"] > 0
        assert row["saved_for_backward_mb"] > 0
    assert next(r for r in rows if r["implementation"] == "torch.nn")["ratio_to_torch_nn"] == 1.0


@pytest.mark.parametrize("op", ["cell", "layer"])
@pytest.mark.parametrize("kind", ["layernorm_lstm", "layernorm_gru"])
def test_layer_norm_kinds_are_checked_against_their_reference(kind, op):
    case = Case(op, kind, True, 1 if op == "cell" else 5, 3, 4, 6, torch.float32, "cpu")
    rows = suite.measure(case, repeats=2, warmup=1)
    assert [r["implementation"] for r in rows] == ["fused_rnn", "torch.nn", "reference"]
    for row in rows:
        assert row["correct"], row["problem"]
        assert row["median_s"] > 0


class FakeClock:
    """A clock that advances `tick` seconds per reading, whatever the machine is doing."""

    def __init__(self, tick):
        self.tick, self.now = tick, 0.0

    def __call__(self):
        self.now += self.tick
        return self.now


def test_a_short_call_is_timed_many_to_a_sample_and_reported_per_call():
    tick = suite.MIN_CPU_SAMPLE_S / 40  # a first call "lasting" a fortieth of a sample
    case = Case("cell", "lstm", False, 1, 2, 3, 4, torch.float32, "cpu")
    rows = suite.measure(case, repeats=3, warmup=0, clock=FakeClock(tick))
    for row in rows:
        assert row["calls_per_sample"] == 40
        # Two readings per sample of 40 calls: one tick, divided over the calls.
        assert row["median_s"] == pytest.approx(tick / 40)
        assert row["ratio_to_torch_nn"] == pytest.approx(1.0)


def test_a_wrong_implementation_is_flagged(monkeypatch):
    build, applies = suite.IMPLEMENTATIONS["fused_rnn"]

    def build_wrong(case):
        run = build(case)
        return lambda x, states: [r * 1.01 for r in run(x, states)]

    monkeypatch.setitem(suite.IMPLEMENTATIONS, "fused_rnn", (build_wrong, applies))
    case = Case("cell", "lstm", False, 1, 2, 3, 4, torch.float32, "cpu")
    rows = suite.measure(case, repeats=1, warmup=0)
    assert not rows[0]["correct"] and "error" in rows[0]["problem"]


def test_reports_are_written(tmp_path):
    rows = []
    for batch in (1, 4):
        for hidden in (4, 8):
            case = Case("layer", "lstm", False, 3, batch, 4, hidden, torch.float32, "cpu")
            for row in suite.measure(case, repeats=1, warmup=0):
                rows.append(dict(row, label="sweep"))
    meta = dict(date="2026-01-01", device="cpu", device_name="CPU", torch=torch.__version__,
                fused_rnn="0", cpu_isa="DEFAULT", threads=1, preset="test", repeats=1,
                cases_not_run=0)
    suite.write_markdown(tmp_path / "r.md", meta, rows)
    assert "| sweep | lstm layer | fwd |" in (tmp_path / "r.md").read_text()
    assert suite.plot_sweep(tmp_path / "r.png", rows, "CPU")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(rows)  # serialisable as the suite writes it


def test_a_spent_time_budget_stops_the_suite_and_the_report_says_so(tmp_path, capsys):
    assert suite.run("quick", ["cpu"], repeats=1, out_dirs=[tmp_path], budget_s=0) == 0
    cases = len(list(suite.cases("quick", "cpu")))
    assert f"{cases} case(s) of the preset not run" in capsys.readouterr().out
    (report,) = tmp_path.glob("*-quick-cpu.json")
    assert json.loads(report.read_text())["meta"]["cases_not_run"] == cases
    assert f"{cases} case(s) of the preset not run" in report.with_suffix(".md").read_text()


@pytest.mark.parametrize("settings", [dict(layers=2), dict(bidirectional=True),
                                      dict(packed=True), dict(layers=2, bidirectional=True,
                                                              packed=True)])
def test_layer_settings_are_measured_and_checked(settings):
    case = Case("layer", "lstm", True, 6, 3, 4, 5, torch.float32, "cpu", **settings)
    rows = suite.measure(case, repeats=1, warmup=0)
    assert [r["implementation"] for r in rows] == ["fused_rnn", "torch.nn"]  # no Python loops
    for row in rows:
        assert row["correct"], row["problem"]
        assert row["variant"] == case.variant != ""
        assert {k: row[k] for k in settings} == settings
    if case.packed:
        assert case.tokens == int(case.lengths().sum()) < 6 * 3
        assert ((case.lengths() >= 3) & (case.lengths() <= 6)).all()
    plain = Case("layer", "lstm", True, 6, 3, 4, 5, torch.float32, "cpu")
    layers, directions = settings.get("layers", 1), 2 if settings.get("bidirectional") else 1
    upper = (directions * 5 + 5) / (4 + 5)  # a layer above the first takes D H inputs
    expected = plain.flops * directions * (1 + (layers - 1) * upper) * case.tokens / plain.tokens
    assert case.flops == pytest.approx(expected)


def test_a_wrong_packed_implementation_is_flagged(monkeypatch):
    """The packed case's results are the packed outputs: a wrong one among them fails."""
    import implementations
    build = implementations.IMPLEMENTATIONS["fused_rnn"][0]

    def wrong(case):
        run = build(case)
        return lambda x, states: [r * 1.01 if k == 0 else r
                                  for k, r in enumerate(run(x, states))]
    monkeypatch.setitem(implementations.IMPLEMENTATIONS, "fused_rnn",
                        (wrong, implementations.IMPLEMENTATIONS["fused_rnn"][1]))
    case = Case("layer", "gru", False, 6, 3, 4, 5, torch.float32, "cpu", packed=True)
    rows = {r["implementation"]: r for r in suite.measure(case, repeats=1, warmup=0)}
    assert not rows["fused_rnn"]["correct"] and rows["torch.nn"]["correct"]


def _all_targets():
    from gpu_targets import GROWTH, TARGETS
    return TARGETS + (GROWTH,)


def test_the_targets_preset_runs_every_target_case_and_no_other():
    run = {(c.op, c.kind, c.steps, c.batch, c.input_size, c.hidden, str(c.dtype)[6:],
            c.backward, c.variant) for _, c in suite.cases("targets", "cuda")}
    wanted = set()
    for t in _all_targets():
        variant = Case(t.op, "lstm", False, 1, 1, 1, 1, torch.float32, "cuda",
                       **dict(t.settings)).variant
        for backward, limit in ((False, t.forward), (True, t.forward_backward)):
            if limit is not None:
                wanted |= {(t.op, kind, *shape, dtype, backward, variant) for kind in t.kinds
                           for shape in t.shapes for dtype in t.dtypes}
    assert run == wanted
    assert suite.PRESET_SKIPS["targets"] == {"nn cell loop", "reference"}


def _target_rows(ratio=1.0, peak=(10.0, 10.0), growth=1.5):
    """Suite rows of fused_rnn and torch.nn for every target case, fused_rnn at `ratio` of its
    target's limit, training peaks (fused_rnn's, torch.nn's) in MB; and the persistent rows of
    GROWTH's cases, the second shape `growth` times the first's time."""
    from gpu_targets import GROWTH, TARGETS
    rows = []
    for t in TARGETS:
        settings = dict(dict(layers=1, bidirectional=False, packed=False, tf32=True),
                        **dict(t.settings))
        for kind in t.kinds:
            for steps, batch, input_size, hidden in t.shapes:
                for dtype in t.dtypes:
                    for pass_, limit in (("fwd", t.forward), ("fwd+bwd", t.forward_backward)):
                        case = dict(op=t.op, kind=kind, pass_=pass_, steps=steps, batch=batch,
                                    input_size=input_size, hidden=hidden, dtype=dtype,
                                    correct=True, **settings)
                        for name, r, mb in (("fused_rnn", ratio * limit, peak[0]),
                                            ("torch.nn", 1.0, peak[1])):
                            row = dict(case, implementation=name, ratio_to_torch_nn=r)
                            if pass_ == "fwd+bwd":
                                row["peak_mb"] = mb
                            rows.append(row)
    for kind in GROWTH.kinds:
        for dtype in GROWTH.dtypes:
            for (steps, batch, input_size, hidden), time in zip(GROWTH.shapes, (1e-3, growth * 1e-3)):
                rows.append(dict(op="layer", kind=kind, pass_="fwd", steps=steps, batch=batch,
                                 input_size=input_size, hidden=hidden, dtype=dtype, correct=True,
                                 implementation="fused persistent", median_s=time,
                                 ratio_to_torch_nn=0.5))
    return rows


def test_targets_hold_at_their_limits_and_not_above():
    from gpu_targets import growth_verdicts, report, verdicts
    assert all(v["holds"] for v in verdicts(_target_rows(1.0)))
    assert all(v["holds"] for v in growth_verdicts(_target_rows(1.0)))
    assert not any(v["holds"] for v in verdicts(_target_rows(1.01)))
    assert not any(v["holds"] for v in growth_verdicts(_target_rows(1.0, growth=2.0)))
    lines = report(_target_rows(1.0, peak=(10.0, 10.0)))
    assert not any(line.endswith("| no |") for line in lines)
    assert any("none above it" in line for line in lines)


def test_a_target_with_a_case_missing_wrong_or_over_does_not_hold():
    from gpu_targets import growth_verdicts, report, verdicts
    rows = _target_rows(0.5, peak=(12.0, 10.0))
    fastrnns_fwd = [r for r in rows if r["implementation"] == "fused_rnn" and r["steps"] == 100
                    and r["batch"] == 64 and r["pass_"] == "fwd" and r["layers"] == 1
                    and not r["bidirectional"] and not r["packed"] and r["tf32"]]
    rows.remove(next(r for r in fastrnns_fwd if r["dtype"] == "float32"))
    next(r for r in fastrnns_fwd if r["dtype"] == "bfloat16")["correct"] = False
    next(r for r in fastrnns_fwd if r["dtype"] == "float16")["ratio_to_torch_nn"] = 1.2
    failing = {(v["target"], v["dtype"], v["pass_"]) for v in verdicts(rows) if not v["holds"]}
    assert failing == {("fastrnns", d, "fwd") for d in ("float32", "bfloat16", "float16")}
    lines = report(rows)
    assert "| fastrnns | float32 | fwd | 1 of 2 |" in "\n".join(lines)
    assert any("above it in" in line and "12.0 vs 10.0 MB" in line for line in lines)
    rows = [r for r in rows if not (r["implementation"] == "fused persistent"
                                    and r["batch"] == 64 and r["kind"] == "gru")]
    assert {(v["kind"], v["holds"]) for v in growth_verdicts(rows)} == {("lstm", True),
                                                                      ("gru", False)}


def test_a_target_says_whether_a_setting_would_make_it_hold():
    """Where fused_rnn's default is over a target's limit but, case by case, a correct row of a
    setting of ours is under it, the target does not hold and would hold with the settings,
    naming the worst case's fastest implementation; a wrong row does not count."""
    from gpu_targets import report, verdicts
    rows = _target_rows(1.5)
    two_layers = [r for r in rows if r["implementation"] == "fused_rnn" and r["layers"] == 2]
    for row in two_layers:
        rows.append(dict(row, implementation="fused pipelined layers",
                         ratio_to_torch_nn=0.9 if row["kind"] == "lstm" else 0.8))
        rows.append(dict(row, implementation="fused concurrent directions",
                         ratio_to_torch_nn=0.1, correct=False))
    by_target = {}
    for v in verdicts(rows):
        by_target.setdefault(v["target"], []).append(v)
    for v in by_target["fastrnns, 2 layers"]:
        assert not v["holds"] and v["holds_with_settings"]
        assert v["best_ratio"] == pytest.approx(0.9)
        assert v["best_case"].endswith("lstm layer T=100 B=64 H=512: fused pipelined layers")
    assert not any(v["holds_with_settings"] for v in by_target["fastrnns"])
    assert any(line.startswith("| fastrnns, 2 layers | bfloat16 | fwd |") and
               line.endswith("| no | 0.90x (lstm layer T=100 B=64 H=512: fused pipelined "
                             "layers) | yes |") for line in report(rows))


@pytest.mark.parametrize("tf32", [True, False])
def test_a_case_runs_under_its_tf32_setting_and_restores_it(tf32):
    import implementations
    case = Case("layer", "lstm", False, 2, 1, 2, 2, torch.float32, "cpu", tf32=tf32)
    seen = []
    run = implementations._runner(case, lambda x, states: seen.append(
        torch.backends.cudnn.allow_tf32) or [x], [])
    before = torch.backends.cudnn.allow_tf32
    run(torch.zeros(2, 1, 2), [])
    assert seen == [tf32] and torch.backends.cudnn.allow_tf32 == before
    assert (case.variant == "TF32 off") != tf32


# ---------------------------------------------------------------------------------------------
# path_table.py: the CUDA default's table of measured paths, from a sweep's rows.


def _sweep_row(kind, batch, hidden, path, ms, direction="forward", sane=True):
    return dict(kind=kind, dtype="bfloat16", elem_bytes=2, batch=batch, hidden=hidden, steps=64,
                direction=direction, path=path, mode="", median_s=ms * 1e-3, difference=0.0,
                sane=sane)


def test_the_table_orders_the_paths_measured_at_each_point():
    rows = [
        # A clear win for both persistent paths, the tensor cores first.
        _sweep_row("lstm", 16, 768, "step-wise", 10.0), _sweep_row("lstm", 16, 768, "SIMT", 6.0),
        _sweep_row("lstm", 16, 768, "tensor cores", 2.0),
        # Within the margin of the step-wise time: a tie, which goes to step-wise.
        _sweep_row("lstm", 64, 768, "step-wise", 10.0),
        _sweep_row("lstm", 64, 768, "tensor cores", 9.8),
        # Fastest but wrong: never in the table.
        _sweep_row("gru", 1, 256, "step-wise", 4.0), _sweep_row("gru", 1, 256, "SIMT", 0.5,
                                                                 sane=False),
        # The backward, a point of its own.
        _sweep_row("gru", 1, 256, "step-wise", 8.0, "backward"),
        _sweep_row("gru", 1, 256, "tensor cores", 3.0, "backward"),
        # No step-wise time (a run cut short): no point.
        _sweep_row("gru", 8, 256, "SIMT", 1.0),
    ]
    step, simt, tc = "step-wise", "SIMT", "tensor cores"
    assert path_table.table_points(rows) == [
        (3, 2, False, 1, 256, [step, step, step]),
        (3, 2, True, 1, 256, [tc, step, step]),
        (4, 2, False, 16, 768, [tc, simt, step]),
        (4, 2, False, 64, 768, [step, step, step]),
    ]


def test_the_header_reads_back_and_names_its_source():
    points = [(4, 2, False, 16, 768, ["tensor cores", "SIMT", "step-wise"]),
              (3, 4, True, 256, 2048, ["step-wise"] * 3)]
    source = "a sweep " + "of many words " * 12
    text = path_table.header_text(points, source)
    assert all(len(line) <= 100 for line in text.splitlines())
    assert path_table.parse_header(text) == points
    assert path_table.header_source(text) == source.strip()


def test_the_committed_table_is_the_generators_and_the_build_reads_it():
    text = path_table.HEADER.read_text()
    points = path_table.parse_header(text)
    assert points, "csrc/measured_paths.h holds no point"
    assert path_table.header_text(points, path_table.header_source(text)) == text
    for gates, elem_bytes, backward, batch, hidden, order in points:
        assert _C.measured_point([], gates, elem_bytes, backward, batch, hidden) == \
            dict(batch=batch, hidden=hidden, order=order)


def test_the_committed_table_gives_nothing_outside_what_it_measured():
    """Whatever the table holds (a sweep rewrites it): past each kind's measured span of batches
    and hidden sizes, for a kind it does not hold, and in float64, no point (step-wise)."""
    points = path_table.parse_header(path_table.HEADER.read_text())
    kinds = {(g, e, bwd) for g, e, bwd, *_ in points}
    for gates, elem_bytes, backward in kinds:
        mine = [p for p in points if p[:3] == (gates, elem_bytes, backward)]
        batches, hiddens = [p[3] for p in mine], [p[4] for p in mine]
        inside = (min(batches), min(hiddens))
        assert _C.measured_point([], gates, elem_bytes, backward, *inside) is not None
        for batch, hidden in ((max(batches) + 1, inside[1]), (inside[0], min(hiddens) - 1),
                              (inside[0], max(hiddens) + 1)):
            assert _C.measured_point([], gates, elem_bytes, backward, batch, hidden) is None
        assert _C.measured_point([], gates, 8, backward, *inside) is None
    for gates, elem_bytes, backward in {(4, 2, True), (3, 4, False)} - kinds:
        assert _C.measured_point([], gates, elem_bytes, backward, 1, 512) is None


@pytest.mark.parametrize("description, path", [
    ("persistent (tensor cores)", "tensor cores"),
    ("persistent (tensor cores, clusters of 2; measured fastest at batch 16, hidden 768)",
     "tensor cores"),
    ("persistent (SIMT; no tensor cores: the hidden size is not a positive multiple of 16)",
     "SIMT"),
    ("persistent (SIMT)", "SIMT"),
    ("step-wise: persistent kernels are off", "step-wise"),
])
def test_path_of_reads_cuda_layer_path(description, path):
    assert path_table.path_of(description) == path
    with pytest.raises(ValueError, match="not a path description"):
        path_table.path_of("cuDNN")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_sweep_measures_a_shape_forward_and_backward(kind):
    """The sweep's own code, on the CPU's one path (the GPU run times every path)."""
    rows = path_table.measure_shape(kind, "float32", 3, 8, 5, 2, device="cpu")
    assert [(r["direction"], r["path"]) for r in rows] == [("forward", "step-wise"),
                                                           ("backward", "step-wise")]
    for r in rows:
        assert r["median_s"] > 0 and r["sane"] and r["difference"] == 0
        assert (r["kind"], r["elem_bytes"], r["batch"], r["hidden"]) == (kind, 4, 3, 8)
    assert path_table.table_points(rows) == [
        (path_table.GATES[kind], 4, backward, 3, 8, ["step-wise"] * 3)
        for backward in (False, True)]


def test_a_sweeps_report_gives_the_header(tmp_path, capsys):
    rows = path_table.measure_shape("gru", "bfloat16", 2, 8, 4, 2, device="cpu")
    meta = dict(date="2026-12-02", device_name="CPU", commit="abc1234", steps=4, rounds=2,
                shapes_not_run=1)
    path_table._write(tmp_path / "sweep", meta, rows)
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"] == rows
    report = (tmp_path / "sweep.md").read_text()
    assert "| gru | bfloat16 | 2 | 8 | backward | step-wise |" in report
    assert "1 shape(s) not run" in report
    assert path_table.main(["header", str(tmp_path / "sweep.json")]) == 0
    text = capsys.readouterr().out
    assert path_table.parse_header(text) == [(3, 2, False, 2, 8, ["step-wise"] * 3),
                                             (3, 2, True, 2, 8, ["step-wise"] * 3)]
    assert path_table.header_source(text) == \
        "benchmarks/results/sweep.json (CPU, 2026-12-02, commit abc1234, T=4)"


# The sweep's workers: a path that raises, crashes or hangs its worker is recorded and left out.
SWEEP_SHAPES = [("lstm", "float32", 2, 8), ("gru", "bfloat16", 3, 8)]


def test_the_sweep_measures_its_shapes_in_a_worker(tmp_path):
    rows, failures = path_table.sweep([tmp_path], 3, 1, None, shapes=SWEEP_SHAPES, device="cpu")
    assert failures == []
    assert [(r["kind"], r["batch"], r["direction"]) for r in rows] == [
        ("lstm", 2, "forward"), ("lstm", 2, "backward"), ("gru", 3, "forward"),
        ("gru", 3, "backward")]
    (results,) = tmp_path.glob("*-paths-cpu.json")
    data = json.loads(results.read_text())
    assert data["rows"] == rows and data["meta"]["shapes_not_run"] == 0


# A stand-in for a worker whose kernels fail: its first run raises at the first shape's
# tensor-core backward, its second hangs at the second shape's SIMT forward; then the real worker.
FAILING_WORKER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
import path_table
import workers
state = Path(sys.argv[1])
count = state.with_suffix(".count")
run = int(count.read_text()) if count.exists() else 0
count.write_text(str(run + 1))
if run < 2:
    kind, dtype, batch, hidden = json.loads(state.read_text())["shapes"][run]
    direction, path = [("backward", "tensor cores"), ("forward", "SIMT")][run]
    workers.announce(state, kind=kind, dtype=dtype, batch=batch, hidden=hidden,
                     direction=direction, path=path)
    if run == 0:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    time.sleep(3600)
path_table.sweep_worker(state)
"""


def test_a_worker_that_fails_or_hangs_is_replaced_without_the_path(tmp_path, capsys):
    script = tmp_path / "worker.py"
    script.write_text(FAILING_WORKER.format(benchmarks=str(Path(path_table.__file__).parent)))
    rows, failures = path_table.sweep([tmp_path], 3, 1, None, shapes=SWEEP_SHAPES, device="cpu",
                                      worker=[sys.executable, str(script)], stall_s=3)
    assert [(f["kind"], f["batch"], f["direction"], f["path"], f["error"]) for f in failures] == [
        ("lstm", 2, "backward", "tensor cores",
         "RuntimeError: CUDA error: an illegal memory access was encountered"),
        ("gru", 3, "forward", "SIMT", "hung (no progress for 3 s)")]
    assert [(r["kind"], r["direction"], r["path"]) for r in rows] == [
        ("lstm", "forward", "step-wise"), ("lstm", "backward", "step-wise"),
        ("gru", "forward", "step-wise"), ("gru", "backward", "step-wise")]
    (report,) = tmp_path.glob("*-paths-cpu.md")
    assert "- gru bfloat16 B=3 H=8 forward SIMT: hung (no progress for 3 s)" in \
        report.read_text()
    assert "lstm float32 B=2 H=8 backward tensor cores failed: RuntimeError" in \
        capsys.readouterr().out


def test_a_worker_leaves_out_what_failed_at_a_shape_and_twice_anywhere():
    def failure(shape, direction, path):
        return dict(zip(("kind", "dtype", "batch", "hidden"), shape), direction=direction,
                    path=path, error="")
    first, second = SWEEP_SHAPES
    failures = [failure(first, "backward", "tensor cores"), failure(first, "forward", "SIMT")]
    assert path_table._skipped(failures, first) == {("backward", "tensor cores"),
                                                    ("forward", "SIMT")}
    assert path_table._skipped(failures, second) == set()
    failures.append(failure(second, "forward", "SIMT"))
    assert path_table._skipped(failures, SWEEP_SHAPES[1]) == {("forward", "SIMT"),
                                                              ("backward", "SIMT")}
    # Without the step-wise path (the reference), a shape is not measured.
    assert path_table.measure_shape(*first, 3, 1, device="cpu",
                                    skip={("backward", "step-wise")}) == []


def test_a_worker_stops_at_the_deadline(tmp_path):
    state = tmp_path / "sweep.json"
    workers.write_json(state, dict(shapes=[list(s) for s in SWEEP_SHAPES], device="cpu",
                                   steps=3, rounds=1, deadline=0, rows=[], done=[],
                                   failures=[]))
    path_table.sweep_worker(state)
    assert json.loads(state.read_text())["done"] == []
    assert not state.with_suffix(".running").exists()


# diagnose_paths.py: where a forced CUDA path departs from the step-wise one.

def test_ranges_compress_indices():
    assert diagnose_paths.ranges([5, 0, 1, 2, 7, 8, 2]) == "0-2, 5, 7-8"
    assert diagnose_paths.ranges([]) == ""


def test_a_departure_says_where_it_lies():
    """A stand-in for a fragment map's error: units 16-31 of rows 0-8 from the third step."""
    want = torch.randn(6, 9, 48, dtype=torch.float64)
    got = want.clone()
    got[2:, :, 16:32] += 1.0
    got[5, 3, 40] = float("nan")
    d = diagnose_paths.departure(got, want, 0.05)
    assert (d["bad"], d["of"], d["nonfinite"]) == (4 * 9 * 16 + 1, 6 * 9 * 48, 1)
    assert (d["steps"], d["rows"], d["columns"]) == ("2-5", "0-8", "16-31, 40")
    assert d["error"] == pytest.approx(1.0 / float(want.abs().max()))
    same = diagnose_paths.departure(want, want, 0.05)
    assert (same["bad"], same["error"], "steps" in same) == (0, 0.0, False)
    lines = diagnose_paths.summary_lines(dict(
        case="lstm bfloat16 B=9 H=48 tensor cores, flags", verdict="WRONG",
        ran=dict(forward="persistent (tensor cores)", backward="persistent (tensor cores)"),
        output=dict(forward=d, reverse=same), final=[same], grads={"input": d}))
    assert lines[0].startswith("- lstm bfloat16 B=9 H=48 tensor cores, flags: **WRONG** (ran: "
                               "forward persistent (tensor cores)")
    assert "steps 2-5; rows 0-8; units 16-31, 40" in lines[1]
    assert lines[2].startswith("  - grad input: 577/2592 wrong (1 not finite)")


def test_the_diagnosis_runs_its_cases_in_workers(tmp_path):
    """On the CPU: the step-wise path against torch.nn and against itself, every case ok."""
    reports = diagnose_paths.run(tmp_path, only="B=9 H=48 packed", device="cpu")
    assert [r["case"] for r in reports] == [
        f"{kind} {dtype} B=9 H=48 packed {path}" for kind in ("lstm", "gru")
        for dtype in ("bfloat16", "float16", "float32")
        for path in ("step-wise against torch.nn", "step-wise")]
    assert {r["verdict"] for r in reports} == {"ok"}
    assert [r["output"]["forward"]["error"] > 0 for r in reports[:2]] == [True, False]
    assert set(reports[0]["grads"]) == {"input", "h0", "c0", *(
        n for n, _ in fused_rnn.LSTM(4, 4, bidirectional=True).named_parameters())}
    assert "12 ok, 0 not; 0 not run" in (tmp_path / "paths-diagnosis.md").read_text()


# A stand-in for a worker whose first case crashes it; then the real worker.
CRASHING_DIAGNOSIS = """
import sys
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
import diagnose_paths, workers
state = Path(sys.argv[1])
count = state.with_suffix(".count")
if not count.exists():
    count.write_text("1")
    workers.announce(state, case=0)
    raise RuntimeError("CUDA error: an illegal memory access was encountered")
diagnose_paths.worker(state)
"""


def test_a_case_that_crashes_its_worker_is_reported_and_the_rest_run(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(CRASHING_DIAGNOSIS.format(benchmarks=str(Path(path_table.__file__).parent)))
    reports = diagnose_paths.run(tmp_path, only="lstm float32 B=9 H=48 step-wise",
                                 device="cpu", worker_command=[sys.executable, str(script)])
    assert [(r["case"], r["verdict"]) for r in reports] == [
        ("lstm float32 B=9 H=48 step-wise against torch.nn",
         "failed: RuntimeError: CUDA error: an illegal memory access was encountered"),
        ("lstm float32 B=9 H=48 step-wise", "ok")]
    text = (tmp_path / "paths-diagnosis.md").read_text()
    assert "1 ok, 1 not" in text and "**failed: RuntimeError" in text
