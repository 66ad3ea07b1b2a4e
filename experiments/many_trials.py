"""A sweep of many tiny trials on a local multi-node Ray cluster, with a worker node lost in the
middle: what the platform does at scale.

    python experiments/many_trials.py --seeds 125 --out many          # 1,000 trials
    python experiments/many_trials.py --seeds 25 --out many-200       # 200 trials

It starts a Ray head and two worker nodes on this machine (`ray start`, one CPU each, token
authentication), runs `vb-sweep ablation --preset smoke --epochs 1` over SEEDS seeds x
(`none`, `vab`) x t_f x t_m on 20 generated images a class, and once a quarter of the rows
exist, SIGKILLs one worker node's raylet and workers together. Then it prints: the trials, wall
time and trials per minute; the driver's peak memory; whether every trial has exactly one row
and one MLflow run; the results folder's files, size and read time; the MLflow store's size
and the time `mlflow.search_runs` takes to open the experiment. The cluster is stopped at the
end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vb_sweep.results import HISTORY_DIR, TRIALS_DIR, read_history, read_trials  # noqa: E402

BIN = Path(sys.executable).parent
T_F, T_M = ("0.2", "0.3"), ("0.1", "0.3")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """A head and worker nodes started with `ray start --block`, each in its own process
    group; ``stop`` ends them all."""

    # Ports each node binds, given free ones explicitly: with other Ray clusters on the
    # machine, the ones Ray picks itself can collide.
    NODE_PORTS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                  "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                  "--runtime-env-agent-port")

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="vbmany", dir="/tmp"))  # short socket paths
        self.env = {**os.environ, "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
        self.address = f"127.0.0.1:{free_port()}"
        self.nodes: list[subprocess.Popen] = []

    def up(self, workers: int) -> None:
        self.start("--head", f"--port={self.address.split(':')[1]}", "--include-dashboard=false")
        self.wait_for(1)
        for _ in range(workers):
            self.start(f"--address={self.address}")
        self.wait_for(1 + workers)

    def start(self, *args: str) -> None:
        index = len(self.nodes)
        ports = [f"{option}={free_port()}" for option in self.NODE_PORTS]
        log = open(self.root / f"node{index}.log", "wb")
        self.nodes.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", *args, *ports,
             f"--temp-dir={self.root / str(index)}", "--num-cpus=1", "--num-gpus=0",
             "--node-ip-address=127.0.0.1", "--object-store-memory=200000000",
             "--disable-usage-stats"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))

    def alive(self) -> int:
        probe = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))" % self.address)
        done = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True,
                              text=True, timeout=60)
        lines = done.stdout.split()
        return int(lines[-1]) if done.returncode == 0 and lines else 0

    def wait_for(self, nodes: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.alive() < nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{nodes} Ray nodes did not come up (logs: {self.root})")
            time.sleep(1)

    def kill_worker_node(self) -> None:
        """SIGKILL the last worker node's processes at once, as a machine that loses power."""
        kill_tree(self.nodes[-1].pid)

    def stop(self) -> None:
        """SIGTERM every node (`ray start --block` stops its Ray processes), then SIGKILL what
        is left of each node's process tree."""
        trees = [process_tree(node.pid) for node in self.nodes]
        for node in self.nodes:
            node.send_signal(signal.SIGTERM)
        time.sleep(5)
        for node, tree in zip(self.nodes, trees):
            kill_tree(node.pid, tree)
            node.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and everything it started (Ray gives each worker a process group of its own,
    so a node's process group would miss them)."""
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(pid: int, known: list[psutil.Process] = ()) -> None:
    for process in {*known, *process_tree(pid)}:
        try:
            process.kill()
        except psutil.Error:
            pass


def sweep_command(args, address: str) -> list[str]:
    return [str(BIN / "vb-sweep"), "ablation", "--preset", "smoke", "--epochs", "1",
            "--defenses", "none", "vab", "--seeds", *map(str, range(args.seeds)),
            "--t-f", *T_F, "--t-m", *T_M,
            "--set", "train_per_class=20", "test_per_class=10",
            "--address", address, "--out", str(args.out), "--max-failures", "3", "--verbose", "0"]


def run_sweep(args, cluster: LocalCluster) -> dict:
    """The sweep, watched: its wall time, the driver's peak memory, when the node was killed."""
    log = open(args.out.parent / f"{args.out.name}.log", "w")
    started = time.perf_counter()
    sweep = subprocess.Popen(sweep_command(args, cluster.address), stdout=log,
                             stderr=subprocess.STDOUT, env=cluster.env)
    try:
        return watch(args, cluster, sweep, started)
    finally:
        if sweep.poll() is None:  # the watch failed or was interrupted: the driver goes too
            kill_tree(sweep.pid)
            sweep.wait()


def watch(args, cluster: LocalCluster, sweep: subprocess.Popen, started: float) -> dict:
    driver, peak, killed_at = psutil.Process(sweep.pid), 0, None
    while sweep.poll() is None:
        try:
            peak = max(peak, driver.memory_info().rss)
        except psutil.Error:
            pass
        rows, total = progress(args.out.parent / f"{args.out.name}.log")
        if killed_at is None and total and rows >= total // 4:
            cluster.kill_worker_node()
            killed_at = rows
            print(f"killed a worker node after {rows} rows", flush=True)
        time.sleep(1)
    return {"returncode": sweep.returncode, "wall_s": time.perf_counter() - started,
            "driver_peak_bytes": peak, "killed_after_rows": killed_at}


PROGRESS_LINE = re.compile(r"^\[(\d+)/(\d+)\] ", re.MULTILINE)


def progress(log: Path) -> tuple[int, int | None]:
    """(trials recorded, trials in all) from the sweep's last '[k/N] ...' line (the results
    folder cannot say: its files are merged as they accumulate)."""
    found = PROGRESS_LINE.findall(log.read_text())
    return (int(found[-1][0]), int(found[-1][1])) if found else (0, None)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def report(args, sweep: dict) -> list[str]:
    from mlflow import MlflowClient

    trials, read_s = timed(lambda: read_trials(args.out, strict=True))
    history, history_s = timed(lambda: read_history(args.out, strict=True))
    client = MlflowClient(f"sqlite:///{args.out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ablation-smoke")
    runs, search_s = timed(lambda: client.search_runs(
        [experiment.experiment_id], "tags.`vb_sweep.role` = 'trial'", max_results=50_000))
    run_ids = sorted(run.info.run_id for run in runs)
    n = len(trials)
    overhead = trials["lifetime_s"] - trials[["poison_s", "victim_s", "beneficiary_s"]].sum(axis=1)
    processes = int((trials["worker_trial"] == 1).sum())
    statuses = {status: int(count) for status, count in trials["status"].value_counts().items()}
    files = {name: len(list((args.out / name).glob("*.parquet")))
             for name in (TRIALS_DIR, HISTORY_DIR)}
    return [
        f"trials: {n} rows, {trials['trial_id'].nunique()} distinct, status {statuses}; "
        f"{len(runs)} MLflow trial runs, one per row: "
        f"{run_ids == sorted(trials['mlflow_run_id'].dropna())}",
        f"wall {sweep['wall_s']:.0f} s, {60 * n / sweep['wall_s']:.1f} trials/min on 3 one-CPU "
        f"nodes; a worker node SIGKILLed after {sweep['killed_after_rows']} rows",
        f"driver peak memory {sweep['driver_peak_bytes'] / 2**20:.0f} MiB",
        f"results: trials/ {files[TRIALS_DIR]} files, history/ {files[HISTORY_DIR]} files, "
        f"{(folder_bytes(args.out / TRIALS_DIR) + folder_bytes(args.out / HISTORY_DIR)) / 2**20:.1f}"
        f" MiB; read_trials {read_s:.3f} s, read_history {history_s:.3f} s ({len(history)} rows)",
        f"MLflow store {(args.out / 'mlflow.db').stat().st_size / 2**20:.1f} MiB, artifacts "
        f"{folder_bytes(args.out / 'mlartifacts') / 2**20:.1f} MiB; search_runs of the "
        f"experiment's trial runs {search_s:.2f} s",
        f"per-trial overhead (median): {overhead.median():.2f} s; trials per worker process "
        f"{n / max(1, processes):.1f}",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=125,
                        help="seeds; each gives 8 trials (default 125: 1,000 trials)")
    parser.add_argument("--out", type=Path, required=True, help="the sweep's output folder")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.exit(2, f"many_trials.py: error: --out {args.out}: exists (allowed: a new "
                       "folder)\n")
    args.out = args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster()
    try:
        cluster.up(workers=2)
        sweep = run_sweep(args, cluster)
    finally:
        cluster.stop()
    if sweep["returncode"] not in (0, 1):
        print(f"the sweep exited with {sweep['returncode']}: see {args.out}.log")
        return sweep["returncode"]
    print("\n".join(report(args, sweep)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
