"""The run presets' data, values only: for each preset its ``TrialConfig`` values, the attacks
and defense variants a grid runs when none are named, and the trained attacks' budgets.

Why each value is what it is, and what was measured: docs/presets.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def scaled_schedule(epochs: int) -> dict[str, Any]:
    """The docs/method.md schedule (200 epochs) scaled to ``epochs``, keeping the stage proportions:
    LR milestones at 1/4, 1/2, 3/4, the mix stage in the first half, lambda_u's switch at 3/4.
    The Victim's re-split period is not scaled: it stays ``resplit_every`` (the authors' every
    5th mix epoch) at any length. Scaled, it would round to 1 below 60 epochs, a re-split after
    every epoch (on the cpu preset's BadNets that changes nothing the filter decides and costs 8
    more Victim epochs; see docs/presets.md)."""
    quarter = max(1, round(epochs / 4))
    return {
        "epochs": epochs,
        "mix_epochs": epochs // 2,
        "lr_milestones": (quarter, epochs // 2, epochs - quarter),
        "lambda_u_switch": epochs - quarter,
    }


@dataclass(frozen=True)
class RunPreset:
    values: dict[str, Any]                   # TrialConfig fields over the defaults
    attacks: tuple[str, ...] | None = None   # a grid's default attacks; None: every attack
    defenses: tuple[str, ...] | None = None  # a grid's default variants; None: every variant
    # Per trained attack, the overrides of its settings (none: the real budget).
    attack_budgets: dict[str, dict[str, Any]] = field(default_factory=dict)


RUN_PRESETS: dict[str, RunPreset] = {
    "smoke": RunPreset(
        values={"dataset": "synthetic", "model": "tiny_cnn", "test_per_class": 50,
                "batch_size": 64, "victim_batch_size": 32, "eval_batch_size": 512,
                "t_m": 0.5,  # the tiny network's 8x8 attention: 0.1 masks half an image
                **scaled_schedule(16),
                "lr_milestones": (8, 12, 14)},  # the mix stage at the full lr
        attacks=("badnets",),
        defenses=("none", "vab"),
        attack_budgets={
            "dynamic": {"classifier": "small_cnn", "generator_width": 8, "train_images": 1000,
                        "mask_epochs": 3, "mask_lr_milestones": [], "pattern_epochs": 5},
            "cl": {"classifier": "small_cnn", "train_epochs": 4, "lr": 0.1,
                   "pgd_steps": 10, "pgd_step_size": 2 / 255},
        }),
    "cpu": RunPreset(
        values={"dataset": "cifar10", "model": "small_cnn", "train_per_class": 2000,
                "test_per_class": 500, **scaled_schedule(20)},
        attacks=("badnets", "blend"),
        attack_budgets={
            "dynamic": {"classifier": "small_cnn", "generator_width": 16, "train_images": 5000,
                        "mask_epochs": 10, "mask_lr_milestones": [4, 8], "pattern_epochs": 20},
            "cl": {"classifier": "small_cnn", "train_epochs": 10, "lr": 0.1},
        }),
    "paper": RunPreset(
        values={"dataset": "cifar10", "model": "resnet18", "victim_model": "resnet18",
                **scaled_schedule(200)}),
}
PRESETS = tuple(RUN_PRESETS)
