"""One invocation of a sweep: the checks before any work, the cluster, the MLflow parent run,
the Tune run over the trials, and the end of the invocation.

Where things live (OUT is the sweep's output folder):

    OUT/sweep.json          which sweep the folder holds (kind, name, preset, options)
    OUT/trials/ history/    Parquet, one file per finished trial, written by the driver
    OUT/mlflow.db           the embedded MLflow store (default), written by the driver only
    OUT/cache/              poisoned sets, Victim trajectories, mix stages, shared by the trials
    OUT/tune/RUN/TRIAL_ID/  Tune's per-trial folders: per-epoch checkpoints (removed once the
                            trial's row is written)
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vb_sweep.config import TrialConfig
from vb_sweep.errors import ConfigError, check_folder, check_number, first_line
from vb_sweep.grid import check_output_folder, manifest_for, write_manifest
from vb_sweep.results import read_trials
from vb_sweep.sweep.cluster import Resources, connect, plan_resources, prepare_artifacts
from vb_sweep.sweep.recorder import TrialRecorder, tune_callback
from vb_sweep.sweep.worker import base_spec, sweep_trial, trial_name
from vb_sweep.tracking import (SweepTracker, check_tracking_uri, default_tracking_uri,
                               lock_sqlite_store, redact_url)


# -- running the trials ---------------------------------------------------------------------------
@dataclass
class TuneSettings:
    storage: str                   # RunConfig.storage_path: any folder all nodes share
    resources: Resources
    max_failures: int = 2
    verbose: int = 1
    reuse_workers: bool = True     # Tune's reuse_actors: a worker runs trial after trial


def new_run_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


PROGRESS_PARAMETERS = {"trial/config/attack": "attack", "trial/config/defense": "defense",
                       "trial/config/seed": "seed"}
PROGRESS_METRICS = {"stage": "stage", "epoch": "epoch", "ba": "BA", "asr": "ASR",
                    "credible_size": "|Dc|", "loss": "loss"}


def progress_reporter(verbose: int, searched: tuple[str, ...] = (), every_s: float | None = None):
    """Tune's classic table (one row per trial: its latest epoch's metrics), which is far more
    compact than the default output, at most once a minute and only when something moved (the
    [k/N] lines carry the progress); verbose 2 adds a line per reported epoch and a table every
    5 s."""
    from ray import tune

    # Read when the run starts: the classic reporter instead of Tune's default output.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Per-epoch checkpoints with num_to_keep force frequent snapshots; that is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The Victim's epoch-0 record has no BA/ASR; a searcher only reads the final report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

    class ChangedTableReporter(tune.CLIReporter):
        """Prints the table only when a trial's status or epoch moved since the last one."""

        shown: tuple = ()

        def should_report(self, trials, done: bool = False) -> bool:
            state = tuple((t.trial_id, t.status, t.last_result.get("epoch")) for t in trials)
            if state == self.shown and not done:
                return False
            if not super().should_report(trials, done):
                return False
            self.shown = state
            return True

    return ChangedTableReporter(metric_columns=PROGRESS_METRICS,
                                parameter_columns={**PROGRESS_PARAMETERS,
                                                   **{name: name for name in searched}},
                                max_report_frequency=every_s if every_s is not None
                                else 60 if verbose < 2 else 5,
                                max_progress_rows=50)


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
            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
            reuse_actors=settings.reuse_workers),
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
    reuse_workers: bool = True
    verbose: int = 1
    options: dict = field(default_factory=dict)  # recorded in sweep.json and the parent run


SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_session_options(options: SessionOptions) -> None:
    if not SWEEP_NAME.fullmatch(options.sweep):
        raise ConfigError("--sweep", options.sweep, "letters, digits, '.', '_' and '-' (it "
                          "names a folder and an MLflow experiment)")
    check_number("--trials-per-gpu", options.trials_per_gpu, integer=True, minimum=1)
    check_number("--cpus-per-trial", options.cpus_per_trial, integer=True, minimum=1)
    check_number("--max-failures", options.max_failures, integer=True, minimum=0)
    if options.cpus is not None:
        check_number("--cpus", options.cpus, integer=True, minimum=1)
    if options.gpus is not None:
        check_number("--gpus", options.gpus, integer=True, minimum=0)


def check_local_machine(options: SessionOptions, configs: list[TrialConfig]) -> None:
    """On a cluster this driver starts, the resources asked for and the trials' devices and
    dataset files are this machine's: checked here, before Ray starts."""
    import torch

    from vb_sweep.config import check_device_present
    from vb_sweep.data.registry import check_dataset_files

    gpus, cpus = torch.cuda.device_count(), os.cpu_count() or 1
    if options.gpus and options.gpus > gpus:
        raise ConfigError("--gpus", options.gpus, f"at most this machine's {gpus} GPU(s)")
    if options.cpus is not None and options.cpus > cpus:
        raise ConfigError("--cpus", options.cpus, f"1 to this machine's {cpus} CPUs")
    if options.cpus_per_trial > cpus:
        raise ConfigError("--cpus-per-trial", options.cpus_per_trial,
                          f"1 to this machine's {cpus} CPUs")
    for device in sorted({config.device for config in configs}):
        check_device_present(device)
    for dataset, root in sorted({(c.dataset, c.data_root or "") for c in configs}):
        check_dataset_files(dataset, root or None)


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
        self.store_lock = None

    def check(self, configs: list[TrialConfig] = ()) -> "SweepSession":
        """Everything that can be checked before work starts, then the cluster: the options,
        the folders, the MLflow store and, on a local cluster, this machine's GPUs, cores and
        dataset files for ``configs``; then Ray starts (or is joined) and the resources are
        planned against it."""
        import ray

        check_session_options(self.options)
        check_folder("--out", self.out)
        check_folder("--cache-dir", self.cache_dir)
        if "://" not in self.storage:
            check_folder("--storage-path", self.storage)
        check_output_folder(self.out, self.manifest, self.options.resume)
        check_tracking_uri(self.tracking_uri)
        lock_sqlite_store(self.tracking_uri, hold=False)
        if not self.options.address:
            check_local_machine(self.options, configs)
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
        self.store_lock = lock_sqlite_store(self.tracking_uri)  # released when the driver ends
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
                                self.options.verbose, self.options.reuse_workers)
        return run_tune(settings, param_space, recorder, **tune_options)

    def log_grid(self, files: list[Path], cells: list[dict]) -> None:
        """The grid on the invocation's MLflow run (after ``close``: the run stays FINISHED);
        an outage costs a warning, never the grid files."""
        if self.tracker is None:
            return
        try:
            self.tracker.log_grid(files, cells)
        except Exception as err:  # noqa: BLE001 - the files are written; MLflow is a copy
            print(f"warning: could not log the grid to MLflow: {first_line(err)}", flush=True)

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
    def invocation(self, total: int, preparing: Callable[[], str] | None = None):
        """``start()``, yield the recorder of ``total`` trials, then ``close()`` with the
        invocation's status: what the recorder saw, KILLED on Ctrl-C, FAILED on an error.
        ``preparing`` (building the shared artifacts on the cluster, see ``prepare``) runs
        while ``start()`` opens the MLflow store, which takes seconds on a new SQLite store;
        its summary line is printed before the recorder is yielded."""
        status = "FAILED"
        background = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        try:
            prepared = background.submit(preparing) if preparing else None
            self.start()
            recorder = self.recorder(total)
            recorder.complete_pending()
            if prepared is not None:
                print(prepared.result(), flush=True)
                recorder.started = time.monotonic()  # the estimate is of the trials' pace
            yield recorder
            status = recorder.invocation_status()
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            background.shutdown(wait=False)
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
