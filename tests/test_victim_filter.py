"""experiments/victim_filter.py: its splits are the ones a filtering trial uses, from the shared
cache, and the CSV and figures it writes say so."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.test_trial import TINY
from vb_sweep.cache import ArtifactCache
from vb_sweep.config import preset_config, scaled_schedule
from vb_sweep.trial import run_trial
from vb_sweep.victim import updates_after_epochs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import victim_filter  # noqa: E402

UNSCHEDULED = {name: value for name, value in TINY.items() if name not in scaled_schedule(4)}
SETTINGS = [f"{name}={value}" for name, value in UNSCHEDULED.items()]


def test_splits_match_what_a_trial_of_the_same_settings_uses(tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    victim_filter.main(["--preset", "smoke", "--epochs", "6", "--attacks", "badnets", "blend",
                        "--out", str(tmp_path / "out"), "--cache-dir", str(cache_dir),
                        "--set", *SETTINGS])
    printed = capsys.readouterr().out
    assert "badnets: trajectory built" in printed and "first / end of mix stage / last" in printed
    splits = pd.read_csv(tmp_path / "out" / "filter_splits.csv")
    assert {"filter_quality_badnets.png", "filter_quality_blend.png"} <= {
        path.name for path in (tmp_path / "out").iterdir()}

    config = preset_config("smoke", attack="badnets", defense="F", **UNSCHEDULED,
                           **scaled_schedule(6))
    badnets = splits[splits["attack"] == "badnets"]
    updates = updates_after_epochs(config.epochs, config.mix_epochs, config.resplit_every)
    assert badnets["split_after_epoch"].tolist() == [0] + [
        epoch for epoch, update in enumerate(updates, start=1) if update]
    assert (badnets["poisoned_in_suspicious"] <= badnets["suspicious_size"]).all()

    trial = run_trial(config, cache=ArtifactCache(cache_dir))
    assert trial.row["victim_cached"] is True  # the script built what the trial takes
    for record in trial.history:
        if record["stage"] == "victim":
            continue
        used = badnets[badnets["used_in_epochs"].map(
            lambda span: int(span.split("-")[0]) <= record["epoch"] <= int(span.split("-")[1]))]
        assert len(used) == 1
        for column in ("suspicious_size", "filter_precision", "filter_recall", "filter_auroc"):
            assert used[column].item() == pytest.approx(record[column]), (record["epoch"], column)


def test_a_second_run_reads_the_trajectory_from_the_cache(tmp_path, capsys):
    arguments = ["--preset", "smoke", "--epochs", "4", "--attacks", "badnets",
                 "--out", str(tmp_path / "out"), "--set", *SETTINGS]
    victim_filter.main(arguments)
    first = pd.read_csv(tmp_path / "out" / "filter_splits.csv")
    capsys.readouterr()
    victim_filter.main(arguments)
    assert "trajectory from the cache" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "filter_splits.csv"), first)


def test_an_unknown_attack_is_one_line_before_any_work(tmp_path, capsys):
    status = victim_filter.main(["--preset", "smoke", "--attacks", "badnets", "nosuch",
                                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1
    assert "attack" in error and "nosuch" in error and "wanet" in error  # the allowed values
    assert not (tmp_path / "out").exists()


def test_a_missing_dataset_is_one_line_before_anything_is_written(tmp_path, capsys):
    status = victim_filter.main(["--preset", "cpu", "--data-root", str(tmp_path / "nothing"),
                                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1 and "data_root" in error
    assert not (tmp_path / "out").exists()
