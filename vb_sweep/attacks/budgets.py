"""Training budgets of the trained attacks (Dynamic, CL) per run preset.

An attack's own settings default to the real budget (BackdoorBench's CIFAR-10 configuration).
A run preset scales it down by overriding settings: ``attack_budget(preset, attack)`` gives the
overrides, to be passed to ``build_attack(name, ..., **overrides)``. The overrides become part
of ``attack.describe()``, so every cache key (generators, clean model, poisoned set) follows them.

- smoke: the generated dataset in seconds: a small CNN, narrow generators trained a few epochs
  on a subset, a few PGD steps.
- cpu: a 20,000-image CIFAR-10 subset on a 2-core machine: the small CNN, mid-sized budgets.
- paper: the real budget (no overrides).
"""

from __future__ import annotations

from typing import Any

ATTACK_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "dynamic": {"classifier": "small_cnn", "generator_width": 8, "train_images": 1000,
                    "mask_epochs": 3, "mask_lr_milestones": [], "pattern_epochs": 5},
        "cl": {"classifier": "small_cnn", "train_epochs": 4, "lr": 0.05,
               "pgd_steps": 10, "pgd_step_size": 2 / 255},
    },
    "cpu": {
        "dynamic": {"classifier": "small_cnn", "generator_width": 16, "mask_epochs": 10,
                    "pattern_epochs": 20, "train_images": 10000},
        "cl": {"classifier": "small_cnn", "train_epochs": 20, "lr": 0.05},
    },
    "paper": {},
}


def attack_budget(preset: str, attack: str) -> dict[str, Any]:
    """The setting overrides of ``attack`` under the run preset ``preset`` (empty: the real
    budget, or an attack that trains nothing)."""
    return dict(ATTACK_BUDGETS.get(preset, {}).get(attack, {}))
