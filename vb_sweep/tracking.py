"""MLflow tracking of a sweep: one experiment per sweep name, one parent run per invocation, one
nested run per trial (its whole configuration as params, per-epoch metrics, its figures and its
result row as artifacts).

By MLflow's conventions: runs carry the source, git commit and user tags the MLflow UI shows
("Source", "Created by"); a trial's run is named ``attack/variant/sSEED`` and its params hold
the values the trial really used (the attack's default poisoning rate resolved, the precision it
computed in); the row's figures are logged once under ``summary/`` (one collapsible group in the
chart view, beside the per-epoch series); the parent run holds the grid (grid.md, grid.csv) and a
``grid/ATTACK/VARIANT/{ba,asr,der}`` metric per cell.

One process logs: the sweep's driver. It opens a trial's run at the trial's first report and logs
each epoch as Tune hands it over, so a running sweep can be watched in the MLflow UI; the row,
the figures and any epoch it missed (those before a resume) follow when the trial ends. So the
embedded default store, a SQLite file in the output folder, never sees two writers; with
``--mlflow-uri http://HOST:PORT`` the same calls go to a shared ``mlflow server`` over HTTP.
Browse the default store with ``mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db``.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable

from vb_sweep import git_commit
from vb_sweep.errors import ConfigError

# History columns logged as per-epoch metrics (step = Beneficiary epoch; 0 is the Victim's
# first split).
EPOCH_METRICS = ("ba", "asr", "ra", "clean_target_rate", "loss", "lr", "credible_size",
                 "suspicious_size", "filter_precision", "filter_recall", "filter_auroc", "seconds",
                 "images_per_s", "ba_clean_bn", "asr_clean_bn", "clean_target_rate_clean_bn")
# Row columns logged once as metrics of the trial's run.
ROW_METRICS = ("ba", "asr", "ra", "best_ba", "best_ba_asr", "best_epoch", "clean_target_rate",
               "filter_precision", "filter_recall", "filter_auroc", "first_filter_precision",
               "first_filter_recall", "credible_size", "suspicious_size", "num_train",
               "num_poisoned", "poison_s", "victim_s", "beneficiary_s", "train_images_per_s",
               "wall_s")
BATCH_METRICS = 1000   # mlflow.utils.validation.MAX_METRICS_PER_BATCH
BATCH_PARAMS = 100     # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
PARAM_LENGTH = 6000    # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
TRIAL_TAG = "trial_id"
# A tracking server that is down must cost seconds, not MLflow's default of 5 retries with
# exponential backoff per call (about 4 minutes each); any of these set in the environment wins.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
ROLE_TAG = "vb_sweep.role"
SUMMARY_PREFIX = "summary/"  # the row's figures: one group in MLflow's chart view


def source_tags() -> dict[str, str]:
    """The tags MLflow's fluent API sets and its UI shows: source, git commit, user."""
    tags = {"mlflow.source.type": "LOCAL", "mlflow.user": _user(),
            "mlflow.source.name": Path(sys.argv[0]).name or "python"}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


def run_name(config: dict, thresholds: bool = False) -> str:
    """``badnets/F+AT+SST+S/s0``; with ``thresholds`` (a threshold search, where they differ
    from trial to trial) `` t_f=0.12 t_m=0.3`` after it."""
    name = f"{config['attack']}/{config['defense']}/s{config['seed']}"
    if thresholds:
        name += f" t_f={config['t_f']:.3g} t_m={config['t_m']:.3g}"
    return name


def resolved_params(config: dict) -> dict:
    """The trial's configuration as params, with the values a default stands for: the
    attack's own poisoning rate where ``poison_rate`` is None."""
    from vb_sweep.attacks import ATTACKS
    from vb_sweep.attacks.registry import resolved_poison_rate

    params = dict(config)
    if params.get("attack") in ATTACKS.names():
        params["poison_rate"] = resolved_poison_rate(params["attack"], params.get("poison_rate"))
    return params


def metric_key(*parts: str) -> str:
    """A metric name MLflow accepts ('+' is not among its characters)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", "/".join(parts))


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
    raise ConfigError("--mlflow-uri", redact_url(uri), f"a reachable MLflow server ({reason})")


def lock_sqlite_store(uri: str, hold: bool = True):
    """The one-writer rule of an SQLite store: an exclusive lock on ``DB.lock`` beside it, held
    by the returned open file until it is closed (or the process ends). A store that another
    sweep is writing is a ``ConfigError``. ``hold=False`` only checks, creating nothing; other
    URIs need no lock (None)."""
    import fcntl

    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    lock = database.with_name(database.name + ".lock")
    if not hold and not lock.exists():
        return None
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError("--mlflow-uri", uri, "an SQLite store no other sweep is writing now "
                          "(for sweeps at the same time, start `mlflow server` on it and pass "
                          "its http://HOST:PORT)") from None
    if not hold:
        handle.close()
        return None
    return handle


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
        # MLflow's INFO lines (creating the SQLite tables, ...) are not the sweep's progress.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(artifact_root)
        self.parent_run_id: str | None = None
        self.kind: str | None = None

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
        self.kind = kind
        if resume:
            self._close_interrupted_invocations()
        run = self.client.create_run(
            self.experiment_id, run_name=f"{kind} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={ROLE_TAG: "invocation", "vb_sweep.kind": kind, "sweep": self.sweep,
                  "resumed": str(resume), **source_tags()})
        self.parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, options)
        return self.parent_run_id

    def log_grid(self, files: list[Path], cells: list[dict]) -> None:
        """The grid's files and one metric per cell and figure on the parent run; ``cells``:
        dicts with attack, defense and any of ba, asr, der."""
        from mlflow.entities import Metric

        for path in files:
            self.client.log_artifact(self.parent_run_id, str(path))
        stamp = _now_ms()
        metrics = [Metric(metric_key("grid", cell["attack"], cell["defense"], key),
                          round(float(cell[key]), 4), stamp, 0)  # as grid.csv: no float32 noise
                   for cell in cells for key in ("ba", "asr", "der") if _finite(cell.get(key))]
        for batch in _batches(metrics, BATCH_METRICS):
            self.client.log_batch(self.parent_run_id, metrics=batch)

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
            self.experiment_id,
            run_name=run_name(config, thresholds=self.kind == "threshold_search"),
            tags={"mlflow.parentRunId": self.parent_run_id, ROLE_TAG: "trial",
                  TRIAL_TAG: trial_id, "sweep": self.sweep,
                  "attack": config.get("attack"), "defense": config.get("defense"),
                  **source_tags()})
        self._log_params(run.info.run_id, resolved_params(config))
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
        if row.get("precision"):  # what the trial computed in (amp is only a request)
            self._log_params(run_id, {"precision": row["precision"]})
        self._log_metrics(run_id, [r for r in history if int(r["epoch"]) not in logged_epochs],
                          row)
        if row.get("error"):
            self.client.log_text(run_id, row["error"], "error.txt")
        self._log_datasets(run_id, row)
        self._log_figures(run_id, figures)
        self.client.log_dict(run_id, {**row, "mlflow_run_id": run_id}, "row.json")
        self.client.set_terminated(run_id, "FINISHED" if row["status"] == "ok" else "FAILED")
        return run_id

    def _log_datasets(self, run_id: str, row: dict) -> None:
        """The poisoned training set and the clean test set as the run's dataset inputs (the
        MLflow UI's "Datasets used"), named by what they are, with their fingerprints."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for context, name, digest in (
                ("training", f"{row.get('dataset')} poisoned by {row.get('attack')} "
                             f"({row.get('num_poisoned')} of {row.get('num_train')})",
                 row.get("train_fingerprint")),
                ("evaluation", f"{row.get('dataset')} test", row.get("test_fingerprint"))):
            if digest:
                source = json.dumps({"dataset": row.get("dataset"), "fingerprint": digest})
                inputs.append(DatasetInput(Dataset(name, digest[-20:], "vb-sweep", source),
                                           tags=[InputTag("mlflow.data.context", context)]))
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

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
        """The history records' EPOCH_METRICS and, given the row, its ROW_METRICS as summary/*."""
        from mlflow.entities import Metric

        stamp = _now_ms()
        metrics = [Metric(key, float(record[key]), stamp, int(record["epoch"]))
                   for record in history for key in EPOCH_METRICS if _finite(record.get(key))]
        if row is not None:
            final_step = row.get("epochs") or max((int(r["epoch"]) for r in history), default=0)
            metrics += [Metric(SUMMARY_PREFIX + key, float(row[key]), stamp, int(final_step))
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
