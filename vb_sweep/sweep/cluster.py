"""The cluster side of a sweep: joining or starting Ray, sharing its resources out among the
trials, and building the shared artifacts (poisoned sets, Victim trajectories, mix stages) once,
as Ray tasks, before any trial starts."""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

from vb_sweep.config import TrialConfig
from vb_sweep.errors import ConfigError, first_line
from vb_sweep.sweep.reaper import start_reaper


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
    package travels to the workers with the job (``py_modules``), so workers need no copy; its
    commit travels with it, for the rows' ``code_version``."""
    import ray

    import vb_sweep

    runtime_env = {"py_modules": [vb_sweep]}
    commit = vb_sweep.git_commit()
    if commit:
        runtime_env["env_vars"] = {vb_sweep.COMMIT_ENV: commit}
    quiet = {"runtime_env": runtime_env, "logging_level": logging.ERROR}
    plain_text_unless_terminal()
    if not address:
        ray.init(include_dashboard=False, **quiet)
        start_reaper()  # a SIGKILLed driver leaves no Ray process behind
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


def plain_text_unless_terminal() -> None:
    """Ray colours the prefix of every line a worker prints; in a log file or a pipe the
    colour codes are noise, so they are left out there (RAY_COLOR_PREFIX=0)."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


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
    from vb_sweep.device import retain_freed_memory

    torch.set_num_threads(threads)
    retain_freed_memory()
    config, cache = TrialConfig.from_dict(values), ArtifactCache(cache_dir)
    progress = PreparationProgress(f"{config.attack} {config.dataset} seed {config.seed}")
    if kind == "victim":
        _, cached = artifacts.prepare_victim(config, cache, on_split=progress.victim_split)
    elif kind == "mix_stage":
        _, cached = artifacts.prepare_mix_stage(
            config, cache, on_epoch=lambda record: progress.mix_epoch(record, config.mix_epochs))
    else:
        _, cached = artifacts.prepare_poisoned_set(config, cache)
    return bool(cached)


class PreparationProgress:
    """A line on the worker's stdout (Ray shows it on the driver's console) while a Victim or a
    mix stage trains, at most one every ``every_s`` seconds: at cpu scale the preparation takes
    most of an hour, at smoke scale a minute or two."""

    def __init__(self, label: str, every_s: float = 30.0, clock=time.monotonic):
        self.label, self.every_s, self.clock = label, every_s, clock
        self.last = clock()

    def victim_split(self, stage: str, epoch: int, state) -> None:
        suspicious = int(state.suspicious.sum())
        self.say(f"Victim split after epoch {epoch} ({stage}): {suspicious} suspicious")

    def mix_epoch(self, record: dict, mix_epochs: int) -> None:
        if record.get("stage") != "mix":
            return
        self.say(f"mix stage epoch {record['epoch']}/{mix_epochs}, loss {record['loss']:.3f}")

    def say(self, text: str) -> None:
        now = self.clock()
        if now - self.last >= self.every_s:
            print(f"[prepare] {self.label}: {text}", flush=True)
            self.last = now


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
