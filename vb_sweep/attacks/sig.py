"""SIG (Barni et al. 2019): a horizontal sinusoid added to images of the target class; clean-label.

x' = clip(x + round(delta * sin(2 pi j f / W)), 0, 255) for column j, the same for every row and
channel. The sum is taken in int16 and clipped, never wrapped around in uint8 (the V&B authors'
code wraps). ``poison_rate`` is a share of the target class; labels stay.
"""

from __future__ import annotations

import math

import torch

from vb_sweep.attacks.base import Attack
from vb_sweep.attacks.registry import register_attack
from vb_sweep.errors import ConfigError


@register_attack
class SIG(Attack):
    name = "sig"
    clean_label = True
    presets = {
        "vab_paper": {"delta": 20, "freq": 6},
        "backdoorbench": {"delta": 40, "freq": 6},
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.delta = _number("delta", self.settings["delta"], 0, 255)
        self.freq = _number("freq", self.settings["freq"], 0, math.inf)


    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        signal = self.signal(images.shape[-1]).to(images.device)
        return (images.to(torch.int16) + signal).clamp(0, 255).to(torch.uint8)

    def signal(self, width: int) -> torch.Tensor:
        """round(delta * sin(2 pi j f / W)) for j = 0..W-1, int16 (W,)."""
        columns = torch.arange(width, dtype=torch.float64)
        wave = self.delta * torch.sin(2 * math.pi * columns * self.freq / width)
        return wave.round().to(torch.int16)


def _number(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"sig setting {name}", value, f"a number in [{low}, {high}]")
    return float(value)
