"""The sweep entry points against real services: a two-node Ray cluster started by the tests
(token auth, 1 CPU per node), MLflow in SQLite and through a real `mlflow server`, trials killed
and failing on purpose (the fault-injection hooks of vb_sweep.sweep), bad options refused before
any trial runs. Trials are smoke trials shrunk to seconds (conftest.TINY)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from vb_sweep.analysis import plots, tables
from conftest import BIN, TINY, run_notebook
from vb_sweep.grid import manifest_for, write_manifest
from vb_sweep.trial import code_version


def trial_runs(client: MlflowClient, sweep: str) -> tuple[list, list]:
    """(parent runs, trial runs) of a sweep's experiment, active ones only."""
    experiment = client.get_experiment_by_name(sweep)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("vb_sweep.role") == "invocation"]
    trials = [r for r in runs if r.data.tags.get("vb_sweep.role") == "trial"]
    return parents, trials


def check_nested_runs(client: MlflowClient, sweep: str, rows: pd.DataFrame) -> None:
    parents, trials = trial_runs(client, sweep)
    parent_ids = {p.info.run_id for p in parents}
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} <= parent_ids
    assert sorted(t.info.run_id for t in trials) == sorted(rows["mlflow_run_id"])
    for run in trials:
        row = rows.set_index("mlflow_run_id").loc[run.info.run_id]
        assert run.data.tags["trial_id"] == row["trial_id"]
        assert run.data.params["defense"] == row["defense"]
        assert len(run.data.params) >= 40  # the whole TrialConfig
        assert [m.step for m in client.get_metric_history(run.info.run_id, "ba")] == [1, 2]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
        assert {"figures/trigger_preview.png", "figures/training_curves.png"} <= artifacts
        assert "row.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


# -- fast: a couple of trials each ----------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster_sweep(ray_cluster, tmp_path_factory):
    """BadNets x (none, vab) x seeds 0 and 1 on the two-node cluster: (output folder, process)."""
    out = tmp_path_factory.mktemp("cluster-sweep") / "out"
    result = subprocess.run(  # `vb-sweep ablation`, the installed command
        [str(BIN / "vb-sweep"), "ablation", *TINY, "--attacks", "badnets", "--defenses", "none",
         "vab", "--seeds", "0", "1", "--address", ray_cluster.address, "--out", str(out)],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **ray_cluster.env},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_ablation_on_a_two_node_cluster(cluster_sweep):
    out, result = cluster_sweep
    rows = pd.read_parquet(out / "trials")
    assert sorted(rows["defense"]) == ["none", "none", "vab", "vab"]
    assert set(rows["status"]) == {"ok"} and set(rows["sweep"]) == {"ablation-smoke"}
    # Every row names the commit the driver runs.
    assert set(rows["code_version"]) == {code_version()}
    assert rows["poison_cached"].all()  # built once, before the trials
    assert rows.loc[rows["defense"] == "vab", "victim_cached"].all()
    # Two slots for four trials: the workers are reused, and every trial's costs are recorded.
    assert (rows["worker_trial"] == 1).sum() <= 2 and (rows["worker_trial"] > 1).any()
    assert (rows.loc[rows["worker_trial"] > 1, "startup_s"] == 0).all()
    compute = rows[["poison_s", "victim_s", "beneficiary_s"]].sum(axis=1)
    assert (rows["lifetime_s"] > compute).all() and (rows["tracking_s"] > 0).all()
    history = pd.read_parquet(out / "history")
    assert history.groupby("trial_id")["epoch"].max().tolist() == [2] * 4
    check_nested_runs(MlflowClient(f"sqlite:///{out / 'mlflow.db'}"), "ablation-smoke", rows)
    assert "[4/4]" in result.stdout and "| vab |" in result.stdout
    assert "| none |" in (out / "grid.md").read_text()
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
    assert not list((out / "tune").glob("*/*/checkpoint_*"))  # removed once the rows exist


def test_analysis_of_the_cluster_sweep(cluster_sweep, tmp_path, monkeypatch):
    """The Table 4 grid, the figures and the notebook on a real sweep's Parquet output."""
    out, _ = cluster_sweep
    rows = pd.read_parquet(out / "trials").set_index(["defense", "seed"])
    grid = tables.ablation_grid(tables.load_trials(out)).set_index("defense")
    for defense in ("none", "vab"):
        cell = grid.loc[defense]
        assert cell["n"] == 2
        for metric in ("ba", "asr", "ra"):
            values = rows.loc[defense][metric]
            assert cell[f"{metric}_mean"] == pytest.approx(values.mean())
            assert cell[f"{metric}_std"] == pytest.approx(values.std(ddof=1))
    ders = [tables.der(rows.loc[("none", seed), "ba"], rows.loc[("none", seed), "asr"],
                       rows.loc[("vab", seed), "ba"], rows.loc[("vab", seed), "asr"])
            for seed in (0, 1)]
    assert grid.loc["vab", "der_n"] == 2
    assert grid.loc["vab", "der_mean"] == pytest.approx(sum(ders) / 2)

    figures = plots.render_all(out, tmp_path / "figures")
    assert {"variant_bars.png", "entropy_histogram_badnets.svg",
            "filter_quality_badnets.png"} <= {path.name for path in figures}
    assert all(path.stat().st_size > 1000 for path in figures)

    outputs = run_notebook(out, tmp_path / "notebook-figures", monkeypatch)
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_ablation_through_an_mlflow_server(ray_cluster, mlflow_server, sweep_script, tiny,
                                           tmp_path):
    out = tmp_path / "out"
    result = sweep_script("ablation.py", *tiny, "--attacks", "blend", "--defenses", "F",
                          "F+AT", "--sweep", "server-sweep", "--address", ray_cluster.address,
                          "--mlflow-uri", mlflow_server, "--out", str(out), env=ray_cluster.env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = pd.read_parquet(out / "trials")
    assert len(rows) == 2 and set(rows["status"]) == {"ok"}
    client = MlflowClient(mlflow_server)
    check_nested_runs(client, "server-sweep", rows)
    parents, _ = trial_runs(client, "server-sweep")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert not (out / "mlflow.db").exists()
    folder = client.download_artifacts(rows["mlflow_run_id"][0], "figures", str(tmp_path))
    assert Path(folder, "trigger_preview.png").read_bytes()[:4] == b"\x89PNG"
    check_mlflow_conventions(client, parents[0], rows)


def check_mlflow_conventions(client: MlflowClient, parent, rows: pd.DataFrame) -> None:
    """The parent run holds the grid and a metric per cell; trial runs are named and tagged
    for the UI, list their datasets, and hold no "None" param where the row has a value."""
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"grid.md", "grid.csv"} <= artifacts
    metrics = client.get_run(parent.info.run_id).data.metrics
    by_variant = rows.set_index("defense")
    assert metrics["grid/blend/F_AT/ba"] == pytest.approx(by_variant.loc["F+AT", "ba"], abs=1e-4)
    assert "grid/blend/F_AT/asr" in metrics
    for _, row in rows.iterrows():
        run = client.get_run(row["mlflow_run_id"])
        assert run.info.run_name == f"blend/{row['defense']}/s0"
        assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"]
        assert run.data.params["poison_rate"] == str(row["poison_rate"]) != "None"
        given = [key for key in run.data.params if key in row and not pd.isna(row[key])]
        assert given and not [key for key in given if run.data.params[key] == "None"]
        assert run.data.params["precision"] == row["precision"]
        assert run.data.metrics["summary/ba"] == pytest.approx(row["ba"])
        inputs = {i.tags[0].value: i.dataset.digest for i in run.inputs.dataset_inputs}
        assert inputs == {"training": row["train_fingerprint"][-20:],
                          "evaluation": row["test_fingerprint"]}


def test_killed_trial_resumes_and_failed_trial_does_not_stop_the_others(
        ray_cluster, sweep_script, tiny, tmp_path):
    out = tmp_path / "out"
    faults = {"VB_SWEEP_FAULT_KILL_AT": "1:-F-", "VB_SWEEP_FAULT_RAISE_AT": "2:-none-"}
    result = sweep_script("ablation.py", *tiny, "--attacks", "badnets", "--defenses", "none",
                          "F", "--address", ray_cluster.address, "--out", str(out),
                          env={**ray_cluster.env, **faults})
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    rows = pd.read_parquet(out / "trials").set_index("defense")
    assert rows.loc["F", "status"] == "ok"
    assert "resuming after epoch 1" in result.stdout  # the retry continued the killed trial
    killed_trial = next((out / "tune").glob(f"*/{rows.loc['F', 'trial_id']}"))
    assert (killed_trial / "error.txt").exists()
    assert not list(killed_trial.glob("checkpoint_*"))  # finished: its checkpoints are gone
    failed_trial = next((out / "tune").glob(f"*/{rows.loc['none', 'trial_id']}"))
    assert list(failed_trial.glob("checkpoint_*"))  # kept for --retry-failed
    history = pd.read_parquet(out / "history")
    epochs = history[history["trial_id"] == rows.loc["F", "trial_id"]]["epoch"]
    assert sorted(epochs) == [0, 1, 2]
    assert rows.loc["none", "status"] == "failed"
    assert "RuntimeError: injected fault at history record 2" in rows.loc["none", "error"]
    grid = (out / "grid.md").read_text()
    assert "Missing cells" in grid and "failed: RuntimeError: injected fault" in grid


@pytest.mark.parametrize("args, message", [
    (["--attacks", "badnets", "nope"], "invalid attack: 'nope'"),
    (["--defenses", "none", "F+AT+X"], "invalid defense variant: 'F+AT+X'"),
    (["--t-f", "0.2", "1.5"], "invalid t_f: 1.5"),
    (["--t-m", "-0.1"], "invalid t_m: -0.1"),
    (["--address", "127.0.0.1:{closed_port}"], "invalid --address"),
    (["--mlflow-uri", "http://127.0.0.1:{closed_port}"], "invalid --mlflow-uri"),
    (["--sweep", "another", "--out", "{existing_sweep}"], "invalid --out"),
    (["--out", "{existing_sweep}"], "or --resume to continue"),
])
def test_bad_options_fail_before_any_trial(args, message, sweep_script, closed_port,
                                           tmp_path):
    existing = tmp_path / "existing"
    write_manifest(existing, manifest_for("ablation", "ablation-smoke", "smoke", {}))
    args = [a.format(closed_port=closed_port, existing_sweep=existing) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "new")]
    result = sweep_script("ablation.py", *args, *out, timeout_s=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("ablation.py: error: ") and message in result.stderr
    assert not (tmp_path / "new" / "trials").exists()
    assert not (existing / "trials").exists()


def test_more_gpus_than_the_cluster_has_is_refused(ray_cluster, sweep_script, tmp_path):
    result = sweep_script("ablation.py", "--gpus", "1", "--address", ray_cluster.address,
                          "--out", str(tmp_path / "out"), env=ray_cluster.env, timeout_s=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("ablation.py: error: invalid --gpus: 1 "
                                     "(allowed: at most the cluster's 0 GPU(s))")
    assert not (tmp_path / "out").exists()


def test_threshold_search_refuses_bad_ranges(sweep_script, tmp_path):
    result = sweep_script("threshold_search.py", "--attack", "badnets", "--t-f-range", "0.3",
                          "0.1", "--out", str(tmp_path / "out"), timeout_s=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("threshold_search.py: error: invalid --t-f-range: "
                                     "[0.3, 0.1] (allowed: LOW < HIGH)")


def test_a_local_cluster_sweep_run_outside_the_checkout_names_its_commit(tmp_path):
    """The README's main command on its own local Ray cluster, started from another folder:
    the workers import the copy of the package Ray ships them (no checkout), and the rows still
    carry the driver's commit."""
    out = tmp_path / "out"
    result = subprocess.run(
        [str(BIN / "vb-sweep"), "ablation", *TINY, "--attacks", "badnets", "--defenses", "none",
         "--cpus", "1", "--out", str(out)],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, cwd=tmp_path,
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (row,) = pd.read_parquet(out / "trials").to_dict("records")
    assert row["status"] == "ok" and row["code_version"] == code_version()


def test_a_killed_drivers_local_cluster_leaves_no_process(background_script, tmp_path):
    """SIGKILL a driver whose local Ray cluster is up: its reaper stops every process the
    driver had started (GCS, raylet, agents, workers)."""
    import psutil

    from conftest import wait_until
    from vb_sweep.sweep.reaper import _alive

    def command(process) -> str:
        """Its command line; a process that ended meanwhile (a zombie) has none."""
        try:
            return " ".join(process.cmdline())[:120]
        except psutil.Error:
            return ""

    log = tmp_path / "driver.log"
    driver = background_script("ablation.py", *TINY, "--out", str(tmp_path / "out"), log=log)
    wait_until(lambda: "sweep 'ablation-smoke'" in log.read_text(), "the local cluster up",
               processes=[driver])
    started = [process for process in psutil.Process(driver.pid).children(recursive=True)
               if "vb_sweep.sweep.reaper" not in command(process)]
    assert any("gcs_server" in command(process) for process in started), started
    driver.kill()
    driver.wait()

    try:
        wait_until(lambda: not any(_alive(process) for process in started),
                   "every process of the killed driver's cluster gone", timeout_s=60)
    except TimeoutError:
        survivors = [command(process) for process in started if _alive(process)]
        raise AssertionError(f"running 60 s after the driver's SIGKILL: {survivors}") from None


@pytest.mark.slow  # about a minute: it waits for the smoke Victim's first progress line
def test_ctrl_c_during_the_preparation_ends_the_invocation_killed(background_script, tmp_path):
    """SIGINT to the driver's process group (a terminal's Ctrl-C) while the smoke preparation
    trains its Victim on the cluster: the driver exits promptly with one line and status 130,
    the MLflow parent run is KILLED, and no trial row is written."""
    import signal

    from conftest import signal_group, wait_until

    out, log = tmp_path / "out", tmp_path / "driver.log"
    driver = background_script("ablation.py", "--preset", "smoke", "--out", str(out), log=log)
    wait_until(lambda: "[prepare]" in log.read_text(), "a preparation progress line",
               processes=[driver])
    signal_group(driver, signal.SIGINT)
    driver.wait(timeout=60)  # promptly: raises TimeoutExpired otherwise
    text = log.read_text()
    assert driver.returncode == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert text.rstrip().endswith("ablation.py: interrupted; finished trials are kept, "
                                  "--resume continues the sweep")
    parents, trials = trial_runs(MlflowClient(f"sqlite:///{out / 'mlflow.db'}"), "ablation-smoke")
    assert [run.info.status for run in parents] == ["KILLED"] and not trials
    assert not list((out / "trials").glob("*.parquet"))


def test_vb_sweep_search_names_its_objectives_and_ties_trials_to_rows(ray_cluster, tmp_path):
    """`vb-sweep search` (the installed command) on tiny trials: the study's objectives are
    named, and each study trial names its row (trial_id), MLflow run and status."""
    import optuna

    out = tmp_path / "out"
    result = subprocess.run(
        [str(BIN / "vb-sweep"), "search", *TINY, "--attack", "badnets", "--n-trials", "2",
         "--address", ray_cluster.address, "--out", str(out)],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **ray_cluster.env},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="thresholds-badnets-vab-smoke",
                              storage=f"sqlite:///{out / 'optuna.db'}")
    assert study.metric_names == ["ba", "asr"]
    rows = pd.read_parquet(out / "trials").set_index("trial_id")
    for trial in study.trials:
        attrs = trial.user_attrs
        assert attrs["trial_id"] in rows.index and attrs["status"] == "ok"
        assert attrs["mlflow_run_id"] == rows.loc[attrs["trial_id"], "mlflow_run_id"]


def test_the_reaper_takes_a_driver_reaped_between_its_checks_for_gone(monkeypatch):
    """The driver can be reaped after is_running() and before status(): that is a driver gone,
    not an error that ends the reaper before it stops the cluster."""
    import psutil

    from vb_sweep.sweep.reaper import _alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(child.pid)
    child.wait()
    monkeypatch.setattr(process, "is_running", lambda: True)  # it was, a moment ago
    assert _alive(process) is False
