"""MLflow tracking of a sweep: one experiment per sweep name, one parent run per invocation, one
nested run per trial (its whole configuration as params, per-epoch metrics, its figures and its
result row as artifacts).

One process logs: the sweep's driver. It opens a trial's run at the trial's first report and logs
each epoch as Tune hands it over, so a running sweep can be watched in the MLflow UI; the row,
the figures and any epoch it missed (those before a resume) follow when the trial ends. So the
embedded default store, a SQLite file in the output folder, never sees two writers; with
``--mlflow-uri http://HOST:PORT`` the same calls go to a shared ``mlflow server`` over HTTP.
Browse the default store with ``mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db``.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable

from vb_sweep.errors import ConfigError

# History columns logged as per-epoch metrics (step = Beneficiary epoch; 0 is the Victim's
# first split).
EPOCH_METRICS = ("ba", "asr", "ra", "clean_target_rate", "loss", "lr", "credible_size", "suspicious_size",
                 "filter_precision", "filter_recall", "filter_auroc", "seconds", "images_per_s")
# Row columns logged once as metrics of the trial's run.
ROW_METRICS = ("ba", "asr", "ra", "clean_target_rate", "filter_precision", "filter_recall",
               "filter_auroc", "first_filter_precision", "first_filter_recall", "credible_size",
               "suspicious_size", "num_train", "num_poisoned", "poison_s", "victim_s",
               "beneficiary_s", "train_images_per_s", "wall_s")
BATCH_METRICS = 1000   # mlflow.utils.validation.MAX_METRICS_PER_BATCH
BATCH_PARAMS = 100     # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
PARAM_LENGTH = 6000    # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
TRIAL_TAG = "trial_id"
# A tracking server that is down must cost seconds, not MLflow's default of 5 retries with
# exponential backoff per call (about 4 minutes each); any of these set in the environment wins.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
ROLE_TAG = "vb_sweep.role"


def redact_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***`` (database and tracking URLs carry them);
    what the project records in sweep.json, MLflow params and its output."""
    if not url or "@" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def default_tracking_uri(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file")


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """An MLflow tracking URI of a known kind; fail fast on a server that does not answer (its
    ``/health`` endpoint)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else "file"
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError("--mlflow-uri", redact_url(uri),
                          "http(s)://HOST:PORT of an `mlflow server`, or a database URI "
                          "(sqlite, postgresql, mysql, mssql)")
    if scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as reply:
            if reply.status == 200:
                return
            reason = f"HTTP {reply.status}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = str(getattr(err, "reason", err))
    raise ConfigError("--mlflow-uri", uri, f"a reachable MLflow server ({reason})")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SweepTracker:
    """The driver's MLflow writer for one invocation of one sweep."""

    def __init__(self, tracking_uri: str, sweep: str, artifact_root: Path | None = None):
        from mlflow import MlflowClient

        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(artifact_root)
        self.parent_run_id: str | None = None

    def _experiment(self, artifact_root: Path | None) -> str:
        experiment = self.client.get_experiment_by_name(self.sweep)
        if experiment is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            return self.client.create_experiment(self.sweep, artifact_location=location)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    # -- the invocation ---------------------------------------------------------------------------
    def start_invocation(self, kind: str, options: dict, resume: bool) -> str:
        if resume:
            self._close_interrupted_invocations()
        run = self.client.create_run(
            self.experiment_id, run_name=f"{kind} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={ROLE_TAG: "invocation", "vb_sweep.kind": kind, "sweep": self.sweep,
                  "resumed": str(resume)})
        self.parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, options)
        return self.parent_run_id

    def finish_invocation(self, status: str = "FINISHED") -> None:
        if self.parent_run_id is not None:
            self.client.set_terminated(self.parent_run_id, status)

    def _close_interrupted_invocations(self) -> None:
        """A killed driver leaves its parent run RUNNING; a resumed sweep marks it KILLED."""
        stale = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'invocation' and attributes.status = 'RUNNING'")
        for run in stale:
            self.client.set_terminated(run.info.run_id, "KILLED")

    # -- trials -----------------------------------------------------------------------------------
    def open_trial_run(self, config: dict, trial_id: str) -> str:
        """The trial's nested run with its params, RUNNING until ``log_trial`` closes it. It
        replaces any earlier run of the same trial, so each trial has exactly one."""
        self._drop_earlier_runs(trial_id)
        run = self.client.create_run(
            self.experiment_id, run_name=trial_id,
            tags={"mlflow.parentRunId": self.parent_run_id, ROLE_TAG: "trial",
                  TRIAL_TAG: trial_id, "sweep": self.sweep,
                  "attack": config.get("attack"), "defense": config.get("defense")})
        self._log_params(run.info.run_id, config)
        return run.info.run_id

    def log_epoch(self, run_id: str, record: dict) -> None:
        """One history record's metrics at step = its epoch."""
        self._log_metrics(run_id, [record], None)

    def log_trial(self, config: dict, row: dict, history: list[dict],
                  figures: dict[str, bytes], run_id: str | None = None,
                  logged_epochs: frozenset[int] = frozenset()) -> str:
        """Completes the trial's nested run (opened now unless ``run_id`` is given): the epochs
        not in ``logged_epochs``, the final metrics, the artifacts. Returns the run's id."""
        run_id = run_id or self.open_trial_run(config, row["trial_id"])
        self.client.set_tag(run_id, "status", row["status"])
        self._log_metrics(run_id, [r for r in history if int(r["epoch"]) not in logged_epochs],
                          row)
        if row.get("error"):
            self.client.log_text(run_id, row["error"], "error.txt")
        self._log_figures(run_id, figures)
        self.client.log_dict(run_id, {**row, "mlflow_run_id": run_id}, "row.json")
        self.client.set_terminated(run_id, "FINISHED" if row["status"] == "ok" else "FAILED")
        return run_id

    def _drop_earlier_runs(self, trial_id: str) -> None:
        """A driver killed between logging a trial and writing its row leaves a run behind; the
        trial's new run replaces it, so each trial has exactly one run."""
        earlier = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'")
        for run in earlier:
            self.client.delete_run(run.info.run_id)

    def _log_params(self, run_id: str, values: dict) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)[:PARAM_LENGTH]) for key, value in sorted(values.items())]
        for batch in _batches(params, BATCH_PARAMS):
            self.client.log_batch(run_id, params=batch)

    def _log_metrics(self, run_id: str, history: list[dict], row: dict | None) -> None:
        """The history records' EPOCH_METRICS and, given the row, its ROW_METRICS as final_*."""
        from mlflow.entities import Metric

        stamp = _now_ms()
        metrics = [Metric(key, float(record[key]), stamp, int(record["epoch"]))
                   for record in history for key in EPOCH_METRICS if _finite(record.get(key))]
        if row is not None:
            final_step = row.get("epochs") or max((int(r["epoch"]) for r in history), default=0)
            metrics += [Metric(f"final_{key}", float(row[key]), stamp, int(final_step))
                        for key in ROW_METRICS if _finite(row.get(key))]
        for batch in _batches(metrics, BATCH_METRICS):
            self.client.log_batch(run_id, metrics=batch)

    def _log_figures(self, run_id: str, figures: dict[str, bytes]) -> None:
        if not figures:
            return
        with tempfile.TemporaryDirectory() as folder:
            for name, content in figures.items():
                path = Path(folder) / name
                path.write_bytes(content)
                self.client.log_artifact(run_id, str(path), "figures")
