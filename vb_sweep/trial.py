"""One trial end to end, with no knowledge of Ray, MLflow or Parquet.

    result = run_trial(config, cache=ArtifactCache(dir), trial_id="abc", sweep="demo",
                       on_epoch=print, checkpoint=None, save_checkpoint=None)
    result.row       # dict with TRIAL_SCHEMA columns (mlflow_run_id left None)
    result.history   # list of dicts with HISTORY_SCHEMA columns
    result.figures   # {"entropy_histogram.png": bytes, "trigger_preview.png": bytes}

``on_epoch(record)`` is called with each history record as soon as it exists (progress, Tune
reports, MLflow metrics). ``save_checkpoint(state)`` is called at every epoch end with a dict
that must be serialised at once (it holds live tensors); passing that dict back as
``checkpoint=`` resumes the trial after that epoch. ``prepare_poisoned_set(config, cache)`` and
``prepare_victim(config, cache)`` fill the caches a sweep shares between trials before any trial
starts; a trial then only reads them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

import vb_sweep
from vb_sweep.attacks import PoisonedTrainSet, build_attack
from vb_sweep.attacks.budgets import attack_budget
from vb_sweep.augment import Normalizer
from vb_sweep.cache import ArtifactCache
from vb_sweep.config import TrialConfig
from vb_sweep.data import DatasetSplits, load_dataset
from vb_sweep.data.stats import channel_stats
from vb_sweep.defense import BeneficiaryData, EvalSet, run_beneficiary
from vb_sweep.engine import StepSettings
from vb_sweep.figures import entropy_histogram_png, trigger_preview_png
from vb_sweep.models import MODELS_VERSION, build_model
from vb_sweep.victim import VICTIM_ARTIFACT_VERSION, VictimSettings, VictimTrajectory, run_victim


@dataclass
class PreparedPoison:
    """A poisoned training set and the triggered non-target test images (one cache artifact)."""

    train: PoisonedTrainSet
    triggered_images: torch.Tensor  # uint8, the trigger on every non-target test image
    triggered_labels: torch.Tensor  # their true labels
    attack: dict                    # attack.describe()
    seconds: float                  # what building it cost


@dataclass
class TrialResult:
    row: dict
    history: list[dict]
    figures: dict[str, bytes] = field(default_factory=dict)


# -- data, poison and Victim: cached -----------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load_data(dataset: str, root: str | None, train_per_class, test_per_class) -> DatasetSplits:
    return load_dataset(dataset, root, train_per_class=train_per_class,
                        test_per_class=test_per_class)


def load_trial_data(config: TrialConfig) -> DatasetSplits:
    """The clean dataset of a trial; loaded once per process for all its trials."""
    return _load_data(config.dataset, config.data_root, config.train_per_class,
                      config.test_per_class)


def make_attack(config: TrialConfig, data: DatasetSplits):
    """The trial's attack; trained attacks get their training budget from the run preset."""
    attack = build_attack(config.attack, target=config.target, poison_rate=config.poison_rate,
                          seed=config.seed, preset=config.attack_preset,
                          **attack_budget(config.preset, config.attack))
    attack.check_target(data.train.num_classes)
    return attack


def poison_cache_parts(config: TrialConfig, data: DatasetSplits) -> dict:
    attack = make_attack(config, data)
    return {"train": data.train.fingerprint(), "test": data.test.fingerprint(),
            "attack": attack.describe()}


def prepare_poisoned_set(config: TrialConfig, cache: ArtifactCache,
                         device: str = "cpu") -> tuple[PreparedPoison, bool]:
    """The trial's poisoned set from the cache, built on a miss. Returns (artifact, was_cached)."""
    data = load_trial_data(config)
    parts = poison_cache_parts(config, data)
    cached = cache.contains("poison", parts)

    def build() -> PreparedPoison:
        started = time.perf_counter()
        attack = make_attack(config, data)
        attack.prepare(data.train, cache=cache, device=device)
        train = attack.poison_train(data.train)
        non_target = data.test.labels != config.target
        triggered = attack.apply_trigger(data.test.images[non_target].to(device)).cpu()
        return PreparedPoison(train, triggered, data.test.labels[non_target], attack.describe(),
                              time.perf_counter() - started)

    return cache.get_or_build("poison", parts, build), cached


def victim_cache_parts(config: TrialConfig, data: DatasetSplits) -> dict:
    fields = ("model", "t_f", "seed", "victim_lr", "victim_weight_decay", "victim_batch_size",
              "warm_up", "warm_up_step", "entropy_smoothing", "resplit_every", "epochs",
              "mix_epochs", "victim_temperature")
    values = config.to_dict()
    return {"poison": poison_cache_parts(config, data), "version": VICTIM_ARTIFACT_VERSION,
            "models": MODELS_VERSION, **{name: values[name] for name in fields}}


def prepare_victim(config: TrialConfig, cache: ArtifactCache, device: str | None = None,
                   on_split: Callable | None = None) -> tuple[VictimTrajectory, bool]:
    """The Victim's whole trajectory from the cache, computed on a miss."""
    device = resolve_device(config.device if device is None else device)
    data = load_trial_data(config)
    parts = victim_cache_parts(config, data)
    cached = cache.contains("victim", parts)

    def build() -> VictimTrajectory:
        poison, _ = prepare_poisoned_set(config, cache, device)
        started = time.perf_counter()
        seed_everything(config.seed)
        model = place_model(build_model(config.model, data.train.num_classes), device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.victim_lr,
                                     weight_decay=config.victim_weight_decay)
        step = step_settings(config, data, device, batch_size=config.victim_batch_size,
                             padding=None)
        settings = VictimSettings(config.t_f, config.warm_up, config.warm_up_step,
                                  config.entropy_smoothing, config.victim_temperature,
                                  config.epochs, config.mix_epochs, config.resplit_every,
                                  config.eval_batch_size)
        trajectory = run_victim(model, optimizer, poison.train.images.to(device),
                                poison.train.labels.to(device), settings, step, on_split)
        trajectory.seconds = time.perf_counter() - started
        return trajectory

    return cache.get_or_build("victim", parts, build), cached


# -- the device ---------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def place_model(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """On the device in channels_last, the layout cuDNN and oneDNN convolutions run fastest in
    (on a 2-core AVX-512 CPU the small CNN trains 1.4x faster than in the default layout)."""
    return model.to(device).to(memory_format=torch.channels_last)


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX). Elsewhere bf16 is
    emulated and slower than float32, so autocast stays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(amp: bool, device: str, cpu_bf16: bool | None = None) -> torch.dtype | None:
    """bf16 autocast when ``amp`` is on and the device computes bf16 natively: any CUDA GPU of
    this project's range, a CPU with AVX512-BF16/AMX. None: float32 throughout."""
    if not amp:
        return None
    if device.startswith("cuda"):
        return torch.bfloat16
    native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    return torch.bfloat16 if device == "cpu" and native else None


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def step_settings(config: TrialConfig, data: DatasetSplits, device: str, batch_size: int,
                  padding: int | None) -> StepSettings:
    mean, std = channel_stats(data.train.images)
    return StepSettings(Normalizer(mean, std, device), batch_size, padding,
                        autocast_dtype(config.amp, device), config.augment, config.t_m,
                        config.attention_interpolation, config.flip)


# -- the trial ----------------------------------------------------------------------------------
def trial_id_for(config: TrialConfig) -> str:
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    return f"{config.attack}-{config.defense.replace('+', '_')}-s{config.seed}-{digest[:8]}"


def run_trial(config: TrialConfig, *, cache: ArtifactCache | None = None, sweep: str = "adhoc",
              trial_id: str | None = None, on_epoch: Callable[[dict], None] | None = None,
              checkpoint: dict | None = None,
              save_checkpoint: Callable[[dict], None] | None = None,
              on_victim_split: Callable | None = None) -> TrialResult:
    config.validate()
    started = time.perf_counter()
    cache = cache or ArtifactCache()
    trial_id = trial_id or trial_id_for(config)
    device = resolve_device(config.device)
    data = load_trial_data(config)

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

    beneficiary_started = time.perf_counter()
    seed_everything(config.seed)
    model = place_model(build_model(config.model, data.train.num_classes), device)
    step = step_settings(config, data, device, config.batch_size, config.crop_padding)
    train = poison.train
    history = run_beneficiary(
        config, model,
        BeneficiaryData(train.images.to(device), train.labels.to(device), train.poisoned,
                        data.train.num_classes),
        EvalSet(data.test.images.to(device), data.test.labels.to(device),
                poison.triggered_images.to(device), poison.triggered_labels.to(device),
                config.target),
        trajectory, step,
        on_epoch=(lambda record: on_epoch(with_ids(record))) if on_epoch else None,
        checkpoint=checkpoint,
        save_checkpoint=save_checkpoint)
    history = [with_ids(record) for record in history]
    timings = {"poison_s": poison_seconds, "victim_s": victim_seconds,
               "beneficiary_s": time.perf_counter() - beneficiary_started,
               "wall_s": time.perf_counter() - started,
               "poison_cached": poison_cached, "victim_cached": victim_cached}
    row = trial_row(config, sweep, trial_id, history, poison, timings, device)
    return TrialResult(row, history, trial_figures(history, poison, data))


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
        "ba": final["ba"], "asr": final["asr"], "ra": final["ra"],
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
        "precision": "bf16" if autocast_dtype(config.amp, device) else "fp32",
        "code_version": code_version(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def trial_figures(history: list[dict], poison: PreparedPoison, data: DatasetSplits) -> dict:
    figures = {}
    splits = [r for r in history if "entropy_hist_poisoned" in r]
    if splits:
        figures["entropy_histogram.png"] = entropy_histogram_png(
            splits[-1]["entropy_hist_poisoned"], splits[-1]["entropy_hist_benign"],
            title=f"Victim entropy at the final split (epoch {splits[-1]['epoch']})")
    non_target = data.test.labels != poison.attack["target"]
    figures["trigger_preview.png"] = trigger_preview_png(
        data.test.images[non_target][:4], poison.triggered_images[:4], poison.attack["attack"])
    return figures


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{vb_sweep.__version__}+{commit}" if commit else vb_sweep.__version__
