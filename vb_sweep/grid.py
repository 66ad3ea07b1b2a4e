"""The ablation grid: from command-line options to validated trial configurations, the output
folder's manifest, and the Table 4-style table built from the ``trials`` rows.

Nothing here touches Ray or MLflow, so a grid can be built, checked and rendered anywhere.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from vb_sweep.config import (TrialConfig, merge_overrides, parse_overrides, preset_config,
                             schedule_for)
from vb_sweep.errors import ConfigError, check_choice, check_fraction, check_number
from vb_sweep.presets import PRESETS, RUN_PRESETS
from vb_sweep.results import EPOCH_LEGEND, at_reported_epoch
from vb_sweep.variants import start_rank, variant_names

MANIFEST = "sweep.json"
GRID_MARKDOWN = "grid.md"
GRID_CSV = "grid.csv"


# -- options -> configurations --------------------------------------------------------------------
@dataclass
class GridOptions:
    """The axes of a grid. ``None`` on an axis means the preset's value (a single cell)."""

    preset: str = "smoke"
    attacks: list[str] | None = None
    defenses: list[str] | None = None
    datasets: list[str] | None = None
    poison_rates: list[float] | None = None
    seeds: list[int] | None = None
    t_f: list[float] | None = None
    t_m: list[float] | None = None
    data_root: str | None = None
    epochs: list[int] | None = None    # the Beneficiary's lengths; each scales the schedule
    overrides: list[str] = field(default_factory=list)  # "FIELD=VALUE", any TrialConfig field

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.__dict__))


def default_defenses(preset: str) -> list[str]:
    names = RUN_PRESETS[preset].defenses
    return list(names) if names is not None else variant_names()


def longest_first(configs: list[TrialConfig]) -> list[TrialConfig]:
    """The configurations in the order to start them: the longest schedule first, then by
    variant (stable within a variant)."""
    return sorted(configs, key=lambda config: (-config.epochs, start_rank(config.defense)))


def default_attacks(preset: str) -> list[str]:
    from vb_sweep.attacks import ATTACKS

    names = RUN_PRESETS[preset].attacks
    return list(names) if names is not None else ATTACKS.names()


def check_axes(options: GridOptions) -> None:
    """Checks the axes' values one by one, so a bad value is named before configs are built."""
    from vb_sweep.attacks import ATTACKS

    for name in options.attacks or []:
        check_choice("attack", name, ATTACKS.names())
    for name in options.defenses or []:
        check_choice("defense variant", name, variant_names())
    for value in options.poison_rates or []:
        check_fraction("poison rate", value)
    for value in options.t_f or []:
        check_fraction("t_f", value)
    for value in options.t_m or []:
        check_fraction("t_m", value)
    for value in options.epochs or []:
        check_number("--epochs", value, integer=True, minimum=1)
    for axis in ("attacks", "defenses", "datasets", "poison_rates", "seeds", "t_f", "t_m",
                 "epochs"):
        values = getattr(options, axis)
        if values is not None and len(set(values)) != len(values):
            raise ConfigError(f"--{axis.replace('_', '-')}", values, "distinct values")


def build_grid(options: GridOptions) -> list[TrialConfig]:
    """Every cell of the grid as a validated ``TrialConfig`` (raises ``ConfigError``)."""
    check_choice("preset", options.preset, PRESETS)
    check_axes(options)
    overrides = parse_overrides(options.overrides)
    axes = itertools.product(
        options.datasets or [None], options.poison_rates or [None], options.t_f or [None],
        options.t_m or [None], options.epochs or [None], options.seeds or [0],
        options.attacks or default_attacks(options.preset),
        options.defenses or default_defenses(options.preset))
    configs = []
    for dataset, rate, t_f, t_m, epochs, seed, attack, defense in axes:
        cell = dict(dataset=dataset, poison_rate=rate, t_f=t_f, t_m=t_m, seed=seed,
                    attack=attack, defense=defense, data_root=options.data_root)
        configs.append(preset_config(options.preset, **merge_overrides(
            cell, schedule_for(epochs, overrides), overrides)).validate())
    return configs


# -- the manifest: which sweep an output folder holds ---------------------------------------------
def manifest_for(kind: str, sweep: str, preset: str, options: dict) -> dict:
    return {"kind": kind, "sweep": sweep, "preset": preset, "options": options,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def read_manifest(out: Path) -> dict | None:
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError("--out", str(out), f"a folder whose {MANIFEST} is valid JSON") from None


def check_output_folder(out: Path, manifest: dict, resume: bool) -> None:
    """An output folder holds one sweep: another sweep's folder is refused, and so is this
    sweep's folder without --resume (its finished trials would be mixed with new ones)."""
    recorded = read_manifest(out)
    if recorded is None:
        if resume and (Path(out) / "trials").exists():
            raise ConfigError("--out", str(out), f"a sweep folder with a {MANIFEST} to resume")
        return
    identity = ("kind", "sweep", "preset")
    theirs = {key: recorded.get(key) for key in identity}
    ours = {key: manifest[key] for key in identity}
    if theirs != ours:
        raise ConfigError("--out", str(out),
                          f"a folder for {ours} (it holds {theirs}; choose another --out)")
    if not resume:
        raise ConfigError("--out", str(out), "a new folder, or --resume to continue the sweep "
                          f"{recorded['sweep']!r} it holds")


def write_manifest(out: Path, manifest: dict) -> None:
    path = Path(out) / MANIFEST
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=2) + "\n")


# -- the Table 4-style grid -----------------------------------------------------------------------
@dataclass
class GridTable:
    title: str
    axes: dict                     # dataset, poison_rate, t_f, t_m of this table
    attacks: list[str]
    frame: pd.DataFrame            # index: variant; columns: (attack, "BA" | "ASR"); fractions
    seeds: int
    epoch: str = "last"            # the reported epoch (results.REPORTED_EPOCHS)


@dataclass
class Grid:
    tables: list[GridTable]
    missing: list[str]             # one line per cell without a finished trial, with the reason

    def markdown(self) -> str:
        parts = [render_table(table) for table in self.tables]
        if self.missing:
            parts.append("Missing cells:\n" + "\n".join(f"- {line}" for line in self.missing))
        return "\n\n".join(parts) + "\n"

    def cells(self) -> list[dict]:
        """One dict per (table, attack, variant) with its BA, ASR and, against the table's
        no-defense cell, its DER (fractions; NaN where a cell is missing)."""
        from vb_sweep.results import der

        cells = []
        for table in self.tables:
            for attack in table.attacks:
                for defense, values in table.frame.iterrows():
                    cell = {**table.axes, "attack": attack, "defense": defense,
                            "ba": values[(attack, "BA")], "asr": values[(attack, "ASR")]}
                    if defense != "none" and "none" in table.frame.index:
                        none = table.frame.loc["none"]
                        cell["der"] = float(der(none[(attack, "BA")], none[(attack, "ASR")],
                                                cell["ba"], cell["asr"]))
                    cells.append(cell)
        return cells

    def csv_frame(self) -> pd.DataFrame:
        frames = []
        for table in self.tables:
            wide = table.frame.copy()
            wide.columns = [f"{attack}_{metric.lower()}" for attack, metric in wide.columns]
            wide = wide.rename_axis("defense").reset_index()
            for position, (axis, value) in enumerate(table.axes.items()):
                wide.insert(position, axis, value)
            wide.insert(len(table.axes) + 1, "seeds", table.seeds)
            wide.insert(len(table.axes) + 2, "epoch", table.epoch)
            frames.append(wide)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


AXES = ("dataset", "poison_rate", "t_f", "t_m", "epochs")


def build_table_grid(configs: list[TrialConfig], trial_ids: list[str],
                     trials: pd.DataFrame, epoch: str = "last") -> Grid:
    """Rows: variants in Table 4 order; columns: attack x (BA, ASR) at the reported ``epoch``
    (``results.REPORTED_EPOCHS``), means over seeds. One table per (dataset, poisoning rate,
    t_f, t_m) combination of the grid."""
    from vb_sweep.attacks.registry import resolved_poison_rate

    cells = pd.DataFrame([{**config.to_dict(),
                           "poison_rate": resolved_poison_rate(config.attack, config.poison_rate),
                           "trial_id": trial_id}
                          for config, trial_id in zip(configs, trial_ids)])
    rows = at_reported_epoch(trials, epoch).drop_duplicates("trial_id", keep="last")
    rows = rows.set_index("trial_id")
    cells = cells.join(rows[["status", "ba", "asr", "error"]], on="trial_id")
    cells[["ba", "asr"]] = cells[["ba", "asr"]].astype(float)
    tables = []
    for key, group in cells.groupby(list(AXES), dropna=False, sort=False):
        attacks = list(dict.fromkeys(group["attack"]))
        variants = [v for v in variant_names() if v in set(group["defense"])]
        done = group[group["status"] == "ok"]
        means = done.groupby(["defense", "attack"])[["ba", "asr"]].mean()
        frame = pd.DataFrame(
            {(attack, metric.upper()): [_lookup(means, variant, attack, metric)
                                        for variant in variants]
             for attack in attacks for metric in ("ba", "asr")}, index=variants)
        frame.columns = pd.MultiIndex.from_tuples(frame.columns)
        axes = dict(zip(AXES, key))
        tables.append(GridTable(_table_title(axes), axes, attacks, frame,
                                group["seed"].nunique(), epoch))
    return Grid(tables, missing_cells(cells))


def _lookup(means: pd.DataFrame, variant: str, attack: str, metric: str) -> float:
    try:
        return float(means.loc[(variant, attack), metric])
    except KeyError:
        return math.nan


def _table_title(axes: dict) -> str:
    """The same wording as analysis/ablation_table.py's section headings."""
    return (f"dataset {axes['dataset']}, poison rate {100 * axes['poison_rate']:g}%, "
            f"t_f {axes['t_f']:g}, t_m {axes['t_m']:g}, {axes['epochs']} epochs")


def missing_cells(cells: pd.DataFrame) -> list[str]:
    lines = []
    for cell in cells[cells["status"] != "ok"].itertuples():
        what = f"{cell.attack} / {cell.defense} / seed {cell.seed} ({cell.trial_id})"
        if cell.status == "failed":
            error = str(cell.error or "").strip().splitlines()
            lines.append(f"{what}: failed: {error[-1] if error else 'no error text'}")
        else:
            lines.append(f"{what}: not finished (run again with --resume)")
    return lines


def render_table(table: GridTable) -> str:
    seeds = f", mean of {table.seeds} seeds" if table.seeds > 1 else ""
    header = ["defense"] + [f"{attack} {metric}" for attack in table.attacks
                            for metric in ("BA", "ASR")]
    lines = [f"### {table.title} (BA / ASR in % at the {EPOCH_LEGEND[table.epoch]}{seeds})", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for variant, values in table.frame.iterrows():
        cells = ["—" if pd.isna(v) else f"{100 * v:.1f}" for v in values]
        lines.append("| " + " | ".join([variant] + cells) + " |")
    return "\n".join(lines)


def write_grid_files(out: Path, grid: Grid) -> tuple[Path, Path]:
    markdown, csv = Path(out) / GRID_MARKDOWN, Path(out) / GRID_CSV
    markdown.write_text(grid.markdown())
    grid.csv_frame().round(4).to_csv(csv, index=False)  # float32 noise is not a figure
    return markdown, csv
