"""Per-channel statistics of a uint8 image set, for input normalisation."""

from __future__ import annotations

import torch


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation per channel of uint8 (N, C, H, W) images, in
    [0, 1] units: two float32 tensors of shape (C,).

    Computed from each channel's 256-bin histogram: exact, and several times faster than
    summing a float copy (50,000 CIFAR images would be a 600 MB float32 tensor).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"channel_stats needs non-empty uint8 (N, C, H, W) images, got "
                         f"{images.dtype} {tuple(images.shape)}")
    levels = torch.arange(256, dtype=torch.float64) / 255
    histograms = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256)
                              for c in range(images.shape[1])]).to(torch.float64)
    share = histograms / histograms.sum(dim=1, keepdim=True)
    mean = share @ levels
    variance = share @ levels.square() - mean.square()
    return mean.float(), variance.clamp(min=0).sqrt().float()
