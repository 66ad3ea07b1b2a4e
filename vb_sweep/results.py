"""The Parquet contracts: one row per finished trial in ``trials/``, one row per epoch and stage
in ``history/``, under a sweep's output folder. Each trial writes its own uniquely named file,
atomically (temporary name, then rename), so ``pandas.read_parquet(out / "trials")`` always reads
complete rows and a killed writer loses nothing that had finished.

Once a folder holds ``COMPACT_AT`` one-trial files, the driver merges them into one
``compacted-*.parquet`` file (``compact_results``): a thousand small files take seconds to
read, one file milliseconds. The merged file is written before the small ones are removed, and
a trial's rows in a later file (a one-trial file, or a newer merge) replace its rows in an
earlier merge, so a merge cut short leaves duplicates that ``read_trials`` and ``read_history``
drop, never a lost row.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TRIALS_DIR = "trials"
HISTORY_DIR = "history"

# Column -> pyarrow type. Rates, thresholds and accuracies are fractions in [0, 1].
TRIAL_SCHEMA = pa.schema([
    ("sweep", pa.string()), ("trial_id", pa.string()),
    ("dataset", pa.string()), ("model", pa.string()), ("attack", pa.string()),
    ("attack_preset", pa.string()), ("poison_rate", pa.float64()), ("target", pa.int64()),
    ("defense", pa.string()), ("augment", pa.string()),
    ("t_f", pa.float64()), ("t_m", pa.float64()), ("seed", pa.int64()), ("preset", pa.string()),
    ("ba", pa.float64()), ("asr", pa.float64()), ("ra", pa.float64()),
    # The paper's figure: the best-BA epoch's BA and ASR (ba/asr/ra are the last epoch's).
    ("best_ba", pa.float64()), ("best_ba_asr", pa.float64()), ("best_epoch", pa.int64()),
    ("clean_target_rate", pa.float64()),
    ("filter_precision", pa.float64()), ("filter_recall", pa.float64()),
    ("filter_auroc", pa.float64()),
    ("first_filter_precision", pa.float64()), ("first_filter_recall", pa.float64()),
    ("credible_size", pa.int64()), ("suspicious_size", pa.int64()),
    ("num_train", pa.int64()), ("num_poisoned", pa.int64()), ("epochs", pa.int64()),
    ("poison_s", pa.float64()), ("victim_s", pa.float64()), ("beneficiary_s", pa.float64()),
    ("poison_cached", pa.bool_()), ("victim_cached", pa.bool_()),
    ("mix_stage_cached", pa.bool_()),
    ("train_images_per_s", pa.float64()),
    # A trial's fixed costs: loading the clean data (load_s); starting its worker process
    # (startup_s: interpreter, Ray, the actor, before Tune starts the trial) and importing the
    # trial's code (imports_s), both about 0 in a worker's later trials (worker_trial > 1);
    # the driver's MLflow logging of the finished trial (tracking_s); and Tune's start of the
    # trial on its worker to its row (lifetime_s, retries included).
    ("load_s", pa.float64()), ("startup_s", pa.float64()), ("imports_s", pa.float64()),
    ("worker_trial", pa.int64()), ("tracking_s", pa.float64()), ("lifetime_s", pa.float64()),
    ("wall_s", pa.float64()), ("status", pa.string()), ("error", pa.string()),
    ("mlflow_run_id", pa.string()), ("device", pa.string()),
    ("precision", pa.string()),  # bf16 (autocast) or fp32
    ("code_version", pa.string()),
    ("finished_at", pa.timestamp("s", tz="UTC")),
    # Digests of the poisoned training set and the clean test set (equal digests, same images).
    ("train_fingerprint", pa.string()), ("test_fingerprint", pa.string()),
])

HISTORY_SCHEMA = pa.schema([
    ("sweep", pa.string()), ("trial_id", pa.string()),
    ("epoch", pa.int64()), ("stage", pa.string()),
    ("lr", pa.float64()), ("loss", pa.float64()),
    ("ba", pa.float64()), ("asr", pa.float64()), ("ra", pa.float64()),
    ("clean_target_rate", pa.float64()),
    # With batchnorm_diagnostic: the same figures with BatchNorm's running statistics
    # re-estimated on the clean training images (the weights unchanged).
    ("ba_clean_bn", pa.float64()), ("asr_clean_bn", pa.float64()),
    ("clean_target_rate_clean_bn", pa.float64()),
    ("credible_size", pa.int64()), ("suspicious_size", pa.int64()),
    ("poisoned_in_credible", pa.int64()), ("poisoned_in_suspicious", pa.int64()),
    ("filter_precision", pa.float64()), ("filter_recall", pa.float64()),
    ("filter_auroc", pa.float64()),
    # Normalised-entropy histograms at this split (HISTOGRAM_BINS bins on [0, 1]).
    ("entropy_hist_poisoned", pa.list_(pa.int64())), ("entropy_hist_benign", pa.list_(pa.int64())),
    ("seconds", pa.float64()), ("images_per_s", pa.float64()),
])

HISTOGRAM_BINS = 20
# The columns without which a file is not a table of its folder.
TRIALS_REQUIRED, HISTORY_REQUIRED = ("trial_id", "status"), ("trial_id", "epoch")


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    unknown = {key for row in rows for key in row} - set(schema.names)
    if unknown:
        raise KeyError(f"columns not in the schema: {sorted(unknown)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    for field in schema:
        if pa.types.is_timestamp(field.type):  # rows carry ISO 8601 text (they travel as JSON)
            columns[field.name] = [as_datetime(value) for value in columns[field.name]]
    return pa.table(columns, schema=schema)


def as_datetime(value):
    if isinstance(value, str):
        stamp = datetime.fromisoformat(value)
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    return value


def write_parquet_atomically(rows: list[dict], schema: pa.Schema, path: Path) -> Path:
    return write_table_atomically(_table(rows, schema), path)


def write_table_atomically(table: pa.Table, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_trial(out_dir: Path, row: dict, history: list[dict]) -> Path:
    """Write a finished trial's history first, then its row: a row on disk means a whole trial."""
    name = f"{row['trial_id']}.parquet"
    if history:
        write_parquet_atomically(history, HISTORY_SCHEMA, Path(out_dir) / HISTORY_DIR / name)
    return write_parquet_atomically([row], TRIAL_SCHEMA, Path(out_dir) / TRIALS_DIR / name)


def read_trials(out_dir: Path, strict: bool = False) -> pd.DataFrame:
    """Every trial row under ``out_dir``. A file that cannot be read as a trials table (corrupt,
    or of another schema) is skipped with a one-line warning, the rest are read; ``strict``
    (the analysis scripts' default) refuses it instead, so no table is silently partial."""
    trials = read_table_folder(Path(out_dir) / TRIALS_DIR, TRIAL_SCHEMA, TRIALS_REQUIRED, strict)
    # Rows written before finished_at was a timestamp hold it as text.
    trials["finished_at"] = pd.to_datetime(trials.get("finished_at"), utc=True, format="ISO8601")
    return trials


COMPACTED_PREFIX = "compacted-"
COMPACT_AT = 100  # one-trial files in a folder that make the driver merge them


def table_files(folder: Path) -> list[Path]:
    """The folder's Parquet files, oldest source first: the merges in the order they were
    made, then the one-trial files."""
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    return ([path for path in files if path.name.startswith(COMPACTED_PREFIX)]
            + [path for path in files if not path.name.startswith(COMPACTED_PREFIX)])


def from_latest_source(trial_ids, sources: np.ndarray) -> np.ndarray:
    """Which rows to keep: each trial's rows from the latest file (``sources``: a rank per
    row) that holds it."""
    latest = pd.Series(sources).groupby(np.asarray(trial_ids)).transform("max").to_numpy()
    return sources == latest


def read_table_folder(folder: Path, schema: pa.Schema, required: tuple[str, ...],
                      strict: bool = False) -> pd.DataFrame:
    unreadable = refuse_file if strict else skip_file
    files = table_files(folder)
    frames, sources = [], []
    for rank, path in enumerate(files):
        try:
            table = pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - corrupt or not Parquet: the others still count
            unreadable(path, " ".join(str(err).split())[:120])
            continue
        missing = [name for name in required if name not in table.column_names]
        if missing:
            unreadable(path, f"not a {folder.name} table: no {', '.join(missing)} column")
            continue
        frames.append(table.to_pandas())
        sources.append(np.full(len(frames[-1]), rank))
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in schema.names})
    if len(frames) == 1:
        return frames[0]
    frame = pd.concat(frames, ignore_index=True)
    if not files[0].name.startswith(COMPACTED_PREFIX):
        return frame  # one file per trial: nothing can repeat
    keep = from_latest_source(frame["trial_id"], np.concatenate(sources))
    return frame[keep].reset_index(drop=True)


def compact_results(out_dir: Path, at_least: int = COMPACT_AT) -> int:
    """Merge ``trials/`` and ``history/`` into one file each once either holds ``at_least``
    one-trial files, or a one-trial file repeats a trial already merged (a rewritten row);
    returns how many files were merged. A file that cannot be read as that table, or brought
    to the current schema, stays as it is (the readers report it) with a warning."""
    merged = 0
    for name, schema, required in ((HISTORY_DIR, HISTORY_SCHEMA, HISTORY_REQUIRED),
                                   (TRIALS_DIR, TRIAL_SCHEMA, TRIALS_REQUIRED)):
        folder = Path(out_dir) / name
        files = table_files(folder)
        singles = [path for path in files if not path.name.startswith(COMPACTED_PREFIX)]
        if len(singles) < at_least and not repeats_merged_trial(folder, files, singles):
            continue
        tables, sources, included = [], [], []
        for path in files:
            try:
                table = conform(pq.read_table(path), schema, required)
            except Exception as err:  # noqa: BLE001 - left in place; readers report it
                skip_file(path, f"not merged ({' '.join(str(err).split())[:120]})")
                continue
            sources.append(np.full(len(table), len(tables)))
            tables.append(table)
            included.append(path)
        if len(included) < 2:
            continue
        combined = pa.concat_tables(tables)
        ids = combined["trial_id"].to_numpy(zero_copy_only=False)
        combined = combined.filter(pa.array(from_latest_source(ids, np.concatenate(sources))))
        target = folder / f"{COMPACTED_PREFIX}{next_merge_number(files):06d}.parquet"
        write_table_atomically(combined, target)
        for path in included:
            path.unlink(missing_ok=True)
        merged += len(included)
    return merged


def next_merge_number(files: list[Path]) -> int:
    """Merges are numbered, so their order does not depend on a clock."""
    numbers = [int(path.stem[len(COMPACTED_PREFIX):]) for path in files
               if path.name.startswith(COMPACTED_PREFIX)
               and path.stem[len(COMPACTED_PREFIX):].isdigit()]
    return max(numbers, default=0) + 1


def repeats_merged_trial(folder: Path, files: list[Path], singles: list[Path]) -> bool:
    """Whether a one-trial file (named by its trial id) holds a trial a merge also holds."""
    merges = [path for path in files if path.name.startswith(COMPACTED_PREFIX)]
    if not merges or not singles:
        return False
    try:
        merged_ids = set(pq.read_table(merges[-1], columns=["trial_id"])["trial_id"].to_pylist())
    except Exception:  # noqa: BLE001 - an unreadable merge is the readers' to report
        return False
    return any(path.stem in merged_ids for path in singles)


def conform(table: pa.Table, schema: pa.Schema, required: tuple[str, ...]) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: those it lacks (files written before they
    existed) as nulls. A file without a ``required`` column, or with a column the schema does
    not know (a newer writer's), raises."""
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise ValueError(f"no {', '.join(missing)} column")
    unknown = set(table.column_names) - set(schema.names)
    if unknown:
        raise ValueError(f"columns not in the schema: {sorted(unknown)}")
    return pa.table([table[field.name].cast(field.type) if field.name in table.column_names
                     else pa.nulls(len(table), field.type) for field in schema], schema=schema)


def skip_file(path: Path, reason: str) -> None:
    print(f"warning: skipped {path}: {reason}", file=sys.stderr, flush=True)


def refuse_file(path: Path, reason: str) -> None:
    from vb_sweep.errors import ConfigError

    raise ConfigError("results file", str(path), f"a readable results table ({reason}); move "
                      "it away, or pass --skip-unreadable to read the others")


def der(ba_none, asr_none, ba_def, asr_def):
    """Defense effectiveness rate (docs/method.md section 6); fractions in, a fraction out."""
    asr_drop = np.maximum(0.0, np.asarray(asr_none) - np.asarray(asr_def))
    ba_drop = np.maximum(0.0, np.asarray(ba_none) - np.asarray(ba_def))
    return (asr_drop - ba_drop + 1.0) / 2.0


# Which epoch's BA and ASR a table shows: "last" (what the trial ended with, the honest figure)
# or "best" (the epoch with the highest test BA and its ASR, what the paper's tables report).
REPORTED_EPOCHS = ("last", "best")
EPOCH_LEGEND = {"last": "last epoch",
                "best": "best-BA epoch (selected on the test set, as the paper reports)"}


def at_reported_epoch(trials: pd.DataFrame, epoch: str = "last") -> pd.DataFrame:
    """``trials`` with ``ba`` and ``asr`` taken at the reported epoch; for "best", ``ra`` (not
    recorded at that epoch) is blanked. ConfigError when the rows predate best-epoch columns."""
    from vb_sweep.errors import ConfigError, check_choice

    check_choice("reported epoch", epoch, REPORTED_EPOCHS)
    if epoch == "last":
        return trials
    if "best_ba" not in trials or (trials["best_ba"].isna() & trials["ba"].notna()).any():
        raise ConfigError("reported epoch", epoch, "last (these rows have no best-epoch figure)")
    return trials.assign(ba=trials["best_ba"], asr=trials["best_ba_asr"], ra=float("nan"))


def read_history(out_dir: Path, strict: bool = False) -> pd.DataFrame:
    """Every per-epoch record under ``out_dir`` (unreadable files as in ``read_trials``)."""
    return read_table_folder(Path(out_dir) / HISTORY_DIR, HISTORY_SCHEMA, HISTORY_REQUIRED,
                             strict)
