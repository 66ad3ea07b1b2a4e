"""vb-sweep: experiment sweeps for the V&B backdoor defense (ICCV 2023)."""

import functools
import os
import subprocess
from pathlib import Path

__version__ = "0.1.0"
# A sweep's Ray workers run a copy of the driver's package, outside any checkout: the driver
# hands them its commit in this variable (vb_sweep.sweep.cluster.connect).
COMMIT_ENV = "VB_SWEEP_COMMIT"


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, if it is one, or the one a sweep's
    driver handed its workers (asked once)."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
