"""vb-sweep: experiment sweeps for the V&B backdoor defense (ICCV 2023)."""

import functools
import subprocess
from pathlib import Path

__version__ = "0.1.0"


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, if it is one (asked once)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
