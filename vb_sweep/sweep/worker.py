"""What runs inside a trial's worker process: the trial spec Tune hands over, the trainable
(``sweep_trial``), its per-epoch reports and checkpoints, and resuming from them.

A trial saves a checkpoint after every epoch (``run_trial`` hands its state to
``save_checkpoint``); Tune retries a trial whose process dies (``max_failures``) from its latest
checkpoint, and a resumed sweep (a new Tune run in the same storage) finds the latest checkpoint
of each unfinished trial under any earlier run, because trial folders are named by trial id.
Checkpoints are checked files (``vb_sweep.cache.save_checked``): a SHA-256 header, then data that
``torch.load(weights_only=True)`` reads.

Fault-injection hooks (tests, drills), read from the driver's environment; ``N`` or ``N:TEXT``
(only trials whose id contains TEXT):
- ``VB_SWEEP_FAULT_KILL_AT=N``: the trial SIGKILLs its own process once, right after its N-th
  checkpoint is stored; Tune's retry resumes from that checkpoint.
- ``VB_SWEEP_FAULT_RAISE_AT=N``: the trial raises an exception at its N-th history record; it
  ends as a failed row.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.fs

from vb_sweep.config import TrialConfig
from vb_sweep.tracking import EPOCH_METRICS

FAULT_HOOKS = {"kill_at_checkpoint": "VB_SWEEP_FAULT_KILL_AT",
               "raise_at_record": "VB_SWEEP_FAULT_RAISE_AT"}
STATE_FILE = "state.pt"
RESULT_FILE = "result.json"
FIGURES_DIR = "figures"
# What a trial reports to Tune per epoch: the driver logs it to MLflow as it arrives.
REPORTED_METRICS = ("epoch", "stage", *EPOCH_METRICS)


# -- the trial spec: what the driver hands to Tune for one trial ----------------------------------
def trial_spec(tune_config: dict) -> dict:
    """The trial's spec from Tune's config: ``{"trial": spec}`` plus any searched fields (t_f,
    t_m), merged into the spec's TrialConfig; the trial id follows from the merged config."""
    from vb_sweep.trial import trial_id_for

    spec = dict(tune_config["trial"])
    searched = {key: value for key, value in tune_config.items() if key != "trial"}
    config = TrialConfig.from_dict({**spec["config"], **searched})
    return {**spec, "config": config.to_dict(), "trial_id": trial_id_for(config)}


def trial_name(trial) -> str:
    """Tune's trial name and folder name: the stable trial id, so resumes find the folder."""
    return trial_spec(trial.config)["trial_id"]


def base_spec(sweep: str, config: TrialConfig, cache_dir: str, storage: str) -> dict:
    spec = {"sweep": sweep, "config": config.to_dict(), "cache_dir": cache_dir,
            "storage": storage}
    return {**spec, "faults": fault_injection(trial_spec({"trial": spec})["trial_id"])}


def fault_injection(trial_id: str) -> dict:
    """The fault-injection hooks, read in the driver (workers do not share its environment)."""
    faults = {}
    for name, variable in FAULT_HOOKS.items():
        count, _, pattern = os.environ.get(variable, "").partition(":")
        if count and pattern in trial_id:
            faults[name] = int(count)
    return faults


# -- inside the trial's worker process ------------------------------------------------------------
class EpochReporter:
    """Forwards ``run_trial``'s callbacks to Tune: one ``tune.report`` per history record,
    carrying the checkpoint saved right after that record (run_trial calls on_epoch, then
    save_checkpoint, each epoch)."""

    def __init__(self, faults: dict):
        self.pending: dict | None = None
        self.records = 0
        self.checkpoints = 0
        self.faults = faults

    def on_epoch(self, record: dict) -> None:
        self.flush()
        self.records += 1
        if self.records == self.faults.get("raise_at_record"):
            raise RuntimeError(f"injected fault at history record {self.records}")
        self.pending = {key: record[key] for key in REPORTED_METRICS if key in record}

    def save_checkpoint(self, state: dict) -> None:
        from ray import tune

        from vb_sweep.cache import save_checked

        folder = tempfile.mkdtemp(prefix="vb-checkpoint-")
        try:
            save_checked(state, Path(folder) / STATE_FILE)
            tune.report(self.pending or {}, checkpoint=tune.Checkpoint.from_directory(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.pending = None
        self.checkpoints += 1
        if self.checkpoints == self.faults.get("kill_at_checkpoint"):
            os.kill(os.getpid(), signal.SIGKILL)  # the fault-injection hook

    def flush(self) -> None:
        from ray import tune

        if self.pending is not None:
            tune.report(self.pending)
            self.pending = None


class WorkerProcess:
    """What a worker process knows about itself across the trials Tune runs in it."""

    trials = 0

    @classmethod
    def start_trial(cls) -> dict:
        """This trial's place in the worker: ``worker_trial`` (1 in a new process);
        ``startup_s``, the seconds from the process's start to its first trial (interpreter,
        Ray, the actor; 0 later); ``imports_s``, importing the trial's code (torch, the
        defense; about 0 once a process has done it)."""
        import psutil

        cls.trials += 1
        startup = time.time() - psutil.Process().create_time() if cls.trials == 1 else 0.0
        started = time.perf_counter()
        import vb_sweep.trial  # noqa: F401 - what a new process pays for, timed here
        return {"worker_trial": cls.trials, "startup_s": startup,
                "imports_s": time.perf_counter() - started}


def sweep_trial(tune_config: dict) -> None:
    """The Tune trainable: one full trial (any variant), resumed from its latest checkpoint if
    there is one. Its last report carries the final row, and a checkpoint holding the row, the
    history and the figures, which the driver turns into MLflow runs and Parquet rows. A worker
    process may run several trials one after the other (``--fresh-workers`` turns that off):
    each trial seeds everything it draws, and what the process keeps between trials (the clean
    data, ``vb_sweep.artifacts.load_trial_data``) is keyed by its settings and never changed."""
    from ray import tune

    worker = WorkerProcess.start_trial()
    quiet_checkpoint_logs()
    spec = trial_spec(tune_config)
    latest = tune.get_checkpoint()
    candidates = [latest] if latest else resume_candidates(spec["storage"], spec["trial_id"])
    found = latest_resumable(candidates)
    if found.row is not None:  # finished under an earlier driver that died before recording it
        print(f"{spec['trial_id']}: already finished, reporting its stored result", flush=True)
        tune.report(final_metrics(found.row), checkpoint=found.checkpoint)
        return
    if found.state is not None:
        print(f"{spec['trial_id']}: resuming after epoch {found.state['epoch']}", flush=True)
    # A resumed attempt is not killed again: the kill hook fires once per trial.
    reporter = EpochReporter(spec.get("faults", {}) if found.state is None else {})
    row, history, figures = run_with_recovery(spec, found.state, reporter)
    row = {**row, **worker}
    reporter.flush()
    report_final(row, history, figures)


def quiet_checkpoint_logs() -> None:
    """Ray logs every persisted checkpoint at INFO: one line per epoch per trial."""
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)


def run_with_recovery(spec: dict, state: dict | None, reporter: EpochReporter):
    """``run_trial``; an exception becomes a failed row (it is deterministic: retrying it would
    fail again), while a dying process is Tune's to retry."""
    from vb_sweep.cache import ArtifactCache
    from vb_sweep.trial import run_trial

    config = TrialConfig.from_dict(spec["config"])
    try:
        result = run_trial(config, cache=ArtifactCache(spec["cache_dir"]), sweep=spec["sweep"],
                           trial_id=spec["trial_id"], on_epoch=reporter.on_epoch,
                           checkpoint=state, save_checkpoint=reporter.save_checkpoint)
    except Exception:  # noqa: BLE001 - any error of the defense code ends this one trial
        return failed_row(spec, traceback.format_exc()), [], {}
    return result.row, result.history, result.figures


def final_metrics(row: dict) -> dict:
    # Tune fills a "trial_id" of its own into every result: the row's goes under another name.
    metrics = {"stage": "final", "status": row["status"], "epoch": row.get("epochs"),
               "row_trial_id": row.get("trial_id")}
    for key in ("ba", "asr", "ra", "filter_precision", "filter_recall", "wall_s"):
        if isinstance(row.get(key), (int, float)):
            metrics[key] = row[key]
    return metrics


def report_final(row: dict, history: list[dict], figures: dict[str, bytes]) -> None:
    from ray import tune

    folder = Path(tempfile.mkdtemp(prefix="vb-result-"))
    try:
        (folder / RESULT_FILE).write_text(json.dumps({"row": row, "history": history}))
        (folder / FIGURES_DIR).mkdir()
        for name, content in figures.items():
            (folder / FIGURES_DIR / name).write_bytes(content)
        tune.report(final_metrics(row), checkpoint=tune.Checkpoint.from_directory(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def resume_candidates(storage: str, trial_id: str) -> list:
    """Checkpoints of ``trial_id`` left by earlier Tune runs in ``storage``, newest first."""
    from ray import tune

    fs, root = storage_filesystem(storage)
    found = []
    for run in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if run.type != pyarrow.fs.FileType.Directory:
            continue
        selector = pyarrow.fs.FileSelector(f"{run.path}/{trial_id}", allow_not_found=True)
        found += [(run.base_name, info.base_name, info.path) for info in fs.get_file_info(selector)
                  if info.base_name.startswith("checkpoint_")]
    return [tune.Checkpoint(path, fs) for *_, path in sorted(found, reverse=True)]


def storage_filesystem(storage: str):
    if "://" in storage:
        return pyarrow.fs.FileSystem.from_uri(storage)
    return pyarrow.fs.LocalFileSystem(), str(Path(storage).resolve())


@dataclass
class Resumable:
    checkpoint: object = None
    state: dict | None = None      # from an epoch checkpoint: run_trial continues after it
    row: dict | None = None        # from a finished result: nothing left to run


def latest_resumable(candidates: list) -> Resumable:
    """The newest usable checkpoint: a checkpoint cut short by a crash is skipped, and so is a
    failed result (it is run again, from its last epoch checkpoint)."""
    from vb_sweep.cache import load_checked

    for checkpoint in candidates:
        try:
            with checkpoint.as_directory() as folder:
                folder = Path(folder)
                if (folder / RESULT_FILE).exists():
                    row = json.loads((folder / RESULT_FILE).read_text())["row"]
                    if row["status"] == "ok":
                        return Resumable(checkpoint, row=row)
                    continue
                state = load_checked(folder / STATE_FILE)
                return Resumable(checkpoint, state=state)
        except Exception:  # noqa: BLE001 - unreadable: fall back to an older one
            continue
    return Resumable()


def failed_row(spec: dict, error: str) -> dict:
    """A ``trials`` row for a trial that did not finish: its configuration, status and error."""
    from vb_sweep.trial import code_version

    config = spec["config"]
    described = ("dataset", "model", "attack", "attack_preset", "poison_rate", "target",
                 "defense", "augment", "t_f", "t_m", "seed", "preset", "epochs")
    return {"sweep": spec["sweep"], "trial_id": spec["trial_id"],
            **{name: config[name] for name in described},
            "status": "failed", "error": error.strip(), "mlflow_run_id": None,
            "code_version": code_version(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
