"""Throughput of every stage of a trial against the bare model's, and what sharing saves.

    python experiments/benchmark.py [--preset smoke] [--dataset synthetic|cifar10]
        [--data-root DIR] [--model small_cnn] [--train-per-class N] [--device auto]
        [--threads N] [--rounds 3] [--grid | --options | --breakdown] [--set FIELD=VALUE ...]

For each stage (entropy pass, Victim epoch, plain epoch, AttentionMix epoch, SST epoch) it
prints images/s and the share of wall time spent inside the model: after each of the stage's
steps the bare model runs the same passes on random tensors (batch sizes, parts, optimiser step),
timed apart, and their sum is the stage's model time. The rest (indexing, augmentation, mixing,
bookkeeping) is overhead; the goal is under 10%. Each stage runs ``--rounds`` times and the
median round is shown, with the range. It does so in float32 and, where the device computes
bf16 natively, in bf16.

``--grid`` also runs the BadNets six-variant grid three times in this process, variant by
variant in turn: with everything shared (poisoned set, Victim, mix stage), with the mix stage
trained by every mixing variant (the Victim still shared), and with every trial independent
(its own poisoned set, Victim and mix stage, as a lone ``vb-sweep run`` in an empty cache);
it prints the wall times and the shared grid's ratio to each of the other two.

``--options`` measures the bare model instead, in each precision, with the default engine and
with each engine option (``TrialConfig``'s ``channels_last``, ``compile``, ``optimizer_kernel``):
training and evaluation images/s, their speedup, and the first passes' seconds (compilation).

``--breakdown`` runs one whole trial of the preset instead (BadNets V&B unless ``--set`` says
otherwise), in an empty cache, and prints where its time went: each section of the code
(``vb_sweep.timing``: loading, poisoning, the Victim's training and entropy passes, and per
Beneficiary stage the forward and backward passes, the optimizer step, the no-grad passes,
augmentation, mixing, evaluation, reports and checkpoints) with its own seconds and share.
Every run prints the engine options it ran with (precision, memory format, compile, optimizer
kernel, evaluation batch).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vb_sweep.artifacts import load_trial_data  # noqa: E402
from vb_sweep.config import merge_overrides, parse_overrides, preset_config  # noqa: E402
from vb_sweep.device import (autocast_dtype, precision_name, resolve_device,  # noqa: E402
                             retain_freed_memory)
from vb_sweep.timing import Breakdown, collect_breakdown  # noqa: E402
from experiments.throughput import (engine_option_lines, engine_option_rates,  # noqa: E402
                                    stage_figures)


def print_stage_figures(figures: dict) -> float:
    """The stage table of ``throughput.stage_figures``; returns the largest overhead."""
    bare = figures["bare"]
    print(f"  bare model: train {bare['train_images_per_s']:.0f} img/s (batch "
          f"{bare['train_batch']}), {bare['victim_train_images_per_s']:.0f} img/s (batch "
          f"{bare['victim_batch']}); no-grad {bare['eval_images_per_s']:.0f} img/s (batch "
          f"{bare['eval_batch']})")
    for stage in figures["stages"]:
        spread = (f" ({stage['overhead_low']:.1%}-{stage['overhead_high']:.1%} over "
                  f"{stage['rounds']} rounds)" if stage["rounds"] > 1 else "")
        print(f"  {stage['stage']:<18} {stage['images_per_s']:>9.0f} img/s "
              f"{stage['seconds']:>8.2f} s  model share {stage['model_share']:>6.1%}  "
              f"overhead {stage['overhead']:>6.1%}{spread}")
    return max(stage["overhead"] for stage in figures["stages"])


GRID_MODES = {
    # name: (share_mix_stage, one cache for the whole grid)
    "shared": (True, True),        # poisoned set, Victim and mix stage built once
    "mix apart": (False, True),    # poisoned set and Victim built once, every mix stage trained
    "independent": (False, False),  # every trial builds all three itself, as a lone run does
}


def grid_costs(config) -> dict[str, float]:
    """Wall times of the BadNets six-variant grid run trial after trial in this process in each
    of ``GRID_MODES``. Cached artifacts live in a temporary folder per mode, and in a folder of
    its own for each independent trial. The modes run interleaved, variant by variant, so a CPU
    whose speed drifts over the hour slows all alike; each variant's times are printed as it
    ends."""
    from vb_sweep.cache import ArtifactCache
    from vb_sweep.config import DEFENSES
    from vb_sweep.trial import run_trial

    totals = dict.fromkeys(GRID_MODES, 0.0)
    print(f"  {'variant':<11}" + "".join(f" {mode:>12}" for mode in GRID_MODES))
    with tempfile.TemporaryDirectory() as root:
        for defense in DEFENSES:
            seconds = {}
            for mode, (share_mix_stage, one_cache) in GRID_MODES.items():
                folder = Path(root) / mode.replace(" ", "_")
                cache = ArtifactCache(folder if one_cache else folder / defense)
                trial_config = config.replace(attack="badnets", defense=defense,
                                              share_mix_stage=share_mix_stage)
                started = time.perf_counter()
                run_trial(trial_config, cache=cache)
                seconds[mode] = time.perf_counter() - started
                totals[mode] += seconds[mode]
            print(f"  {defense:<11}" + "".join(f" {seconds[mode]:11.0f}s" for mode in GRID_MODES),
                  flush=True)
    return totals


def trial_breakdown(config, device: str) -> tuple[Breakdown, float]:
    """One whole trial of ``config`` in an empty cache (nothing shared), every section of its
    code timed; returns the breakdown and the trial's wall time."""
    from vb_sweep.cache import ArtifactCache
    from vb_sweep.trial import run_trial

    with tempfile.TemporaryDirectory() as folder, collect_breakdown(device) as breakdown:
        started = time.perf_counter()
        result = run_trial(config.replace(device=device), cache=ArtifactCache(folder),
                           on_epoch=lambda record: print(
                               f"  epoch {record['epoch']} ({record['stage']}) "
                               f"{record.get('seconds') or 0:.1f} s", flush=True))
        wall = time.perf_counter() - started
    print(f"  BA {result.row['ba']:.4f} ASR {result.row['asr']:.4f}")
    return breakdown, wall


def part_name(path: tuple[str, ...]) -> str:
    """A section's part across the Beneficiary's stages ("forward"), the Victim's apart
    ("victim: forward"), a section's own time as "NAME (own)"."""
    if len(path) == 1:
        return f"{path[0]} (own)"
    return f"victim: {path[-1]}" if path[0] == "victim" else path[-1]


def print_breakdown(breakdown: Breakdown, wall: float) -> None:
    """Every section with its own seconds and share of the trial, nested as in the code; then
    the same time summed by the innermost part's name across stages."""
    print(f"\n  {'section (own time)':<52} {'seconds':>9} {'share':>7} {'entries':>8}")
    for path, seconds, calls in breakdown.rows():
        name = "  " * (len(path) - 1) + path[-1]
        print(f"  {name:<52} {seconds:>9.1f} {seconds / wall:>7.1%} {calls:>8}")
    timed_total = sum(breakdown.seconds.values())
    print(f"  {'outside every section (Python, cache, figures)':<52} {wall - timed_total:>9.1f}"
          f" {(wall - timed_total) / wall:>7.1%}")
    print(f"  {'trial wall time':<52} {wall:>9.1f}")
    by_part: dict[str, float] = defaultdict(float)
    for path, seconds, _ in breakdown.rows():
        by_part[part_name(path)] += seconds
    print("\n  by part, the Beneficiary's stages together:")
    for part, seconds in sorted(by_part.items(), key=lambda item: -item[1]):
        print(f"  {part:<52} {seconds:>9.1f} {seconds / wall:>7.1%}")


def engine_options(config, device: str) -> str:
    """The options that decide how fast the networks run, as the benchmark ran them."""
    return (f"precision {precision_name(config.amp, device)} (amp={config.amp}), channels_last="
            f"{config.channels_last}, compile={config.compile}, optimizer_kernel="
            f"{config.optimizer_kernel}, eval_batch_size={config.eval_batch_size}")


def precisions(device: str) -> list[bool]:
    """amp settings to measure: fp32 always, bf16 where the device computes it natively."""
    return [False, True] if autocast_dtype(True, device) is not None else [False]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--train-per-class", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="any TrialConfig field, e.g. --set batchnorm_passes=joint")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each stage; the table shows the median; default 3")
    extra = parser.add_mutually_exclusive_group()
    extra.add_argument("--grid", action="store_true",
                       help="also time the BadNets six-variant grid with and without sharing")
    extra.add_argument("--options", action="store_true",
                       help="instead of the stage table: the bare model with each engine "
                            "option (layout, torch.compile, optimizer kernel), each precision")
    extra.add_argument("--breakdown", action="store_true",
                       help="instead of the stage table: one whole trial of the preset in an "
                            "empty cache, its time part by part (in the config's precision)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} (allowed: a whole number >= 1)")
    retain_freed_memory()  # as a trial does: the figures are the trial's
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"dataset": args.dataset, "data_root": args.data_root, "model": args.model,
               "train_per_class": args.train_per_class}
    config = preset_config(args.preset,
                           **merge_overrides(options, parse_overrides(args.set))).validate()
    device = resolve_device(args.device)
    data = load_trial_data(config)
    print(f"{config.dataset}: {len(data.train)} training images, model {config.model}, "
          f"device {device}, {torch.get_num_threads()} threads, batch {config.batch_size} "
          f"(Victim {config.victim_batch_size}), BatchNorm passes {config.batchnorm_passes}")
    print(f"engine options: {engine_options(config, device)}")
    if args.options:
        for amp in precisions(device):
            print(f"\n{precision_name(amp, device)}, batch {config.batch_size}, evaluation batch "
                  f"{config.eval_batch_size}:")
            print("\n".join(engine_option_lines(
                engine_option_rates(config.replace(amp=amp), device))))
        return 0
    if args.breakdown:
        print(f"\none {config.attack} {config.defense} trial, {config.epochs} epochs, "
              "nothing cached:")
        print_breakdown(*trial_breakdown(config, device))
        return 0
    for amp in precisions(device):
        print(f"\n{precision_name(amp, device)}:")
        worst = print_stage_figures(stage_figures(config.replace(amp=amp), data, device,
                                                  rounds=args.rounds))
        print(f"  largest overhead {worst:.1%} (goal: under 10%)")
    if args.grid:  # at cpu scale the three grids take over an hour
        print("\nBadNets six-variant grid, one process, in each way of sharing:")
        totals = grid_costs(config)
        print("  total      " + "".join(f" {totals[mode]:11.0f}s" for mode in GRID_MODES))
        for baseline in ("mix apart", "independent"):
            print(f"shared / {baseline}: {totals['shared'] / totals[baseline]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
