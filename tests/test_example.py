"""The example scripts run and reach their point."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_pos_tagger_trains_both_models_to_the_same_accuracy():
    # The package as the tests see it, installed or not.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "pos_tagger.py"), "--epochs", "1"],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=path))
    assert run.returncode == 0, run.stderr[-3000:]
    accuracies = re.findall(r"test accuracy\s+([\d.]+)%", run.stdout)
    assert len(accuracies) == 2, run.stdout
    # Same initial weights and data: the two trainings agree (up to rounding), and learn.
    assert abs(float(accuracies[0]) - float(accuracies[1])) < 1.0, run.stdout
    assert float(accuracies[1]) > 80.0, run.stdout
