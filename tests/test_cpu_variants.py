"""Every instruction-set variant of the CPU kernels this CPU can run, not only the one it picks,
and the choice itself: never a variant the CPU lacks, whatever ATEN_CPU_CAPABILITY asks for.

The main run tests the variant chosen for this machine; here the parity tests run again in a
subprocess under each other variant the CPU can run (ATEN_CPU_CAPABILITY sets ATen's choice, and
ours with it); the others are skipped with the reason.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused_rnn
from fused_rnn import _C

INFO = fused_rnn.build_info()
FEATURES = _C.cpu_features()
OTHER_ISAS = [isa for isa in INFO["cpu_isas"] if isa != INFO["cpu_isa"]]
TESTS = Path(__file__).parent

AVX2_ONLY = ["avx2", "fma", "f16c"]
AVX512 = AVX2_ONLY + ["avx512f", "avx512bw", "avx512vl", "avx512dq"]


def _variant_in_subprocess(isa: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower())
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_chosen_variant_is_atens_bounded_by_this_cpu():
    assert INFO["cpu_isa"] in INFO["cpu_isas"]
    aten = torch.backends.cpu.get_cpu_capability()
    assert INFO["cpu_isa"] == _C.cpu_variant_for(aten, FEATURES)


@pytest.mark.parametrize("requested, features, chosen", [
    ("AVX512", AVX512, "AVX512"),
    ("AVX512", AVX2_ONLY, "AVX2"),                       # the override that ended in SIGILL
    ("AVX512", [f for f in AVX512 if f != "avx512bw"], "AVX2"),
    ("AVX512", ["avx2", "fma"], "DEFAULT"),              # AVX2 without f16c
    ("AVX512", [], "DEFAULT"),
    ("AVX2", AVX512, "AVX2"),                            # a lower request is kept
    ("AVX2", [], "DEFAULT"),
    ("DEFAULT", AVX512, "DEFAULT"),
    ("ZVECTOR", AVX512, "DEFAULT"),                      # no variant of ours by that name
])
def test_variant_choice_by_feature_set(requested, features, chosen):
    assert _C.cpu_variant_for(requested, features) == chosen


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_parity_under_variant(isa):
    if _C.cpu_variant_for(isa, FEATURES) != isa:
        pytest.skip(f"this CPU cannot run the {isa} kernels (its features: {FEATURES})")
    chosen = _variant_in_subprocess(isa, "import fused_rnn; "
                                         "print(fused_rnn.build_info()['cpu_isa'])")
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    assert chosen.stdout.strip() == isa
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
         "cpu or layernorm", str(TESTS / "test_cells.py"), str(TESTS / "test_layernorm_cells.py"),
         str(TESTS / "test_ops.py") + "::test_ops_match_reference"],
        env=dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower()), capture_output=True, text=True,
        cwd=TESTS.parent)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


BEYOND_THIS_CPU = [isa for isa in INFO["cpu_isas"] if _C.cpu_variant_for(isa, FEATURES) != isa]


@pytest.mark.skipif(not BEYOND_THIS_CPU, reason=f"this CPU runs every variant built "
                    f"({INFO['cpu_isas']}); test_variant_choice_by_feature_set covers the others")
def test_an_override_beyond_this_cpu_runs_the_best_it_has_and_warns():
    isa = BEYOND_THIS_CPU[0]
    code = ("import torch, fused_rnn\n"
            "h, c = fused_rnn.LSTMCell(3, 4)(torch.randn(2, 3))\n"
            "print(fused_rnn.build_info()['cpu_isa'])")
    run = _variant_in_subprocess(isa, code)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == _C.cpu_variant_for(isa, FEATURES)
    # A Python warning or c10's own report: either way on stderr, once.
    assert run.stderr.count("this CPU lacks") == 1, run.stderr[-2000:]
