"""The three artifacts that trials share through the cache, and their cache keys:

- the poisoned set (``prepare_poisoned_set``): the attack applied to the training set, and the
  triggered test images;
- the Victim's trajectory (``prepare_victim``): every split the Beneficiary will see;
- the mix stage (``prepare_mix_stage``): the Beneficiary's state after epochs 1..mix_epochs,
  which the four mixing variants (F+AT, F+AT+SST, F+AT+SST+S, vab) train identically; each of
  them continues from it.

A key holds everything that changes the artifact's numbers (the data, the attack, the settings,
the seed, the device type and precision, the code versions), so a hit is always the artifact
the trial would have computed itself. A sweep builds each distinct artifact once before its
trials start (``vb_sweep.sweep.prepare_artifacts``); a single ``vb-sweep run`` fills the same
cache as it goes.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

import torch

from vb_sweep.attacks import PoisonedTrainSet, build_attack
from vb_sweep.attacks.budgets import attack_budget
from vb_sweep.augment import Normalizer
from vb_sweep.cache import ArtifactCache, register_artifact_type
from vb_sweep.config import TrialConfig
from vb_sweep.data import DatasetSplits, load_dataset
from vb_sweep.data.stats import channel_stats
from vb_sweep.defense import BeneficiaryData, EvalSet, run_beneficiary
from vb_sweep.device import (autocast_dtype, optimizer_kernel_args, place_model, precision_name,
                             resolve_device, seed_everything)
from vb_sweep.engine import StepSettings
from vb_sweep.models import MODELS_VERSION, build_model
from vb_sweep.timing import timed_section
from vb_sweep.victim import VICTIM_ARTIFACT_VERSION, VictimSettings, VictimTrajectory, run_victim

# Part of the mix stage's cache key: bump when how the Beneficiary trains or is evaluated changes.
BENEFICIARY_ARTIFACT_VERSION = 1
# The variant the mixing variants agree with in epochs 1..mix_epochs.
MIX_STAGE_VARIANT = "F+AT"


@register_artifact_type
@dataclass
class PreparedPoison:
    """A poisoned training set and the triggered non-target test images (one cache artifact)."""

    train: PoisonedTrainSet
    triggered_images: torch.Tensor  # uint8, the trigger on every non-target test image
    triggered_labels: torch.Tensor  # their true labels
    attack: dict                    # attack.describe()
    seconds: float                  # what building it cost


# -- the clean data and the attack ---------------------------------------------------------------
# Two datasets per process: a reused sweep worker keeps them across trials, so more would hold
# memory a grid over several datasets never gives back (--fresh-workers when that matters).
@functools.lru_cache(maxsize=2)
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


def step_settings(config: TrialConfig, data: DatasetSplits, device: str, batch_size: int,
                  padding: int | None) -> StepSettings:
    mean, std = channel_stats(data.train.images)
    return StepSettings(Normalizer(mean, std, device), batch_size, padding,
                        autocast_dtype(config.amp, device), config.augment, config.t_m,
                        config.attention_interpolation, config.flip, config.batchnorm_passes)


NETWORK_ORDER = ("victim", "beneficiary")


def new_network(config: TrialConfig, data: DatasetSplits, role: str, device: str):
    """The Victim's or the Beneficiary's network, drawn as the authors' code draws them: from
    the trial's seed, one after the other, the Victim first, so the two never share weights.
    Call it right after ``seed_everything(config.seed)``; training continues that stream."""
    architectures = {"victim": config.victim_network, "beneficiary": config.model}
    for drawn in NETWORK_ORDER[:NETWORK_ORDER.index(role) + 1]:
        model = build_model(architectures[drawn], data.train.num_classes)
    return place_for(config, model, device)


def place_for(config: TrialConfig, model, device: str):
    """``model`` on ``device`` as the config's engine options run it (layout, compilation)."""
    return place_model(model, device, config.channels_last, config.compile)


# How the networks run, with the value that every artifact built before the field existed used.
ENGINE_DEFAULTS = {"channels_last": True, "compile": False, "optimizer_kernel": "default"}


def numerics(config: TrialConfig, device: str) -> dict:
    """What besides the settings changes a trained artifact's numbers. The engine options
    enter only where they differ from their defaults, so artifacts cached before they existed
    are still found."""
    engine = {name: getattr(config, name) for name, default in ENGINE_DEFAULTS.items()
              if getattr(config, name) != default}
    return {"device_type": torch.device(device).type,
            "precision": precision_name(config.amp, device), "models": MODELS_VERSION, **engine}


# -- 1. the poisoned set ------------------------------------------------------------------------
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

    @timed_section("poison")
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


# -- 2. the Victim's trajectory -----------------------------------------------------------------
VICTIM_FIELDS = ("model", "t_f", "seed", "victim_lr", "victim_weight_decay", "victim_batch_size",
                 "warm_up", "warm_up_step", "entropy_smoothing", "resplit_every", "epochs",
                 "mix_epochs", "victim_temperature", "eval_batch_size")


def victim_cache_parts(config: TrialConfig, data: DatasetSplits, device: str) -> dict:
    values = {**config.to_dict(), "model": config.victim_network}  # the Victim's own network
    return {"poison": poison_cache_parts(config, data), "version": VICTIM_ARTIFACT_VERSION,
            **numerics(config, device), **{name: values[name] for name in VICTIM_FIELDS}}


def victim_optimizer(model, config: TrialConfig) -> torch.optim.Adam:
    """The Victim's Adam (docs/method.md section 1), in the config's update kernel."""
    return torch.optim.Adam(model.parameters(), lr=config.victim_lr,
                            weight_decay=config.victim_weight_decay,
                            **optimizer_kernel_args(config.optimizer_kernel))


def prepare_victim(config: TrialConfig, cache: ArtifactCache, device: str | None = None,
                   on_split: Callable | None = None) -> tuple[VictimTrajectory, bool]:
    """The Victim's whole trajectory from the cache, computed on a miss."""
    device = resolve_device(config.device if device is None else device)
    data = load_trial_data(config)
    parts = victim_cache_parts(config, data, device)
    cached = cache.contains("victim", parts)

    def build() -> VictimTrajectory:
        poison, _ = prepare_poisoned_set(config, cache, device)
        return build_trajectory(poison)

    @timed_section("victim")
    def build_trajectory(poison: PreparedPoison) -> VictimTrajectory:
        started = time.perf_counter()
        seed_everything(config.seed)
        model = new_network(config, data, "victim", device)
        optimizer = victim_optimizer(model, config)
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


# -- 3. the mix stage ---------------------------------------------------------------------------
MIX_STAGE_FIELDS = ("model", "seed", "augment", "t_m", "attention_interpolation", "mix_epochs",
                    "batch_size", "lr", "momentum", "weight_decay", "lr_milestones", "lr_gamma",
                    "crop_padding", "eval_batch_size", "batchnorm_passes")


def shares_mix_stage(config: TrialConfig) -> bool:
    """Whether the trial starts from the shared mix stage: a mixing variant (every one of them
    trains epochs 1..mix_epochs alike) with sharing on."""
    flags = config.flags
    return config.share_mix_stage and flags.filter and flags.mix and config.mix_epochs > 0


def mix_stage_cache_parts(config: TrialConfig, data: DatasetSplits, device: str) -> dict:
    values = config.to_dict()
    # The diagnostic trains alike, but its stage's history holds the extra figures.
    diagnostic = {"batchnorm_diagnostic": True} if config.batchnorm_diagnostic else {}
    return {"victim": victim_cache_parts(config, data, device),
            "version": BENEFICIARY_ARTIFACT_VERSION, "flip": config.flip,
            **numerics(config, device), **{name: values[name] for name in MIX_STAGE_FIELDS},
            **diagnostic}


def prepare_mix_stage(config: TrialConfig, cache: ArtifactCache, device: str | None = None,
                      on_epoch: Callable[[dict], None] | None = None) -> tuple[dict, bool]:
    """The Beneficiary's state after the mix stage (a checkpoint of ``run_beneficiary``: model,
    optimizer, random state and the history of epochs 0..mix_epochs), trained on a miss.
    ``on_epoch`` sees every history record of the stage, trained now or read from the cache.
    The training keeps its latest epoch as the cache's progress, so a killed build resumes
    after the last finished epoch (at cpu scale the stage takes most of an hour)."""
    device = resolve_device(config.device if device is None else device)
    data = load_trial_data(config)
    parts = mix_stage_cache_parts(config, data, device)
    emitted = []

    def build() -> dict:
        poison, _ = prepare_poisoned_set(config, cache, device)
        trajectory, _ = prepare_victim(config, cache, device)
        resumed = cache.read_progress("mix_stage", parts)
        states = [] if resumed is None else [resumed]

        def emit(record: dict) -> None:
            emitted.append(record)
            if on_epoch:
                on_epoch(record)

        def keep(state: dict) -> None:
            states.append(state)
            cache.write_progress("mix_stage", parts, state)

        if resumed is not None:  # the epochs a killed build finished, told as they were
            for record in resumed["history"]:
                emit(record)
        # The last checkpoint's tensors are the model's own: nothing trains after it.
        train_beneficiary(config.replace(defense=MIX_STAGE_VARIANT), data, poison, trajectory,
                          device, last_epoch=config.mix_epochs, on_epoch=emit,
                          checkpoint=resumed, save_checkpoint=keep)
        return states[-1]

    cached = cache.contains("mix_stage", parts)
    state = cache.get_or_build("mix_stage", parts, build)
    if on_epoch and not emitted:
        for record in state["history"]:
            on_epoch(record)
    return state, cached


# -- the Beneficiary ----------------------------------------------------------------------------
def train_beneficiary(config: TrialConfig, data: DatasetSplits, poison: PreparedPoison,
                      trajectory: VictimTrajectory | None, device: str,
                      last_epoch: int | None = None, **callbacks) -> list[dict]:
    """A new Beneficiary trained on the poisoned set by the variant's schedule (or from the
    ``checkpoint`` among ``callbacks``) up to ``last_epoch``; returns its history."""
    seed_everything(config.seed)
    model = new_network(config, data, "beneficiary", device)
    step = step_settings(config, data, device, config.batch_size, config.crop_padding)
    train = poison.train
    return run_beneficiary(
        config, model,
        BeneficiaryData(train.images.to(device), train.labels.to(device), train.poisoned,
                        data.train.num_classes),
        EvalSet(data.test.images.to(device), data.test.labels.to(device),
                poison.triggered_images.to(device), poison.triggered_labels.to(device),
                config.target),
        trajectory, step, last_epoch=last_epoch, **callbacks)
