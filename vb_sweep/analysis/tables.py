"""Trials (Parquet) -> the paper's Table 4 and the augmentation comparison, as numbers and text.

    trials = load_trials("results/smoke")
    grid = ablation_grid(trials, dataset="cifar10")    # numeric, one row per cell
    print(render_grid(grid, "md"))                     # or "latex", "html"
    print(report(trials, "md"))                        # both tables, as ablation_table.py prints

A grid is a long DataFrame, one row per (section, defense[, augment], attack). Values are
fractions, like the trials table; only the renderers turn them into percents.

    dataset, poison_rate, preset, target, t_f, t_m, epochs    the section (one table each)
    defense (+ augment in the augmentation grid), attack
    n, failed            seeds with an 'ok' trial / seeds whose every trial failed
    ba_mean, ba_std, asr_mean, asr_std, ra_mean, ra_std    over the n seeds (std: ddof 1)
    der_mean, der_std, der_n    DER over the seeds that have a matching no-defense run

How rows are matched:
- Only status 'ok' rows count; a seed with an 'ok' row is never counted as failed.
- A variant's unused settings are ignored: `none` uses no threshold and no augmentation, `F`
  uses t_f only. So the `none` row of every section is the no-defense run of its dataset, rate,
  preset and target, whatever thresholds it recorded.
- One value per seed: when a seed has several 'ok' rows in a cell, the latest one counts.
- DER = [max(0, ASR_none - ASR_def) - max(0, BA_none - BA_def) + 1] / 2 per seed, against the
  `none` run with the same attack, dataset, poison_rate, seed, preset, target and schedule length
  (docs/method.md section 6).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from vb_sweep.config import AUGMENTS, DEFENSES, VARIANTS
from vb_sweep.errors import ConfigError
from vb_sweep.results import EPOCH_LEGEND, TRIALS_DIR, at_reported_epoch, der, read_trials

ATTACK_ORDER = ("badnets", "blend", "wanet", "dynamic", "sig", "cl")
SECTION_KEYS = ["dataset", "poison_rate", "preset", "target", "t_f", "t_m", "epochs"]
BASELINE_KEYS = ["attack", "dataset", "poison_rate", "seed", "preset", "target", "epochs"]
UNUSED_MATCHES_ANY = ("t_f", "t_m")   # blanked for variants that do not use them
METRICS = ("ba", "asr", "ra")
SHOWN_METRICS = (("ba", "BA"), ("asr", "ASR"), ("der", "DER"))
MISSING = "—"
FAILED = "failed"
FORMATS = ("md", "latex", "html", "csv")
LEGEND = ("BA, ASR and DER in % at the {epoch}, mean ± std over seeds (n = seeds); "
          f"{MISSING} = no trial; {FAILED} = every trial of the cell failed.")


# ---------------------------------------------------------------------------------------------
# Loading and selecting rows

def load_trials(*results_dirs: str | Path, skip_unreadable: bool = False) -> pd.DataFrame:
    """The trials of one or more results folders, as one table (several sweeps, e.g. one per
    schedule length, read together); FileNotFoundError (one line) for a folder with none. An
    unreadable row file is a ConfigError naming it, or skipped with a warning."""
    frames = []
    for results_dir in map(Path, results_dirs):
        if not results_dir.is_dir():
            raise FileNotFoundError(f"results folder not found: {results_dir}")
        trials = read_trials(results_dir, strict=not skip_unreadable)
        if trials.empty:
            raise FileNotFoundError(f"no trial rows under {results_dir / TRIALS_DIR} "
                                    "(the --out folder of vb-sweep ablation)")
        frames.append(trials)
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def used_settings(defense: str) -> set[str]:
    """Which of t_f, t_m, augment a defense variant reads (an unknown variant: all three)."""
    flags = VARIANTS.get(defense)
    if flags is None:
        return {"t_f", "t_m", "augment"}
    return ({"t_f"} if flags.filter else set()) | ({"t_m", "augment"} if flags.mix else set())


def blank_unused_settings(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy with each row's unused settings set to missing, so they match any section."""
    out = trials.copy()
    for setting in ("t_f", "t_m", "augment"):
        unused = ~out["defense"].map(lambda d: setting in used_settings(d)).astype(bool)
        out[setting] = out[setting].astype(object).where(~unused, None)
    for setting in ("t_f", "t_m", "poison_rate"):
        out[setting] = pd.to_numeric(out[setting], errors="coerce").astype(float)
    out["epochs"] = pd.to_numeric(out.get("epochs"), errors="coerce").astype("Int64")
    return out


def _equals(column: pd.Series, value) -> pd.Series:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        numbers = pd.to_numeric(column, errors="coerce").astype(float)
        return pd.Series(np.isclose(numbers, float(value)), index=column.index)
    return column.astype(object) == value


def select_trials(trials: pd.DataFrame, **filters) -> pd.DataFrame:
    """Rows matching every given filter (None: no filter). A row whose variant does not use a
    filtered setting is kept. ConfigError when a filter matches no row at all."""
    for column, wanted in filters.items():
        if wanted is None:
            continue
        values = trials[column]
        matched = _equals(values, wanted)
        if values.notna().any() and not matched.any():
            present = sorted({str(v) for v in values.dropna().unique()})
            raise ConfigError("--" + column.replace("_", "-"), wanted,
                              f"values in these results: {', '.join(present)}")
        trials = trials[matched | values.isna()]
    return trials


def latest_per(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per ``keys``: the one that finished last."""
    if "finished_at" not in rows:
        return rows.drop_duplicates(subset=keys, keep="last")
    ordered = rows.sort_values("finished_at", na_position="first", kind="stable")
    return ordered.drop_duplicates(subset=keys, keep="last")


def is_ok(rows: pd.DataFrame) -> pd.Series:
    return rows["status"].astype(object) == "ok"


# ---------------------------------------------------------------------------------------------
# DER

def with_der(rows: pd.DataFrame, all_trials: pd.DataFrame) -> pd.DataFrame:
    """``rows`` plus a ``der`` column against the matching no-defense run (NaN: none found, or
    the row is itself a no-defense run)."""
    baseline = all_trials[is_ok(all_trials) & (all_trials["defense"].astype(object) == "none")]
    baseline = latest_per(baseline, BASELINE_KEYS)[BASELINE_KEYS + ["ba", "asr"]]
    baseline = baseline.rename(columns={"ba": "ba_none", "asr": "asr_none"})
    merged = rows.reset_index(drop=True).merge(baseline, on=BASELINE_KEYS, how="left")
    merged["der"] = der(merged["ba_none"], merged["asr_none"], merged["ba"], merged["asr"])
    merged.loc[merged["defense"].astype(object) == "none", "der"] = np.nan
    return merged.drop(columns=["ba_none", "asr_none"])


# ---------------------------------------------------------------------------------------------
# Sections: one printed table per dataset, rate, preset, target and threshold pair

def _key(row) -> dict:
    return {k: row[k] for k in SECTION_KEYS}


def _is_missing(value) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _same(a, b) -> bool:
    if _is_missing(a) or _is_missing(b):
        return _is_missing(a) and _is_missing(b)
    return bool(_equals(pd.Series([b]), a).iat[0])


def _covers(general: dict, specific: dict) -> bool:
    """``general`` agrees with ``specific``, an unused threshold of ``general`` matching any."""
    return all((k in UNUSED_MATCHES_ANY and _is_missing(general[k]))
               or _same(general[k], specific[k]) for k in SECTION_KEYS)


def find_sections(rows: pd.DataFrame) -> list[dict]:
    """The most specific section keys: a key whose thresholds are unused (a `none` or `F` row)
    joins every section that agrees with it instead of making its own."""
    keys = [_key(r) for _, r in rows[SECTION_KEYS].drop_duplicates().iterrows()]
    missing = lambda key: sum(_is_missing(key[k]) for k in UNUSED_MATCHES_ANY)  # noqa: E731
    sections = [k for k in keys
                if not any(missing(o) < missing(k) and _covers(k, o) for o in keys)]
    return sorted(sections, key=lambda k: tuple((_is_missing(v), str(v)) for v in k.values()))


def rows_in_section(rows: pd.DataFrame, section: dict) -> pd.DataFrame:
    """The rows that agree with ``section``; a row's unused threshold agrees with any value."""
    mask = pd.Series(True, index=rows.index)
    for key, value in section.items():
        same = rows[key].isna() if _is_missing(value) else _equals(rows[key], value)
        mask &= (same | rows[key].isna()) if key in UNUSED_MATCHES_ANY else same
    return rows[mask]


def describe_section(section: dict) -> str:
    parts = [f"dataset {section['dataset']}"]
    if not _is_missing(section["poison_rate"]):
        parts.append(f"poison rate {100 * section['poison_rate']:g}%")
    parts.append(f"preset {section['preset']}")
    parts.append(f"target {section['target']}")
    for threshold in ("t_f", "t_m"):
        if not _is_missing(section[threshold]):
            parts.append(f"{threshold} {section[threshold]:g}")
    if not _is_missing(section["epochs"]):
        parts.append(f"{int(section['epochs'])} epochs")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Cells

def ordered_attacks(attacks) -> list[str]:
    present = set(attacks)
    known = [a for a in ATTACK_ORDER if a in present]
    return known + sorted(present - set(ATTACK_ORDER))


def cell_stats(rows: pd.DataFrame) -> dict:
    """Mean/std/n of one cell's rows (several seeds, 'ok' and failed)."""
    ok = latest_per(rows[is_ok(rows)], ["seed"])
    failed_seeds = set(rows.loc[~is_ok(rows), "seed"]) - set(ok["seed"])
    stats = {"n": len(ok), "failed": len(failed_seeds)}
    for metric in METRICS:
        stats[f"{metric}_mean"] = ok[metric].mean()
        stats[f"{metric}_std"] = ok[metric].std()
    ders = ok["der"].dropna()
    stats.update(der_mean=ders.mean(), der_std=ders.std(), der_n=len(ders))
    return stats


def _matching(rows: pd.DataFrame, values: dict) -> pd.DataFrame:
    mask = pd.Series(True, index=rows.index)
    for key, value in values.items():
        mask &= rows[key].isna() if _is_missing(value) else rows[key].astype(object) == value
    return rows[mask]


def cell_grid(trials: pd.DataFrame, row_keys: list[str], row_values: list[tuple],
              baseline: pd.DataFrame | None = None, augment: str | None = None,
              **filters) -> pd.DataFrame:
    """Cells for every section x row x attack present in the (filtered) trials; DER against the
    no-defense runs in ``baseline`` (default: ``trials``); ``augment`` keeps, of the variants that
    mix, only the runs with that augmentation."""
    rows = select_trials(blank_unused_settings(trials), **filters)
    if augment is not None:
        rows = rows[(rows["augment"].astype(object) == augment) | rows["augment"].isna()]
    rows = with_der(rows, blank_unused_settings(trials if baseline is None else baseline))
    cells = []
    for section in find_sections(rows):
        in_section = rows_in_section(rows, section)
        for row_value in row_values:
            row_id = dict(zip(row_keys, row_value))
            in_row = _matching(in_section, row_id)
            for attack in ordered_attacks(in_section["attack"].dropna()):
                in_cell = in_row[in_row["attack"].astype(object) == attack]
                cells.append({**section, **row_id, "attack": attack, **cell_stats(in_cell)})
    columns = SECTION_KEYS + row_keys + ["attack", "n", "failed",
                                          *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")),
                                          "der_mean", "der_std", "der_n"]
    return pd.DataFrame(cells, columns=columns)


def ablation_grid(trials: pd.DataFrame, *, augment: str = "attentionmix",
                  **filters) -> pd.DataFrame:
    """Table 4: rows none, F, F+AT, F+AT+SST, F+AT+SST+S, vab (then any other variant), with
    ``augment`` as the mixing augmentation of the variants that mix; ``filters``: a value for
    any of SECTION_KEYS keeps only its rows (None: all)."""
    defenses = list(DEFENSES) + sorted(set(trials["defense"].dropna()) - set(DEFENSES))
    return cell_grid(trials, ["defense"], [(d,) for d in defenses], augment=augment,
                     **section_filters(filters))


def section_filters(filters: dict) -> dict:
    unknown = set(filters) - set(SECTION_KEYS)
    if unknown:
        raise TypeError(f"not a section key: {sorted(unknown)} (allowed: {SECTION_KEYS})")
    return filters


def augment_grid(trials: pd.DataFrame, **filters) -> pd.DataFrame:
    """The augmentation comparison: for each mixing variant run with an augmentation other than
    AttentionMix, one row per augmentation. Empty when there is no such run."""
    mixing = [d for d in trials["defense"].dropna().unique() if "augment" in used_settings(d)]
    compared = trials[trials["defense"].isin(mixing)
                      & (trials["augment"].astype(object) != AUGMENTS[0])
                      & trials["augment"].notna()]
    defenses = [d for d in DEFENSES if d in set(compared["defense"])]
    if not defenses:
        return cell_grid(trials.iloc[:0], ["defense", "augment"], [])
    augments = list(AUGMENTS) + sorted(set(compared["augment"]) - set(AUGMENTS))
    return cell_grid(trials[trials["defense"].isin(defenses)], ["defense", "augment"],
                     [(d, a) for d in defenses for a in augments], baseline=trials,
                     **section_filters(filters))


# ---------------------------------------------------------------------------------------------
# The schedule curve: each variant's cells against the number of Beneficiary epochs

CURVE_KEYS = [key for key in SECTION_KEYS if key != "epochs"]
CURVE_COLUMNS = CURVE_KEYS + ["attack", "defense", "epochs", "n", "ba_mean", "ba_std",
                              "asr_mean", "asr_std", "ba_vs_none"]
CURVE_LEGEND = ("BA / ASR in % at the {epoch}, mean over seeds; in brackets BA minus the "
                "no-defense BA at the same length, in points; " + MISSING + " = no trial.")


def schedule_curve(trials: pd.DataFrame, **filters) -> pd.DataFrame:
    """Table 4's cells against the schedule's length: one row per (section less its length,
    attack, variant, epochs) with BA and ASR over the seeds and ``ba_vs_none``, the variant's
    BA minus the no-defense BA at the same length (NaN without a no-defense run there). Only
    sections that were run at two or more lengths."""
    grid = ablation_grid(trials, **filters)
    grid = _with_unused_thresholds_filled(grid[(grid["n"] > 0) & grid["epochs"].notna()])
    lengths = grid.groupby(CURVE_KEYS, dropna=False)["epochs"].transform("nunique")
    grid = grid[lengths >= 2]
    none = grid.loc[grid["defense"] == "none", SECTION_KEYS + ["attack", "ba_mean"]]
    curve = grid.merge(none.rename(columns={"ba_mean": "ba_none"}),
                       on=SECTION_KEYS + ["attack"], how="left")
    curve["ba_vs_none"] = curve["ba_mean"] - curve["ba_none"]
    return curve[CURVE_COLUMNS].reset_index(drop=True)


def _with_unused_thresholds_filled(grid: pd.DataFrame) -> pd.DataFrame:
    """A length run with only variants that use no threshold (``none``) has its t_f and t_m
    blank; it joins the other lengths' curve when those agree on one value of each."""
    grid = grid.copy()
    shared = [key for key in CURVE_KEYS if key not in UNUSED_MATCHES_ANY] + ["attack"]

    def the_one_value(values: pd.Series):
        known = values.dropna().unique()
        return known[0] if len(known) == 1 else np.nan

    for key in UNUSED_MATCHES_ANY:
        grid[key] = grid[key].fillna(
            grid.groupby(shared, dropna=False)[key].transform(the_one_value))
    return grid


def render_schedule_curve(curve: pd.DataFrame, fmt: str = "md", epoch: str = "last") -> str:
    """The curve as one Markdown table per section and attack (rows: variants; columns: the
    lengths), or as CSV."""
    if fmt == "csv":
        return curve.to_csv(index=False)
    if fmt != "md":
        raise ConfigError("format", fmt, "md or csv (with --by-epochs)")
    parts = ["## Schedule length (Table 4 cells against the number of epochs)"]
    if curve.empty:
        parts.append("_No section was run at two or more schedule lengths (--epochs)._")
    for key, rows in curve.groupby(CURVE_KEYS + ["attack"], dropna=False, sort=False):
        section = dict(zip(CURVE_KEYS + ["attack"], key))
        lengths = sorted(rows["epochs"].unique())
        header = ["defense"] + [f"{int(n)} epochs" for n in lengths]
        lines = [header, [":---"] + ["---:"] * len(lengths)]
        for defense in [d for d in DEFENSES if d in set(rows["defense"])]:
            by_length = rows[rows["defense"] == defense].set_index("epochs")
            lines.append([defense] + [_curve_cell(by_length, n) for n in lengths])
        title = describe_section({**section, "epochs": None})
        parts.append(f"### {section['attack']}: {title}\n\n"
                     + "\n".join("| " + " | ".join(line) + " |" for line in lines))
    parts.append(f"_{CURVE_LEGEND.format(epoch=EPOCH_LEGEND[epoch])}_")
    return "\n\n".join(parts) + "\n"


def _curve_cell(by_length: pd.DataFrame, length) -> str:
    if length not in by_length.index:
        return MISSING
    cell = by_length.loc[length]
    text = f"{percent(cell['ba_mean'])} / {percent(cell['asr_mean'])}"
    if pd.isna(cell["ba_vs_none"]) or cell["defense"] == "none":
        return text
    return text + f" ({100 * cell['ba_vs_none']:+.1f})"


# ---------------------------------------------------------------------------------------------
# Cell text

def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _mean_std(mean: float, std: float, n: int) -> str:
    return percent(mean) + (f" ± {percent(std)}" if n > 1 and not np.isnan(std) else "")


def cell_text(cell, metric: str) -> str:
    """Text of one metric of one grid row: '91.3 ± 0.4 (n=3)', '—' or 'failed'."""
    if cell["n"] == 0:
        return FAILED if cell["failed"] else MISSING
    if metric == "der":
        if cell["der_n"] == 0:
            return MISSING
        text = _mean_std(cell["der_mean"], cell["der_std"], cell["der_n"])
        return text + (f" (n={cell['der_n']})" if cell["der_n"] != cell["n"] else "")
    text = _mean_std(cell[f"{metric}_mean"], cell[f"{metric}_std"], cell["n"])
    if metric != "ba":
        return text
    notes = [f"n={cell['n']}"] if cell["n"] > 1 or cell["failed"] else []
    notes += [f"{cell['failed']} failed"] if cell["failed"] else []
    return text + (f" ({', '.join(notes)})" if notes else "")


def table_cells(section_grid: pd.DataFrame, row_keys: list[str]):
    """(attacks, [(row labels, [cell texts per attack x metric])]) for one section."""
    attacks = ordered_attacks(section_grid["attack"])
    lines = []
    for row_value, cells in section_grid.groupby(row_keys, sort=False, dropna=False):
        by_attack = {c["attack"]: c for _, c in cells.iterrows()}
        texts = [cell_text(by_attack[a], m) for a in attacks for m, _ in SHOWN_METRICS]
        labels = row_value if isinstance(row_value, tuple) else (row_value,)
        lines.append(([str(v) for v in labels], texts))
    return attacks, lines


def split_sections(grid: pd.DataFrame):
    """[(section dict, its rows)] in the grid's order."""
    sections = []
    for _, first in grid.drop_duplicates(SECTION_KEYS).iterrows():
        sections.append((_key(first), rows_in_exact_section(grid, _key(first))))
    return sections


def rows_in_exact_section(grid: pd.DataFrame, section: dict) -> pd.DataFrame:
    mask = pd.Series(True, index=grid.index)
    for key, value in section.items():
        mask &= grid[key].isna() if _is_missing(value) else _equals(grid[key], value)
    return grid[mask]


def row_keys_of(grid: pd.DataFrame) -> list[str]:
    return ["defense", "augment"] if "augment" in grid.columns else ["defense"]


# ---------------------------------------------------------------------------------------------
# Renderers

def markdown_table(attacks, lines, row_keys) -> str:
    header = row_keys + [f"{a} {label}" for a in attacks for _, label in SHOWN_METRICS]
    align = [":---"] * len(row_keys) + ["---:"] * (len(header) - len(row_keys))
    body = [labels + texts for labels, texts in lines]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *body])


def latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"),
                          ("$", r"\$"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"),
                          ("}", r"\}"), ("~", r"\textasciitilde{}"),
                          ("^", r"\textasciicircum{}")):
        text = text.replace(char, escaped)
    return text.replace("±", r"$\pm$").replace(MISSING, "---")


def latex_table(attacks, lines, row_keys, caption: str) -> str:
    width = len(SHOWN_METRICS)
    first = len(row_keys) + 1
    spans = [(first + i * width, first + (i + 1) * width - 1) for i in range(len(attacks))]
    top = " & " * (len(row_keys) - 1) + "".join(
        f" & \\multicolumn{{{width}}}{{c}}{{{latex_escape(a)}}}" for a in attacks)
    rules = " ".join(f"\\cmidrule(lr){{{a}-{b}}}" for a, b in spans)
    names = " & ".join(latex_escape(k) for k in row_keys) + "".join(
        f" & {label}" for _ in attacks for _, label in SHOWN_METRICS)
    body = [" & ".join(latex_escape(t) for t in labels + texts) + r" \\" for labels, texts in lines]
    columns = "l" * len(row_keys) + ("r" * width) * len(attacks)
    return "\n".join([
        r"\begin{table}[t]", r"\centering", r"\small",
        f"\\caption{{{latex_escape(caption)}}}",
        f"\\begin{{tabular}}{{{columns}}}", r"\toprule", top + r" \\", rules, names + r" \\",
        r"\midrule", *body, r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ])


def html_table(attacks, lines, row_keys) -> str:
    esc = html.escape
    width = len(SHOWN_METRICS)
    top = "".join(f'<th rowspan="2">{esc(k)}</th>' for k in row_keys) + "".join(
        f'<th colspan="{width}">{esc(a)}</th>' for a in attacks)
    sub = "".join(f"<th>{label}</th>" for _ in attacks for _, label in SHOWN_METRICS)
    body = "".join(
        "<tr>" + "".join(f"<th>{esc(v)}</th>" for v in labels)
        + "".join(f"<td>{esc(t)}</td>" for t in texts) + "</tr>\n" for labels, texts in lines)
    return (f'<table class="vb-sweep-grid">\n<thead>\n<tr>{top}</tr>\n<tr>{sub}</tr>\n</thead>\n'
            f"<tbody>\n{body}</tbody>\n</table>")


def render_grid(grid: pd.DataFrame, fmt: str = "md", title: str = "Ablation (Table 4)",
                epoch: str = "last") -> str:
    """All sections of a grid as Markdown, LaTeX or HTML (a title, then one table each)."""
    if fmt == "csv":
        return grid.to_csv(index=False)
    if fmt not in FORMATS:
        raise ConfigError("format", fmt, FORMATS)
    row_keys = row_keys_of(grid)
    parts = [_heading(title, fmt, level=2)]
    if grid.empty:
        parts.append(_paragraph("No trials.", fmt))
    for section, rows in split_sections(grid):
        attacks, lines = table_cells(rows, row_keys)
        caption = f"{title}: {describe_section(section)}"
        if fmt == "latex":
            parts.append(latex_table(attacks, lines, row_keys, caption))
            continue
        parts.append(_heading(describe_section(section), fmt, level=3))
        parts.append(markdown_table(attacks, lines, row_keys) if fmt == "md"
                     else html_table(attacks, lines, row_keys))
    parts.append(_paragraph(LEGEND.format(epoch=EPOCH_LEGEND[epoch]), fmt))
    return "\n\n".join(parts) + "\n"


def _heading(text: str, fmt: str, level: int) -> str:
    if fmt == "md":
        return "#" * level + " " + text
    if fmt == "html":
        return f"<h{level}>{html.escape(text)}</h{level}>"
    return f"% {text}"


def _paragraph(text: str, fmt: str) -> str:
    if fmt == "md":
        return f"_{text}_"
    if fmt == "html":
        return f"<p>{html.escape(text)}</p>"
    return "% " + text


def report(trials: pd.DataFrame, fmt: str = "md", epoch: str = "last", **filters) -> str:
    """Table 4, then the augmentation comparison when there are such runs, with BA and ASR at
    the reported ``epoch`` (``REPORTED_EPOCHS``: last, or the paper's best-BA epoch)."""
    trials = at_reported_epoch(trials, epoch)
    ablation = ablation_grid(trials, **filters)
    try:
        augment = augment_grid(trials, **filters)
    except ConfigError:  # the filters match ablation runs but no augmentation run
        augment = augment_grid(trials.iloc[:0])
    if fmt == "csv":
        both = pd.concat([ablation.assign(table="ablation"), augment.assign(table="augment")])
        return both.to_csv(index=False)
    text = render_grid(ablation, fmt, epoch=epoch)
    if not augment.empty:
        text += "\n" + render_grid(augment, fmt, title="Augmentation comparison", epoch=epoch)
    return text
