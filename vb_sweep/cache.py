"""A content-addressed on-disk cache for expensive artifacts.

Poisoned sets, trained attack generators, adversarial images and Victim trajectories are keyed by
everything they depend on (the dataset's fingerprint, the full configuration, the seed) plus
``CACHE_FORMAT_VERSION``. Two processes may fill the same key at once: an advisory file lock lets
one build while the other waits, and the artifact is written to a temporary name and renamed into
place, so a reader never sees a half-written file and a killed builder leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

CACHE_FORMAT_VERSION = 1
T = TypeVar("T")


def cache_key(kind: str, parts: dict[str, Any]) -> str:
    payload = json.dumps({"kind": kind, "format": CACHE_FORMAT_VERSION, **parts},
                         sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("VB_SWEEP_CACHE", Path.home() / ".cache" / "vb-sweep"))


class ArtifactCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.builds: list[str] = []  # keys built by this process (hits leave no trace here)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def get_or_build(self, kind: str, parts: dict[str, Any], build: Callable[[], T]) -> T:
        key = cache_key(kind, parts)
        target = self.path(key)
        if target.exists():
            return self._load(target)
        with self._lock(key):
            if target.exists():  # another process built it while we waited
                return self._load(target)
            artifact = build()
            self._write_atomically(target, artifact)
            self.builds.append(key)
            return artifact

    def contains(self, kind: str, parts: dict[str, Any]) -> bool:
        return self.path(cache_key(kind, parts)).exists()

    @staticmethod
    def _load(path: Path):
        return torch.load(path, map_location="cpu", weights_only=False)

    def _write_atomically(self, target: Path, artifact) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{target.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(artifact, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def _lock(self, key: str):
        with open(self.root / f".{key}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
