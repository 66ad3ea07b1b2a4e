"""Where a trial's time goes: named, nested sections of the code, timed when a breakdown is on.

    with collect_breakdown(device) as breakdown:   # experiments/benchmark.py --breakdown
        run_trial(config)
    breakdown.seconds  # {("victim", "entropy pass"): 12.1, ("mix epoch", "forward"): 40.2, ...}

The trial's code marks its parts with ``with section("forward"):``. Without a breakdown that is
a shared no-op context (well under a microsecond). With one, each section entered by the
thread that collects it (other threads, such as a reused sweep worker's, are not timed) counts
towards its path of nested section names, less the time of the sections nested in it, so the
figures add up to the wall time spent inside the outermost sections. On a GPU every section
boundary waits for the device (``torch.cuda.synchronize``), which slows the run a little and
puts the time where the work was queued.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import defaultdict

import torch

_NOTHING = contextlib.nullcontext()
_active: "Breakdown | None" = None
_LOCK = threading.Lock()


class Breakdown:
    """Seconds and entries per path of section names, each section's own time only."""

    def __init__(self, device: str = "cpu"):
        self.thread = threading.get_ident()
        self.seconds: dict[tuple[str, ...], float] = defaultdict(float)
        self.calls: dict[tuple[str, ...], int] = defaultdict(int)
        self._synchronize = torch.device(device).type == "cuda"
        self._path: list[str] = []
        self._since = 0.0

    def _now(self) -> float:
        if self._synchronize:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _charge(self) -> float:
        """Time since the last boundary, charged to the section now innermost."""
        now = self._now()
        if self._path:
            self.seconds[tuple(self._path)] += now - self._since
        self._since = now
        return now

    @contextlib.contextmanager
    def section(self, name: str):
        self._charge()
        self._path.append(name)
        self.calls[tuple(self._path)] += 1
        try:
            yield
        finally:
            self._charge()
            self._path.pop()

    def rows(self) -> list[tuple[tuple[str, ...], float, int]]:
        """(path, seconds, entries), in order of first entry."""
        return [(path, self.seconds[path], self.calls[path]) for path in self.calls]


def section(name: str):
    """A timed part of the code while this thread collects a breakdown; nothing otherwise."""
    active = _active
    if active is None or active.thread != threading.get_ident():
        return _NOTHING
    return active.section(name)


def timed_section(name: str):
    """Decorator: the function's calls are the section ``name``."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with section(name):
                return function(*args, **kwargs)
        return wrapper
    return decorate


@contextlib.contextmanager
def collect_breakdown(device: str = "cpu"):
    """Time every ``section`` this thread enters until the block ends (one breakdown at a time
    per process)."""
    global _active
    with _LOCK:
        if _active is not None:
            raise RuntimeError("a breakdown is already being collected")
        _active = Breakdown(device)
    try:
        yield _active
    finally:
        _active = None
