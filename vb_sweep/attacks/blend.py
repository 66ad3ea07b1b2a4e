"""Blended (Chen et al. 2017): x' = (1 - a) x + a P, rounded to nearest; dirty-label.

P is a fixed uniform-noise image drawn from ``pattern_seed`` (the attack's secret, independent
of the poisoning seed) at the images' size, or the image file ``pattern_path`` resized to it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from vb_sweep.attacks.base import Attack
from vb_sweep.attacks.registry import register_attack
from vb_sweep.errors import ConfigError, check_fraction


@register_attack
class Blend(Attack):
    name = "blend"
    clean_label = False
    presets = {
        "vab_paper": {"alpha": 0.1, "pattern_seed": 0, "pattern_path": None},
        "backdoorbench": {"alpha": 0.2, "pattern_seed": 0, "pattern_path": None},
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = check_fraction("blend setting alpha", self.settings["alpha"])
        seed = self.settings["pattern_seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError("blend setting pattern_seed", seed, "an integer >= 0")
        path = self.settings["pattern_path"]
        if path is not None and not Path(path).is_file():
            raise ConfigError("blend setting pattern_path", path, "an existing image file")
        self._patterns: dict[tuple[int, int, int], torch.Tensor] = {}

    def describe(self) -> dict[str, Any]:
        """With a pattern file, its content's digest too: a changed file is a new attack."""
        description = super().describe()
        path = self.settings["pattern_path"]
        if path is not None:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            description["settings"]["pattern_sha256"] = digest
        return description

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        pattern = self.pattern(*images.shape[1:]).to(images.device, torch.float64)
        # float64 so that the rounding matches the exact formula (ties go to even).
        blended = (1 - self.alpha) * images.to(torch.float64) + self.alpha * pattern
        return blended.round().clamp(0, 255).to(torch.uint8)

    def pattern(self, channels: int, height: int, width: int) -> torch.Tensor:
        """P as uint8 (C, H, W), on the CPU."""
        shape = (channels, height, width)
        if shape not in self._patterns:
            path = self.settings["pattern_path"]
            self._patterns[shape] = (_noise_pattern(shape, self.settings["pattern_seed"])
                                     if path is None else _image_pattern(path, shape))
        return self._patterns[shape]


def _noise_pattern(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def _image_pattern(path: str, shape: tuple[int, int, int]) -> torch.Tensor:
    from PIL import Image

    channels, height, width = shape
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ConfigError("blend setting pattern_path", path, "1- or 3-channel images")
    with Image.open(path) as image:
        resized = image.convert(mode).resize((width, height), Image.Resampling.BICUBIC)
        pixels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8)
    return pixels.reshape(height, width, channels).permute(2, 0, 1).contiguous()
