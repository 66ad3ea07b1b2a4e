"""Figures from a results folder, each saved as PNG and SVG.

    python analysis/plots.py RESULTS_DIR [RESULTS_DIR ...] --out FIGDIR [--trial ID] [--split N]

    render_all(results_dir, fig_dir)                  # every figure whose data exists
    render_all([dir_20, dir_200], fig_dir)            # several folders read as one table
    fig = entropy_histogram_figure(history, trial_id) # or any *_figure; None when no data
    save_figure(fig, fig_dir, "name")                 # -> [name.png, name.svg]

Figures: variant_bars (BA/ASR per variant and attack), entropy_histogram_<attack> (the paper's
Figure 1: normalised entropy of poisoned vs benign training samples at one split),
filter_quality_<attack> (precision/recall and set sizes over the splits), thresholds_<...>
(t_f x t_m heatmaps of BA and ASR), schedule_curve_<attack> (each variant's BA against no
defense's, and its ASR, over the schedule lengths of a sweep run with several --epochs, or of
several folders given together),
pareto_front (the Optuna search's front over all trials).
Figures are built with matplotlib's object API (no pyplot state), rendered by Agg.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from vb_sweep.analysis.tables import (
    CURVE_KEYS, SECTION_KEYS, ablation_grid, blank_unused_settings, describe_section, is_ok,
    ordered_attacks, schedule_curve, split_sections,
)
from vb_sweep.commands.options import OneLineErrorParser
from vb_sweep.commands.search import PARETO_FILE, STUDY_FILE
from vb_sweep.config import DEFENSES
from vb_sweep.errors import ConfigError, check_folder, first_line
from vb_sweep.figures import draw_training_curves
from vb_sweep.results import at_reported_epoch, read_history, read_trials

DPI = 150
# One colour per variant in Table 4 order (none grey, vab red), then more for added variants.
PALETTE = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#8c564b",
           "#e377c2", "#bcbd22", "#17becf")


def variant_color(variant: str) -> str:
    names = list(DEFENSES)
    return PALETTE[(names.index(variant) if variant in names else len(names)) % len(PALETTE)]
Note = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Saving

def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def save_figure(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.svg under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{slug(name)}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs):
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


# ---------------------------------------------------------------------------------------------
# Trial history

def _has_values(value) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return len(value) > 0


def histogram_splits(history: pd.DataFrame, trial_id: str) -> pd.DataFrame:
    """The history rows of one trial that carry entropy histograms (one per filter split)."""
    rows = history[history["trial_id"].astype(object) == trial_id]
    return rows[rows["entropy_hist_poisoned"].map(_has_values)
                & rows["entropy_hist_benign"].map(_has_values)]


def filter_splits(history: pd.DataFrame, trial_id: str) -> pd.DataFrame:
    """The history rows of one trial that carry the filter's quality."""
    rows = history[history["trial_id"].astype(object) == trial_id]
    return rows[rows["filter_precision"].notna() | rows["credible_size"].notna()]


def split_label(row) -> str:
    return f"{row['stage']} {row['epoch']}"


def trial_title(trial: pd.Series | None, trial_id: str) -> str:
    if trial is None:
        return f"trial {trial_id}"
    return f"{trial['attack']}, {trial['defense']}, {trial['dataset']}, seed {trial['seed']}"


def entropy_histogram_figure(history: pd.DataFrame, trial_id: str, split: int = -1,
                             trial: pd.Series | None = None) -> Figure | None:
    """Share of poisoned and of benign training samples per normalised-entropy bin at one
    split (default: the last), with the filter threshold t_f."""
    splits = histogram_splits(history, trial_id)
    if splits.empty:
        return None
    check_split(history, trial_id, split)
    row = splits.iloc[split]
    poisoned = np.asarray(row["entropy_hist_poisoned"], dtype=float)
    benign = np.asarray(row["entropy_hist_benign"], dtype=float)
    edges = np.linspace(0.0, 1.0, len(benign) + 1)
    fig, axes = new_figure(7, 4.2)
    ax = axes[0, 0]
    for counts, label, color in ((benign, "benign", "#1f77b4"), (poisoned, "poisoned", "#d62728")):
        share = counts / counts.sum() if counts.sum() else counts
        ax.bar(edges[:-1], share, width=np.diff(edges), align="edge", alpha=0.55, color=color,
               edgecolor=color, label=f"{label} (n={int(counts.sum())})")
    if trial is not None and pd.notna(trial.get("t_f")):
        ax.axvline(trial["t_f"], color="black", linestyle="--", label=f"t_f = {trial['t_f']:g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("normalised prediction entropy of the Victim")
    ax.set_ylabel("share of the group's samples")
    ax.set_title(f"Entropy of poisoned vs benign samples, split {split_label(row)}\n"
                 f"{trial_title(trial, trial_id)}")
    ax.legend()
    return fig


def check_split(history: pd.DataFrame, trial_id: str, split: int) -> None:
    """IndexError (one line) when the trial has histograms but no split ``split``."""
    count = len(histogram_splits(history, trial_id))
    if count and not -count <= split < count:
        raise IndexError(f"invalid --split: {split} (allowed: 0..{count - 1}, or -1 for the "
                         f"last; trial {trial_id} has {count} splits with histograms)")


def _split_axis(ax, labels: list[str]) -> None:
    step = max(1, int(np.ceil(len(labels) / 10)))
    ticks = list(range(0, len(labels), step))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=30, ha="right")
    ax.set_xlabel("filter split (stage, epoch)")


def filter_quality_figure(history: pd.DataFrame, trial_id: str,
                          trial: pd.Series | None = None) -> Figure | None:
    """Precision/recall of the suspicious set as a poison detector, and the sizes of the
    credible and suspicious sets, over the trial's splits."""
    splits = filter_splits(history, trial_id)
    if splits.empty:
        return None
    x = np.arange(len(splits))
    labels = [split_label(r) for _, r in splits.iterrows()]
    fig, axes = new_figure(8, 6, rows=2, sharex=True)
    quality, sizes = axes[0, 0], axes[1, 0]
    # Distinct markers and dashes: precision, recall and AUROC are often all 1.00, and plain
    # lines would then draw as one.
    styles = {"filter_precision": ("precision", "o", "-", 8),
              "filter_recall": ("recall", "s", "--", 5), "filter_auroc": ("AUROC", "^", ":", 3)}
    for column, (label, marker, dashes, size) in styles.items():
        values = splits[column].astype(float)
        if values.notna().any():
            last = values.dropna().iloc[-1]
            quality.plot(x, values, marker=marker, linestyle=dashes, markersize=size,
                         markerfacecolor="none" if size > 3 else None,
                         label=f"{label} (last {last:.2f})")
    quality.set_ylim(-0.02, 1.02)
    quality.set_ylabel("fraction")
    quality.set_title(f"Filter quality over the splits: {trial_title(trial, trial_id)}")
    quality.legend(loc="lower right")
    # Ds and the poisoned images in it coincide when the filter is perfect: kept apart the same way.
    styles = {"credible_size": ("credible set Dc", "o", "-", 6),
              "suspicious_size": ("suspicious set Ds", "o", "-", 8),
              "poisoned_in_suspicious": ("poisoned in Ds", "s", "--", 4)}
    for column, (label, marker, dashes, size) in styles.items():
        if splits[column].notna().any():
            sizes.plot(x, splits[column].astype(float), marker=marker, linestyle=dashes,
                       markersize=size, markerfacecolor="none" if size == 8 else None,
                       label=label)
    sizes.set_ylabel("samples")
    sizes.legend()
    _split_axis(sizes, labels)
    return fig


def training_curves_figure(history: pd.DataFrame, trial_id: str,
                           trial: pd.Series | None = None) -> Figure | None:
    """BA, ASR and RA of the Beneficiary after every epoch, each stage shaded, the best-BA epoch
    marked (``vb_sweep.figures.draw_training_curves``; the same figure is in each trial's MLflow
    run)."""
    records = history[history["trial_id"].astype(object) == trial_id].to_dict("records")
    fig, axes = new_figure(8, 4.5)
    title = f"BA, ASR and RA per epoch: {trial_title(trial, trial_id)}"
    return fig if draw_training_curves(axes[0, 0], records, title) else None


# ---------------------------------------------------------------------------------------------
# Threshold heatmaps and the Pareto front

def threshold_groups(trials: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """('dataset, attack, defense', ok rows) per dataset, rate, preset, attack and defense
    that was run with at least two (t_f, t_m) pairs."""
    rows = trials[is_ok(trials) & (trials["defense"].astype(object) != "none")]
    rows = rows.dropna(subset=["t_f", "t_m"])
    keys = ["dataset", "poison_rate", "preset", "attack", "defense"]
    groups = []
    for values, group in rows.groupby(keys, sort=True):
        if len(group[["t_f", "t_m"]].drop_duplicates()) >= 2:
            named = dict(zip(keys, values))
            groups.append((", ".join(str(named[k]) for k in ("dataset", "attack", "defense")),
                           group))
    return groups


def _text_color(cmap, norm, value: float) -> str:
    red, green, blue, _ = cmap(norm(value))
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def _heatmap(fig: Figure, ax, table: pd.DataFrame, title: str, cmap_name: str) -> None:
    values = 100 * table.to_numpy(dtype=float)
    norm = Normalize(0, 100)
    image = ax.imshow(values, cmap=cmap_name, norm=norm, origin="lower", aspect="auto")
    cmap = image.get_cmap()
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color=_text_color(cmap, norm, value))
    ax.set_xticks(range(table.shape[1]), [f"{v:g}" for v in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"{v:g}" for v in table.index])
    ax.set_xlabel("t_m (AttentionMix mask threshold)")
    ax.set_ylabel("t_f (filter threshold)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="%")


def threshold_heatmap_figure(rows: pd.DataFrame, title: str = "") -> Figure | None:
    """BA and ASR (mean over seeds) over t_f x t_m for one attack and defense."""
    if len(rows[["t_f", "t_m"]].drop_duplicates()) < 2:
        return None
    fig, axes = new_figure(11, 4.5, cols=2)
    for ax, metric, label, cmap in ((axes[0, 0], "ba", "BA (%), higher is better", "viridis"),
                                    (axes[0, 1], "asr", "ASR (%), lower is better", "viridis_r")):
        table = rows.pivot_table(index="t_f", columns="t_m", values=metric, aggfunc="mean")
        _heatmap(fig, ax, table, label, cmap)
    fig.suptitle(title or "BA and ASR over the thresholds")
    return fig


def pareto_front_figure(pareto: pd.DataFrame, trials: pd.DataFrame) -> Figure | None:
    """The search's Pareto front (ASR down, BA up) over every finished trial."""
    if pareto.empty:
        return None
    fig, axes = new_figure(7, 5)
    ax = axes[0, 0]
    everything = trials[is_ok(trials)].dropna(subset=["ba", "asr"])
    ax.scatter(100 * everything["asr"], 100 * everything["ba"], s=14, color="#bbbbbb",
               label=f"all trials (n={len(everything)})")
    front = pareto.sort_values("asr")
    ax.plot(100 * front["asr"], 100 * front["ba"], marker="o", color="#d62728",
            drawstyle="steps-post", label=f"Pareto front (n={len(front)})")
    if len(front) <= 12:
        for _, point in front.iterrows():
            ax.annotate(f"t_f={point['t_f']:.2f}, t_m={point['t_m']:.2f}",
                        (100 * point["asr"], 100 * point["ba"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("ASR (%), lower is better")
    ax.set_ylabel("BA (%), higher is better")
    ax.set_title("Threshold search: Pareto front of BA vs ASR")
    ax.margins(0.1)
    ax.legend(loc="lower right")
    return fig


# ---------------------------------------------------------------------------------------------
# Variants per attack

def _mark_empty_cells(ax, x, by_attack: pd.DataFrame, attacks: list[str]) -> None:
    """Write 'failed' or 'no run' where a bar is absent, so it never reads as 0 %."""
    for position, attack in zip(x, attacks):
        failed = by_attack["failed"].get(attack, 0)
        if by_attack["n"].get(attack, 0) == 0:
            ax.text(position, 2, "failed" if failed else "no run", rotation=90, ha="center",
                    va="bottom", fontsize=7, color="#555555")


def variant_bars_figure(section_grid: pd.DataFrame, title: str = "") -> Figure | None:
    """Grouped bars of BA and ASR (mean ± std over seeds) per attack and defense variant, from
    one section of ``ablation_grid``."""
    cells = section_grid[section_grid["n"] > 0]
    if cells.empty:
        return None
    attacks = ordered_attacks(section_grid["attack"])
    variants = [d for d in dict.fromkeys(section_grid["defense"]) if d in set(cells["defense"])]
    width = 0.8 / len(variants)
    fig, axes = new_figure(max(7, 1.6 * len(attacks) + 3), 6.5, rows=2, sharex=True)
    for ax, metric, label in ((axes[0, 0], "ba", "BA (%)"), (axes[1, 0], "asr", "ASR (%)")):
        for i, variant in enumerate(variants):
            by_attack = section_grid[section_grid["defense"] == variant].set_index("attack")
            x = np.arange(len(attacks)) + (i - (len(variants) - 1) / 2) * width
            means = [100 * by_attack[f"{metric}_mean"].get(a, np.nan) for a in attacks]
            stds = [100 * by_attack[f"{metric}_std"].get(a, np.nan) for a in attacks]
            bars = ax.bar(x, means, width, yerr=np.nan_to_num(stds), capsize=2, label=variant,
                          color=variant_color(variant))
            # The value over each bar: a 0% ASR has no bar to see.
            ax.bar_label(bars, labels=["" if np.isnan(m) else f"{m:.0f}" for m in means],
                         fontsize=6, padding=1)
            _mark_empty_cells(ax, x, by_attack, attacks)
        ax.set_ylabel(label)
        ax.set_ylim(0, 112)
        ax.grid(axis="y", alpha=0.3)
    axes[1, 0].set_xticks(range(len(attacks)), attacks)
    axes[1, 0].set_xlabel("attack")
    axes[0, 0].legend(ncols=min(6, len(variants)), loc="lower center", bbox_to_anchor=(0.5, 1.0),
                      fontsize=8, title=title or None)
    return fig


# ---------------------------------------------------------------------------------------------
# Schedule length

def schedule_curve_figure(last: pd.DataFrame, best: pd.DataFrame | None = None,
                          title: str = "") -> Figure | None:
    """Two panels over the number of epochs, one line per variant: BA minus the no-defense BA
    at the same length, and ASR; the last epoch's figures solid, the best-BA epoch's dashed.
    ``last`` and ``best``: one section and attack of ``schedule_curve``."""
    if last.empty:
        return None
    fig, axes = new_figure(7, 6.5, rows=2, sharex=True)
    gap_ax, asr_ax = axes[0, 0], axes[1, 0]
    for curve, style, which in ((last, "-", "last epoch"), (best, "--", "best-BA epoch")):
        if curve is None or curve.empty:
            continue
        for variant in [d for d in DEFENSES if d in set(curve["defense"])]:
            rows = curve[curve["defense"] == variant].sort_values("epochs")
            color = variant_color(variant)
            if variant != "none":
                gap_ax.plot(rows["epochs"], 100 * rows["ba_vs_none"], style, marker="o",
                            color=color, label=f"{variant} ({which})")
            asr_ax.plot(rows["epochs"], 100 * rows["asr_mean"], style, marker="o", color=color,
                        label=f"{variant} ({which})")
    gap_ax.axhline(0, color="#7f7f7f", linewidth=0.8)
    gap_ax.set_ylabel("BA - BA of no defense (points)")
    asr_ax.set_ylabel("ASR (%)")
    asr_ax.set_ylim(-2, 102)
    lengths = sorted(last["epochs"].unique())
    asr_ax.set_xscale("log")
    asr_ax.set_xticks(lengths, [str(int(n)) for n in lengths])
    asr_ax.minorticks_off()
    asr_ax.set_xlabel("Beneficiary epochs (the schedule scaled to each)")
    for ax in (gap_ax, asr_ax):
        ax.grid(alpha=0.3)
    asr_ax.legend(fontsize=7, ncols=2)
    gap_ax.set_title(title, fontsize=9)
    return fig


def render_schedule_curves(trials: pd.DataFrame, out_dir: Path, note: Note) -> list[Path]:
    last = schedule_curve(trials) if not trials.empty else pd.DataFrame()
    if last.empty:
        note("skipped schedule_curve: no section was run at two or more schedule lengths")
        return []
    has_best = "best_ba" in trials and trials.loc[is_ok(trials), "best_ba"].notna().all()
    best = schedule_curve(at_reported_epoch(trials, "best")) if has_best else None
    groups = list(last.groupby(CURVE_KEYS + ["attack"], dropna=False, sort=False))
    suffixes = section_suffixes([dict(zip(CURVE_KEYS, key)) for key, _ in groups])
    written = []
    for (key, rows), suffix in zip(groups, suffixes):
        section = dict(zip(CURVE_KEYS + ["attack"], key))
        best_rows = None if best is None else best.merge(rows[CURVE_KEYS + ["attack"]]
                                                         .drop_duplicates())
        fig = schedule_curve_figure(rows, best_rows, f"{section['attack']}: "
                                    + describe_section({**section, "epochs": None}))
        name = "_".join(filter(None, ["schedule_curve", section["attack"], suffix]))
        written += save_figure(fig, out_dir, name)
    return written


# ---------------------------------------------------------------------------------------------
# Every figure of a results folder

def representative_trials(trials: pd.DataFrame, history: pd.DataFrame) -> dict[str, pd.Series]:
    """Per attack, the ok trial with history to show: the most complete variant, lowest seed."""
    with_history = set(history["trial_id"].dropna())
    rows = trials[is_ok(trials) & trials["trial_id"].isin(with_history)]
    rank = {d: i for i, d in enumerate(reversed(DEFENSES))}
    rows = rows.assign(_rank=rows["defense"].map(rank).fillna(len(rank)))
    rows = rows.sort_values(["_rank", "seed", "trial_id"], kind="stable")
    return {attack: group.iloc[0] for attack, group in rows.groupby("attack", sort=False)}


def section_suffixes(sections: list[dict]) -> list[str]:
    """Names that tell sections apart: the keys whose values differ between them."""
    varying = [k for k in SECTION_KEYS
               if len({str(s.get(k)) for s in sections}) > 1]
    return ["_".join(f"{k}-{s[k]:g}" if isinstance(s[k], float) else f"{k}-{s[k]}"
                     for k in varying) for s in sections]


def render_variant_bars(trials: pd.DataFrame, out_dir: Path, note: Note) -> list[Path]:
    grid = ablation_grid(trials) if not trials.empty else pd.DataFrame()
    sections = split_sections(grid) if not grid.empty else []
    compared = [(s, rows) for s, rows in sections
                if rows.loc[rows["n"] > 0, "defense"].nunique() >= 2]
    if not compared:
        note("skipped variant_bars: no section with finished trials of two or more variants")
        return []
    written = []
    suffixes = section_suffixes([s for s, _ in compared])
    for (section, rows), suffix in zip(compared, suffixes):
        fig = variant_bars_figure(rows, describe_section(section))
        written += save_figure(fig, out_dir, f"variant_bars_{suffix}" if suffix else "variant_bars")
    return written


def trials_to_show(trials: pd.DataFrame, history: pd.DataFrame,
                   trial_id: str | None = None) -> list[tuple[str, str, pd.Series | None]]:
    """(figure-name suffix, trial id, trial row or None) for the per-trial figures."""
    if trial_id is None:
        return [(attack, row["trial_id"], row)
                for attack, row in representative_trials(trials, history).items()]
    match = trials[trials["trial_id"].astype(object) == trial_id]
    return [(trial_id, trial_id, match.iloc[0] if len(match) else None)]


def render_trial_figures(trials: pd.DataFrame, history: pd.DataFrame, out_dir: Path,
                         note: Note, trial_id: str | None = None, split: int = -1) -> list[Path]:
    shown = trials_to_show(trials, history, trial_id)
    if not shown:
        note("skipped entropy_histogram, filter_quality: no history rows")
    written = []
    for suffix, shown_id, trial in shown:
        figures = {"entropy_histogram": entropy_histogram_figure(history, shown_id, split, trial),
                   "filter_quality": filter_quality_figure(history, shown_id, trial),
                   "training_curves": training_curves_figure(history, shown_id, trial)}
        for kind, fig in figures.items():
            if fig is None:
                note(f"skipped {kind}_{suffix}: trial {shown_id} has no such history rows")
            else:
                written += save_figure(fig, out_dir, f"{kind}_{suffix}")
    return written


def render_threshold_heatmaps(trials: pd.DataFrame, out_dir: Path, note: Note) -> list[Path]:
    written = []
    for name, rows in threshold_groups(trials):
        fig = threshold_heatmap_figure(rows, f"BA and ASR over the thresholds: {name}")
        written += save_figure(fig, out_dir, "thresholds_" + name.replace(", ", "_"))
    if not written:
        note("skipped thresholds: no attack and variant was run with several (t_f, t_m)")
    return written


def read_pareto(results_dir: Path) -> pd.DataFrame | None:
    """The search's Pareto front, None without one; a file that does not read is a
    ConfigError naming it."""
    path = results_dir / PARETO_FILE
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - corrupt or not Parquet
        raise ConfigError("results file", str(path), "the Pareto front vb-sweep search writes "
                          f"(this one does not read: {first_line(err)})") from None


def render_pareto_front(pareto: pd.DataFrame | None, trials: pd.DataFrame, out_dir: Path,
                        note: Note) -> list[Path]:
    if pareto is None:
        note(f"skipped pareto_front: no {PARETO_FILE} (written by vb-sweep search)")
        return []
    fig = pareto_front_figure(pareto, trials)
    if fig is None:
        note(f"skipped pareto_front: {PARETO_FILE} is empty")
        return []
    return save_figure(fig, out_dir, "pareto_front")


def search_study(results_dir: Path):
    """The Optuna study of a threshold-search folder (its default SQLite storage), or None."""
    from vb_sweep.grid import read_manifest

    manifest = read_manifest(results_dir) or {}
    database = results_dir / STUDY_FILE
    if manifest.get("kind") != "threshold_search" or not database.exists():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = manifest.get("options", {}).get("study_name") or manifest["sweep"]
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{database}")
    except KeyError:  # a study of another name: not this folder's
        return None


def optuna_figures(study) -> dict[str, Figure]:
    """Optuna's own views of a threshold search, for each objective where they take one: the
    Pareto front, contour and slice plots over (t_f, t_m), and the parameters' importances."""
    from optuna.visualization import matplotlib as views

    objectives = list(enumerate(study.metric_names or ["ba", "asr"]))
    plots = {"optuna_pareto_front": lambda: views.plot_pareto_front(
        study, target_names=[name.upper() for _, name in objectives])}
    for index, name in objectives:
        target = (lambda i: lambda trial: trial.values[i])(index)
        plots[f"optuna_contour_{name}"] = lambda t=target, n=name: views.plot_contour(
            study, params=["t_f", "t_m"], target=t, target_name=n.upper())
        plots[f"optuna_slice_{name}"] = lambda t=target, n=name: views.plot_slice(
            study, target=t, target_name=n.upper())
        plots[f"optuna_importances_{name}"] = lambda t=target, n=name: views.plot_param_importances(
            study, target=t, target_name=n.upper())
    figures = {}
    with warnings.catch_warnings():  # Optuna marks its matplotlib views experimental
        warnings.simplefilter("ignore")
        for key, draw in plots.items():
            try:
                axes = draw()
            except (ValueError, RuntimeError):  # too few finished trials for this view
                continue
            figures[key] = np.ravel(axes)[0].figure
    return figures


def render_optuna_figures(results_dir: Path, out_dir: Path, note: Note) -> list[Path]:
    study = search_study(results_dir)
    if study is None:
        note(f"skipped optuna views: no threshold-search study ({STUDY_FILE}) in {results_dir}")
        return []
    import matplotlib.pyplot as plt

    written = []
    for name, fig in optuna_figures(study).items():
        written += save_figure(fig, out_dir, name)
        plt.close(fig)  # Optuna draws through pyplot, which keeps every figure open
    return written


def render_all(results_dirs: str | Path | list, out_dir: str | Path, trial_id: str | None = None,
               split: int = -1, note: Note = print, skip_unreadable: bool = False) -> list[Path]:
    """Every figure whose data is in ``results_dirs`` (one folder, or several read as one
    table: sweeps of one grid at several schedule lengths give one schedule curve); ``note``
    gets a line per skipped one. Every input is checked before the first figure is written."""
    folders = [Path(folder) for folder in (
        results_dirs if isinstance(results_dirs, (list, tuple)) else [results_dirs])]
    out_dir = Path(out_dir)
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"results folder not found: {folder}")
    check_folder("--out", out_dir)
    trials, history = read_folders(folders, skip_unreadable, note)
    pareto = [(folder, read_pareto(folder)) for folder in folders]
    pareto = [(folder, front) for folder, front in pareto if front is not None]
    if trials.empty and not pareto:
        raise FileNotFoundError(f"nothing to plot under {', '.join(map(str, folders))}: no "
                                f"trial rows in trials/ and no {PARETO_FILE} (the --out folder "
                                "of a sweep)")
    if trial_id is not None and trial_id not in set(trials["trial_id"]):
        raise FileNotFoundError(f"invalid --trial: {trial_id!r} (allowed: a trial_id of "
                                f"{folders[0] / 'trials'}, e.g. {trials['trial_id'].iloc[0]})")
    for _, shown_id, _ in trials_to_show(trials, history, trial_id):
        check_split(history, shown_id, split)
    search_folder = one_search_folder(folders, [folder for folder, _ in pareto], note)
    front = dict(pareto).get(search_folder)
    return (render_variant_bars(trials, out_dir, note)
            + render_schedule_curves(trials, out_dir, note)
            + render_trial_figures(trials, history, out_dir, note, trial_id, split)
            + render_threshold_figures(search_folder, trials, out_dir, note)
            + render_pareto_front(front, trials, out_dir, note))


def read_folders(folders: list[Path], skip_unreadable: bool,
                 note: Note) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials and history of every folder as one table each. A trial found in several
    folders (the same settings run twice) is taken from the first that has it."""
    trials, history, seen = [], [], set()
    for folder in folders:
        rows = read_trials(folder, strict=not skip_unreadable)
        epochs = read_history(folder, strict=not skip_unreadable)
        repeated = rows["trial_id"].isin(seen) if not rows.empty else None
        if repeated is not None and repeated.any():
            note(f"{folder}: {int(repeated.sum())} trial(s) also in an earlier folder, taken "
                 "from there")
            rows = rows[~repeated]
        if not epochs.empty:
            epochs = epochs[~epochs["trial_id"].isin(seen)]
        seen |= set(rows["trial_id"]) if not rows.empty else set()
        trials.append(rows)
        history.append(epochs)
    if len(folders) == 1:
        return trials[0], history[0]
    return pd.concat(trials, ignore_index=True), pd.concat(history, ignore_index=True)


def one_search_folder(folders: list[Path], with_front: list[Path], note: Note) -> Path | None:
    """The folder whose threshold search (study, Pareto front) the figures show: the only one
    that holds a search; none without a search, or with several (each is drawn on its own)."""
    searches = [folder for folder in folders
                if folder in with_front or search_study(folder) is not None]
    if len(searches) > 1:
        note(f"skipped the searches' figures: {len(searches)} folders hold a threshold search "
             "(draw each folder on its own)")
    return searches[0] if len(searches) == 1 else None


def render_threshold_figures(results_dir: Path | None, trials: pd.DataFrame, out_dir: Path,
                             note: Note) -> list[Path]:
    """A threshold search: Optuna's own views of its study. Any other grid with several
    (t_f, t_m): the BA/ASR heatmaps over them."""
    if results_dir is not None and search_study(results_dir) is not None:
        return render_optuna_figures(results_dir, out_dir, note)
    return render_threshold_heatmaps(blank_unused_settings(trials), out_dir, note)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="plots.py", description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", metavar="RESULTS_DIR", type=Path, nargs="+",
                        help="a sweep's output folder (holds trials/ and history/); several "
                             "are read as one table (e.g. one sweep per schedule length)")
    parser.add_argument("--out", type=Path, required=True, metavar="FIGDIR",
                        help="folder for the PNG and SVG files")
    parser.add_argument("--trial", default=None, metavar="ID",
                        help="trial for the entropy histogram and filter-quality figures "
                             "(default: one per attack, the most complete variant)")
    parser.add_argument("--split", type=int, default=-1, metavar="N",
                        help="which filter split's histogram, 0-based (default -1: the last)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="skip (with a warning) a results file that cannot be read, instead "
                             "of refusing to draw without it")
    args = parser.parse_args(argv)
    try:
        written = render_all(args.results_dirs, args.out, args.trial, args.split,
                             skip_unreadable=args.skip_unreadable)
    except (FileNotFoundError, IndexError, ConfigError) as err:
        print(f"plots.py: error: {err}", file=sys.stderr, flush=True)
        return 2
    for path in written:
        print(path)
    if not written:
        print("no figures written: nothing to plot under "
              f"{', '.join(map(str, args.results_dirs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
