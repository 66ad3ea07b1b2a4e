"""Long end-to-end runs (`pytest -m slow`): the whole smoke grid on the two-node cluster and
through an `mlflow server`, a driver SIGKILLed mid-sweep and resumed, a threshold search whose
Optuna study is stored and resumed, a trial that dies more often than it may."""

from __future__ import annotations

import time

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

SMOKE_CELLS = 12  # badnets, blend x the 6 variants x seed 0
WHOLE_GRID = ("--attacks", "badnets", "blend",
              "--defenses", "none", "F", "F+AT", "F+AT+SST", "F+AT+SST+S", "vab")
SIX_VARIANTS = WHOLE_GRID[3:]


def runs_by_role(client: MlflowClient, sweep: str) -> dict[str, list]:
    experiment = client.get_experiment_by_name(sweep)
    runs = client.search_runs([experiment.experiment_id])
    return {role: [r for r in runs if r.data.tags.get("vb_sweep.role") == role]
            for role in ("invocation", "trial")}


def check_whole_grid(out, client: MlflowClient, sweep: str) -> None:
    rows = pd.read_parquet(out / "trials")
    assert len(rows) == SMOKE_CELLS and rows["trial_id"].is_unique
    assert set(rows["status"]) == {"ok"}
    assert set(rows["attack"]) == {"badnets", "blend"} and rows["defense"].nunique() == 6
    trials = runs_by_role(client, sweep)["trial"]
    assert sorted(r.info.run_id for r in trials) == sorted(rows["mlflow_run_id"])
    grid = (out / "grid.md").read_text()
    assert "Missing cells" not in grid
    rows_shown = [line.split("|")[1].strip() for line in grid.splitlines()
                  if line.startswith("| ") and not line.startswith("| defense")]
    assert rows_shown == ["none", "F", "F+AT", "F+AT+SST", "F+AT+SST+S", "vab"]
    assert len(pd.read_csv(out / "grid.csv")) == 12  # a row per variant and attack


def test_smoke_grid_on_a_two_node_cluster(ray_cluster, sweep_script, tiny, tmp_path):
    out = tmp_path / "out"
    result = sweep_script("ablation.py", *tiny, *WHOLE_GRID, "--address", ray_cluster.address,
                          "--out", str(out), env=ray_cluster.env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_whole_grid(out, MlflowClient(f"sqlite:///{out / 'mlflow.db'}"), "ablation-smoke")


def test_smoke_grid_through_an_mlflow_server(ray_cluster, mlflow_server, sweep_script, tiny,
                                             tmp_path):
    out = tmp_path / "out"
    result = sweep_script("ablation.py", *tiny, *WHOLE_GRID, "--sweep", "server-grid", "--address",
                          ray_cluster.address, "--mlflow-uri", mlflow_server, "--out", str(out),
                          env=ray_cluster.env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_whole_grid(out, MlflowClient(mlflow_server), "server-grid")


def interrupted_trial_has_checkpoint(out) -> bool:
    """A finished row exists, and some trial without a row has an epoch checkpoint."""
    finished = {path.stem for path in (out / "trials").glob("*.parquet")}
    states = (out / "tune").glob("*/*/checkpoint_*/state.pt")
    checkpoints = {path.parents[1].name for path in states}
    return bool(finished) and bool(checkpoints - finished)


def test_killed_driver_resumes_and_reuses_finished_trials(ray_cluster, background_script,
                                                          sweep_script, tmp_path):
    out = tmp_path / "out"
    options = ("--preset", "smoke", "--epochs", "4", "--attacks", "badnets", *SIX_VARIANTS,
               "--set", "train_per_class=40", "test_per_class=20", "warm_up=2",
               "--address", ray_cluster.address, "--out", str(out))
    driver = background_script("ablation.py", *options, env=ray_cluster.env,
                               log=tmp_path / "first.log")
    deadline = time.monotonic() + 400
    while not interrupted_trial_has_checkpoint(out):
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished within 400 s"
        time.sleep(0.5)
    driver.kill()  # SIGKILL: no cleanup of any kind
    driver.wait()
    before = pd.read_parquet(out / "trials").set_index("trial_id")
    assert 0 < len(before) < 6

    result = sweep_script("ablation.py", *options, "--resume", env=ray_cluster.env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{len(before)} already done, {6 - len(before)} to run" in result.stdout
    assert "resuming after epoch" in result.stdout or "already finished" in result.stdout
    after = pd.read_parquet(out / "trials").set_index("trial_id")
    assert len(after) == 6 and after.index.is_unique and set(after["status"]) == {"ok"}
    kept = after.loc[before.index]
    assert (kept["finished_at"] == before["finished_at"]).all()  # not run again
    assert (kept["mlflow_run_id"] == before["mlflow_run_id"]).all()
    runs = runs_by_role(MlflowClient(f"sqlite:///{out / 'mlflow.db'}"), "ablation-smoke")
    assert sorted(r.data.tags["trial_id"] for r in runs["trial"]) == sorted(after.index)
    assert sorted(r.info.status for r in runs["invocation"]) == ["FINISHED", "KILLED"]
    history = pd.read_parquet(out / "history")
    assert (history.groupby("trial_id")["epoch"].max() == 4).all()


def test_threshold_search_stores_resumes_and_writes_its_pareto_front(
        ray_cluster, sweep_script, tiny, tmp_path):
    out = tmp_path / "out"
    options = (*tiny, "--attack", "badnets", "--t-f-range", "0.1", "0.4", "--t-m-range", "0.05",
               "0.3", "--address", ray_cluster.address, "--out", str(out))
    first = sweep_script("threshold_search.py", *options, "--n-trials", "2", env=ray_cluster.env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    storage = f"sqlite:///{out / 'optuna.db'}"
    study = optuna.load_study(study_name="thresholds-badnets-vab-smoke", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    earlier = [t.params for t in study.trials]

    second = sweep_script("threshold_search.py", *options, "--n-trials", "3", "--resume",
                          env=ray_cluster.env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "2 trials done, 1 to run" in second.stdout
    study = optuna.load_study(study_name="thresholds-badnets-vab-smoke", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert [t.params for t in study.trials[:2]] == earlier
    assert all(0.1 <= t.params["t_f"] <= 0.4 and 0.05 <= t.params["t_m"] <= 0.3
               for t in study.trials)
    trials = pd.read_parquet(out / "trials")
    assert len(trials) == 3 and set(trials["defense"]) == {"vab"}
    pareto = pd.read_parquet(out / "pareto.parquet")
    assert len(pareto) == len(study.best_trials) >= 1
    assert set(pareto["trial_id"]) <= set(trials["trial_id"])
    assert "Pareto front" in second.stdout and "optuna-dashboard sqlite:///" in second.stdout


def test_trial_dying_more_often_than_allowed_is_a_failed_row(ray_cluster, sweep_script, tiny,
                                                             tmp_path):
    out = tmp_path / "out"
    result = sweep_script("ablation.py", *tiny, "--attacks", "badnets", "--defenses", "F",
                          "--max-failures", "0", "--address", ray_cluster.address,
                          "--out", str(out),
                          env={**ray_cluster.env, "VB_SWEEP_FAULT_KILL_AT": "1"})
    assert result.returncode == 1
    (row,) = pd.read_parquet(out / "trials").to_dict("records")
    assert row["status"] == "failed" and "died" in row["error"]
    assert "failed:" in (out / "grid.md").read_text()


def test_joining_with_a_wrong_token_is_refused(ray_cluster, sweep_script, tmp_path):
    result = sweep_script("ablation.py", "--address", ray_cluster.address,
                          "--out", str(tmp_path / "out"), timeout_s=300,
                          env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "invalid --address" in result.stderr and "RAY_AUTH_MODE=token" in result.stderr
    assert not (tmp_path / "out").exists()
