"""GTSRB (43 traffic-sign classes) at 32x32, from numpy ``.npz`` files.

Each file holds ``x`` uint8 (N, 32, 32, 3) RGB, ``y`` int (N,) class ids 0..42 and optionally
``class_names`` (43,). The training file is the full set when present, else a subset of it (every
3rd frame of each track, say). With ``download=True`` and no files, torchvision's GTSRB is
downloaded, resized to 32x32 (bilinear, as the usual backdoor benchmarks do) and written in the
same format, so later runs read the npz files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vb_sweep.data.base import DatasetSplits, ImageDataset, files_folder
from vb_sweep.errors import ConfigError

TRAIN_FILES = ("gtsrb_train_32x32_full.npz", "gtsrb_train_32x32_every3rdframe.npz")
TEST_FILE = "gtsrb_test_32x32.npz"
NUM_CLASSES = 43
SIZE = 32
EXPECTED_LAYOUT = (f"a folder holding gtsrb/ or itself holding {TEST_FILE} and "
                   f"{' or '.join(TRAIN_FILES)}")
EXPECTED_CONTENT = (f"a GTSRB npz file: uint8 'x' (N, {SIZE}, {SIZE}, 3) and N integer 'y' "
                    f"in 0..{NUM_CLASSES - 1}")

CLASS_NAMES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)",
    "Speed limit (60km/h)", "Speed limit (70km/h)", "Speed limit (80km/h)",
    "End of speed limit (80km/h)", "Speed limit (100km/h)", "Speed limit (120km/h)",
    "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution",
    "Dangerous curve to the left", "Dangerous curve to the right", "Double curve", "Bumpy road",
    "Slippery road", "Road narrows on the right", "Road work", "Traffic signals", "Pedestrians",
    "Children crossing", "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing",
    "End of all speed and passing limits", "Turn right ahead", "Turn left ahead", "Ahead only",
    "Go straight or right", "Go straight or left", "Keep right", "Keep left",
    "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]


def load_gtsrb(root: Path, *, download: bool = False, train_per_class: int | None = None,
               test_per_class: int | None = None) -> DatasetSplits:
    """The whole train and test splits; ``load_dataset`` subsets them."""
    folder = files_folder(root, "gtsrb", find_npz_dir, EXPECTED_LAYOUT, download,
                          download_gtsrb)
    train_file = next(folder / name for name in TRAIN_FILES if (folder / name).is_file())
    return DatasetSplits(read_npz(train_file, require_all_classes=True),
                         read_npz(folder / TEST_FILE, require_all_classes=False))


def find_npz_dir(root: Path) -> Path | None:
    for candidate in (root / "gtsrb", root):
        has_train = any((candidate / name).is_file() for name in TRAIN_FILES)
        has_test = (candidate / TEST_FILE).is_file()
        if has_train and has_test:
            return candidate
        if has_train or has_test:
            missing = TEST_FILE if has_train else " or ".join(TRAIN_FILES)
            raise ConfigError("data_root", str(candidate),
                              f"{EXPECTED_LAYOUT}; {missing} is missing there")
    return None


def read_npz(path: Path, require_all_classes: bool) -> ImageDataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["x"], archive["y"]
            names = archive["class_names"].tolist() if "class_names" in archive else CLASS_NAMES
    except Exception as err:  # not a zip, truncated, a key missing, ...
        raise ConfigError("data_root", str(path), f"{EXPECTED_CONTENT}; the file cannot be read "
                          f"({_one_line(err)})") from None
    _check_arrays(path, images, labels, names)
    if require_all_classes and len(np.unique(labels)) != NUM_CLASSES:
        raise ConfigError("data_root", str(path), f"{EXPECTED_CONTENT}, every class present; "
                          f"only {len(np.unique(labels))} classes here")
    return ImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                        torch.from_numpy(labels.astype(np.int64)), NUM_CLASSES,
                        [str(name) for name in names], "gtsrb")


def _check_arrays(path: Path, images: np.ndarray, labels: np.ndarray, names: list) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (SIZE, SIZE, 3):
        raise ConfigError("data_root", str(path),
                          f"{EXPECTED_CONTENT}; 'x' here is {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError("data_root", str(path),
                          f"{EXPECTED_CONTENT}; 'y' here is {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ConfigError("data_root", str(path),
                          f"{EXPECTED_CONTENT}; labels here span {labels.min()}..{labels.max()}")
    if len(names) != NUM_CLASSES:
        raise ConfigError("data_root", str(path),
                          f"{EXPECTED_CONTENT}; 'class_names' here has {len(names)} entries")


# -- download --------------------------------------------------------------------------------

def download_gtsrb(root: Path) -> Path:
    """Fetch GTSRB with torchvision and write the two npz files into ``root/gtsrb``."""
    folder = root / "gtsrb"
    try:
        for split, name in (("train", TRAIN_FILES[0]), ("test", TEST_FILE)):
            images, labels = _torchvision_split(folder / "torchvision", split)
            _write_npz(folder / name, images, labels)
    except ConfigError:
        raise
    except Exception as err:  # no network, disk full, ...: one line for the user
        raise ConfigError("data_root", str(root), f"{EXPECTED_LAYOUT}; downloading GTSRB failed "
                          f"({_one_line(err)}) - point --data-root at a folder holding the "
                          "files") from err
    return folder


def _torchvision_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from torchvision.datasets import GTSRB

    images, labels = [], []
    # A one-off conversion of the downloaded images, so a per-image loop is fine here.
    for image, label in GTSRB(str(folder), split=split, download=True):
        images.append(np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)))
        labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as file:
        np.savez_compressed(file, x=images, y=labels, class_names=np.array(CLASS_NAMES))
    os.replace(partial, path)  # readers never see a half-written file


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())
