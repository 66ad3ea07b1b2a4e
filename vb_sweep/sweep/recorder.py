"""The driver's recorder: Tune calls it in the driver as trials report. It logs each epoch to
the trial's MLflow run as it arrives and, when a trial ends, completes the run, writes the trial's
Parquet files, removes its checkpoints and prints a ``[k/N]`` progress line.

A trial that MLflow could not take (the server was down) still gets its Parquet row, and what
its run needs (configuration, row, history, figures) is kept in ``OUT/mlflow-pending/TRIAL_ID/``;
the next invocation of the sweep (``--resume``) logs it and records the run's id in the row.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs

from vb_sweep.errors import first_line
from vb_sweep.results import compact_results, write_trial
from vb_sweep.sweep.worker import FIGURES_DIR, RESULT_FILE, failed_row, trial_spec

PENDING_DIR = "mlflow-pending"
PENDING_RECORD = "trial.json"


# -- the driver's recorder ------------------------------------------------------------------------
class TrialRecorder:
    """Called by Tune in the driver: logs each reported epoch to the trial's MLflow run as it
    arrives and, when a trial ends, completes that run, writes its Parquet files and prints one
    line. ``tracker`` may be None (no MLflow)."""

    def __init__(self, out: Path, tracker, total: int):
        self.out = Path(out)
        self.tracker = tracker
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.tracking_failures = 0
        self.open_runs: dict[str, str] = {}             # trial id -> its RUNNING MLflow run
        self.logged_epochs: dict[str, set[int]] = {}    # trial id -> epochs logged live
        self.trial_started: dict[str, float] = {}       # trial id -> when Tune first started it

    def start_trial(self, spec: dict) -> None:
        self.trial_started.setdefault(spec["trial_id"], time.monotonic())

    def record_epoch(self, spec: dict, result: dict) -> None:
        """One epoch's report; an epoch reported again (a retried trial re-running the epochs
        after its last checkpoint) is logged once."""
        if self.tracker is None or result.get("stage") in (None, "final"):
            return
        trial_id, epoch = spec["trial_id"], int(result["epoch"])
        logged = self.logged_epochs.setdefault(trial_id, set())
        if epoch in logged:
            return
        try:
            if trial_id not in self.open_runs:
                self.open_runs[trial_id] = self.tracker.open_trial_run(spec["config"], trial_id)
            self.tracker.log_epoch(self.open_runs[trial_id], result)
            logged.add(epoch)
        except Exception as err:  # noqa: BLE001 - a tracking outage must not stop the sweep
            self.tracking_failed(trial_id, err)

    def record(self, spec: dict, row: dict, history: list[dict],
               figures: dict[str, bytes]) -> dict:
        row = {**row, "sweep": spec["sweep"], "trial_id": spec["trial_id"]}
        history = [{**record, "sweep": spec["sweep"], "trial_id": spec["trial_id"]}
                   for record in history]
        tracking_started = time.monotonic()
        row["mlflow_run_id"] = self._log_mlflow(spec, row, history, figures)
        row["tracking_s"] = time.monotonic() - tracking_started if self.tracker else None
        started = self.trial_started.pop(spec["trial_id"], None)
        row["lifetime_s"] = time.monotonic() - started if started is not None else None
        write_trial(self.out, row, history)
        self.merge_results()
        if self.tracker is not None and row["mlflow_run_id"] is None:
            self.keep_for_mlflow(spec["config"], row, history, figures)
        self.done += 1
        print(trial_line(self.done, self.total, row, time.monotonic() - self.started),
              flush=True)
        return row

    def merge_results(self) -> None:
        """Merge the one-trial Parquet files once there are many; a failed merge leaves them
        as they are (every row is already on disk) and costs a warning."""
        try:
            compact_results(self.out)
        except Exception as err:  # noqa: BLE001 - the rows are safe; the merge can wait
            print(f"warning: could not merge the Parquet files under {self.out}: {err}",
                  flush=True)

    def keep_for_mlflow(self, config: dict, row: dict, history: list[dict],
                        figures: dict[str, bytes]) -> None:
        """What the trial's MLflow run needs, until an invocation with a reachable server logs
        it (``complete_pending``); the record file is written last, atomically."""
        folder = self.out / PENDING_DIR / row["trial_id"]
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in figures.items():
            (folder / name).write_bytes(content)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".trial.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump({"config": config, "row": row, "history": history}, handle)
        os.replace(tmp, folder / PENDING_RECORD)

    def complete_pending(self) -> int:
        """Logs the trials an earlier MLflow outage left out, records their run ids in their
        Parquet rows and forgets them; returns how many. A failure leaves the rest for later."""
        if self.tracker is None:
            return 0
        root = self.out / PENDING_DIR
        kept = sorted(path.parent for path in root.glob(f"*/{PENDING_RECORD}"))
        logged = 0
        for folder in kept:
            record = json.loads((folder / PENDING_RECORD).read_text())
            figures = {path.name: path.read_bytes() for path in sorted(folder.iterdir())
                       if path.is_file() and path.suffix != ".json" and
                       not path.name.startswith(".")}
            try:
                run_id = self.tracker.log_trial(record["config"], record["row"],
                                                record["history"], figures)
            except Exception as err:  # noqa: BLE001 - still unreachable: try again next time
                self.tracking_failed(record["row"]["trial_id"], err)
                break
            write_trial(self.out, {**record["row"], "mlflow_run_id": run_id}, record["history"])
            shutil.rmtree(folder)
            logged += 1
        if logged:
            self.merge_results()  # the rewritten rows replace their merged copies
            print(f"logged {logged} trial(s) to MLflow that an earlier outage had left out",
                  flush=True)
        return logged

    def invocation_status(self) -> str:
        """The parent run's status: a run stopped by Ctrl-C (Tune returns normally) left
        trials unrecorded."""
        return "FINISHED" if self.done >= self.total else "KILLED"

    def _log_mlflow(self, spec, row, history, figures) -> str | None:
        if self.tracker is None:
            return None
        trial_id = spec["trial_id"]
        try:
            return self.tracker.log_trial(spec["config"], row, history, figures,
                                          run_id=self.open_runs.pop(trial_id, None),
                                          logged_epochs=frozenset(
                                              self.logged_epochs.pop(trial_id, set())))
        except Exception as err:  # noqa: BLE001 - a tracking outage must not lose the row
            self.tracking_failed(trial_id, err)
            return None

    def tracking_failed(self, trial_id: str, err: Exception) -> None:
        """One warning for the invocation, not one per call: the rows still go to Parquet."""
        self.tracking_failures += 1
        if self.tracking_failures == 1:
            print(f"warning: MLflow logging failed ({trial_id}: {first_line(err)}); the sweep "
                  "goes on and writes every row to Parquet; the trials MLflow misses are kept in "
                  f"{self.out / PENDING_DIR} and logged by --resume", flush=True)

    def record_checkpoint(self, spec: dict, checkpoint) -> dict:
        if checkpoint is None:
            return self.record(spec, failed_row(spec, "the trial ended without a result"), [], {})
        with checkpoint.as_directory() as folder:
            folder = Path(folder)
            if not (folder / RESULT_FILE).exists():
                row = failed_row(spec, "the trial ended without a result")
                return self.record(spec, row, [], {})
            result = json.loads((folder / RESULT_FILE).read_text())
            figures = {path.name: path.read_bytes()
                       for path in sorted((folder / FIGURES_DIR).glob("*"))}
        return self.record(spec, result["row"], result["history"], figures)


def trial_line(done: int, total: int, row: dict, elapsed_s: float | None = None) -> str:
    """``[k/N] TRIAL finished: BA .. ASR .. in .. s``, with the Victim's filter at the last
    split for a filtering variant (recall: the share of the poisoned images it set aside) and,
    given the time since the trials started, the elapsed time and an estimate of what is left
    (at the pace so far)."""
    head = f"[{done}/{total}] {row['trial_id']}"
    if row["status"] != "ok":
        error = (row.get("error") or "").strip().splitlines()
        line = f"{head} FAILED: {error[-1] if error else 'unknown error'}"
    else:
        line = (f"{head} finished: BA {row['ba']:.3f} ASR {row['asr']:.3f}"
                + (f" in {row['wall_s']:.0f} s" if _number(row.get("wall_s")) else ""))
        if _number(row.get("filter_recall")) and _number(row.get("filter_precision")):
            line += (f"; filter recall {row['filter_recall']:.2f} "
                     f"precision {row['filter_precision']:.2f}")
    if elapsed_s is None:
        return line
    left = elapsed_s / done * (total - done) if done else math.nan
    return line + f" | elapsed {clock(elapsed_s)}" + (f", about {clock(left)} left"
                                                     if done < total else "")


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def tune_callback(recorder: TrialRecorder):
    """The recorder as a Tune callback (Tune calls it in the driver's event loop)."""
    from ray import tune

    class RecordingCallback(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            recorder.start_trial(trial_spec(trial.config))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            recorder.record_epoch(trial_spec(trial.config), result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            row = recorder.record_checkpoint(trial_spec(trial.config), trial.checkpoint)
            if row["status"] == "ok":
                remove_trial_checkpoints(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            spec = trial_spec(trial.config)
            recorder.record(spec, failed_row(spec, trial_error_text(trial)), [], {})

    return RecordingCallback()


def remove_trial_checkpoints(trial) -> None:
    """A finished trial's checkpoints (its last epochs' states, its result) once its row is
    written: nothing reads them again, and a ResNet-18 state is about 90 MB. A failed trial
    keeps them, so --retry-failed continues it from its last epoch."""
    fs = trial.storage.storage_filesystem
    for info in fs.get_file_info(pyarrow.fs.FileSelector(trial.path, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            try:
                fs.delete_dir(info.path)
            except OSError as err:  # a leftover costs disk, not results
                print(f"warning: could not remove {info.path}: {err}", flush=True)


def trial_error_text(trial) -> str:
    """Tune's error file of the trial: on the driver's staging folder until it is synced."""
    if trial.error_file and Path(trial.error_file).exists():
        return Path(trial.error_file).read_text()
    return trial.get_error() or f"the trial failed {trial.num_failures} time(s)"
