"""An MLflow server that dies mid-sweep costs seconds, not the sweep: a real `mlflow server`,
stopped under a live recorder; when it is back, the next invocation logs the trials it missed."""

from __future__ import annotations

import os
import time

import pandas as pd

from conftest import BIN, free_port, healthy, start_group, stop_groups, wait_until
from vb_sweep.grid import GridOptions, build_grid
from vb_sweep.sweep import SessionOptions, SweepSession, TrialRecorder
from vb_sweep.tracking import SweepTracker
from vb_sweep.trial import trial_id_for


def test_a_dead_tracking_server_warns_once_and_loses_no_row(tmp_path, capsys, monkeypatch):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)  # the tracker's own limits apply
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        wait_until(lambda: healthy(uri), "mlflow server up", processes=[server])
        tracker = SweepTracker(uri, "outage")
        tracker.start_invocation("ablation", {}, resume=False)
    finally:
        stop_groups([server])
    recorder = TrialRecorder(tmp_path / "out", tracker, total=2)
    configs = build_grid(GridOptions(attacks=["badnets"], defenses=["none", "F"]))
    started = time.monotonic()
    for config in configs:
        spec = {"trial_id": trial_id_for(config), "sweep": "outage", "config": config.to_dict()}
        recorder.record_epoch(spec, {"epoch": 1, "stage": "plain", "ba": 0.5})
        row = {"trial_id": spec["trial_id"], "status": "ok", "ba": 0.9, "asr": 0.1, "epochs": 1}
        recorder.record(spec, row, [{"epoch": 1, "stage": "plain", "ba": 0.9}],
                        {"variant.png": b"\x89PNG fake"})
    tracker_failures_took = time.monotonic() - started
    assert tracker_failures_took < 120, tracker_failures_took  # MLflow's defaults: ~4 min a call
    rows = pd.read_parquet(tmp_path / "out" / "trials")
    assert len(rows) == 2 and rows["mlflow_run_id"].isna().all()
    printed = capsys.readouterr().out
    assert printed.count("warning: MLflow logging failed") == 1, printed
    assert "[2/2]" in printed

    # Closing the invocation cannot reach the server either: a warning, and no exception that
    # would skip writing the grid files after it.
    session = SweepSession(SessionOptions(kind="ablation", sweep="outage", preset="smoke",
                                          out=tmp_path / "out"))
    session.tracker = tracker
    session.close("FINISHED")
    assert "could not mark the MLflow parent run FINISHED" in capsys.readouterr().out

    # The server is back; the next invocation (a --resume) logs the two trials it missed.
    server = start_server(tmp_path, port)
    try:
        wait_until(lambda: healthy(uri), "mlflow server up again", processes=[server])
        tracker = SweepTracker(uri, "outage")
        tracker.start_invocation("ablation", {}, resume=True)
        assert TrialRecorder(tmp_path / "out", tracker, total=0).complete_pending() == 2
        rows = pd.read_parquet(tmp_path / "out" / "trials")
        assert rows["mlflow_run_id"].notna().all()
        for run_id in rows["mlflow_run_id"]:
            run = tracker.client.get_run(run_id)
            assert run.info.status == "FINISHED" and run.data.metrics["summary/ba"] == 0.9
            artifacts = [a.path for a in tracker.client.list_artifacts(run_id, "figures")]
            assert artifacts == ["figures/variant.png"]
        assert not list((tmp_path / "out" / "mlflow-pending").iterdir())
    finally:
        stop_groups([server])


def start_server(folder, port: int):
    return start_group([str(BIN / "mlflow"), "server", "--backend-store-uri",
                        f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination",
                        str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                        "--workers", "1"], folder / "server.log", {**os.environ})
