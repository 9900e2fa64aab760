"""The example scripts run and reach their point."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_pos_tagger_trains_both_models_to_the_same_accuracy():
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "pos_tagger.py"), "--epochs", "1"],
                         capture_output=True, text=True, check=True, timeout=300)
    accuracies = re.findall(r"test accuracy\s+([\d.]+)%", run.stdout)
    assert len(accuracies) == 2, run.stdout
    # Same initial weights and data: the two trainings agree (up to rounding), and learn.
    assert abs(float(accuracies[0]) - float(accuracies[1])) < 1.0, run.stdout
    assert float(accuracies[1]) > 80.0, run.stdout
