"""Training budgets of the trained attacks (Dynamic, CL) per run preset.

An attack's own settings default to the real budget (BackdoorBench's CIFAR-10 configuration).
A run preset scales it down by overriding settings (its ``attack_budgets`` in
``vb_sweep/presets.py``; what they cost and reach: docs/presets.md): ``attack_budget(preset,
attack)`` gives the overrides, to be passed to ``build_attack(name, ..., **overrides)``. The
overrides become part of ``attack.describe()``, so every cache key (generators, clean model,
poisoned set) follows them.
"""

from __future__ import annotations

from typing import Any

from vb_sweep.presets import RUN_PRESETS

ATTACK_BUDGETS = {name: preset.attack_budgets for name, preset in RUN_PRESETS.items()}


def attack_budget(preset: str, attack: str) -> dict[str, Any]:
    """The setting overrides of ``attack`` under the run preset ``preset`` (empty: the real
    budget, or an attack that trains nothing)."""
    return dict(ATTACK_BUDGETS.get(preset, {}).get(attack, {}))
