"""The artifact cache: hits without rebuilds, one build for concurrent fillers, no leftovers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from vb_sweep.cache import ArtifactCache, cache_key

PARTS = {"dataset": "tiny-abc", "attack": "badnets", "seed": 0}


def random_artifact() -> dict:
    # Unseeded on purpose: two builds would give two different artifacts.
    return {"images": torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8),
            "indices": torch.randperm(100)}


def slow_build(log: str, seconds: float) -> dict:
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return random_artifact()


def fill(root: str, log: str, barrier, results) -> None:
    """One filler process: wait for the other, then get_or_build the same key."""
    cache = ArtifactCache(root)
    barrier.wait()
    artifact = cache.get_or_build("poison", PARTS, lambda: slow_build(log, 0.5))
    results.put((os.getpid(), len(cache.builds), artifact["images"].numpy().tobytes(),
                 artifact["indices"].tolist()))


def build_forever(root: str, log: str) -> None:
    ArtifactCache(root).get_or_build("poison", PARTS, lambda: slow_build(log, 600))


def leftovers(root: Path) -> list[str]:
    """Everything in the cache folder but finished artifacts and lock files."""
    return sorted(p.name for p in root.iterdir()
                  if p.suffix != ".pt" and not p.name.endswith(".lock"))


def test_second_call_is_a_hit_without_rebuild(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []

    def build():
        calls.append(1)
        return random_artifact()

    first = cache.get_or_build("poison", PARTS, build)
    second = cache.get_or_build("poison", PARTS, build)
    third = ArtifactCache(tmp_path).get_or_build("poison", dict(reversed(PARTS.items())), build)
    assert len(calls) == 1 and cache.builds == [cache_key("poison", PARTS)]
    for other in (second, third):
        assert torch.equal(other["images"], first["images"])
        assert torch.equal(other["indices"], first["indices"])
    assert cache.contains("poison", PARTS)
    assert not cache.contains("poison", {**PARTS, "seed": 1})
    assert leftovers(tmp_path) == []


def test_different_parts_or_kind_are_different_keys():
    assert cache_key("poison", PARTS) != cache_key("poison", {**PARTS, "seed": 1})
    assert cache_key("poison", PARTS) != cache_key("victim", PARTS)
    assert cache_key("poison", PARTS) == cache_key("poison", dict(reversed(PARTS.items())))


def test_two_concurrent_processes_build_once_and_share_the_artifact(tmp_path):
    context = multiprocessing.get_context("spawn")
    log = tmp_path / "builds.log"
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=fill, args=(str(tmp_path / "cache"), str(log), barrier,
                                                   results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert len(log.read_text().split()) == 1  # the build ran once
    assert sorted(builds for _, builds, _, _ in outcomes) == [0, 1]
    assert outcomes[0][2:] == outcomes[1][2:]  # byte-identical artifact in both
    assert leftovers(tmp_path / "cache") == []


def test_a_killed_builder_leaves_nothing_and_releases_the_lock(tmp_path):
    context = multiprocessing.get_context("spawn")
    log = tmp_path / "builds.log"
    builder = context.Process(target=build_forever, args=(str(tmp_path / "cache"), str(log)))
    builder.start()
    deadline = time.monotonic() + 120
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.exists(), "the builder never started building"
    os.kill(builder.pid, signal.SIGKILL)
    builder.join(timeout=30)
    cache = ArtifactCache(tmp_path / "cache")
    assert not cache.contains("poison", PARTS)
    start = time.monotonic()
    artifact = cache.get_or_build("poison", PARTS, random_artifact)  # the lock is free again
    assert time.monotonic() - start < 10 and cache.builds and artifact["images"].shape == (4, 3, 8, 8)
    assert leftovers(tmp_path / "cache") == []


def test_a_failing_build_leaves_no_artifact(tmp_path):
    cache = ArtifactCache(tmp_path)

    def broken():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get_or_build("poison", PARTS, broken)
    assert not cache.contains("poison", PARTS) and cache.builds == []
    assert list(tmp_path.glob("*.pt")) == [] and leftovers(tmp_path) == []
    artifact = cache.get_or_build("poison", PARTS, random_artifact)  # a later build works
    assert cache.contains("poison", PARTS) and torch.equal(
        ArtifactCache(tmp_path).get_or_build("poison", PARTS, random_artifact)["indices"],
        artifact["indices"])


def test_an_unpicklable_artifact_leaves_no_temp_file(tmp_path):
    cache = ArtifactCache(tmp_path)
    with pytest.raises(Exception):
        cache.get_or_build("poison", PARTS, lambda: {"fn": lambda: None})
    assert not cache.contains("poison", PARTS) and leftovers(tmp_path) == []


def test_progress_is_read_back_and_goes_when_the_artifact_is_written(tmp_path):
    cache = ArtifactCache(tmp_path)
    assert cache.read_progress("mix_stage", PARTS) is None
    cache.write_progress("mix_stage", PARTS, {"epoch": 3})
    assert cache.read_progress("mix_stage", PARTS) == {"epoch": 3}
    assert not cache.contains("mix_stage", PARTS)  # progress is not the artifact
    cache.get_or_build("mix_stage", PARTS, lambda: {"epoch": 10})
    assert cache.read_progress("mix_stage", PARTS) is None
    assert [path.name for path in tmp_path.iterdir() if not path.name.startswith(".")] == [
        f"{cache_key('mix_stage', PARTS)}.pt"]


def test_unreadable_progress_is_moved_aside_and_ignored(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.progress_path("mix_stage", PARTS).write_bytes(b"half a file")
    assert cache.read_progress("mix_stage", PARTS) is None
    assert not cache.progress_path("mix_stage", PARTS).exists()
    assert any(".unreadable-" in path.name for path in tmp_path.iterdir())
