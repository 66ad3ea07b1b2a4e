"""The results folder at scale: one-trial Parquet files merged into one once there are many,
with every trial read back exactly once, also after a merge cut short or a row rewritten."""

from __future__ import annotations


import pandas as pd
import pyarrow.parquet as pq

from vb_sweep.results import (COMPACTED_PREFIX, HISTORY_DIR, TRIALS_DIR, compact_results,
                              read_history, read_trials, write_trial)

ROW = {"sweep": "s", "dataset": "synthetic", "model": "tiny_cnn", "attack": "badnets",
       "defense": "vab", "status": "ok", "epochs": 2, "seed": 0,
       "finished_at": "2026-12-04T00:00:00+00:00"}


def write(out, index: int, ba: float = 0.5) -> str:
    trial_id = f"badnets-vab-s0-{index:08x}"
    history = [{"sweep": "s", "trial_id": trial_id, "epoch": epoch, "stage": "mix", "ba": ba,
                "entropy_hist_poisoned": [1] * 20} for epoch in (1, 2)]
    write_trial(out, {**ROW, "trial_id": trial_id, "ba": ba}, history)
    return trial_id


def files(out, folder=TRIALS_DIR) -> list[str]:
    return sorted(path.name for path in (out / folder).glob("*.parquet"))


def test_many_one_trial_files_are_merged_into_one(tmp_path):
    ids = [write(tmp_path, index, ba=index / 1000) for index in range(120)]
    assert compact_results(tmp_path, at_least=200) == 0  # too few: left alone
    assert len(files(tmp_path)) == 120
    assert compact_results(tmp_path, at_least=100) == 240  # both folders
    for folder in (TRIALS_DIR, HISTORY_DIR):
        assert len(files(tmp_path, folder)) == 1
        assert files(tmp_path, folder)[0].startswith(COMPACTED_PREFIX)
    trials, history = read_trials(tmp_path), read_history(tmp_path)
    assert sorted(trials["trial_id"]) == sorted(ids)
    assert trials.set_index("trial_id").loc[ids[7], "ba"] == 0.007
    assert len(history) == 240 and history.groupby("trial_id").size().eq(2).all()
    # Plain pandas reads the folder the same way.
    assert len(pd.read_parquet(tmp_path / TRIALS_DIR)) == 120


def test_a_row_written_after_a_merge_replaces_the_merged_one(tmp_path):
    """A trial recorded again (its MLflow run id completed, or re-run with --retry-failed)
    writes its one-trial file again: that file wins over the merge, and the next merge, made
    at once because the file repeats a merged trial, leaves plain pandas one row per trial."""
    ids = [write(tmp_path, index) for index in range(5)]
    compact_results(tmp_path, at_least=5)
    write(tmp_path, 3, ba=0.9)
    trials, history = read_trials(tmp_path), read_history(tmp_path)
    assert len(trials) == 5 and trials.set_index("trial_id").loc[ids[3], "ba"] == 0.9
    assert history[history["trial_id"] == ids[3]]["ba"].tolist() == [0.9, 0.9]
    assert len(history) == 10
    write(tmp_path, 5)  # a new trial alone does not make a merge
    assert compact_results(tmp_path) == 0 + 2 * 3  # ... but the repeated one does
    assert files(tmp_path) == [f"{COMPACTED_PREFIX}000002.parquet"]
    plain = pd.read_parquet(tmp_path / TRIALS_DIR)
    assert len(plain) == 6 and plain.set_index("trial_id").loc[ids[3], "ba"] == 0.9


def test_a_file_that_is_not_a_table_is_left_for_the_readers_to_report(tmp_path):
    ids = [write(tmp_path, index) for index in range(4)]
    (tmp_path / TRIALS_DIR / "notes.parquet").write_bytes(b"not parquet")
    pd.DataFrame({"ba": [0.5]}).to_parquet(tmp_path / TRIALS_DIR / "foreign.parquet")
    compact_results(tmp_path, at_least=4)
    assert files(tmp_path) == [f"{COMPACTED_PREFIX}000001.parquet", "foreign.parquet",
                               "notes.parquet"]
    assert sorted(read_trials(tmp_path)["trial_id"]) == sorted(ids)  # skipped, with warnings
    assert compact_results(tmp_path, at_least=4) == 0  # no re-reading for every later trial


def test_a_merge_cut_short_loses_and_repeats_nothing(tmp_path):
    """The merged file is written before the small ones go: a driver killed in between leaves
    both, and the readers take each trial once."""
    ids = [write(tmp_path, index) for index in range(6)]
    kept = {folder: {name: pq.read_table(tmp_path / folder / name) for name in files(tmp_path,
                                                                                    folder)}
            for folder in (TRIALS_DIR, HISTORY_DIR)}
    compact_results(tmp_path, at_least=6)
    for folder, tables in kept.items():  # the small files back, as if never removed
        for name, table in tables.items():
            pq.write_table(table, tmp_path / folder / name)
    trials, history = read_trials(tmp_path), read_history(tmp_path)
    assert sorted(trials["trial_id"]) == sorted(ids)
    assert len(history) == 12
    compact_results(tmp_path, at_least=6)
    assert len(read_trials(tmp_path)) == 6 and len(files(tmp_path)) == 1


def test_rows_of_an_older_schema_are_merged_with_nulls(tmp_path):
    """A folder begun by an older version (rows without the later columns) merges: the missing
    columns are nulls."""
    old = pd.DataFrame([{**ROW, "trial_id": "old-trial", "ba": 0.4}]).drop(columns="finished_at")
    (tmp_path / TRIALS_DIR).mkdir()
    old.to_parquet(tmp_path / TRIALS_DIR / "old-trial.parquet")
    write(tmp_path, 1)
    compact_results(tmp_path, at_least=2)
    trials = read_trials(tmp_path).set_index("trial_id")
    assert trials.loc["old-trial", "ba"] == 0.4 and pd.isna(trials.loc["old-trial", "lifetime_s"])
    assert len(files(tmp_path)) == 1
