"""BadNets (Gu et al. 2017): a fixed patch stamped at a fixed place; dirty-label.

Settings: ``patch`` (rows x columns x channels nested list of 0..255 values) and the ``row`` and
``col`` of its top-left pixel.
"""

from __future__ import annotations

import torch

from vb_sweep.attacks.base import Attack
from vb_sweep.attacks.registry import register_attack
from vb_sweep.errors import ConfigError

# The V&B / DBD patch: RGB at (4,4), (4,5) in the first row, (5,4), (5,5) in the second.
VAB_PATCH = [[[180, 249, 112], [155, 50, 126]],
             [[234, 82, 68], [187, 201, 219]]]
WHITE_3X3 = [[[255, 255, 255] for _ in range(3)] for _ in range(3)]


@register_attack
class BadNets(Attack):
    name = "badnets"
    clean_label = False
    presets = {
        "vab_paper": {"patch": VAB_PATCH, "row": 4, "col": 4},
        "backdoorbench": {"patch": WHITE_3X3, "row": 29, "col": 29},
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.patch = _patch_tensor(self.settings["patch"])  # uint8 (C, h, w)
        self.row = _non_negative_int("badnets setting row", self.settings["row"])
        self.col = _non_negative_int("badnets setting col", self.settings["col"])


    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        _, channels, height, width = images.shape
        _, h, w = self.patch.shape
        if self.patch.shape[0] != channels:
            raise ConfigError("badnets setting patch", f"{self.patch.shape[0]} channels",
                              f"{channels} channels, as the images")
        if self.row + h > height or self.col + w > width:
            raise ConfigError("badnets setting row/col", (self.row, self.col),
                              f"a {h}x{w} patch inside {height}x{width} images")
        out = images.clone()
        out[:, :, self.row:self.row + h, self.col:self.col + w] = self.patch.to(images.device)
        return out


def _patch_tensor(patch) -> torch.Tensor:
    allowed = "a rows x columns x channels nested list of integers in 0..255"
    try:
        values = torch.tensor(patch)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError("badnets setting patch", patch, allowed) from None
    if (values.is_floating_point() or values.dtype == torch.bool or values.ndim != 3
            or values.numel() == 0 or values.min() < 0 or values.max() > 255):
        raise ConfigError("badnets setting patch", patch, allowed)
    return values.permute(2, 0, 1).to(torch.uint8).contiguous()


def _non_negative_int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(field, value, "an integer >= 0")
    return value
