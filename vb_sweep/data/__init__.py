"""Datasets as uint8 tensors behind a registry: ``load_dataset(name, root, ...)``."""

from vb_sweep.data.base import DatasetSplits, ImageDataset
from vb_sweep.data.registry import DATASETS, load_dataset

__all__ = ["DATASETS", "DatasetSplits", "ImageDataset", "load_dataset"]
