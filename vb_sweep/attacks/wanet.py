"""WaNet (Nguyen & Tran 2021): a smooth, fixed warping field; dirty-label, with noise samples.

Follows the authors' code: a random k x k x 2 field in [-1, 1], normalised by its mean absolute
value, upsampled bicubically to the image size; grid = clamp((identity + s * field / H) *
grid_rescale, -1, 1), applied with ``grid_sample(align_corners=True)``. The field comes from
``grid_seed``, the attack's secret, independent of the poisoning seed. Besides the poisoned
samples, ``cross_ratio`` times as many "noise" (cross) samples get the grid plus a per-sample
random perturbation of up to one pixel and keep their labels, so that the network learns the
exact warp rather than any warp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vb_sweep.attacks.base import Attack, PoisonedTrainSet
from vb_sweep.attacks.registry import register_attack
from vb_sweep.data.base import ImageDataset
from vb_sweep.errors import ConfigError

SETTINGS = {"k": 4, "s": 0.5, "grid_rescale": 1.0, "cross_ratio": 2.0, "grid_seed": 0}


@register_attack
class WaNet(Attack):
    name = "wanet"
    clean_label = False
    presets = {"vab_paper": dict(SETTINGS), "backdoorbench": dict(SETTINGS)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.k = _number("k", self.settings["k"], integer=True, minimum=2)
        self.s = _number("s", self.settings["s"], minimum=0)
        self.grid_rescale = _number("grid_rescale", self.settings["grid_rescale"], minimum=0)
        self.cross_ratio = _number("cross_ratio", self.settings["cross_ratio"], minimum=0)
        self.grid_seed = _number("grid_seed", self.settings["grid_seed"], integer=True, minimum=0)
        self._grids: dict[tuple[int, int], torch.Tensor] = {}

    def poison_train(self, train: ImageDataset) -> PoisonedTrainSet:
        self.check_target(train.num_classes)
        order = self.shuffled_pool(train)
        n_poison = self.poisoned_count(train)
        n_cross = min(round(self.cross_ratio * n_poison), len(order) - n_poison)
        chosen, crossed = order[:n_poison], order[n_poison:n_poison + n_cross]
        noisy = self.apply_noisy_trigger(train.images[crossed], self.generator(1))
        return self.stamp(train, chosen, crossed, noisy)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.grid(*images.shape[2:]).to(images.device)
        return warp(images, grid.expand(images.shape[0], -1, -1, -1))

    def apply_noisy_trigger(self, images: torch.Tensor, generator: torch.Generator
                            ) -> torch.Tensor:
        """The cross/noise samples' warp: the grid plus per-sample noise of up to 1/H."""
        n, _, height, width = images.shape
        grid = self.grid(height, width)
        noise = torch.rand(n, height, width, 2, generator=generator) * 2 - 1
        noisy = torch.clamp(grid + noise / height, -1, 1)
        return warp(images, noisy.to(images.device))

    def grid(self, height: int, width: int) -> torch.Tensor:
        """The sampling grid (1, H, W, 2), float32 on the CPU, in grid_sample's (x, y) order."""
        if (height, width) not in self._grids:
            generator = torch.Generator().manual_seed(self.grid_seed)
            field = torch.rand(1, 2, self.k, self.k, generator=generator) * 2 - 1
            field = field / field.abs().mean()
            self._grids[(height, width)] = warping_grid(
                field, height, width, self.s, self.grid_rescale)
        return self._grids[(height, width)]


def warping_grid(field: torch.Tensor, height: int, width: int, s: float, grid_rescale: float
                 ) -> torch.Tensor:
    """clamp((identity + s * upsampled field / H) * grid_rescale, -1, 1), shape (1, H, W, 2)."""
    noise_grid = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=True)
    noise_grid = noise_grid.permute(0, 2, 3, 1)
    rows = torch.linspace(-1, 1, height)
    cols = torch.linspace(-1, 1, width)
    row_grid, col_grid = torch.meshgrid(rows, cols, indexing="ij")
    identity = torch.stack((col_grid, row_grid), 2)[None]
    return torch.clamp((identity + s * noise_grid / height) * grid_rescale, -1, 1)


def warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of uint8 images at ``grid`` (N, H, W, 2), rounded back to uint8."""
    warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=True)
    return warped.round().clamp(0, 255).to(torch.uint8)


def _number(name: str, value, *, integer: bool = False, minimum: float = 0):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"wanet setting {name}", value, f"{kind} >= {minimum}")
    return value
