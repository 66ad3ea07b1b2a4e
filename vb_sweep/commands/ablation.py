"""The paper's Table 4 as a sweep: attacks x defense variants x seeds, every cell a Ray Tune trial.

Several datasets, poisoning rates, t_f, t_m or schedule lengths (--epochs) multiply the grid
too.

examples:
    vb-sweep ablation --preset smoke
    vb-sweep ablation --preset smoke --defenses none F F+AT F+AT+SST F+AT+SST+S vab
    vb-sweep ablation --preset cpu --data-root data/cifar10 --attacks badnets blend --resume
    vb-sweep ablation --preset cpu --data-root data/cifar10 --attacks badnets \
        --defenses none F+AT vab --epochs 20 50 100 200
    vb-sweep ablation --preset paper --gpus 8 --trials-per-gpu 2
    vb-sweep ablation --preset cpu --address HEAD:6379 --out /nfs/abl --resume
(``python experiments/ablation.py`` takes the same options.)

Before any trial starts, every option and every cell's configuration is checked, and each
distinct poisoned set, Victim trajectory and mix stage is built once into the shared cache; the
trials then start longest first. At the end the grid is printed and written (OUT/grid.md,
OUT/grid.csv; both also on the MLflow parent run), with the cells that are missing and why.

Results: pandas.read_parquet("OUT/trials") (one row per trial) and "OUT/history" (per epoch);
MLflow: `mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db` (the default store), or the
server given with --mlflow-uri. Exit status: 0 when every cell finished, 1 when some are
missing (failed or not run), 2 for bad options (nothing is run).

On a multi-machine cluster (--address), --storage-path and --cache-dir must be folders every
node sees (a shared file system); the defaults under --out suit one machine.
"""

from __future__ import annotations

import sys

from vb_sweep.attacks import ATTACKS
from vb_sweep.commands.options import (OneLineErrorParser, add_sweep_options, data_root, fail,
                                       interrupted, session_options)
from vb_sweep.config import DEFENSES, PRESETS
from vb_sweep.data.registry import DATASETS
from vb_sweep.errors import ConfigError
from vb_sweep.grid import (GridOptions, build_grid, build_table_grid, default_attacks,
                           default_defenses, longest_first, write_grid_files)
from vb_sweep.results import REPORTED_EPOCHS, read_trials
from vb_sweep.sweep import SweepSession, grid_param_space

PROG = "vb-sweep ablation"


def build_parser(prog: str = PROG) -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    add_sweep_options(parser, epochs_axis=True)
    grid = parser.add_argument_group("the grid (space-separated values)")
    grid.add_argument("--attacks", nargs="+", default=None,
                      help=f"{' '.join(ATTACKS.names())}; default: the preset's "
                           f"({preset_defaults(default_attacks)})")
    grid.add_argument("--defenses", nargs="+", default=None,
                      help=f"{' '.join(DEFENSES)}; default: the preset's "
                           f"({preset_defaults(default_defenses)})")
    grid.add_argument("--datasets", nargs="+", default=None,
                      help=f"{' '.join(DATASETS.names())}; default: the preset's")
    grid.add_argument("--poison-rates", nargs="+", type=float, default=None,
                      help="fractions in [0, 1]; default: each attack's rate (docs/method.md)")
    grid.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0")
    grid.add_argument("--t-f", nargs="+", type=float, default=None,
                      help="filtering thresholds in [0, 1] (default 0.2)")
    grid.add_argument("--t-m", nargs="+", type=float, default=None,
                      help="mixing thresholds in [0, 1] (default: the preset's)")
    parser.add_argument("--report-epoch", choices=REPORTED_EPOCHS, default="last",
                        help="the grid's BA/ASR: last (the trial's last epoch, default) or best "
                             "(the best-BA epoch and its ASR, what the paper's tables report)")
    return parser


def preset_defaults(defaults) -> str:
    """``smoke: badnets; cpu: ...``: what each preset's grid runs on an axis left unset."""
    return "; ".join(f"{preset}: {' '.join(defaults(preset))}" for preset in PRESETS)


def grid_options(args) -> GridOptions:
    return GridOptions(preset=args.preset, attacks=args.attacks, defenses=args.defenses,
                       datasets=args.datasets, poison_rates=args.poison_rates, seeds=args.seeds,
                       t_f=args.t_f, t_m=args.t_m, data_root=data_root(args),
                       epochs=args.epochs, overrides=args.set)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    sweep = args.sweep or f"ablation-{args.preset}"
    try:
        options = grid_options(args)
        configs = build_grid(options)
        session = SweepSession(session_options(args, "ablation", sweep, options.to_dict()))
        session.check(configs)
        todo = session.pending(configs, retry_failed=args.retry_failed)
        print(f"sweep {sweep!r}: {len(configs)} cells, {len(configs) - len(todo)} already "
              f"done, {len(todo)} to run; {session.resources.describe()}", flush=True)
        if session.shared_folder_note():
            print(session.shared_folder_note(), flush=True)
        return run_and_report(session, configs, todo, args.report_epoch)
    except ConfigError as err:  # a worker's, from the preparation, ends the invocation FAILED
        return fail(prog, err)
    except KeyboardInterrupt:
        return interrupted(prog)


def run_and_report(session: SweepSession, configs, todo, epoch: str = "last") -> int:
    from vb_sweep.trial import trial_id_for

    with session.invocation(len(todo), preparing=lambda: session.prepare(todo)) as recorder:
        if todo:
            specs = [session.spec(config) for config in longest_first(todo)]
            session.run(grid_param_space(specs), recorder)
    grid = build_table_grid(configs, [trial_id_for(c) for c in configs], read_trials(session.out),
                            epoch)
    markdown, csv = write_grid_files(session.out, grid)
    session.log_grid([markdown, csv], grid.cells())
    print("\n" + grid.markdown())
    for line in session.locations() + [f"grid:     {markdown} and {csv}"]:
        print(line)
    return 0 if not grid.missing else 1


if __name__ == "__main__":
    sys.exit(main())
