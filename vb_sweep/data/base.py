"""The in-memory dataset type every part of the project passes around.

Images stay uint8 (N, C, H, W) from loading to the training device; conversion to float and
normalisation happen batch by batch inside the training step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vb_sweep.errors import ConfigError


@dataclass
class ImageDataset:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    num_classes: int
    class_names: list[str]
    name: str
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: labels must be int64 (N,)")

    def __len__(self) -> int:
        return self.images.shape[0]

    def fingerprint(self) -> str:
        """Content hash of images and labels: the cache key part that names this data."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(str(tuple(self.images.shape)).encode())
            digest.update(self.images.contiguous().numpy().tobytes())
            digest.update(self.labels.contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:20]
        return self._fingerprint

    def subset(self, indices: torch.Tensor) -> "ImageDataset":
        return ImageDataset(self.images[indices], self.labels[indices], self.num_classes,
                            self.class_names, self.name)


@dataclass
class DatasetSplits:
    train: ImageDataset
    test: ImageDataset


def files_folder(root: Path, name: str, find: Callable[[Path], Path | None], layout: str,
                 download: bool, fetch: Callable[[Path], Path]) -> Path:
    """The folder under ``root`` that holds a dataset's files (``find``), fetched into ``root``
    when absent and ``download``; otherwise a ConfigError saying what was looked for."""
    folder = find(root)
    if folder is not None:
        return folder
    if not download:
        raise ConfigError("data_root", str(root), f"{layout}; none found there - point "
                          "--data-root at a folder holding the files (in Python, "
                          f"load_dataset('{name}', ROOT, download=True) fetches them)")
    return fetch(root)
