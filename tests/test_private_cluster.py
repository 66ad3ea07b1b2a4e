"""A local sweep's Ray cluster listens on the loopback address only (a real local cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LISTENERS = """
import json, psutil
from vb_sweep.sweep import connect
connect(None)
pids = {child.pid for child in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
found = [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="inet")
         if c.status == psutil.CONN_LISTEN and c.pid in pids]
print(json.dumps(found))
"""


def test_a_local_cluster_listens_on_loopback_only():
    done = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    listeners = json.loads(done.stdout.strip().splitlines()[-1])
    assert listeners, "no Ray server found listening"
    public = [entry for entry in listeners if entry[0] not in ("127.0.0.1", "::1")]
    assert not public, public
