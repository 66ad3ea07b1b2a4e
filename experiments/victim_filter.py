"""Which attacks the Victim's filter catches over a whole schedule, without training a Beneficiary.

    python experiments/victim_filter.py --preset cpu --data-root DATA --epochs 200 \
        --attacks wanet dynamic sig cl --cache-dir RUNS/cache --out RUNS/filter-200

For each attack it takes from the cache (or builds) the poisoned set and the Victim's trajectory
that every filtering trial of these settings uses (`F` and the V&B variants share it, so a
sweep given the same --cache-dir later starts from it), and reports each split against the
ground truth: the size of the suspicious set Ds, the poisoned images in it, precision, recall
and AUROC (docs/method.md section 1). Writes OUT/filter_splits.csv (one row per attack and
split) and OUT/filter_quality_ATTACK.png; prints a line per split as it is made, then the
first split, the one in use at the end of the mix stage and the last.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vb_sweep.analysis.plots import filter_quality_figure, save_figure  # noqa: E402
from vb_sweep.artifacts import (load_trial_data, make_attack,  # noqa: E402
                                prepare_poisoned_set, prepare_victim)
from vb_sweep.cache import ArtifactCache  # noqa: E402
from vb_sweep.commands.options import OneLineErrorParser, run_command  # noqa: E402
from vb_sweep.config import (merge_overrides, parse_overrides, preset_config,  # noqa: E402
                             schedule_for)
from vb_sweep.device import resolve_device  # noqa: E402
from vb_sweep.errors import check_number  # noqa: E402
from vb_sweep.metrics import filter_quality  # noqa: E402

COLUMNS = ["attack", "split_after_epoch", "used_in_epochs", "suspicious_size",
           "poisoned_in_suspicious", "filter_precision", "filter_recall", "filter_auroc"]


def split_rows(config, trajectory, poisoned: torch.Tensor) -> list[dict]:
    """One row per split of the trajectory: the Beneficiary epochs that use it (a split made
    after epoch e is used from e + 1 on; the warm-up's, from epoch 1) and its quality."""
    rows = []
    for index, state in enumerate(trajectory.states):
        used = [epoch for epoch in range(1, config.epochs + 1)
                if trajectory.state_of_epoch[epoch - 1] == index]
        quality = filter_quality(state.suspicious, poisoned, state.entropy)
        rows.append({"attack": config.attack, "split_after_epoch": used[0] - 1,
                     "used_in_epochs": f"{used[0]}-{used[-1]}",
                     **{column: quality[column] for column in COLUMNS if column in quality}})
    return rows


def row_line(row: dict) -> str:
    return (f"  after epoch {row['split_after_epoch']:>3} (used in {row['used_in_epochs']:>7}): "
            f"Ds {row['suspicious_size']:>5}, poisoned in it {row['poisoned_in_suspicious']:>5}, "
            f"precision {row['filter_precision']:.2f}, recall {row['filter_recall']:.2f}, "
            f"AUROC {row['filter_auroc']:.3f}")


def summary_lines(config, rows: list[dict]) -> list[str]:
    """The first split, the one the last mix epoch uses, and the last."""
    last_mix = [row for row in rows if row["split_after_epoch"] < config.mix_epochs][-1]
    return [f"{config.attack}: first / end of mix stage / last split, precision and recall:",
            *(f"  {name:<8} {row_line(row).strip()}"
              for name, row in (("first", rows[0]), ("mix end", last_mix), ("last", rows[-1])))]


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows in the trial-history shape that the filter-quality figure reads."""
    frame = pd.DataFrame(rows)
    frame["trial_id"], frame["stage"] = frame["attack"], "victim"
    frame["epoch"] = frame["split_after_epoch"]
    frame["credible_size"] = pd.NA
    return frame


def write_csv_atomically(frame: pd.DataFrame, path: Path) -> None:
    partial = path.with_suffix(".csv.partial")
    frame.to_csv(partial, index=False)
    partial.replace(path)


def filter_over_schedule(config, cache: ArtifactCache) -> list[dict]:
    """The Victim's trajectory for ``config`` from the cache (built on a miss), split by split."""
    device = resolve_device(config.device)
    poison, _ = prepare_poisoned_set(config, cache, device)

    def progress(stage: str, epoch: int, state) -> None:
        poisoned = poison.train.poisoned
        caught = int((state.suspicious & poisoned).sum())
        when = (f"warm-up split {epoch}" if stage == "victim_warmup"
                else f"split after Beneficiary epoch {epoch}")
        print(f"  {config.attack} {when}: Ds {int(state.suspicious.sum())}, {caught} of "
              f"{int(poisoned.sum())} poisoned", flush=True)

    started = time.perf_counter()
    trajectory, cached = prepare_victim(config, cache, device, on_split=progress)
    print(f"{config.attack}: trajectory {'from the cache' if cached else 'built'} in "
          f"{time.perf_counter() - started:.0f} s ({trajectory.victim_epochs} Victim epochs)",
          flush=True)
    return split_rows(config, trajectory, poison.train.poisoned)


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="victim_filter.py", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--attacks", nargs="+", default=["badnets"])
    parser.add_argument("--epochs", type=int, default=None,
                        help="the Beneficiary's schedule the Victim follows (scaled as --epochs "
                             "of a sweep)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--cache-dir", default=None, help="default: OUT/cache")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=None)
    return parser


def run(args) -> int:
    if args.threads is not None:
        check_number("--threads", args.threads, integer=True, minimum=1)
    overrides = parse_overrides(args.set)
    options = {"data_root": args.data_root, "seed": args.seed, "defense": "vab"}
    configs = [preset_config(args.preset, **merge_overrides(
                   {**options, "attack": attack}, schedule_for(args.epochs, overrides),
                   overrides)).validate()
               for attack in args.attacks]
    for config in configs:  # dataset files, attacks and targets checked before any work starts
        make_attack(config, load_trial_data(config))
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ArtifactCache(args.cache_dir or out / "cache")
    rows: list[dict] = []
    for config in configs:
        print(f"{config.attack}: the Victim over {config.epochs} epochs "
              f"({config.preset} preset, seed {config.seed})", flush=True)
        attack_rows = filter_over_schedule(config, cache)
        print("\n".join(row_line(row) for row in attack_rows))
        print("\n".join(summary_lines(config, attack_rows)), flush=True)
        rows += attack_rows
        write_csv_atomically(pd.DataFrame(rows, columns=COLUMNS), out / "filter_splits.csv")
        title = pd.Series({"attack": config.attack, "defense": f"the Victim over {config.epochs} "
                           "epochs", "dataset": config.dataset, "seed": config.seed})
        figure = filter_quality_figure(history_frame(attack_rows), config.attack, title)
        save_figure(figure, out, f"filter_quality_{config.attack}")
    print(f"written: {out / 'filter_splits.csv'} and the figures beside it")
    return 0


def main(argv=None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
