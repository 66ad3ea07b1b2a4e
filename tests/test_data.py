"""Dataset loading on tiny fake files (no real dataset needed), the synthetic dataset, subsetting
and channel statistics."""

from __future__ import annotations

import pickle
import urllib.error
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from vb_sweep.data import DATASETS, ImageDataset, load_dataset
from vb_sweep.data.registry import first_per_class
from vb_sweep.data.stats import channel_stats
from vb_sweep.data.synthetic import CLASS_NAMES, generate_synthetic
from vb_sweep.errors import ConfigError

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]


# -- fake files -----------------------------------------------------------------------------------

def write_pickle(path: Path, entry) -> None:
    with open(path, "wb") as file:
        pickle.dump(entry, file)


def fake_cifar_batch(seed: int, count: int = 20) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": f"batch {seed}", "labels": [(i + seed) % 10 for i in range(count)],
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "filenames": [f"{i}.png" for i in range(count)]}


def make_fake_cifar(root: Path) -> Path:
    """``root/cifar10/cifar-10-batches-py`` with 5 x 20 train and 20 test images."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index in range(1, 6):
        write_pickle(folder / f"data_batch_{index}", fake_cifar_batch(index))
    write_pickle(folder / "test_batch", fake_cifar_batch(0))
    write_pickle(folder / "batches.meta", {"label_names": CIFAR_NAMES, "num_vis": 3072})
    return folder


def write_gtsrb_npz(path: Path, per_class: int, seed: int, **overrides) -> None:
    rng = np.random.default_rng(seed)
    count = 43 * per_class
    arrays = {"x": rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
              "y": np.arange(count, dtype=np.int64) % 43,
              "class_names": np.array([f"sign {i}" for i in range(43)])}
    arrays.update(overrides)
    np.savez_compressed(path, **arrays)


def make_fake_gtsrb(folder: Path, train_name: str = "gtsrb_train_32x32_every3rdframe.npz"):
    folder.mkdir(parents=True, exist_ok=True)
    write_gtsrb_npz(folder / train_name, per_class=3, seed=1)
    write_gtsrb_npz(folder / "gtsrb_test_32x32.npz", per_class=1, seed=2)
    return folder


@contextmanager
def raises_config_error(field: str, *fragments: str):
    """Expect a one-line ConfigError naming ``field`` and containing every fragment."""
    with pytest.raises(ConfigError) as info:
        yield
    message = str(info.value)
    assert info.value.field == field, message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# -- registry ------------------------------------------------------------------------------------

def test_registered_names():
    assert set(DATASETS.names()) == {"synthetic", "cifar10", "gtsrb"}


def test_unknown_dataset_names_the_field_and_choices():
    with raises_config_error("dataset", "cifar10", "gtsrb", "synthetic"):
        load_dataset("mnist")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_bad_per_class_values(bad):
    with raises_config_error("train_per_class"):
        load_dataset("synthetic", train_per_class=bad)
    with raises_config_error("test_per_class"):
        load_dataset("synthetic", test_per_class=bad)


def test_root_defaults_to_environment_variable(tmp_path, monkeypatch):
    make_fake_cifar(tmp_path)
    monkeypatch.setenv("VB_SWEEP_DATA", str(tmp_path))
    assert len(load_dataset("cifar10").train) == 100


# -- CIFAR-10 ------------------------------------------------------------------------------------

def test_cifar10_reads_pickle_layout(tmp_path):
    folder = make_fake_cifar(tmp_path)
    splits = load_dataset("cifar10", tmp_path)
    train, test = splits.train, splits.test
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and test.images.shape == (20, 3, 32, 32)
    assert train.class_names == CIFAR_NAMES and train.num_classes == 10
    first = fake_cifar_batch(1)
    assert torch.equal(train.images[0], torch.from_numpy(first["data"][0]).view(3, 32, 32))
    assert train.labels[:20].tolist() == first["labels"]
    # The folder holding cifar-10-batches-py/ works as the root too.
    assert torch.equal(load_dataset("cifar10", folder.parent).train.images, train.images)


def test_cifar10_per_class_keeps_first_images_in_file_order(tmp_path):
    make_fake_cifar(tmp_path)
    full = load_dataset("cifar10", tmp_path).train
    subset = load_dataset("cifar10", tmp_path, train_per_class=3, test_per_class=1)
    assert torch.bincount(subset.train.labels).tolist() == [3] * 10
    assert len(subset.test) == 10
    # Batch 1 holds labels 1..9, 0, 1..9, 0 in order: the first 3 of each class come from
    # batches 1 and 2 only, in file order.
    expected = [i for i in range(100) if sum(full.labels[:i] == full.labels[i]) < 3]
    assert torch.equal(subset.train.images, full.images[expected])


def test_cifar10_too_many_per_class(tmp_path):
    make_fake_cifar(tmp_path)
    with raises_config_error("train_per_class", "at most 10"):
        load_dataset("cifar10", tmp_path, train_per_class=11)


def test_cifar10_missing_files_suggest_download(tmp_path):
    with raises_config_error("data_root", "cifar-10-batches-py", "download=True", "--data-root"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_cifar10_incomplete_folder_names_missing_file(tmp_path):
    folder = make_fake_cifar(tmp_path)
    (folder / "test_batch").unlink()
    with raises_config_error("data_root", "test_batch is missing"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("damage, fragment", [
    ("truncate", "cannot be read"),
    ("shape", "'data' here is uint8 (20, 100)"),
    ("dtype", "'data' here is float32"),
    ("labels", "labels here span"),
    ("count", "'labels' here has 5 entries"),
])
def test_cifar10_corrupt_batch(tmp_path, damage, fragment):
    folder = make_fake_cifar(tmp_path)
    path = folder / "data_batch_3"
    entry = fake_cifar_batch(3)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    else:
        if damage == "shape":
            entry["data"] = entry["data"][:, :100].copy()
        elif damage == "dtype":
            entry["data"] = entry["data"].astype(np.float32)
        elif damage == "labels":
            entry["labels"][0] = 10
        elif damage == "count":
            entry["labels"] = entry["labels"][:5]
        write_pickle(path, entry)
    with raises_config_error("data_root", "data_batch_3", fragment):
        load_dataset("cifar10", tmp_path)


def test_cifar10_missing_class_is_an_error(tmp_path):
    folder = make_fake_cifar(tmp_path)
    entry = fake_cifar_batch(0)
    entry["labels"] = [0] * 20
    write_pickle(folder / "test_batch", entry)
    with raises_config_error("data_root", "no image of class 1"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network\nat all")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with raises_config_error("data_root", "downloading CIFAR-10 failed", "no network at all"):
        load_dataset("cifar10", tmp_path, download=True)


# -- GTSRB ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("subfolder", ["gtsrb", ""])
def test_gtsrb_reads_npz_in_root_or_gtsrb_folder(tmp_path, subfolder):
    make_fake_gtsrb(tmp_path / subfolder if subfolder else tmp_path)
    splits = load_dataset("gtsrb", tmp_path)
    assert splits.train.images.shape == (129, 3, 32, 32)
    assert splits.train.images.dtype == torch.uint8 and splits.train.labels.dtype == torch.int64
    assert splits.test.images.shape == (43, 3, 32, 32)
    assert splits.train.num_classes == 43 and splits.train.class_names[5] == "sign 5"
    with np.load(next((tmp_path / subfolder).glob("gtsrb_train*.npz"))) as archive:
        image = torch.from_numpy(archive["x"][7]).permute(2, 0, 1)
    assert torch.equal(splits.train.images[7], image)


def test_gtsrb_prefers_full_training_file(tmp_path):
    folder = make_fake_gtsrb(tmp_path / "gtsrb")
    write_gtsrb_npz(folder / "gtsrb_train_32x32_full.npz", per_class=5, seed=3)
    assert len(load_dataset("gtsrb", tmp_path).train) == 43 * 5


def test_gtsrb_per_class(tmp_path):
    make_fake_gtsrb(tmp_path / "gtsrb")
    splits = load_dataset("gtsrb", tmp_path, train_per_class=2)
    assert torch.bincount(splits.train.labels).tolist() == [2] * 43
    with raises_config_error("train_per_class", "at most 3"):
        load_dataset("gtsrb", tmp_path, train_per_class=4)


def test_gtsrb_missing_files(tmp_path):
    with raises_config_error("data_root", "gtsrb_test_32x32.npz", "download=True"):
        load_dataset("gtsrb", tmp_path)
    make_fake_gtsrb(tmp_path / "gtsrb")
    (tmp_path / "gtsrb" / "gtsrb_test_32x32.npz").unlink()
    with raises_config_error("data_root", "gtsrb_test_32x32.npz is missing"):
        load_dataset("gtsrb", tmp_path)


@pytest.mark.parametrize("damage, fragment", [
    ("garbage", "cannot be read"),
    ("no_y", "cannot be read"),
    ("shape", "'x' here is uint8 (129, 28, 28, 3)"),
    ("labels", "labels here span 0..43"),
    ("classes", "only 42 classes"),
])
def test_gtsrb_corrupt_file(tmp_path, damage, fragment):
    folder = make_fake_gtsrb(tmp_path / "gtsrb")
    path = folder / "gtsrb_train_32x32_every3rdframe.npz"
    labels = np.arange(129, dtype=np.int64) % 43
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "no_y":
        np.savez(path, x=np.zeros((129, 32, 32, 3), np.uint8))
    elif damage == "shape":
        write_gtsrb_npz(path, 3, 1, x=np.zeros((129, 28, 28, 3), np.uint8))
    elif damage == "labels":
        labels[0] = 43
        write_gtsrb_npz(path, 3, 1, y=labels)
    elif damage == "classes":
        write_gtsrb_npz(path, 3, 1, y=np.where(labels == 42, 0, labels))
    with raises_config_error("data_root", "gtsrb_train_32x32_every3rdframe.npz", fragment):
        load_dataset("gtsrb", tmp_path)


def test_gtsrb_download_converts_to_npz(tmp_path, monkeypatch):
    """torchvision's GTSRB (faked here) is resized to 32x32 and cached as npz files."""
    import torchvision.datasets
    from PIL import Image

    class FakeGTSRB:
        def __init__(self, root, split, download):
            assert download
            count = 43 * (2 if split == "train" else 1)
            self.samples = [(Image.new("RGB", (30 + i % 7, 40), (i % 256, 0, 0)), i % 43)
                            for i in range(count)]

        def __iter__(self):
            return iter(self.samples)

    monkeypatch.setattr(torchvision.datasets, "GTSRB", FakeGTSRB)
    splits = load_dataset("gtsrb", tmp_path, download=True)
    assert splits.train.images.shape == (86, 3, 32, 32) and len(splits.test) == 43
    assert splits.train.images[5, 0, 16, 16] == 5 and splits.train.class_names[14] == "Stop"
    assert (tmp_path / "gtsrb" / "gtsrb_train_32x32_full.npz").is_file()
    monkeypatch.delattr(torchvision.datasets, "GTSRB")  # later loads must not download
    assert len(load_dataset("gtsrb", tmp_path, download=True).train) == 86


# -- synthetic -----------------------------------------------------------------------------------

def test_synthetic_is_byte_identical_for_same_arguments():
    first, second = generate_synthetic(8, seed=3), generate_synthetic(8, seed=3)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.fingerprint() == second.fingerprint()
    assert not torch.equal(first.images, generate_synthetic(8, seed=4).images)


def test_synthetic_shapes_and_classes():
    splits = load_dataset("synthetic", train_per_class=12, test_per_class=5)
    train, test = splits.train, splits.test
    assert train.images.shape == (120, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and test.images.shape == (50, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [12] * 10
    assert train.num_classes == 10 and train.class_names == CLASS_NAMES
    assert not torch.equal(train.images[:50], test.images)  # train and test differ
    # Images vary and use the intensity range (not blank, not saturated).
    assert train.images.float().std() > 30 and 60 < train.images.float().mean() < 200


def test_synthetic_default_sizes():
    splits = load_dataset("synthetic")
    assert len(splits.train) == 5000 and len(splits.test) == 1000


# -- subsetting and statistics -------------------------------------------------------------------

def test_first_per_class_keeps_order():
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 1, 0, 1])
    dataset = ImageDataset(torch.arange(9, dtype=torch.uint8).view(9, 1, 1, 1), labels, 3,
                           ["a", "b", "c"], "toy")
    subset = first_per_class(dataset, 2, "train_per_class")
    assert subset.images.flatten().tolist() == [0, 1, 2, 3, 4, 6]
    assert first_per_class(dataset, None, "train_per_class") is dataset
    assert first_per_class(dataset, 3, "train_per_class") is dataset  # every class has 3


def test_channel_stats_matches_direct_computation():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images)
    values = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean.shape == std.shape == (3,) and mean.dtype == torch.float32
    torch.testing.assert_close(mean, values.mean(1).float())
    torch.testing.assert_close(std, values.std(1, unbiased=False).float())
    _, flat = channel_stats(torch.full((4, 1, 2, 2), 9, dtype=torch.uint8))
    assert flat.tolist() == [0.0]
    with pytest.raises(ValueError):
        channel_stats(images.float())
