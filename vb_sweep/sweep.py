"""Trials inside Ray Tune: the trial function, resources, artifact preparation, and the driver's
recorder that turns finished trials into MLflow runs and Parquet rows.

Where things live (OUT is the sweep's output folder):

    OUT/sweep.json          which sweep the folder holds (kind, name, preset, options)
    OUT/trials/ history/    Parquet, one file per finished trial, written by the driver
    OUT/mlflow.db           the embedded MLflow store (default), written by the driver only
    OUT/cache/              poisoned sets and Victim trajectories, shared by the trials
    OUT/tune/RUN/TRIAL_ID/  Tune's per-trial folders: per-epoch checkpoints, the final result

A trial saves a checkpoint after every epoch (``run_trial`` hands its state to
``save_checkpoint``); Tune retries a trial whose process dies (``max_failures``) from its latest
checkpoint, and a resumed sweep (a new Tune run in the same storage) finds the latest checkpoint
of each unfinished trial under any earlier run, because trial folders are named by trial id.

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
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
import pyarrow.fs

from vb_sweep.config import TrialConfig
from vb_sweep.errors import ConfigError
from vb_sweep.grid import check_output_folder, manifest_for, write_manifest
from vb_sweep.results import read_trials, write_trial
from vb_sweep.tracking import (EPOCH_METRICS, SweepTracker, check_tracking_uri,
                               default_tracking_uri, redact_url)

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
        import torch
        from ray import tune

        folder = tempfile.mkdtemp(prefix="vb-checkpoint-")
        try:
            torch.save(state, Path(folder) / STATE_FILE)
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


def sweep_trial(tune_config: dict) -> None:
    """The Tune trainable: one full trial (any variant), resumed from its latest checkpoint if
    there is one. Its last report carries the final row, and a checkpoint holding the row, the
    history and the figures, which the driver turns into MLflow runs and Parquet rows."""
    from ray import tune

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
    metrics = {"stage": "final", "status": row["status"], "epoch": row.get("epochs")}
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
    import torch

    for checkpoint in candidates:
        try:
            with checkpoint.as_directory() as folder:
                folder = Path(folder)
                if (folder / RESULT_FILE).exists():
                    row = json.loads((folder / RESULT_FILE).read_text())["row"]
                    if row["status"] == "ok":
                        return Resumable(checkpoint, row=row)
                    continue
                state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
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


# -- resources ------------------------------------------------------------------------------------
@dataclass
class Resources:
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    node_cpus: float | None = None  # the largest node's CPUs: no one task can have more

    def tune_request(self) -> dict:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    def task_options(self) -> dict:
        return {"num_cpus": self.cpus_per_trial, "num_gpus": self.gpus_per_trial}

    def preparation_options(self, tasks: int) -> tuple[dict, int]:
        """Ray options and torch threads for ``tasks`` preparation tasks run at once. On CPUs
        the sweep's cores are shared out among them, so a lone Victim or mix stage trains on
        all of them (2 threads train the smoke network 1.6x faster than 1) instead of leaving
        the other cores idle; on GPUs each task gets a trial's share."""
        cpus = self.cpus_per_trial * (self.max_concurrent // max(1, tasks))
        if self.node_cpus is not None:
            cpus = min(cpus, self.node_cpus)
        if self.gpus_per_trial or cpus <= self.cpus_per_trial:
            return self.task_options(), max(1, int(self.cpus_per_trial))
        return {"num_cpus": cpus, "num_gpus": 0}, max(1, int(cpus))

    def describe(self) -> str:
        gpus = f", {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ""
        return (f"{self.max_concurrent} trials at a time, each {self.cpus_per_trial:g} CPU"
                f"{gpus}")


def plan_resources(cluster: dict, gpus: int | None = None, trials_per_gpu: int = 1,
                   cpus: int | None = None, cpus_per_trial: int = 1) -> Resources:
    """Per-trial resources from ``--gpus N --trials-per-gpu K`` (each trial 1/K GPU, N*K at a
    time) or ``--cpus N`` (N / cpus-per-trial at a time); without either, every GPU of the
    cluster when it has some, else every CPU. Asking for more than the cluster has is an
    error."""
    cluster_gpus, cluster_cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if trials_per_gpu < 1:
        raise ConfigError("--trials-per-gpu", trials_per_gpu, "an integer >= 1")
    if cpus_per_trial < 1 or cpus_per_trial > cluster_cpus:
        raise ConfigError("--cpus-per-trial", cpus_per_trial,
                          f"1 to the cluster's {cluster_cpus:g} CPUs")
    if gpus is not None and gpus != 0:
        if gpus < 0 or gpus > cluster_gpus:
            raise ConfigError("--gpus", gpus, f"at most the cluster's {cluster_gpus:g} GPU(s)")
        return Resources(cpus_per_trial, 1.0 / trials_per_gpu, int(gpus * trials_per_gpu))
    if cpus is not None:
        if cpus < 1 or cpus > cluster_cpus:
            raise ConfigError("--cpus", cpus, f"1 to the cluster's {cluster_cpus:g} CPUs")
        return Resources(cpus_per_trial, 0.0, max(1, cpus // cpus_per_trial))
    if cluster_gpus >= 1 and gpus is None:
        return Resources(cpus_per_trial, 1.0 / trials_per_gpu,
                         int(cluster_gpus * trials_per_gpu))
    return Resources(cpus_per_trial, 0.0, max(1, int(cluster_cpus // cpus_per_trial)))


# -- the cluster ----------------------------------------------------------------------------------
def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at ``HOST:PORT`` (``ray.init`` would retry for long)."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        raise ConfigError("--address", address, "HOST:PORT of a Ray head node (the driver "
                          "records results itself, so Ray Client is not used)")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise ConfigError("--address", address, "HOST:PORT of a Ray head node") from None
    except OSError as err:
        raise ConfigError("--address", address,
                          f"a reachable Ray head node ({err.strerror or err})") from None


def connect(address: str | None) -> dict:
    """Start a local Ray cluster, or join the one at ``address``; returns its resources. The
    package travels to the workers with the job (``py_modules``), so workers need no copy."""
    import ray

    import vb_sweep

    quiet = {"runtime_env": {"py_modules": [vb_sweep]}, "logging_level": logging.ERROR}
    if not address:
        ray.init(include_dashboard=False, **quiet)
        return ray.cluster_resources()
    check_address(address)
    try:
        # Ray's C++ client logs every failed attempt (a wrong token, say) on stderr for a while:
        # kept back, and shown only if the connection succeeds after all.
        with stderr_held_back() as held:
            ray.init(address=address, **quiet)
    except (ConnectionError, TimeoutError, ray.exceptions.AuthenticationError) as err:
        raise ConfigError("--address", address, f"a Ray cluster this driver may join "
                          f"({first_line(err)}; with token auth set RAY_AUTH_MODE=token "
                          "and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)") from None
    sys.stderr.write(held.read())
    return ray.cluster_resources()


@contextmanager
def stderr_held_back():
    """File descriptor 2 goes to a temporary file for the block; yields that file."""
    sys.stderr.flush()
    saved = os.dup(2)
    held = tempfile.TemporaryFile(mode="w+")
    os.dup2(held.fileno(), 2)
    try:
        yield held
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        held.seek(0)


# -- preparing the shared artifacts ---------------------------------------------------------------
ARTIFACT_KINDS = ("poison", "victim", "mix_stage")  # in the order they depend on each other
ARTIFACT_NAMES = {"poison": "poisoned set(s)", "victim": "Victim trajectory(ies)",
                  "mix_stage": "mix stage(s)"}


def _artifact_keys(config_dicts: list[dict]) -> list[dict[str, str]]:
    """Per configuration, the cache key of each shared artifact it uses (kind -> key)."""
    from vb_sweep.artifacts import (load_trial_data, mix_stage_cache_parts, poison_cache_parts,
                                    shares_mix_stage, victim_cache_parts)
    from vb_sweep.cache import cache_key
    from vb_sweep.device import resolve_device

    keys = []
    for values in config_dicts:
        config = TrialConfig.from_dict(values)
        data = load_trial_data(config)
        device = resolve_device(config.device)
        uses = {"poison": cache_key("poison", poison_cache_parts(config, data))}
        if config.flags.filter:
            uses["victim"] = cache_key("victim", victim_cache_parts(config, data, device))
        if shares_mix_stage(config):
            uses["mix_stage"] = cache_key("mix_stage", mix_stage_cache_parts(config, data, device))
        keys.append(uses)
    return keys


def _prepare(kind: str, values: dict, cache_dir: str, threads: int = 1) -> bool:
    """Build one artifact into the cache (``kind``: one of ARTIFACT_KINDS) with ``threads``
    torch threads; True if it was there."""
    import torch

    from vb_sweep import artifacts
    from vb_sweep.cache import ArtifactCache

    torch.set_num_threads(threads)
    prepare = {"poison": artifacts.prepare_poisoned_set, "victim": artifacts.prepare_victim,
               "mix_stage": artifacts.prepare_mix_stage}[kind]
    _, cached = prepare(TrialConfig.from_dict(values), ArtifactCache(cache_dir))
    return bool(cached)


def prepare_artifacts(configs: list[TrialConfig], cache_dir: str, resources: Resources,
                      victims: bool = True) -> str:
    """Build each distinct poisoned set, then each distinct Victim trajectory, then each
    distinct mix stage, once, as Ray tasks, before any trial starts; the trials then read them
    from the cache. ``victims=False`` builds the poisoned sets only. Returns a summary line. A
    ``ConfigError`` raised on a worker (say, missing dataset files) is raised here."""
    import ray

    if not configs:
        return "nothing to prepare"
    started = time.perf_counter()
    values = [config.to_dict() for config in configs]
    keys = _remote_call(ray.remote(_artifact_keys).options(num_cpus=1).remote(values))
    kinds = ARTIFACT_KINDS if victims else ARTIFACT_KINDS[:1]
    todo = {kind: {uses[kind]: v for uses, v in zip(keys, values) if kind in uses}
            for kind in kinds}
    cached = []
    for kind in kinds:
        options, threads = resources.preparation_options(len(todo[kind]))
        prepare = ray.remote(_prepare).options(**options)
        cached += _remote_call([prepare.remote(kind, v, cache_dir, threads)
                                for v in todo[kind].values()])
    counts = ", ".join(f"{len(todo[kind])} {ARTIFACT_NAMES[kind]}" for kind in kinds)
    return (f"{counts} ready ({sum(cached)} already cached) in "
            f"{time.perf_counter() - started:.0f} s")


def _remote_call(refs):
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, ConfigError):
            raise err.cause from None
        raise


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
        row["mlflow_run_id"] = self._log_mlflow(spec, row, history, figures)
        write_trial(self.out, row, history)
        self.done += 1
        print(progress_line(self.done, self.total, row, time.monotonic() - self.started),
              flush=True)
        return row

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
                  "goes on and writes every row to Parquet, without MLflow runs for the trials "
                  "logged during the outage", flush=True)

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


def first_line(err: BaseException) -> str:
    """An error's first line, at most 300 characters (its type when it has no text)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def progress_line(done: int, total: int, row: dict, elapsed_s: float | None = None) -> str:
    """``[k/N] TRIAL finished: BA .. ASR .. in .. s`` and, given the time since the trials
    started, the elapsed time and an estimate of what is left (at the pace so far)."""
    head = f"[{done}/{total}] {row['trial_id']}"
    if row["status"] != "ok":
        error = (row.get("error") or "").strip().splitlines()
        line = f"{head} FAILED: {error[-1] if error else 'unknown error'}"
    else:
        line = (f"{head} finished: BA {row['ba']:.3f} ASR {row['asr']:.3f}"
                + (f" in {row['wall_s']:.0f} s" if _number(row.get("wall_s")) else ""))
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


# -- running the trials ---------------------------------------------------------------------------
@dataclass
class TuneSettings:
    storage: str                   # RunConfig.storage_path: any folder all nodes share
    resources: Resources
    max_failures: int = 2
    verbose: int = 1


def new_run_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


PROGRESS_PARAMETERS = {"trial/config/attack": "attack", "trial/config/defense": "defense",
                       "trial/config/seed": "seed"}
PROGRESS_METRICS = {"stage": "stage", "epoch": "epoch", "ba": "BA", "asr": "ASR",
                    "credible_size": "|Dc|", "loss": "loss"}


def progress_reporter(verbose: int, searched: tuple[str, ...] = ()):
    """Tune's classic table (one row per trial: its latest epoch's metrics), which is far more
    compact than the default output, at most once a minute (the [k/N] lines carry the progress);
    verbose 2 adds a line per reported epoch and a table every 5 s."""
    from ray import tune

    # Read when the run starts: the classic reporter instead of Tune's default output.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Per-epoch checkpoints with num_to_keep force frequent snapshots; that is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The Victim's epoch-0 record has no BA/ASR; a searcher only reads the final report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    return tune.CLIReporter(metric_columns=PROGRESS_METRICS,
                            parameter_columns={**PROGRESS_PARAMETERS,
                                               **{name: name for name in searched}},
                            max_report_frequency=60 if verbose < 2 else 5, max_progress_rows=50)


def run_tune(settings: TuneSettings, param_space: dict, recorder: TrialRecorder,
             search_alg=None, num_samples: int = 1, searched: tuple[str, ...] = ()):
    """One Tune run over ``param_space`` (plus the fields ``search_alg`` suggests, named in
    ``searched``); returns its ResultGrid."""
    from ray import tune

    reporter = progress_reporter(settings.verbose, searched)
    trainable = tune.with_resources(sweep_trial, settings.resources.tune_request())
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, num_samples=num_samples,
            max_concurrent_trials=None if search_alg else settings.resources.max_concurrent,
            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=new_run_name(), storage_path=settings.storage,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[tune_callback(recorder)], progress_reporter=reporter,
            verbose=settings.verbose))
    return tuner.fit()


def grid_param_space(specs: list[dict]) -> dict:
    from ray import tune

    return {"trial": tune.grid_search(specs)}


def absolute_storage(storage: str | None, out: Path) -> str:
    if storage and "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve() if storage else (Path(out) / "tune").resolve())


# -- one invocation of a sweep: checks, cluster, tracking, trials ---------------------------------
@dataclass
class SessionOptions:
    kind: str                      # "ablation" | "threshold_search"
    sweep: str
    preset: str
    out: Path
    resume: bool = False
    address: str | None = None
    mlflow_uri: str | None = None
    storage: str | None = None
    cache_dir: str | None = None
    gpus: int | None = None
    trials_per_gpu: int = 1
    cpus: int | None = None
    cpus_per_trial: int = 1
    max_failures: int = 2
    verbose: int = 1
    options: dict = field(default_factory=dict)  # recorded in sweep.json and the parent run


class SweepSession:
    """``check()`` validates everything that can be checked before work starts (raising
    ``ConfigError``), ``start()`` records the sweep (manifest, MLflow parent run), ``run()``
    runs trials, ``close()`` ends the invocation."""

    def __init__(self, options: SessionOptions):
        self.options = options
        self.out = Path(options.out).resolve()
        self.manifest = manifest_for(options.kind, options.sweep, options.preset, options.options)
        self.tracking_uri = options.mlflow_uri or default_tracking_uri(self.out)
        self.storage = absolute_storage(options.storage, self.out)
        self.cache_dir = str(Path(options.cache_dir).expanduser().resolve()
                             if options.cache_dir else self.out / "cache")
        self.resources: Resources | None = None
        self.tracker = None

    def check(self) -> "SweepSession":
        import ray

        check_output_folder(self.out, self.manifest, self.options.resume)
        check_tracking_uri(self.tracking_uri)
        cluster = connect(self.options.address)
        try:
            self.resources = plan_resources(cluster, self.options.gpus,
                                            self.options.trials_per_gpu, self.options.cpus,
                                            self.options.cpus_per_trial)
        except ConfigError:
            ray.shutdown()
            raise
        self.resources.node_cpus = max(node["Resources"].get("CPU", 0.0)
                                       for node in ray.nodes() if node["Alive"])
        return self

    def pending(self, configs: list[TrialConfig], retry_failed: bool = False) -> list[TrialConfig]:
        """The configurations without a row in ``trials`` (a failed row counts as done unless
        ``retry_failed``)."""
        from vb_sweep.trial import trial_id_for

        rows = read_trials(self.out)
        if retry_failed:
            rows = rows[rows["status"] == "ok"]
        done = set(rows["trial_id"])
        return [config for config in configs if trial_id_for(config) not in done]

    def prepare(self, configs: list[TrialConfig], victims: bool = True) -> str:
        return prepare_artifacts(configs, self.cache_dir, self.resources, victims)

    def start(self) -> None:
        write_manifest(self.out, self.manifest)
        local_store = not self.tracking_uri.startswith(("http://", "https://"))
        self.tracker = SweepTracker(self.tracking_uri, self.options.sweep,
                                    self.out / "mlartifacts" if local_store else None)
        self.tracker.start_invocation(self.options.kind, self.options.options,
                                      self.options.resume)

    def spec(self, config: TrialConfig) -> dict:
        return base_spec(self.options.sweep, config, self.cache_dir, self.storage)

    def recorder(self, total: int) -> TrialRecorder:
        return TrialRecorder(self.out, self.tracker, total)

    def run(self, param_space: dict, recorder: TrialRecorder, **tune_options):
        settings = TuneSettings(self.storage, self.resources, self.options.max_failures,
                                self.options.verbose)
        return run_tune(settings, param_space, recorder, **tune_options)

    def close(self, status: str) -> None:
        import ray

        try:
            if self.tracker is not None:
                self.tracker.finish_invocation(status)
        except Exception as err:  # noqa: BLE001 - the grid files are written after this
            print(f"warning: could not mark the MLflow parent run {status}: {first_line(err)}",
                  flush=True)
        finally:
            ray.shutdown()

    @contextmanager
    def invocation(self, total: int):
        """``start()``, yield the recorder of ``total`` trials, then ``close()`` with the
        invocation's status: what the recorder saw, KILLED on Ctrl-C, FAILED on an error."""
        status = "FAILED"
        try:
            self.start()
            recorder = self.recorder(total)
            yield recorder
            status = recorder.invocation_status()
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.close(status)

    def shared_folder_note(self) -> str | None:
        """Joining a cluster with the single-machine defaults deserves a reminder."""
        if self.options.address and not (self.options.storage and self.options.cache_dir):
            return (f"note: Tune storage {self.storage} and cache {self.cache_dir} must be "
                    "visible to every node (--storage-path, --cache-dir on a shared folder)")
        return None

    def locations(self) -> list[str]:
        lines = [f"results:  pandas.read_parquet('{self.out / 'trials'}') "
                 f"(per-epoch: '{self.out / 'history'}')",
                 f"MLflow:   experiment '{self.options.sweep}' at {redact_url(self.tracking_uri)}"]
        if self.tracking_uri.startswith("sqlite:"):
            lines.append(f"          browse: mlflow ui --backend-store-uri {self.tracking_uri}")
        lines.append(f"Tune:     {self.storage}")
        return lines
