"""Attacks behind a registry: ``build_attack(name, target=..., poison_rate=..., seed=...)``."""

from vb_sweep.attacks.base import Attack, PoisonedTrainSet
from vb_sweep.attacks.registry import ATTACKS, build_attack

__all__ = ["ATTACKS", "Attack", "PoisonedTrainSet", "build_attack"]
