"""Nothing of a local Ray cluster outlives the driver that started it, however the driver ends.

Ray stops its core processes with a driver that exits, but after a SIGKILL some of them (the
dashboard and runtime-env agents, idle workers) are re-parented and live on. The reaper is a
small process of its own session, started right after ``ray.init``: while the driver lives it
notes the driver's descendants every half second; once the driver is gone it terminates the ones
still running (SIGTERM, then SIGKILL after a grace period) and exits.

    python -m vb_sweep.sweep.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.5
GRACE_S = 5.0


def start_reaper() -> subprocess.Popen:
    """A reaper for this process's local cluster (call it after ``ray.init``)."""
    return subprocess.Popen([sys.executable, "-m", "vb_sweep.sweep.reaper", str(os.getpid())],
                            start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def watch(driver_pid: int) -> int:
    """Notes the driver's descendants until it is gone, then stops them; returns how many were
    still running."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    seen: dict[int, psutil.Process] = {}
    while _alive(driver):
        try:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():
                    seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    # is_running() compares creation times, so a recycled pid is never taken for a leftover.
    left = [process for process in seen.values() if process.is_running()]
    for process in left:
        _signal(process, "terminate")
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    for process in alive:
        _signal(process, "kill")
    return len(left)


def _alive(process) -> bool:
    """Running and not a zombie; a process reaped between the two checks is not alive (an
    uncaught NoSuchProcess there ended the reaper before it stopped anything)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(process, action: str) -> None:
    import psutil

    try:
        getattr(process, action)()
    except psutil.Error:
        pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
