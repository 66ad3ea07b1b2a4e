"""Files the project reads cannot run code: crafted cache artifacts, Tune checkpoints and
CIFAR-10 pickles are refused (and a cache artifact is rebuilt), and the code in them never runs,
even behind a valid checksum; a corrupt artifact fails its checksum and is rebuilt."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from vb_sweep.cache import ArtifactCache, cache_key, load_checked, save_checked
from vb_sweep.data.cifar10 import read_class_names
from vb_sweep.errors import ConfigError


class RunsACommand:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_cache_artifact_is_refused_set_aside_and_rebuilt(tmp_path, capsys):
    marker = tmp_path / "ran"
    cache = ArtifactCache(tmp_path / "cache")
    parts = {"dataset": "x"}
    path = cache.path(cache_key("poison", parts))
    save_checked({"images": RunsACommand(marker)}, path)  # a valid checksum, unsafe content
    rebuilt = cache.get_or_build("poison", parts, lambda: {"images": torch.zeros(2)})
    assert torch.equal(rebuilt["images"], torch.zeros(2))
    assert not marker.exists()
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and str(path) in warning[0] and "building it again" in warning[0]
    assert list(path.parent.glob(f"{path.name}.unreadable-*"))
    assert cache.builds == [path.stem]
    assert torch.equal(cache.get_or_build("poison", parts, lambda: None)["images"],
                       torch.zeros(2))  # the rebuilt file is read back as it is


@pytest.mark.parametrize("damage", ["truncated", "empty", "bit-flipped", "no-header"])
def test_a_corrupt_cache_artifact_is_rebuilt_with_a_warning_naming_it(tmp_path, capsys, damage):
    cache = ArtifactCache(tmp_path / "cache")
    parts = {"dataset": "y"}
    first = cache.get_or_build("victim", parts, lambda: {"entropy": torch.arange(1000.0)})
    path = cache.path(cache_key("victim", parts))
    content = path.read_bytes()
    path.write_bytes(damaged(content, damage))
    again = ArtifactCache(tmp_path / "cache").get_or_build(
        "victim", parts, lambda: {"entropy": torch.arange(1000.0)})
    assert torch.equal(again["entropy"], first["entropy"])
    err = capsys.readouterr().err
    assert str(path) in err and err.count("\n") == 1


def damaged(content: bytes, damage: str) -> bytes:
    if damage == "truncated":
        return content[: len(content) // 2]
    if damage == "bit-flipped":  # inside a tensor's data: torch.load alone would not notice
        flipped = bytearray(content)
        flipped[len(content) // 2] ^= 0x01
        return bytes(flipped)
    if damage == "no-header":  # a plain torch.save file, as earlier versions wrote
        return content.partition(b"\n")[2]
    return b""


def test_a_checked_file_round_trips_and_a_flipped_bit_is_caught(tmp_path):
    from vb_sweep.cache import ChecksumError

    path = tmp_path / "state.pt"
    save_checked({"weights": torch.arange(5000.0)}, path)
    assert torch.equal(load_checked(path)["weights"], torch.arange(5000.0))
    path.write_bytes(damaged(path.read_bytes(), "bit-flipped"))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        load_checked(path)


def test_a_crafted_tune_checkpoint_is_skipped_without_running(tmp_path):
    from ray import tune

    from vb_sweep.sweep import STATE_FILE, latest_resumable

    marker = tmp_path / "ran"
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    save_checked({"epoch": 1, "model": RunsACommand(marker)}, folder / STATE_FILE)
    found = latest_resumable([tune.Checkpoint.from_directory(str(folder))])
    assert found.state is None and found.row is None
    assert not marker.exists()


def test_a_crafted_cifar_meta_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    meta = tmp_path / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": RunsACommand(marker)}, protocol=2))
    with pytest.raises(ConfigError) as caught:
        read_class_names(meta)
    assert "not part of the CIFAR-10 layout" in str(caught.value)
    assert not marker.exists()


def test_the_real_cifar_layout_still_reads(tmp_path):
    import numpy as np

    from vb_sweep.data.cifar10 import read_batch

    meta = tmp_path / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    assert read_class_names(meta)[3] == "c3"
    batch = tmp_path / "data_batch_1"
    data = np.arange(10 * 3072, dtype=np.int64).astype(np.uint8).reshape(10, 3072)
    batch.write_bytes(pickle.dumps({"data": data, "labels": list(range(10))}, protocol=2))
    images, labels = read_batch(batch)
    assert np.array_equal(images, data) and labels.tolist() == list(range(10))
