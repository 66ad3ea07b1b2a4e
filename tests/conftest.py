"""Real services for the sweep tests: a two-node Ray cluster (`ray start --head` plus a second
`ray start --address` node, on 127.0.0.1, with token authentication) and an `mlflow server`
on a free loopback port. Both are started once per test session and stopped at teardown by
signalling the process groups these fixtures created (never by name).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_group(command: list[str], log: Path, env: dict) -> subprocess.Popen:
    """A process in its own process group, so teardown can stop it and all its children."""
    with open(log, "ab") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=REPO)


def stop_groups(processes: list[subprocess.Popen], timeout_s: float = 10) -> None:
    """SIGTERM each group at once, then SIGKILL what is left after ``timeout_s``."""
    for process in processes:
        signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        signal_group(process, signal.SIGKILL)  # children that outlived their parent
        process.wait()


def signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def wait_until(check, what: str, timeout_s: float = STARTUP_TIMEOUT_S, processes=()) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{what}: {process.args[:3]} exited with {process.returncode}")
        if check():
            return
        time.sleep(1)
    raise TimeoutError(f"{what} did not happen within {timeout_s} s")


# -- Ray ------------------------------------------------------------------------------------------
@dataclass
class RayCluster:
    address: str
    env: dict          # what a driver needs to join: the token-auth variables
    cpus: int


def alive_nodes(address: str, env: dict) -> int:
    probe = ("import ray, json; ray.init(address=%r, logging_level='ERROR'); "
             "print(json.dumps(sum(n['Alive'] for n in ray.nodes())))" % address)
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                            text=True, timeout=60)
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]) if result.returncode == 0 and lines else 0


def ray_env() -> dict:
    """Token authentication as a user's cluster would have it; the token is the test's own."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": ""}


@pytest.fixture(scope="session")
def ray_cluster():
    # Short paths: Ray's Unix sockets live under the temp dir and have a length limit.
    root = Path(tempfile.mkdtemp(prefix="vbray", dir="/tmp"))
    env = ray_env()
    port = free_port()
    address = f"127.0.0.1:{port}"
    node = ["--block", "--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1",
            "--object-store-memory=200000000", "--disable-usage-stats"]
    head = start_group([str(BIN / "ray"), "start", "--head", f"--port={port}",
                        "--include-dashboard=false", f"--temp-dir={root / 'h'}", *node],
                       root / "head.log", env)
    nodes = [head]
    try:
        wait_until(lambda: alive_nodes(address, env) >= 1, "head node up", processes=nodes)
        nodes.append(start_group([str(BIN / "ray"), "start", f"--address={address}",
                                  f"--temp-dir={root / 'w'}", *node], root / "worker.log", env))
        wait_until(lambda: alive_nodes(address, env) >= 2, "second node joined", processes=nodes)
        yield RayCluster(address, {key: env[key] for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")},
                         cpus=2)
    finally:
        stop_groups(nodes)
        shutil.rmtree(root, ignore_errors=True)


# -- MLflow ---------------------------------------------------------------------------------------
def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_group([str(BIN / "mlflow"), "server",
                          "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                          "--artifacts-destination", str(folder / "artifacts"),
                          "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                         folder / "server.log", {**os.environ})
    try:
        wait_until(lambda: healthy(uri), "mlflow server up", processes=[server])
        yield uri
    finally:
        stop_groups([server])


# -- running the entry points ---------------------------------------------------------------------
# A smoke trial shrunk to seconds: 400 training images, 2 Beneficiary epochs.
TINY = ("--preset", "smoke", "--epochs", "2",
        "--set", "train_per_class=40", "test_per_class=20", "warm_up=2")


def run_notebook(results: Path | None, figures: Path | None, monkeypatch,
                 checkout: Path = REPO) -> list[dict]:
    """Execute analysis/results.ipynb from ``checkout`` on a results folder (None: the notebook
    finds it itself, with no environment variable); return its cells' outputs, after checking
    that no cell raised."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for variable, path in (("VB_SWEEP_RESULTS", results), ("VB_SWEEP_FIGURES", figures)):
        if path is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, str(path))
    notebook = nbformat.read(checkout / "analysis" / "results.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(checkout / "analysis")}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return outputs


def run_script(name: str, *args: str, env: dict | None = None, timeout_s: float = 600):
    """``python experiments/NAME ARGS`` as a user runs it; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO / "experiments" / name), *args],
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})},
                          capture_output=True, text=True, timeout=timeout_s, cwd=REPO)


def start_script(name: str, *args: str, env: dict | None = None,
                 log: Path | None = None) -> subprocess.Popen:
    """The same, in the background, in its own process group (so a test can SIGKILL it)."""
    handle = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, str(REPO / "experiments" / name), *args],
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})},
                            stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


@pytest.fixture
def tiny() -> tuple[str, ...]:
    return TINY


@pytest.fixture
def sweep_script():
    return run_script


@pytest.fixture
def background_script():
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str, **kwargs) -> subprocess.Popen:
        started.append(start_script(name, *args, **kwargs))
        return started[-1]

    yield start
    stop_groups(started)
