"""A content-addressed on-disk cache for expensive artifacts.

Poisoned sets, trained attack generators, adversarial images and Victim trajectories are keyed by
everything they depend on (the dataset's fingerprint, the full configuration, the seed) plus
``CACHE_FORMAT_VERSION``. Two processes may fill the same key at once: an advisory file lock lets
one build while the other waits, and the artifact is written to a temporary name and renamed into
place, so a reader never sees a half-written file and a killed builder leaves nothing behind.

Artifacts are written as a checked file (``save_checked``): a header line with the SHA-256 of
the ``torch.save`` bytes that follow it. They are read back (``load_checked``) only if the
checksum matches, with ``torch.load(weights_only=True)``: tensors, containers, primitives and the
project's own artifact dataclasses (``register_artifact_type``), nothing that can run code. A
file that fails either (truncated, bit-flipped, or crafted to run code) is moved aside as
``KEY.pt.unreadable-TIME``, named in a one-line warning, and built again. Tune checkpoints use the
same format.

A long build may keep its progress beside the artifact (``write_progress``: ``KEY.partial.pt``,
written atomically after each finished step) and read it back when it starts (``read_progress``),
so a builder killed mid-way resumes where it stopped; the file goes once the artifact is written.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

# 2: read with weights_only=True; PreparedPoison lives in vb_sweep.artifacts.
# 3: checked files (a SHA-256 header before the torch.save bytes).
CACHE_FORMAT_VERSION = 3
CHECKED_MAGIC = b"vb-sweep checked file sha256="
T = TypeVar("T")
UNREADABLE = object()  # what ArtifactCache._read returns when there is no usable artifact
ARTIFACT_TYPES: list[type] = []  # the classes a cached artifact may contain besides tensors


def register_artifact_type(cls: type) -> type:
    """Class decorator: instances may be stored in (and read back from) the cache."""
    ARTIFACT_TYPES.append(cls)
    return cls


class ChecksumError(ValueError):
    """A checked file whose content does not match its recorded SHA-256 (or has no header)."""


def save_checked(obj, path: Path) -> None:
    """``torch.save`` bytes behind a header line holding their SHA-256, fsynced."""
    payload = io.BytesIO()
    torch.save(obj, payload)
    content = payload.getbuffer()
    with open(path, "wb") as handle:
        handle.write(CHECKED_MAGIC + hashlib.sha256(content).hexdigest().encode() + b"\n")
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def load_checked(path: Path):
    """What ``save_checked`` wrote, if its checksum matches (else ``ChecksumError``), loaded so
    that only tensors, containers and artifact types can be rebuilt."""
    content = Path(path).read_bytes()
    header, _, payload = content.partition(b"\n")
    if not header.startswith(CHECKED_MAGIC):
        raise ChecksumError("no checksum header (not written by this version)")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(CHECKED_MAGIC):]:
        raise ChecksumError("checksum mismatch: the file is corrupt")
    with torch.serialization.safe_globals(ARTIFACT_TYPES):
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


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

    def progress_path(self, kind: str, parts: dict[str, Any]) -> Path:
        return self._progress_file(cache_key(kind, parts))

    def _progress_file(self, key: str) -> Path:
        return self.root / f"{key}.partial.pt"

    def read_progress(self, kind: str, parts: dict[str, Any]):
        """What the last builder of this artifact saved of its progress, or None."""
        found = self._read(self.progress_path(kind, parts))
        return None if found is UNREADABLE else found

    def write_progress(self, kind: str, parts: dict[str, Any], progress) -> None:
        self._write_atomically(self.progress_path(kind, parts), progress)

    def get_or_build(self, kind: str, parts: dict[str, Any], build: Callable[[], T]) -> T:
        key = cache_key(kind, parts)
        target = self.path(key)
        found = self._read(target)
        if found is not UNREADABLE:
            return found
        with self._lock(key):
            found = self._read(target)  # another process may have built it while we waited
            if found is not UNREADABLE:
                return found
            artifact = build()
            self._write_atomically(target, artifact)
            self._progress_file(key).unlink(missing_ok=True)
            self.builds.append(key)
            return artifact

    def contains(self, kind: str, parts: dict[str, Any]) -> bool:
        return self.path(cache_key(kind, parts)).exists()

    @staticmethod
    def _read(path: Path):
        """The artifact at ``path``; UNREADABLE when there is none or it cannot be read (then
        it is moved aside, so the caller builds it again)."""
        if not path.exists():
            return UNREADABLE
        try:
            return load_checked(path)
        except FileNotFoundError:  # moved aside by another process meanwhile
            return UNREADABLE
        except Exception as err:  # noqa: BLE001 - truncated, corrupt or unsafe: rebuild it
            aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                pass
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            print(f"warning: cache artifact {path} cannot be read ({reason}); moved to "
                  f"{aside.name}, building it again", file=sys.stderr, flush=True)
            return UNREADABLE

    def _write_atomically(self, target: Path, artifact) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{target.stem}.", suffix=".tmp")
        os.close(fd)
        try:
            save_checked(artifact, Path(tmp))
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
