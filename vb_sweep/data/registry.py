"""Dataset names -> loaders, and ``load_dataset`` that resolves the data root and subsets.

    splits = load_dataset("cifar10", "/data", train_per_class=2000, test_per_class=500)

One data root serves every dataset: CIFAR-10 is found in ``<root>/cifar-10-batches-py`` or
``<root>/cifar10/cifar-10-batches-py``, GTSRB in ``<root>/gtsrb/*.npz`` or ``<root>/*.npz``.
Without a root, ``$VB_SWEEP_DATA`` or ``~/.cache/vb-sweep/data`` is used. Files are downloaded
(through torchvision) only when absent and ``download=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch

from vb_sweep.data import cifar10, gtsrb, synthetic
from vb_sweep.data.base import DatasetSplits, ImageDataset
from vb_sweep.data.cifar10 import load_cifar10
from vb_sweep.data.gtsrb import load_gtsrb
from vb_sweep.data.synthetic import load_synthetic
from vb_sweep.errors import ConfigError
from vb_sweep.registry import Registry


class DatasetLoader(Protocol):
    """File-based loaders return whole splits; the synthetic one generates the requested sizes."""

    def __call__(self, root: Path, *, download: bool, train_per_class: int | None,
                 test_per_class: int | None) -> DatasetSplits: ...


DATASETS: Registry[DatasetLoader] = Registry("dataset")
DATASETS.register("synthetic")(load_synthetic)
DATASETS.register("cifar10")(load_cifar10)
DATASETS.register("gtsrb")(load_gtsrb)
# Known without loading anything: what a target class and the files are checked against.
NUM_CLASSES = {"synthetic": len(synthetic.CLASS_NAMES), "cifar10": 10, "gtsrb": gtsrb.NUM_CLASSES}
FILE_FINDERS = {"cifar10": (cifar10.find_batches_dir, cifar10.EXPECTED_LAYOUT),
                "gtsrb": (gtsrb.find_npz_dir, gtsrb.EXPECTED_LAYOUT)}


def check_dataset_files(name: str, root: str | os.PathLike | None) -> None:
    """The dataset's files are where ``load_dataset`` will look, and they load (a second or
    two for CIFAR-10): a missing, partial, truncated or mis-shaped file is a ``ConfigError``
    before any work starts."""
    if name not in FILE_FINDERS:
        return
    find, layout = FILE_FINDERS[name]
    resolved = resolve_data_root(root)
    if find(resolved) is None:
        raise ConfigError("data_root", str(resolved), f"{layout}; none found there - point "
                          "--data-root at a folder holding the files")
    load_dataset(name, resolved)


def load_dataset(name: str, root: str | os.PathLike | None = None, *,
                 train_per_class: int | None = None, test_per_class: int | None = None,
                 download: bool = False) -> DatasetSplits:
    loader = DATASETS.get(name)
    _check_per_class("train_per_class", train_per_class)
    _check_per_class("test_per_class", test_per_class)
    splits = loader(resolve_data_root(root), download=download,
                    train_per_class=train_per_class, test_per_class=test_per_class)
    return DatasetSplits(first_per_class(splits.train, train_per_class, "train_per_class"),
                         first_per_class(splits.test, test_per_class, "test_per_class"))


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    if root is None:
        root = os.environ.get("VB_SWEEP_DATA") or Path.home() / ".cache" / "vb-sweep" / "data"
    return Path(root).expanduser()


def first_per_class(dataset: ImageDataset, per_class: int | None, field: str) -> ImageDataset:
    """The first ``per_class`` images of every class, in their original order."""
    if per_class is None:
        return dataset
    counts = torch.bincount(dataset.labels, minlength=dataset.num_classes)
    if int(counts.min()) < per_class:
        scarce = int(counts.argmin())
        raise ConfigError(field, per_class,
                          f"at most {int(counts.min())} for {dataset.name} "
                          f"(class {scarce} '{dataset.class_names[scarce]}' has "
                          f"{int(counts.min())} images)")
    if int(counts.max()) == per_class:
        return dataset
    return dataset.subset(torch.nonzero(_rank_within_class(dataset.labels) < per_class).flatten())


def _rank_within_class(labels: torch.Tensor) -> torch.Tensor:
    """For each sample, how many earlier samples share its label."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    class_start = torch.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(labels.shape[0]) - class_start
    return rank


def _check_per_class(field: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, value, "an integer >= 1, or None for the whole split")
