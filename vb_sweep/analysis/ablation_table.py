"""The paper's Table 4 (and the augmentation comparison) from a results folder.

    python analysis/ablation_table.py RESULTS_DIR [RESULTS_DIR ...] [--format md|latex|html|csv]
        [--out FILE] [--dataset D] [--poison-rate R] [--preset P] [--t-f X] [--t-m X]
        [--epochs N] [--epoch last|best] [--findings [--noise X|seeds] | --by-epochs]

Rows: none, F, F+AT, F+AT+SST, F+AT+SST+S, vab; per attack BA, ASR and DER in percent, mean ±
std over seeds; one table per dataset, rate, preset, target, threshold pair and schedule length.
--by-epochs instead sets each variant's cells against the schedule length (a sweep run with
``--epochs 20 50 100 200``, or several folders). The logic is in ``analysis.tables``; this is its
command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vb_sweep.analysis.findings import (DEFAULT_NOISE, SEEDS, check_findings,
                               render_findings)
from vb_sweep.analysis.tables import (FORMATS, load_trials, render_schedule_curve, report,
                             schedule_curve)
from vb_sweep.commands.options import OneLineErrorParser
from vb_sweep.errors import ConfigError, check_file, check_fraction
from vb_sweep.results import REPORTED_EPOCHS, at_reported_epoch


def fraction(text: str) -> float:
    try:
        return check_fraction("value", text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]") from None


def noise_level(text: str) -> float | str:
    return SEEDS if text == SEEDS else fraction(text)


def positive_integer(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog="ablation_table.py", description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", metavar="RESULTS_DIR", type=Path, nargs="+",
                        help="a sweep's output folder (holds trials/*.parquet); several are "
                             "read as one table")
    parser.add_argument("--format", choices=FORMATS, default="md",
                        help=f"{' | '.join(FORMATS)} (default md)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--dataset", help="only this dataset's rows (default: each a table)")
    parser.add_argument("--poison-rate", type=fraction, metavar="R",
                        help="only this poisoning rate's rows")
    parser.add_argument("--preset", help="only this preset's rows")
    parser.add_argument("--t-f", type=fraction, metavar="X", help="only rows with this t_f")
    parser.add_argument("--t-m", type=fraction, metavar="X", help="only rows with this t_m")
    parser.add_argument("--epochs", type=positive_integer, metavar="N",
                        help="only rows of this schedule length")
    parser.add_argument("--findings", action="store_true",
                        help="instead of the table, whether the grid supports each of the "
                             "paper's findings (docs/method.md section 4), with the deciding cells")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="skip (with a warning) a row file that cannot be read, instead of "
                             "refusing to print a table without it")
    parser.add_argument("--by-epochs", action="store_true",
                        help="instead of the table, each variant's BA / ASR against the schedule "
                             "length, with its BA minus the no-defense BA at that length (md or "
                             "csv)")
    parser.add_argument("--noise", type=noise_level, default=DEFAULT_NOISE, metavar="X",
                        help="with --findings: differences of one-seed cells within X count as "
                             f"noise (default {DEFAULT_NOISE}); 'seeds': twice the pooled "
                             "standard deviation of the cells run with several seeds")
    parser.add_argument("--epoch", choices=REPORTED_EPOCHS, default="last",
                        help="BA/ASR of the last epoch (default) or of the best-BA epoch, as the "
                             "paper's tables report")
    args = parser.parse_args(argv)
    if args.findings and args.by_epochs:
        parser.error("argument --by-epochs: not allowed with --findings (one view at a time)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.out is not None:
            check_file("--out", args.out)
        trials = load_trials(*args.results_dirs, skip_unreadable=args.skip_unreadable)
        filters = dict(dataset=args.dataset, poison_rate=args.poison_rate, preset=args.preset,
                       t_f=args.t_f, t_m=args.t_m, epochs=args.epochs)
        if args.by_epochs:
            curve = schedule_curve(at_reported_epoch(trials, args.epoch), **filters)
            text = render_schedule_curve(curve, args.format, args.epoch)
        elif args.findings:
            text = render_findings(check_findings(at_reported_epoch(trials, args.epoch),
                                                  args.noise, **filters))
        else:
            text = report(trials, args.format, epoch=args.epoch, **filters)
    except (FileNotFoundError, ConfigError) as err:
        print(f"ablation_table.py: error: {err}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
