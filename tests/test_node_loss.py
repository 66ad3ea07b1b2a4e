"""A worker node lost in the middle of a sweep: a third node joins the tests' two-node cluster,
and once trials run on it, its raylet and workers are SIGKILLed together. The sweep must finish
on its own, every trial exactly once: the trials that died with the node are retried from their
checkpoints on the nodes left, and the Parquet rows and the MLflow runs match one to one."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
from mlflow import MlflowClient

from conftest import (BIN, TINY, alive_nodes, start_group, start_script,
                      stop_groups, wait_until)
from test_sweep_cluster import check_nested_runs

SEEDS = [str(seed) for seed in range(5)]  # x (none, vab): 10 trials on 3 one-CPU nodes


def join_node(address: str, env: dict, root: Path):
    return start_group([str(BIN / "ray"), "start", f"--address={address}", "--block",
                        f"--temp-dir={root}", "--num-cpus=1", "--num-gpus=0",
                        "--node-ip-address=127.0.0.1", "--object-store-memory=200000000",
                        "--disable-usage-stats"], root / "node.log", env)


def node_processes(node) -> list[psutil.Process]:
    """The node's `ray start`, raylet and everything they started (Ray gives each worker a
    process group of its own, so the node's group alone would miss them)."""
    try:
        parent = psutil.Process(node.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def computing_trial(node) -> bool:
    """Whether a trial's worker process on the node is using the CPU."""
    try:
        workers = [p for p in node_processes(node) if "ImplicitFunc" in p.name()]
        before = sum(sum(p.cpu_times()[:2]) for p in workers)
        time.sleep(0.5)
        return sum(sum(p.cpu_times()[:2]) for p in workers) - before > 0.1
    except psutil.Error:  # a worker that ended meanwhile: look again
        return False


def kill_node(node) -> None:
    """SIGKILL the node's processes all at once, as a machine that loses power."""
    for process in node_processes(node):
        try:
            process.kill()
        except psutil.Error:
            pass
    node.wait()


def test_a_sweep_survives_losing_a_worker_node(ray_cluster, tmp_path):
    root = Path(tempfile.mkdtemp(prefix="vbnode", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": "", **ray_cluster.env}
    out, log = tmp_path / "out", tmp_path / "sweep.log"
    node = join_node(ray_cluster.address, env, root)
    processes = [node]
    try:
        wait_until(lambda: alive_nodes(ray_cluster.address, env) >= 3, "third node joined",
                   processes=[node])
        sweep = start_script("ablation.py", *TINY, "--attacks", "badnets", "--defenses",
                             "none", "vab", "--seeds", *SEEDS, "--address",
                             ray_cluster.address, "--out", str(out), "--max-failures", "3",
                             env=ray_cluster.env, log=log)
        processes.append(sweep)
        wait_until(lambda: computing_trial(node), "a trial computing on the third node",
                   timeout_s=300, processes=[sweep])
        kill_node(node)
        sweep.wait(timeout=600)
    finally:
        stop_groups(processes)
        shutil.rmtree(root, ignore_errors=True)
    output = log.read_text()
    assert sweep.returncode == 0, output[-4000:]
    rows = pd.read_parquet(out / "trials")
    assert len(rows) == 2 * len(SEEDS) and rows["trial_id"].is_unique
    assert set(rows["status"]) == {"ok"}
    # The trial the node took with it failed once and was retried elsewhere.
    assert list((out / "tune").glob("*/*/error.txt")), output[-4000:]
    check_nested_runs(MlflowClient(f"sqlite:///{out / 'mlflow.db'}"), "ablation-smoke", rows)
    assert f"[{len(rows)}/{len(rows)}]" in output
