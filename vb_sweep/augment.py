"""Batched on-device augmentation and input conversion.

Everything works on whole batches with tensor indexing: no per-image Python, no PIL. The
randomness comes from torch's global generator, which a trial seeds, so runs repeat on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Normalizer:
    """uint8 (B, C, H, W) -> float, scaled to [0, 1] and standardised per channel."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, device: torch.device | str):
        self.mean = mean.to(device, torch.float32).view(1, -1, 1, 1)
        self.std = std.to(device, torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().div_(255.0) - self.mean) / self.std


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to H x W at a random offset per image."""
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (batch,), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (batch,), device=images.device)
    rows = (dy[:, None] + torch.arange(height, device=images.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(width, device=images.device))[:, None, :]   # (B, 1, W)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows, cols]  # (B, H, W, C)
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def standard_augment(images: torch.Tensor, padding: int, flip: bool = True) -> torch.Tensor:
    """Random crop with padding and horizontal flip (METHOD.md section 2), on uint8."""
    cropped = random_crop(images, padding)
    return random_flip(cropped) if flip else cropped
