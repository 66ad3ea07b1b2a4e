"""``vb-sweep run``: one trial of the defense in this process, no Ray, for debugging.

    vb-sweep run --preset smoke --attack blend --defense vab --set t_m=0.3

Progress per epoch on stdout, the trial's row in OUT/trials and its history in OUT/history (the
same Parquet contracts as a sweep), its figures in OUT/figures.
"""

from __future__ import annotations

import argparse
import sys

from vb_sweep.commands.options import OneLineErrorParser, run_command

PROG = "vb-sweep run"


def epoch_line(record: dict, epochs: int) -> str:
    """One line per history record: what a user watches during a trial."""
    if record["stage"] == "victim" and record["epoch"] == 0:
        head = "victim split after warm-up"
    else:
        head = (f"epoch {record['epoch']:>3}/{epochs} [{record['stage']:<8}] "
                f"lr {record['lr']:.0e} loss {record['loss']:.3f} "
                f"BA {record['ba']:.3f} ASR {record['asr']:.3f} RA {record['ra']:.3f}")
    if "credible_size" in record:
        head += (f" | Dc {record['credible_size']} Ds {record['suspicious_size']}"
                 f" P {record['filter_precision']:.2f} R {record['filter_recall']:.2f}")
    if record.get("images_per_s"):
        head += f" | {record['images_per_s']:.0f} img/s {record['seconds']:.1f}s"
    return head


def victim_progress(stage: str, epoch: int, state) -> None:
    suspicious = int(state.suspicious.sum())
    print(f"  {stage} split {epoch}: Ds {suspicious} Dc {state.suspicious.numel() - suspicious}",
          flush=True)


def add_trial_options(parser: argparse.ArgumentParser) -> None:
    from vb_sweep.attacks import ATTACKS
    from vb_sweep.config import AUGMENTS, DEFENSES, PRESETS
    from vb_sweep.data.registry import DATASETS

    parser.add_argument("--preset", default="smoke",
                        help=f"{' | '.join(PRESETS)} (default smoke: generated data, minutes)")
    parser.add_argument("--attack", default="badnets",
                        help=f"{' | '.join(ATTACKS.names())} (default badnets)")
    parser.add_argument("--attack-preset", default=None,
                        help="vab_paper | backdoorbench: whose trigger settings "
                             "(default vab_paper)")
    parser.add_argument("--defense", default="vab", help=f"{' | '.join(DEFENSES)} (default vab)")
    parser.add_argument("--augment", default=None,
                        help=f"{' | '.join(AUGMENTS)}: the mixing of the F+AT variants "
                             "(default attentionmix)")
    parser.add_argument("--dataset", default=None,
                        help=f"{' | '.join(DATASETS.names())} (default: the preset's)")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder (cifar10, gtsrb); the generated data needs none")
    parser.add_argument("--seed", type=int, default=None,
                        help="fixes poisoning, splits and training (default 0)")
    parser.add_argument("--target", type=int, default=None, help="target class (default 0)")
    parser.add_argument("--poison-rate", type=float, default=None,
                        help="a fraction in [0, 1] (default: the attack's rate, docs/method.md)")
    parser.add_argument("--t-f", type=float, default=None,
                        help="filtering threshold in [0, 1]: samples whose min-max normalised "
                             "entropy is below it are held out as suspicious (default 0.2)")
    parser.add_argument("--t-m", type=float, default=None,
                        help="mixing threshold in [0, 1] of AttentionMix's mask "
                             "(default: the preset's)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="Beneficiary epochs; the schedule is scaled to keep its proportions")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override any TrialConfig field, the options' too (later wins), "
                             "e.g. --set lr=0.05 lambda_u='[0.1, 0.5]'")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is fastest when other jobs share the cores)")


def config_from_args(args):
    from vb_sweep.config import merge_overrides, parse_overrides, preset_config, schedule_for

    options = dict(attack=args.attack, attack_preset=args.attack_preset, defense=args.defense,
                   augment=args.augment, dataset=args.dataset, data_root=args.data_root,
                   seed=args.seed, target=args.target, poison_rate=args.poison_rate,
                   t_f=args.t_f, t_m=args.t_m, device=args.device)
    overrides = parse_overrides(args.set)
    return preset_config(args.preset, **merge_overrides(
        options, schedule_for(args.epochs, overrides), overrides)).validate()


def run(args) -> int:
    # Imported here: torch and the rest load only once the options are parsed.
    from vb_sweep.artifacts import load_trial_data, make_attack
    from vb_sweep.cache import ArtifactCache
    from vb_sweep.config import check_device_present
    from vb_sweep.errors import check_folder, check_number
    from vb_sweep.results import write_trial
    from vb_sweep.trial import run_trial

    config = config_from_args(args)
    if args.threads is not None:
        check_number("--threads", args.threads, integer=True, minimum=1)
    check_device_present(config.device)
    out = check_folder("--out", args.out)
    if args.cache_dir:
        check_folder("--cache-dir", args.cache_dir)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    make_attack(config, load_trial_data(config))  # dataset files and target checked up front
    print(f"trial: {config.attack} / {config.defense} on {config.dataset} "
          f"({config.preset} preset, {config.epochs} epochs, seed {config.seed})", flush=True)
    cache = ArtifactCache(args.cache_dir or out / "cache")
    result = run_trial(config, cache=cache, sweep=args.sweep,
                       on_epoch=lambda r: print(epoch_line(r, config.epochs), flush=True),
                       on_victim_split=victim_progress)
    path = write_trial(out, result.row, result.history)
    for name, content in result.figures.items():
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "figures" / f"{result.row['trial_id']}-{name}").write_bytes(content)
    row = result.row
    print(f"final: BA {row['ba']:.4f} ASR {row['asr']:.4f} RA {row['ra']:.4f}"
          + (f" | filter precision {row['filter_precision']:.3f} recall "
             f"{row['filter_recall']:.3f}" if row["filter_recall"] is not None else "")
          + f" | {row['wall_s']:.1f}s")
    print(f"row written to {path}")
    return 0


def build_parser(prog: str = PROG) -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=prog, description="One trial of the defense, no Ray: "
                                "progress per epoch, its row in OUT/trials, figures in "
                                "OUT/figures.",
                                epilog="example: vb-sweep run --preset smoke --attack blend "
                                       "--defense vab --set t_m=0.3")
    add_trial_options(parser)
    parser.add_argument("--out", default="results/run",
                        help="output folder (default results/run)")
    parser.add_argument("--sweep", default="adhoc", help="sweep name recorded in the row")
    parser.add_argument("--cache-dir", default=None, help="artifact cache (default OUT/cache)")
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
