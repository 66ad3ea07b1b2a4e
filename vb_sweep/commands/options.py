"""Options shared by the sweep commands (``vb-sweep ablation``, ``vb-sweep search`` and the
scripts in experiments/ that call them), and their one-line-error convention: bad input prints
``PROG: error: ...`` on stderr and exits with status 2 before any trial runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vb_sweep.errors import ConfigError
from vb_sweep.sweep import SessionOptions


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's errors as one line (``PROG: error: ...``, exit 2) instead of the usage block;
    the description and the examples in the epilog keep their line breaks in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {with_allowed(message)}\n")


# argparse's words for a value its type rejected, and what the type allows.
TYPE_ERRORS = {"invalid int value": "an integer", "invalid float value": "a number"}


def with_allowed(message: str) -> str:
    """argparse's message for a value that is not a number, with what is allowed (argparse
    names the option and the value, not the kind of value it takes)."""
    for words, allowed in TYPE_ERRORS.items():
        if words in message:
            return f"{message} (allowed: {allowed})"
    return message


def run_command(parser: argparse.ArgumentParser, handler, argv: list[str] | None) -> int:
    """Parse ``argv`` and return ``handler(args)``; a ConfigError is one line and status 2."""
    args = parser.parse_args(argv)
    try:
        return handler(args)
    except ConfigError as err:
        return fail(parser.prog, err)


def fail(prog: str, err: ConfigError) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
    return 2


def interrupted(prog: str) -> int:
    """Ctrl-C: the invocation is already marked KILLED and Ray is shut down; one line, not a
    traceback, and the shell's status for SIGINT."""
    print(f"{prog}: interrupted; finished trials are kept, --resume continues the sweep",
          file=sys.stderr, flush=True)
    return 130


def add_sweep_options(parser: argparse.ArgumentParser, epochs_axis: bool = False) -> None:
    """The options every sweep command takes; ``epochs_axis``: --epochs takes several lengths,
    each a grid axis value."""
    parser.add_argument("--preset", default="smoke",
                        help="smoke (generated data, tiny network, minutes on a laptop) | cpu "
                             "(CIFAR-10 subset, small CNN) | paper (full CIFAR-10, ResNet-18, "
                             "200 epochs); default smoke")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder on the workers (cifar10: the python-pickle layout; "
                             "gtsrb: 32x32 arrays); smoke's generated data needs none")
    if epochs_axis:
        parser.add_argument("--epochs", type=int, nargs="+", default=None, metavar="N",
                            help="Beneficiary epochs, one or several (a grid axis); the "
                                 "preset's schedule is scaled to each")
    else:
        parser.add_argument("--epochs", type=int, default=None, metavar="N",
                            help="Beneficiary epochs; the preset's schedule is scaled to them")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override any TrialConfig field, e.g. --set train_per_class=50")
    group = parser.add_argument_group("resources and cluster")
    group.add_argument("--gpus", type=int, default=None,
                       help="GPUs the sweep uses (default: all of the cluster's, if any)")
    group.add_argument("--trials-per-gpu", type=int, default=1,
                       help="trials sharing one GPU (each gets 1/K of it)")
    group.add_argument("--cpus", type=int, default=None,
                       help="CPU cores the sweep uses on a cluster without GPUs")
    group.add_argument("--cpus-per-trial", type=int, default=1,
                       help="CPU cores (and torch threads) per trial (default 1)")
    group.add_argument("--address", default=None,
                       help="HOST:PORT of a running Ray head node (`ray start --head`) to join")
    group.add_argument("--fresh-workers", action="store_true",
                       help="start a new worker process for every trial (default: a worker "
                            "runs trial after trial, keeping its imports and loaded data)")
    group.add_argument("--max-failures", type=int, default=2,
                       help="retries of a trial whose process dies, from its latest checkpoint "
                            "(default 2; an exception in the defense is a failed row, not "
                            "retried)")
    group = parser.add_argument_group("output")
    group.add_argument("--out", default=None, help="output folder (default results/SWEEP)")
    group.add_argument("--sweep", default=None, help="sweep name (MLflow experiment)")
    group.add_argument("--resume", action="store_true",
                       help="continue the sweep in --out: finished trials are kept, unfinished "
                            "ones resume from their last epoch")
    group.add_argument("--retry-failed", action="store_true",
                       help="with --resume, run the trials recorded as failed again")
    group.add_argument("--mlflow-uri", default=None,
                       help="http://HOST:PORT of an `mlflow server` (default: sqlite in --out)")
    group.add_argument("--storage-path", default=None,
                       help="Tune storage, a folder all nodes share (default OUT/tune)")
    group.add_argument("--cache-dir", default=None,
                       help="artifact cache, a folder all workers share (default OUT/cache)")
    group.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                       help="Tune's progress output (2: every epoch of every trial)")


def session_options(args, kind: str, sweep: str, options: dict) -> SessionOptions:
    """The session's options from the parsed arguments (``ConfigError`` on combinations that
    make no sense)."""
    if args.retry_failed and not args.resume:
        raise ConfigError("--retry-failed", True, "only with --resume (it re-runs the failed "
                          "trials of the sweep being resumed)")
    return SessionOptions(
        kind=kind, sweep=sweep, preset=args.preset,
        out=Path(args.out) if args.out else Path("results") / sweep, resume=args.resume,
        address=args.address, mlflow_uri=args.mlflow_uri, storage=args.storage_path,
        cache_dir=args.cache_dir, gpus=args.gpus, trials_per_gpu=args.trials_per_gpu,
        cpus=args.cpus, cpus_per_trial=args.cpus_per_trial, max_failures=args.max_failures,
        reuse_workers=not args.fresh_workers, verbose=args.verbose, options=options)


def data_root(args) -> str | None:
    return str(Path(args.data_root).expanduser().resolve()) if args.data_root else None
