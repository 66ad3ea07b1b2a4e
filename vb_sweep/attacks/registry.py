"""The attack registry: every attack module registers its class under its command-line name.

Adding an attack = one module with a ``@register_attack`` class, plus one import line at the
bottom of this file.
"""

from __future__ import annotations

from vb_sweep.attacks.base import Attack
from vb_sweep.registry import Registry

ATTACKS = Registry[type[Attack]]("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    return ATTACKS.register(cls.name)(cls)


def build_attack(name: str, *, target: int = 0, poison_rate: float | None = None, seed: int = 0,
                 preset: str = "vab_paper", **overrides) -> Attack:
    """The attack ``name`` configured with a settings preset plus overrides of its settings.

    Raises ``ConfigError`` naming the field for an unknown attack, preset or setting and for a
    bad rate or setting value.
    """
    return ATTACKS.get(name)(target=target, poison_rate=poison_rate, seed=seed, preset=preset,
                             **overrides)


def resolved_poison_rate(attack: str, poison_rate: float | None) -> float:
    """The poisoning rate a trial of ``attack`` uses: ``poison_rate``, or the attack's default
    where it is None."""
    return ATTACKS.get(attack).default_poison_rate if poison_rate is None else poison_rate


# Imported last, for their registration side effect (they import ATTACKS from this module).
from vb_sweep.attacks import badnets, blend, cl, dynamic, sig, wanet  # noqa: E402,F401
