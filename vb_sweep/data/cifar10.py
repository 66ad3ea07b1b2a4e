"""CIFAR-10 read straight from its python-pickle layout (``cifar-10-batches-py/``).

The content is checked (dtype, shape, label range, every class present) instead of md5 sums:
copies whose per-image 'filenames' strings differ from the official files (rebuilt from other
sources, say) hold the real pixels and labels and must load.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from vb_sweep.data.base import DatasetSplits, ImageDataset, files_folder
from vb_sweep.errors import ConfigError

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
NUM_CLASSES = 10
EXPECTED_LAYOUT = (f"a folder holding {BATCHES_DIR}/ or cifar10/{BATCHES_DIR}/ "
                   f"(data_batch_1..5, test_batch, batches.meta)")


def load_cifar10(root: Path, *, download: bool = False, train_per_class: int | None = None,
                 test_per_class: int | None = None) -> DatasetSplits:
    """The whole train (50,000) and test (10,000) splits; ``load_dataset`` subsets them."""
    folder = files_folder(root, "cifar10", find_batches_dir, EXPECTED_LAYOUT, download,
                          download_cifar10)
    class_names = read_class_names(folder / META_FILE)
    return DatasetSplits(read_split(folder, TRAIN_FILES, class_names),
                         read_split(folder, TEST_FILES, class_names))


def find_batches_dir(root: Path) -> Path | None:
    """The folder holding the batch files: ``root`` itself or a known subfolder of it."""
    expected = (*TRAIN_FILES, *TEST_FILES, META_FILE)
    for candidate in (root / BATCHES_DIR, root / "cifar10" / BATCHES_DIR, root):
        present = [name for name in expected if (candidate / name).is_file()]
        if len(present) == len(expected):
            return candidate
        if present:
            missing = next(name for name in expected if name not in present)
            raise ConfigError("data_root", str(candidate),
                              f"{EXPECTED_LAYOUT}; {missing} is missing there")
    return None


def download_cifar10(root: Path) -> Path:
    from torchvision.datasets import CIFAR10

    target = root / "cifar10"
    try:
        CIFAR10(str(target), train=True, download=True)
    except Exception as err:  # no network, disk full, ...: one line for the user
        raise ConfigError("data_root", str(root), f"{EXPECTED_LAYOUT}; downloading CIFAR-10 "
                          f"failed ({_one_line(err)}) - point --data-root at a folder holding "
                          "the files") from err
    return target / BATCHES_DIR


def read_class_names(path: Path) -> list[str]:
    meta = _unpickle(path, "CIFAR-10 batches.meta with 10 'label_names'")
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise ConfigError("data_root", str(path),
                          "CIFAR-10 batches.meta with 10 'label_names'; this file has none")
    return [str(name) for name in names]


def read_split(folder: Path, files: tuple[str, ...], class_names: list[str]) -> ImageDataset:
    batches = [read_batch(folder / name) for name in files]
    images = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    missing = sorted(set(range(NUM_CLASSES)) - set(np.unique(labels).tolist()))
    if missing:
        raise ConfigError("data_root", str(folder), f"CIFAR-10 batches covering all 10 classes; "
                          f"{', '.join(files)} have no image of class {missing[0]}")
    return ImageDataset(torch.from_numpy(images).reshape(-1, 3, 32, 32),
                        torch.from_numpy(labels), NUM_CLASSES, class_names, "cifar10")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: uint8 (N, 3072) pixels (channel-major rows) and int64 (N,) labels."""
    expected = "a CIFAR-10 pickle batch: uint8 'data' (N, 3072) and N 'labels' in 0..9"
    entry = _unpickle(path, expected)
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = np.asarray(entry.get("labels", [])) if isinstance(entry, dict) else np.empty(0)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        found = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise ConfigError("data_root", str(path), f"{expected}; 'data' here is {found}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError("data_root", str(path), f"{expected}; 'labels' here has {labels.size} "
                          f"entries of type {labels.dtype} for {data.shape[0]} images")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ConfigError("data_root", str(path), f"{expected}; labels here span "
                          f"{labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


class BatchUnpickler(pickle.Unpickler):
    """Reads the CIFAR-10 pickle layout without running anything a crafted file could name:
    besides builtin containers and strings, only the numpy globals that rebuild an array (and
    ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for bytes)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of the CIFAR-10 layout")
        return super().find_class(module, name)


def _unpickle(path: Path, expected: str):
    try:
        with open(path, "rb") as file:
            return BatchUnpickler(file, encoding="latin1").load()
    except Exception as err:  # truncated or not a pickle: EOFError, UnpicklingError, ...
        raise ConfigError("data_root", str(path), f"{expected}; the file cannot be read "
                          f"({_one_line(err)})") from None


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())
