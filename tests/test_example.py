"""The example scripts run and reach their point."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run_example(script, *args):
    # The package as the tests see it, installed or not.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=path))
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_pos_tagger_trains_both_models_to_the_same_accuracy():
    run = run_example("pos_tagger.py", "--epochs", "1")
    accuracies = re.findall(r"test accuracy\s+([\d.]+)%", run.stdout)
    assert len(accuracies) == 2, run.stdout
    # Same initial weights and data: the two trainings agree (up to rounding), and learn.
    assert abs(float(accuracies[0]) - float(accuracies[1])) < 1.0, run.stdout
    assert float(accuracies[1]) > 80.0, run.stdout


def test_rl_rollout_trains_both_policies_alike():
    run = run_example("rl_rollout.py", "--iterations", "3", "--steps", "80", "--batch", "8",
                      "--hidden", "32")
    # Same weights and rollouts: the losses of the call with resets and of the episodes split
    # apart agree to float32 rounding at every iteration.
    difference = re.search(r"largest loss difference between the two: ([\d.e+-]+)", run.stdout)
    assert difference is not None, run.stdout
    assert float(difference.group(1)) < 1e-4, run.stdout
