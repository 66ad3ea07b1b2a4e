"""One trial end to end, with no knowledge of Ray, MLflow or Parquet.

    result = run_trial(config, cache=ArtifactCache(dir), trial_id="abc", sweep="demo",
                       on_epoch=print, checkpoint=None, save_checkpoint=None)
    result.row       # dict with TRIAL_SCHEMA columns (mlflow_run_id left None)
    result.history   # list of dicts with HISTORY_SCHEMA columns
    result.figures   # {"entropy_histogram.png": bytes, "trigger_preview.png": bytes}

A trial takes its poisoned set, its Victim's trajectory and (for the mixing variants) the
Beneficiary's mix stage from the cache (``vb_sweep.artifacts``), building what is missing, and
trains the rest of its schedule. ``on_epoch(record)`` is called with each history record as
soon as it exists (progress, Tune reports, MLflow metrics). ``save_checkpoint(state)`` is called
at every epoch end with a dict that must be serialised at once (it holds live tensors); passing
that dict back as ``checkpoint=`` resumes the trial after that epoch.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import vb_sweep
from vb_sweep.artifacts import (ENGINE_DEFAULTS, PreparedPoison, load_trial_data,
                                poison_cache_parts, prepare_mix_stage, prepare_poisoned_set,
                                prepare_victim, shares_mix_stage, train_beneficiary)
from vb_sweep.cache import ArtifactCache, cache_key
from vb_sweep.config import TrialConfig
from vb_sweep.data import DatasetSplits
from vb_sweep.device import precision_name, resolve_device, retain_freed_memory
from vb_sweep.figures import entropy_histogram_png, training_curves_png, trigger_preview_png
from vb_sweep.timing import section


@dataclass
class TrialResult:
    row: dict
    history: list[dict]
    figures: dict[str, bytes] = field(default_factory=dict)


# -- the trial ----------------------------------------------------------------------------------
# Fields added after sweeps were run, with their default: left out of the trial id while at it,
# so that a --resume of such a sweep still finds its finished trials.
FIELDS_ADDED_LATER = {"victim_model": None, "batchnorm_diagnostic": False,
                      "sst_batchnorm": "running", **ENGINE_DEFAULTS}


def trial_id_for(config: TrialConfig) -> str:
    values = {name: value for name, value in config.to_dict().items()
              if name not in FIELDS_ADDED_LATER or value != FIELDS_ADDED_LATER[name]}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return f"{config.attack}-{config.defense.replace('+', '_')}-s{config.seed}-{digest[:8]}"


def run_trial(config: TrialConfig, *, cache: ArtifactCache | None = None, sweep: str = "adhoc",
              trial_id: str | None = None, on_epoch: Callable[[dict], None] | None = None,
              checkpoint: dict | None = None,
              save_checkpoint: Callable[[dict], None] | None = None,
              on_victim_split: Callable | None = None) -> TrialResult:
    config.validate()
    retain_freed_memory()
    code_version()  # the commit this process runs, read (and kept) before the checkout moves on
    started = time.perf_counter()
    cache = cache or ArtifactCache()
    trial_id = trial_id or trial_id_for(config)
    device = resolve_device(config.device)
    with section("load data"):
        data = load_trial_data(config)
    load_seconds = time.perf_counter() - started

    poison_started = time.perf_counter()
    poison, poison_cached = prepare_poisoned_set(config, cache, device)
    poison_seconds = time.perf_counter() - poison_started

    trajectory, victim_cached, victim_seconds = None, None, 0.0
    if config.flags.filter:
        victim_started = time.perf_counter()
        trajectory, victim_cached = prepare_victim(config, cache, device, on_victim_split)
        victim_seconds = time.perf_counter() - victim_started

    def with_ids(record: dict) -> dict:
        return {"sweep": sweep, "trial_id": trial_id, **record}

    report = (lambda record: on_epoch(with_ids(record))) if on_epoch else None
    beneficiary_started = time.perf_counter()
    mix_stage_cached = None
    if checkpoint is None and shares_mix_stage(config):
        checkpoint, mix_stage_cached = prepare_mix_stage(config, cache, device, on_epoch=report)
    history = train_beneficiary(config, data, poison, trajectory, device, on_epoch=report,
                                checkpoint=checkpoint, save_checkpoint=save_checkpoint)
    history = [with_ids(record) for record in history]
    timings = {"load_s": load_seconds, "poison_s": poison_seconds, "victim_s": victim_seconds,
               "beneficiary_s": time.perf_counter() - beneficiary_started,
               "wall_s": time.perf_counter() - started,
               "poison_cached": poison_cached, "victim_cached": victim_cached,
               "mix_stage_cached": mix_stage_cached}
    row = {**trial_row(config, sweep, trial_id, history, poison, timings, device),
           **data_fingerprints(config, data)}
    return TrialResult(row, history, trial_figures(history, poison, data))


def data_fingerprints(config: TrialConfig, data: DatasetSplits) -> dict:
    """What the trial trained and was tested on, as digests: the poisoned training set's cache
    key (the clean data's fingerprint and the attack's settings) and the clean test set's
    fingerprint. Two rows with the same digests saw the same images."""
    return {"train_fingerprint": cache_key("poison", poison_cache_parts(config, data)),
            "test_fingerprint": data.test.fingerprint()}


def trial_row(config: TrialConfig, sweep: str, trial_id: str, history: list[dict],
              poison: PreparedPoison, timings: dict, device: str) -> dict:
    """The trial's Parquet row. ``poison_rate`` is the attack's rate in its own meaning (a
    share of the whole set for dirty-label attacks, of the target class for clean-label ones),
    so every attack of a sweep at its default rate lands in the same Table 4 section;
    ``num_poisoned`` is the count."""
    train = poison.train
    final = history[-1]
    splits = [r for r in history if "filter_recall" in r]
    first_split, last_split = (splits[0], splits[-1]) if splits else ({}, {})
    train_records = [r for r in history if r.get("images_per_s")]
    return {
        "sweep": sweep, "trial_id": trial_id, "dataset": config.dataset, "model": config.model,
        "attack": config.attack, "attack_preset": config.attack_preset,
        "poison_rate": poison.attack["poison_rate"],
        "target": config.target, "defense": config.defense, "augment": config.augment,
        "t_f": config.t_f, "t_m": config.t_m, "seed": config.seed, "preset": config.preset,
        "ba": final["ba"], "asr": final["asr"], "ra": final["ra"], **best_epoch(history),
        "clean_target_rate": final.get("clean_target_rate"),
        "filter_precision": last_split.get("filter_precision"),
        "filter_recall": last_split.get("filter_recall"),
        "filter_auroc": last_split.get("filter_auroc"),
        "first_filter_precision": first_split.get("filter_precision"),
        "first_filter_recall": first_split.get("filter_recall"),
        "credible_size": last_split.get("credible_size"),
        "suspicious_size": last_split.get("suspicious_size"),
        "num_train": len(train), "num_poisoned": int(train.poisoned.sum()),
        "epochs": config.epochs,
        "train_images_per_s": (sum(r["images_per_s"] for r in train_records) / len(train_records)
                               if train_records else None),
        **timings, "status": "ok", "error": None, "mlflow_run_id": None, "device": device,
        "precision": precision_name(config.amp, device),
        "code_version": code_version(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def best_epoch(history: list[dict]) -> dict:
    """What the paper's tables report (docs/method.md section 9): the BA of the epoch with the
    highest test BA, that epoch's ASR, and the epoch (the first one, on a tie)."""
    trained = [record for record in history if record.get("ba") is not None]
    best = max(trained, key=lambda record: record["ba"])  # max keeps the first of equals
    return {"best_ba": best["ba"], "best_ba_asr": best["asr"], "best_epoch": best["epoch"]}


def trial_figures(history: list[dict], poison: PreparedPoison, data: DatasetSplits) -> dict:
    figures = {}
    splits = [r for r in history if "entropy_hist_poisoned" in r]
    if splits:
        figures["entropy_histogram.png"] = entropy_histogram_png(
            splits[-1]["entropy_hist_poisoned"], splits[-1]["entropy_hist_benign"],
            title=f"Victim entropy at the final split (epoch {splits[-1]['epoch']})")
    curves = training_curves_png(history, f"BA, ASR and RA per epoch: {poison.attack['attack']}")
    if curves is not None:
        figures["training_curves.png"] = curves
    non_target = data.test.labels != poison.attack["target"]
    figures["trigger_preview.png"] = trigger_preview_png(
        data.test.images[non_target][:4], poison.triggered_images[:4], poison.attack["attack"])
    return figures


def code_version() -> str:
    """The package version, with the checkout's short commit when it runs from one."""
    commit = vb_sweep.git_commit()
    return f"{vb_sweep.__version__}+{commit[:7]}" if commit else vb_sweep.__version__
