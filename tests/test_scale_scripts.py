"""The scale benchmarks' own arithmetic, on fabricated inputs: experiments/trial_overhead.py's
per-trial breakdown and experiments/many_trials.py's reading of the sweep's progress."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import many_trials  # noqa: E402
import trial_overhead  # noqa: E402


def test_overhead_is_lifetime_minus_compute_split_into_its_known_parts():
    trials = pd.DataFrame({"lifetime_s": [5.0, 2.0], "poison_s": [0.5, 0.1],
                           "victim_s": [0.5, 0.2], "beneficiary_s": [1.0, 0.7],
                           "startup_s": [2.5, 0.0], "imports_s": [1.5, 0.0],
                           "load_s": [0.1, 0.0], "tracking_s": [0.1, 0.1]})
    table = trial_overhead.breakdown(trials)
    assert table.loc["compute", "mean"] == pytest.approx(1.5)
    assert table.loc["overhead", "mean"] == pytest.approx(2.0)  # (3.0 + 1.0) / 2
    assert table.loc["imports", "mean"] == pytest.approx(0.75)
    assert table.loc["other", "mean"] == pytest.approx(2.0 - 0.75 - 0.05 - 0.1)
    assert table.loc["worker start (before the lifetime)", "mean"] == pytest.approx(1.25)


def test_progress_is_read_from_the_last_recorded_line(tmp_path):
    log = tmp_path / "sweep.log"
    log.write_text("sweep 'x': 8 cells, 0 already done, 8 to run\n"
                   "[1/8] badnets-none-s0-1 finished: BA 0.9\n"
                   "(sweep_trial pid=1) [9/9] a worker's line, not the driver's\n"
                   "[2/8] badnets-vab-s0-2 finished: BA 0.9 | elapsed 0:03\n")
    assert many_trials.progress(log) == (2, 8)
    log.write_text("sweep 'x': 8 cells\n")
    assert many_trials.progress(log) == (0, None)
