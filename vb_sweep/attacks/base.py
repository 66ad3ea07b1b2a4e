"""The attack API every attack module implements.

An attack is configured once (target label, poisoning rate, seed, a named settings preset plus
overrides) and then offers two operations on uint8 tensors:

- ``poison_train(train)``: the poisoned training set with its ground truth (which samples were
  poisoned, which are cross/noise samples, their original labels). Poisoning happens once on the
  raw uint8 images; the ground truth is never visible to a defense.
- ``apply_trigger(images)``: the test-time trigger on a batch, for ASR and RA.

``poison_rate`` means a share of the whole training set for dirty-label attacks and a share of
the target class for clean-label ones (``Attack.clean_label``); ``poisoned_count`` is the one
place that turns a rate into a count. Trained attacks (Dynamic, CL) override ``prepare`` to train
their generator or adversarial images, using the artifact cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vb_sweep.cache import register_artifact_type
from vb_sweep.data.base import ImageDataset
from vb_sweep.errors import ConfigError, check_choice, check_fraction


@register_artifact_type
@dataclass
class PoisonedTrainSet:
    images: torch.Tensor           # uint8 (N, C, H, W), triggers applied
    labels: torch.Tensor           # int64 (N,), the labels a defense sees
    poisoned: torch.Tensor         # bool (N,), samples carrying the trigger for the target
    cross: torch.Tensor            # bool (N,), noise/cross samples (true label kept)
    original_labels: torch.Tensor  # int64 (N,), labels before poisoning

    def __len__(self) -> int:
        return self.labels.shape[0]


class Attack:
    name: ClassVar[str]
    clean_label: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]]  # 'vab_paper' and 'backdoorbench'
    default_poison_rate: ClassVar[float] = 0.1
    requires_training: ClassVar[bool] = False  # True: call prepare() before apply_trigger()

    def __init__(self, target: int = 0, poison_rate: float | None = None, seed: int = 0,
                 preset: str = "vab_paper", **overrides):
        check_choice("attack preset", preset, self.presets)
        settings = dict(self.presets[preset])
        unknown = set(overrides) - set(settings)
        if unknown:
            raise ConfigError(f"{self.name} setting", sorted(unknown)[0], sorted(settings))
        settings.update(overrides)
        self.target = int(target)
        self.poison_rate = check_fraction(
            "poison_rate", self.default_poison_rate if poison_rate is None else poison_rate)
        self.seed = int(seed)
        self.preset = preset
        self.settings = settings

    # -- what subclasses implement --------------------------------------------------------
    def poison_train(self, train: ImageDataset) -> PoisonedTrainSet:
        """Stamp the trigger on ``poisoned_count`` seeded picks from the candidate pool;
        dirty-label attacks relabel them to the target. Attacks with cross samples override."""
        self.check_target(train.num_classes)
        chosen = self.shuffled_pool(train)[: self.poisoned_count(train)]
        return self.stamp(train, chosen)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, train: ImageDataset, cache=None, device: str = "cpu") -> None:
        """Train whatever the attack needs (generators, adversarial images). Default: nothing."""

    # -- shared helpers ---------------------------------------------------------------------
    def check_target(self, num_classes: int) -> None:
        if not 0 <= self.target < num_classes:
            raise ConfigError("target", self.target, f"0..{num_classes - 1}")

    def generator(self, stream: int = 0) -> torch.Generator:
        """A CPU generator seeded by (seed, stream): the same seed gives the same poisoning."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + stream)

    def poisoned_count(self, train: ImageDataset) -> int:
        pool = int((train.labels == self.target).sum()) if self.clean_label else len(train)
        return int(round(self.poison_rate * pool))

    def candidate_pool(self, train: ImageDataset) -> torch.Tensor:
        """Indices a poisoned sample may be drawn from."""
        if self.clean_label:
            return torch.nonzero(train.labels == self.target).flatten()
        return torch.arange(len(train))

    def shuffled_pool(self, train: ImageDataset) -> torch.Tensor:
        """The candidate pool in a seeded random order; poisoned samples are its head."""
        pool = self.candidate_pool(train)
        return pool[torch.randperm(len(pool), generator=self.generator())].to(train.images.device)

    def stamp(self, train: ImageDataset, chosen: torch.Tensor, crossed: torch.Tensor | None = None,
              cross_images: torch.Tensor | None = None) -> PoisonedTrainSet:
        """The poisoned set: ``apply_trigger`` on ``chosen`` (relabelled to the target unless
        clean-label) and, if given, ``cross_images`` at ``crossed`` with their labels kept."""
        images, labels = train.images.clone(), train.labels.clone()
        images[chosen] = self.apply_trigger(train.images[chosen])
        if not self.clean_label:
            labels[chosen] = self.target
        poisoned = torch.zeros_like(labels, dtype=torch.bool)
        poisoned[chosen] = True
        cross = torch.zeros_like(poisoned)
        if crossed is not None:
            images[crossed] = cross_images
            cross[crossed] = True
        return PoisonedTrainSet(images, labels, poisoned, cross, train.labels.clone())

    def describe(self) -> dict[str, Any]:
        """The attack's full configuration (a cache key part and an MLflow param set)."""
        settings = {k: (v.tolist() if isinstance(v, torch.Tensor) else v)
                    for k, v in self.settings.items()}
        return {"attack": self.name, "preset": self.preset, "target": self.target,
                "poison_rate": self.poison_rate, "seed": self.seed,
                "settings": json.loads(json.dumps(settings, default=str))}
