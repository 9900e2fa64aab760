"""Every instruction-set variant of the CPU kernels, not only the one this CPU picks.

The main run tests the variant chosen for this machine; here the parity tests run again in a
subprocess under each lower variant (ATEN_CPU_CAPABILITY lowers ATen's choice, and ours with it).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused_rnn

INFO = fused_rnn.build_info()
OTHER_ISAS = [isa for isa in INFO["cpu_isas"] if isa != INFO["cpu_isa"]]
TESTS = Path(__file__).parent


def test_chosen_variant_follows_aten():
    assert INFO["cpu_isa"] in INFO["cpu_isas"]
    aten = torch.backends.cpu.get_cpu_capability()
    assert INFO["cpu_isa"] == (aten if aten in INFO["cpu_isas"] else "DEFAULT")


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_parity_under_variant(isa):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower())
    chosen = subprocess.run(
        [sys.executable, "-c", "import fused_rnn; print(fused_rnn.build_info()['cpu_isa'])"],
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    if chosen != isa:
        pytest.skip(f"this CPU cannot run {isa} (ATen chose {chosen})")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cpu",
         str(TESTS / "test_cells.py"), str(TESTS / "test_ops.py") + "::test_ops_match_reference"],
        env=env, capture_output=True, text=True, cwd=TESTS.parent)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
