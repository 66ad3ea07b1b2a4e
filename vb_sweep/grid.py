"""The ablation grid: from command-line options to validated trial configurations, the output
folder's manifest, and the sweep's Table 4 (the analysis tables over its own ``trials`` rows).

Nothing here touches Ray or MLflow, so a grid can be built, checked and rendered anywhere.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from vb_sweep.config import (TrialConfig, merge_overrides, parse_overrides, preset_config,
                             schedule_for)
from vb_sweep.errors import ConfigError, check_choice, check_fraction, check_number
from vb_sweep.presets import PRESETS, RUN_PRESETS
from vb_sweep.results import at_reported_epoch
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


# -- the Table 4-style grid ---------------------------------------------------------------------
@dataclass
class Grid:
    """A sweep's Table 4, built and rendered by the analysis tables (``vb_sweep.analysis``)
    from its own trials' rows: ``frame`` has one row per section, variant and attack (BA, ASR
    and DER over the seeds); ``missing`` one line per cell without a finished trial, and why."""

    frame: pd.DataFrame
    missing: list[str]
    epoch: str = "last"            # the reported epoch (results.REPORTED_EPOCHS)

    def markdown(self) -> str:
        from vb_sweep.analysis.tables import render_grid

        text = render_grid(self.frame, "md", epoch=self.epoch)
        if self.missing:
            text += "\nMissing cells:\n" + "".join(f"- {line}\n" for line in self.missing)
        return text

    def cells(self) -> list[dict]:
        """One dict per section, attack and variant: its section, and the means of BA, ASR and
        (against the section's no-defense run) DER over its seeds; NaN where none finished."""
        from vb_sweep.analysis.tables import SECTION_KEYS

        return [{**{key: row[key] for key in SECTION_KEYS}, "attack": row["attack"],
                 "defense": row["defense"], "ba": row["ba_mean"], "asr": row["asr_mean"],
                 "der": row["der_mean"]} for _, row in self.frame.iterrows()]

    def csv_frame(self) -> pd.DataFrame:
        return self.frame.assign(reported_epoch=self.epoch)


def build_table_grid(configs: list[TrialConfig], trial_ids: list[str],
                     trials: pd.DataFrame, epoch: str = "last") -> Grid:
    """The grid of ``configs`` (whose trials are ``trial_ids``) from the ``trials`` rows, BA and
    ASR at the reported ``epoch`` (``results.REPORTED_EPOCHS``)."""
    from vb_sweep.analysis.tables import ablation_grid

    rows = trials[trials["trial_id"].isin(trial_ids)]
    frame = ablation_grid(at_reported_epoch(rows, epoch))
    frame = frame[frame["defense"].isin({config.defense for config in configs})]  # its variants
    latest = rows.drop_duplicates("trial_id", keep="last").set_index("trial_id")
    cells = pd.DataFrame([{"attack": config.attack, "defense": config.defense,
                           "seed": config.seed, "trial_id": trial_id}
                          for config, trial_id in zip(configs, trial_ids)])
    cells = cells.join(latest[["status", "error"]], on="trial_id")
    return Grid(frame, missing_cells(cells), epoch)


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


def write_grid_files(out: Path, grid: Grid) -> tuple[Path, Path]:
    markdown, csv = Path(out) / GRID_MARKDOWN, Path(out) / GRID_CSV
    markdown.write_text(grid.markdown())
    grid.csv_frame().round(4).to_csv(csv, index=False)  # float32 noise is not a figure
    return markdown, csv
