"""What the trained attacks (Dynamic, CL) share: caching an artifact when a cache is given,
seeding a training run without disturbing the caller's random state, and CPU copies of weights."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def cached(cache, kind: str, parts: dict[str, Any], build):
    """``cache.get_or_build``, or just ``build()`` without a cache (notebooks, tests)."""
    return build() if cache is None else cache.get_or_build(kind, parts, build)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@contextmanager
def seeded(seed: int, device: str):
    """Seed torch's global generators for a training run, and restore them afterwards, so that
    preparing an attack neither depends on nor disturbs the caller's random state."""
    cuda = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
