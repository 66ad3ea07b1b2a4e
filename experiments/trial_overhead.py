"""What a sweep pays per trial besides computing: many tiny trials through the real command.

    python experiments/trial_overhead.py --seeds 10 --out overhead        # workers reused
    python experiments/trial_overhead.py --seeds 10 --out overhead-fresh --fresh-workers

It runs `vb-sweep ablation --preset smoke --epochs 1` over SEEDS seeds x `none`, `vab` on 20
generated images a class (each trial computes for a second or two) on a local Ray cluster with
`--cpus`, then reads the trials table and prints, per trial (mean, median):
- lifetime: Tune's start of the trial on its worker to its row being written (the driver's
  clock; the worker process is already up);
- compute: poisoning, the Victim and the Beneficiary (the trial's own clocks);
- overhead: lifetime minus compute, and its known parts: importing the trial's code (torch, the
  defense: in a worker's first trial), loading the clean data, the driver's MLflow logging; the
  rest is Tune's and Ray's scheduling, the per-epoch reports and checkpoints, the figures and
  the result's transfer;
- worker start: a new process's start to its first trial (interpreter, Ray, the actor), paid
  before the lifetime begins;
- the sweep's wall time, trials per minute, core-seconds per trial (everything, the sweep's
  start and end included) and the trials each worker process ran.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vb_sweep.results import read_trials  # noqa: E402

PARTS = {"imports_s": "imports", "load_s": "data load", "tracking_s": "MLflow logging"}


def sweep_command(args) -> list[str]:
    seeds = [str(seed) for seed in range(args.seeds)]
    command = [sys.executable, "-m", "vb_sweep.cli", "ablation", "--preset", "smoke",
               "--epochs", "1", "--defenses", "none", "vab", "--seeds", *seeds,
               "--set", f"train_per_class={args.images_per_class}", "test_per_class=10",
               "--cpus", str(args.cpus), "--out", str(args.out), "--verbose", "0"]
    return command + (["--fresh-workers"] if args.fresh_workers else [])


def breakdown(trials: pd.DataFrame) -> pd.DataFrame:
    """Seconds per trial: lifetime, compute, overhead and its parts (mean and median)."""
    figures = pd.DataFrame({"lifetime": trials["lifetime_s"],
                            "compute": trials[["poison_s", "victim_s", "beneficiary_s"]].sum(axis=1)})
    figures["overhead"] = figures["lifetime"] - figures["compute"]
    for column, name in PARTS.items():
        figures[name] = trials[column]
    figures["other"] = figures["overhead"] - figures[list(PARTS.values())].sum(axis=1)
    figures["worker start (before the lifetime)"] = trials["startup_s"]
    return figures.agg(["mean", "median"]).T


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds: 2 trials each (default 10)")
    parser.add_argument("--images-per-class", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--fresh-workers", action="store_true",
                        help="a new worker process per trial (the sweep's --fresh-workers)")
    parser.add_argument("--out", type=Path, required=True, help="the sweep's output folder")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.exit(2, f"trial_overhead.py: error: --out {args.out}: exists (allowed: a new "
                       "folder, so that every trial is measured)\n")
    started = time.perf_counter()
    done = subprocess.run(sweep_command(args))
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return done.returncode
    trials = read_trials(args.out, strict=True)
    print(f"\n{len(trials)} trials in {wall:.0f} s ({60 * len(trials) / wall:.1f} trials/min)"
          f" on {args.cpus} CPUs, {'fresh' if args.fresh_workers else 'reused'} workers; "
          f"trials per worker process: {int((trials['worker_trial'] == 1).sum())} processes "
          f"for {len(trials)} trials; {wall * args.cpus / len(trials):.1f} core-seconds a trial "
          "(the sweep's start and end included)")
    print("seconds per trial:")
    print(breakdown(trials).round(2).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
