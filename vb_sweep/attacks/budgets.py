"""Training budgets of the trained attacks (Dynamic, CL) per run preset.

An attack's own settings default to the real budget (BackdoorBench's CIFAR-10 configuration).
A run preset scales it down by overriding settings: ``attack_budget(preset, attack)`` gives the
overrides, to be passed to ``build_attack(name, ..., **overrides)``. The overrides become part
of ``attack.describe()``, so every cache key (generators, clean model, poisoned set) follows them.

- smoke: the generated dataset, about a minute: the small CNN; Dynamic's generators at width 8
  trained 3 + 5 epochs on 1,000 images (its mask stage is then far from converged: masks cover
  ~10-15% of the image, not 3.2%); CL's clean network 4 epochs, PGD 10 steps of 2/255.
- cpu: a 20,000-image CIFAR-10 subset: the small CNN; generators at width 16, 10 + 20 epochs on
  5,000 images (871 s on one core of a busy 2-core machine; the attack's classifier ends at
  clean accuracy 0.51, backdoor 0.88, cross 0.28); CL's clean network 10 epochs (754 s), PGD
  at its default 100 steps (about a minute; the network's accuracy on the 200 chosen images
  falls from 0.83 to 0.00).
- paper: the real budget (no overrides).
"""

from __future__ import annotations

from typing import Any

ATTACK_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "dynamic": {"classifier": "small_cnn", "generator_width": 8, "train_images": 1000,
                    "mask_epochs": 3, "mask_lr_milestones": [], "pattern_epochs": 5},
        "cl": {"classifier": "small_cnn", "train_epochs": 4, "lr": 0.1,
               "pgd_steps": 10, "pgd_step_size": 2 / 255},
    },
    "cpu": {
        "dynamic": {"classifier": "small_cnn", "generator_width": 16, "train_images": 5000,
                    "mask_epochs": 10, "mask_lr_milestones": [4, 8], "pattern_epochs": 20},
        "cl": {"classifier": "small_cnn", "train_epochs": 10, "lr": 0.1},
    },
    "paper": {},
}


def attack_budget(preset: str, attack: str) -> dict[str, Any]:
    """The setting overrides of ``attack`` under the run preset ``preset`` (empty: the real
    budget, or an attack that trains nothing)."""
    return dict(ATTACK_BUDGETS.get(preset, {}).get(attack, {}))
