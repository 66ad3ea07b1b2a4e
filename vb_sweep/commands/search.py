"""Optuna over the filtering and mixing thresholds (t_f, t_m) of one cell: BA up, ASR down.

The cell is one (attack, dataset, poisoning rate, variant). Trials run in Ray Tune through its
OptunaSearch with a concurrency limit; the study lives in persistent storage (an SQLite file in
the output folder by default), so a search resumes and optuna-dashboard can open it.

examples:
    vb-sweep search --attack badnets --n-trials 20
    vb-sweep search --attack blend --t-f-range 0.05 0.5 --resume
    optuna-dashboard sqlite:///results/thresholds-badnets-vab-smoke/optuna.db
(``python experiments/threshold_search.py`` takes the same options.)

At the end: the Pareto front (printed and in OUT/pareto.parquet); each trial's row is in
OUT/trials, the same table as the ablation grid's.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

from vb_sweep.attacks import ATTACKS
from vb_sweep.commands.options import (OneLineErrorParser, add_sweep_options, data_root, fail,
                                       interrupted, session_options)
from vb_sweep.config import (DEFENSES, merge_overrides, parse_overrides, preset_config,
                             schedule_for)
from vb_sweep.errors import (MAX_SEED, ConfigError, check_folder, check_fraction, check_number,
                             first_line)
from vb_sweep.sweep import SweepSession
from vb_sweep.tracking import redact_url

PROG = "vb-sweep search"
OBJECTIVES = (("ba", "max"), ("asr", "min"))
SEARCHED = ("t_f", "t_m")
PARETO_FILE = "pareto.parquet"
STUDY_FILE = "optuna.db"  # the study's default storage, an SQLite file in the output folder
REQUEUED_FROM = "requeued_from"  # user attribute: the interrupted trial this one repeats


def build_parser(prog: str = PROG) -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    add_sweep_options(parser)
    cell = parser.add_argument_group("the cell whose thresholds are searched")
    cell.add_argument("--attack", required=True, help=" | ".join(ATTACKS.names()))
    cell.add_argument("--dataset", default=None, help="default: the preset's")
    cell.add_argument("--poison-rate", type=float, default=None,
                      help="a fraction in [0, 1]; default: the attack's rate (docs/method.md)")
    cell.add_argument("--defense", default="vab",
                      help=" | ".join(DEFENSES[1:]) + " (default vab)")
    cell.add_argument("--seed", type=int, default=0, help="seed of the poisoning and training")
    search = parser.add_argument_group("the search")
    search.add_argument("--n-trials", type=int, default=20,
                        help="trials in the study in all (a resumed study counts its earlier ones)")
    search.add_argument("--t-f-range", nargs=2, type=float, default=(0.05, 0.5),
                        metavar=("LOW", "HIGH"), help="t_f's range in [0, 1] (default 0.05 0.5)")
    search.add_argument("--t-m-range", nargs=2, type=float, default=(0.05, 0.5),
                        metavar=("LOW", "HIGH"), help="t_m's range in [0, 1] (default 0.05 0.5)")
    search.add_argument("--concurrency", type=int, default=None,
                        help="trials at a time (default: what the resources allow)")
    search.add_argument("--storage", default=None,
                        help="Optuna storage URL (default sqlite:///OUT/optuna.db)")
    search.add_argument("--study-name", default=None, help="default: the sweep name")
    search.add_argument("--sampler-seed", type=int, default=0,
                        help="seed of Optuna's TPE sampler (default 0)")
    return parser


# -- options --------------------------------------------------------------------------------------
def base_config(args):
    options = dict(attack=args.attack, dataset=args.dataset, poison_rate=args.poison_rate,
                   defense=args.defense, seed=args.seed, data_root=data_root(args))
    overrides = parse_overrides(args.set)
    return preset_config(args.preset, **merge_overrides(
        options, schedule_for(args.epochs, overrides), overrides)).validate()


def check_search_options(args) -> dict[str, tuple[float, float]]:
    if args.defense == "none":
        raise ConfigError("--defense", args.defense, f"{' | '.join(DEFENSES[1:])} (without a "
                          "defense the thresholds change nothing)")
    ranges = {"t_f": tuple(args.t_f_range), "t_m": tuple(args.t_m_range)}
    for name, (low, high) in ranges.items():
        check_fraction(f"{name} range low", low)
        check_fraction(f"{name} range high", high)
        if not low < high:
            raise ConfigError(f"--{name.replace('_', '-')}-range", [low, high], "LOW < HIGH")
    check_number("--sampler-seed", args.sampler_seed, integer=True, minimum=0, maximum=MAX_SEED)
    if args.n_trials < 1:
        raise ConfigError("--n-trials", args.n_trials, "an integer >= 1")
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError("--concurrency", args.concurrency, "an integer >= 1")
    return ranges


def storage_url(args, out: Path) -> str:
    return args.storage or f"sqlite:///{(out / STUDY_FILE).resolve()}"


STORAGE_EXAMPLES = "an Optuna storage URL such as sqlite:///PATH or postgresql://USER@HOST/DB"


def check_storage_url(url: str) -> str:
    """A --storage the study can live in, checked before anything starts: a SQLite file in an
    existing folder this user can write (the file is not created), or a database that its
    installed driver reaches (connected to, nothing written)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        parsed.get_dialect()
        if parsed.get_backend_name() == "sqlite":
            check_sqlite_file(url, parsed.database)
        else:
            engine = create_engine(url)
            try:
                engine.connect().close()
            finally:
                engine.dispose()
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - unparsable, no driver, or unreachable
        raise ConfigError("--storage", redact_url(url), f"{STORAGE_EXAMPLES} "
                          f"({type(err).__name__}: {redact_url(first_line(err))})") from None
    return url


def check_sqlite_file(url: str, database: str | None) -> None:
    if not database or database == ":memory:":
        raise ConfigError("--storage", url, "sqlite:///PATH of a file (a study must outlive "
                          "the search)")
    folder = Path(database).expanduser().parent
    if not folder.is_dir():
        raise ConfigError("--storage", url, f"sqlite:///PATH in an existing folder ({folder} "
                          "is not one)")
    check_folder("--storage", folder)


# -- the study ------------------------------------------------------------------------------------
def open_study(url: str, name: str):
    """The study, created on first use; the driver is its one writer."""
    import optuna

    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - any storage failure is a bad --storage
        raise ConfigError("--storage", redact_url(url),
                          f"{STORAGE_EXAMPLES} ({redact_url(first_line(err))})") from None
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                directions=["maximize" if mode == "max" else "minimize"
                                            for _, mode in OBJECTIVES])
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the UI shows
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric for metric, _ in OBJECTIVES])
    return study, storage


def requeue_interrupted(study) -> int:
    """Trials left RUNNING by a killed driver: closed as failed and queued again with the same
    thresholds, so they resume from their checkpoints instead of starting over."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={REQUEUED_FROM: trial.number})
    return len(stale)


def finished_trials(study) -> int:
    """Trials that count towards --n-trials: ended ones, except those run again."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    requeued = {trial.user_attrs[REQUEUED_FROM] for trial in trials
                if REQUEUED_FROM in trial.user_attrs}
    ended = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    return sum(trial.state in ended and trial.number not in requeued for trial in trials)


def searcher(storage, name: str, ranges: dict, seed: int, concurrency: int,
             run_id_of=lambda trial_id: None):
    """Ray Tune's OptunaSearch on the persistent study, under a concurrency limit."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    class FailureAwareOptunaSearch(OptunaSearch):
        """A trial that ends with a failed row is FAILED in the study, not left RUNNING."""

        def on_trial_complete(self, trial_id, result=None, error=False):
            row_trial_id = (result or {}).get("row_trial_id")
            if row_trial_id and trial_id in self._ot_trials:
                # Ties the study's trial to its row in OUT/trials and its MLflow run (Tune
                # calls the searcher before the recorder completes that run).
                attributes = {"trial_id": row_trial_id, "status": result.get("status"),
                              "mlflow_run_id": run_id_of(row_trial_id)}
                for key, value in attributes.items():
                    if value is not None:
                        self._ot_trials[trial_id].set_user_attr(key, value)
            if result is not None and result.get("status") == "failed":
                result, error = None, True
            super().on_trial_complete(trial_id, result=result, error=error)

    space = {name_: optuna.distributions.FloatDistribution(low, high)
             for name_, (low, high) in ranges.items()}
    search = FailureAwareOptunaSearch(
        space=space, metric=[metric for metric, _ in OBJECTIVES],
        mode=[mode for _, mode in OBJECTIVES], storage=storage, study_name=name,
        sampler=optuna.samplers.TPESampler(seed=seed))
    return ConcurrencyLimiter(search, max_concurrent=concurrency)


def pareto_front(study, base):
    """The study's Pareto front (``best_trials``) as a table, one row per trial."""
    import pandas as pd

    from vb_sweep.trial import trial_id_for

    rows = [{"number": trial.number, **trial.params,
             "ba": trial.values[0], "asr": trial.values[1],
             "trial_id": trial_id_for(base.replace(**trial.params))}
            for trial in sorted(study.best_trials, key=lambda t: -t.values[0])]
    return pd.DataFrame(rows, columns=["number", *SEARCHED, "ba", "asr", "trial_id"])


def write_pareto(out: Path, frame) -> Path:
    path = out / PARETO_FILE
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".pareto.", suffix=".tmp")
    os.close(fd)
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        base = base_config(args)
        ranges = check_search_options(args)
        sweep = args.sweep or f"thresholds-{base.attack}-{base.defense}-{base.preset}"
        options = {**vars(args), "storage": redact_url(args.storage),
                   "mlflow_uri": redact_url(args.mlflow_uri)}
        session = SweepSession(session_options(args, "threshold_search", sweep, options))
        url = storage_url(args, session.out)
        if args.storage:  # the default, a file in --out, is checked with --out
            check_storage_url(url)
        study_name = args.study_name or sweep
        session.check([base])
        if session.shared_folder_note():
            print(session.shared_folder_note(), flush=True)
        session.out.mkdir(parents=True, exist_ok=True)
        study, storage = open_study(url, study_name)
        return search(session, study, storage, base, ranges, args)
    except ConfigError as err:  # a worker's, from the preparation, ends the invocation FAILED
        return fail(prog, err)
    except KeyboardInterrupt:
        return interrupted(prog)


def search(session: SweepSession, study, storage, base, ranges, args) -> int:
    study_name, url = study.study_name, storage_url(args, session.out)
    requeued = requeue_interrupted(study) if args.resume else 0
    remaining = args.n_trials - finished_trials(study)
    print(f"study {study_name!r} at {redact_url(url)}: {finished_trials(study)} trials done, "
          f"{max(remaining, 0)} to run" + (f" ({requeued} interrupted, requeued)"
                                           if requeued else ""), flush=True)
    with session.invocation(max(remaining, 0),
                            preparing=lambda: session.prepare([base], victims=False)) as recorder:
        if remaining > 0:
            concurrency = args.concurrency or session.resources.max_concurrent
            # A resumed search must not replay the sampler's random stream from the start.
            seed = args.sampler_seed + len(study.trials)
            session.run({"trial": session.spec(base)}, recorder,
                        search_alg=searcher(storage, study_name, ranges, seed, concurrency,
                                            run_id_of=recorder.open_runs.get),
                        num_samples=remaining, searched=SEARCHED)
    return report(session, study_name, url, base)


def report(session: SweepSession, study_name: str, url: str, base) -> int:
    study, _ = open_study(url, study_name)
    front = pareto_front(study, base)
    path = write_pareto(session.out, front)
    print(f"\nPareto front of {study_name!r} ({len(front)} of {len(study.trials)} trials; "
          "BA up, ASR down):")
    print(front.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for line in session.locations() + [f"pareto:   {path}",
                                       f"study:    optuna-dashboard {redact_url(url)}"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
