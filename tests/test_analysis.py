"""The analysis layer on a results folder written with vb_sweep.results.write_trial: the Table 4
grid against the rows it summarises, its renderers and command line, every figure, and the
notebook run end to end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vb_sweep.analysis import ablation_table, plots, tables  # noqa: E402
from conftest import run_notebook  # noqa: E402
from vb_sweep.config import DEFENSES  # noqa: E402
from vb_sweep.errors import ConfigError  # noqa: E402
from vb_sweep.results import HISTOGRAM_BINS, write_trial  # noqa: E402

ATTACKS = ("badnets", "blend", "wanet")
SEEDS = (0, 1, 2)
# (BA, ASR) per variant and attack, shaped like the paper's Table 4.
TYPICAL = {
    "none": {"badnets": (0.92, 0.99), "blend": (0.93, 0.99), "wanet": (0.91, 0.90)},
    "F": {"badnets": (0.90, 0.02), "blend": (0.90, 0.85), "wanet": (0.89, 0.80)},
    "F+AT": {"badnets": (0.86, 0.03), "blend": (0.86, 0.10), "wanet": (0.85, 0.08)},
    "F+AT+SST": {"badnets": (0.91, 0.15), "blend": (0.91, 0.30), "wanet": (0.90, 0.02)},
    "F+AT+SST+S": {"badnets": (0.91, 0.02), "blend": (0.91, 0.03), "wanet": (0.90, 0.02)},
    "vab": {"badnets": (0.905, 0.01), "blend": (0.90, 0.01), "wanet": (0.895, 0.015)},
}
MISSING_CELL = ("F+AT+SST", "wanet")             # never run
ALL_FAILED_CELL = ("F+AT", "wanet")              # every seed failed
ONE_FAILED = ("F", "blend", 2)                   # one seed failed, two ok
NO_BASELINE = ("wanet", 2)                       # no no-defense run for this attack and seed
RETRIED = ("vab", "badnets", 1)                  # failed once, then ok: counts as ok


# ---------------------------------------------------------------------------------------------
# A results folder

def trial_row(trial_id, attack, defense, seed, ba=None, asr=None, status="ok", **extra):
    row = {
        "sweep": "test", "trial_id": trial_id, "dataset": "synthetic", "model": "small_cnn",
        "attack": attack, "attack_preset": "vab_paper", "poison_rate": 0.1, "target": 0,
        "defense": defense, "augment": "attentionmix", "t_f": 0.2, "t_m": 0.1, "seed": seed,
        "preset": "smoke", "ba": ba, "asr": asr, "ra": None if ba is None else ba - 0.05,
        "num_train": 2000, "num_poisoned": 200, "epochs": 8, "wall_s": 12.5, "status": status,
        "error": None if status == "ok" else "RuntimeError: CUDA out of memory",
        "finished_at": f"2025-01-01T00:00:{int(trial_id[1:]) % 60:02d}",
    }
    if status == "ok" and defense != "none":
        row.update(filter_precision=0.8, filter_recall=0.95, filter_auroc=0.97,
                   credible_size=1750, suspicious_size=250)
    return {**row, **extra}


def history_rows(trial_id: str, epochs: int = 8) -> list[dict]:
    rng = np.random.default_rng(int(trial_id[1:]))
    rows = []
    for epoch in range(epochs):
        poisoned = rng.multinomial(200, np.r_[[0.6, 0.3, 0.1], np.zeros(HISTOGRAM_BINS - 3)])
        benign = rng.multinomial(1800, np.full(HISTOGRAM_BINS, 1 / HISTOGRAM_BINS))
        rows.append({"sweep": "test", "trial_id": trial_id, "epoch": epoch, "stage": "victim",
                     "credible_size": 1750 - 10 * epoch, "suspicious_size": 250 + 10 * epoch,
                     "poisoned_in_suspicious": 190 + epoch, "poisoned_in_credible": 10 - epoch,
                     "filter_precision": 0.76 + 0.01 * epoch, "filter_recall": 0.95 + 0.005 * epoch,
                     "filter_auroc": 0.97, "entropy_hist_poisoned": poisoned.tolist(),
                     "entropy_hist_benign": benign.tolist()})
        rows.append({"sweep": "test", "trial_id": trial_id, "epoch": epoch, "stage": "mix",
                     "lr": 0.1, "loss": 2.0 - 0.2 * epoch, "ba": 0.5 + 0.05 * epoch,
                     "asr": 0.5 - 0.05 * epoch, "seconds": 1.0})
    return rows


def ablation_rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for defense in DEFENSES:
        for attack in ATTACKS:
            for seed in SEEDS:
                if (defense, attack) == MISSING_CELL:
                    continue
                if defense == "none" and (attack, seed) == NO_BASELINE:
                    continue
                trial_id = f"t{len(rows):04d}"
                if (defense, attack) == ALL_FAILED_CELL or (defense, attack, seed) == ONE_FAILED:
                    rows.append(trial_row(trial_id, attack, defense, seed, status="failed"))
                    continue
                if (defense, attack, seed) == RETRIED:
                    rows.append(trial_row(trial_id, attack, defense, seed, status="failed"))
                    trial_id = f"t{len(rows):04d}"
                ba, asr = TYPICAL[defense][attack]
                rows.append(trial_row(trial_id, attack, defense, seed,
                                      ba=float(np.clip(ba + rng.normal(0, 0.01), 0, 1)),
                                      asr=float(np.clip(asr + rng.normal(0, 0.01), 0, 1))))
    for augment in ("mixup", "cutmix", "attentive_cutmix"):
        for seed in (0, 1):
            rows.append(trial_row(f"t{len(rows):04d}", "badnets", "vab", seed, augment=augment,
                                  ba=0.89 - 0.01 * seed, asr=0.05 + 0.01 * seed))
    return rows


def search_rows() -> list[dict]:
    rows = []
    for t_f in (0.1, 0.2, 0.3, 0.4):
        for t_m in (0.05, 0.1, 0.3):
            rows.append(trial_row(f"s{len(rows):04d}", "badnets", "vab", 0,
                                  t_f=t_f, t_m=t_m, ba=0.93 - 0.1 * t_f - 0.05 * t_m,
                                  asr=max(0.0, 0.3 - t_f - 0.2 * t_m)))
    return rows


def pareto_of(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)[["t_f", "t_m", "ba", "asr"]]
    dominated = [any((o.ba >= r.ba and o.asr <= r.asr) and (o.ba > r.ba or o.asr < r.asr)
                     for o in frame.itertuples()) for r in frame.itertuples()]
    return frame[~np.array(dominated)].reset_index(drop=True)


def write_results(folder: Path, rows: list[dict]) -> Path:
    for row in rows:
        history = history_rows(row["trial_id"]) if row["status"] == "ok" else []
        write_trial(folder, row, history if row["defense"] != "none" else [])
    return folder


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return ablation_rows()


@pytest.fixture(scope="module")
def results(tmp_path_factory, rows) -> Path:
    return write_results(tmp_path_factory.mktemp("ablation"), rows)


@pytest.fixture(scope="module")
def search_results(tmp_path_factory) -> Path:
    folder = write_results(tmp_path_factory.mktemp("search"), search_rows())
    pareto_of(search_rows()).to_parquet(folder / plots.PARETO_FILE)
    return folder


@pytest.fixture(scope="module")
def grid(results) -> pd.DataFrame:
    return tables.ablation_grid(tables.load_trials(results))


def cell(grid: pd.DataFrame, defense: str, attack: str) -> pd.Series:
    match = grid[(grid["defense"] == defense) & (grid["attack"] == attack)]
    assert len(match) == 1
    return match.iloc[0]


def ok_rows(rows, defense, attack, augment="attentionmix"):
    return [r for r in rows if r["defense"] == defense and r["attack"] == attack
            and r["status"] == "ok" and r["augment"] == augment]


# ---------------------------------------------------------------------------------------------
# The grid against the rows

def test_grid_has_every_variant_and_attack_in_paper_order(grid):
    assert list(dict.fromkeys(grid["defense"])) == list(DEFENSES)
    assert list(dict.fromkeys(grid["attack"])) == list(ATTACKS)
    assert len(grid) == len(DEFENSES) * len(ATTACKS)


@pytest.mark.parametrize("defense", DEFENSES)
@pytest.mark.parametrize("attack", ATTACKS)
def test_cell_mean_std_n_match_rows(grid, rows, defense, attack):
    expected = ok_rows(rows, defense, attack)
    got = cell(grid, defense, attack)
    assert got["n"] == len(expected)
    if not expected:
        assert np.isnan(got["ba_mean"])
        return
    for metric in ("ba", "asr", "ra"):
        values = np.array([r[metric] for r in expected])
        assert got[f"{metric}_mean"] == pytest.approx(values.mean())
        if len(values) > 1:
            assert got[f"{metric}_std"] == pytest.approx(values.std(ddof=1))


@pytest.mark.parametrize("defense", DEFENSES[1:])
@pytest.mark.parametrize("attack", ATTACKS)
def test_cell_der_against_matching_no_defense_run(grid, rows, defense, attack):
    baseline = {r["seed"]: r for r in ok_rows(rows, "none", attack)}
    ders = [(max(0, baseline[r["seed"]]["asr"] - r["asr"])
             - max(0, baseline[r["seed"]]["ba"] - r["ba"]) + 1) / 2
            for r in ok_rows(rows, defense, attack) if r["seed"] in baseline]
    got = cell(grid, defense, attack)
    assert got["der_n"] == len(ders)
    if ders:
        assert got["der_mean"] == pytest.approx(np.mean(ders))
    else:
        assert np.isnan(got["der_mean"])


def test_missing_failed_and_retried_cells(grid):
    assert cell(grid, *MISSING_CELL)[["n", "failed"]].tolist() == [0, 0]
    assert cell(grid, *ALL_FAILED_CELL)[["n", "failed"]].tolist() == [0, 3]
    assert cell(grid, "F", "blend")[["n", "failed"]].tolist() == [2, 1]
    assert cell(grid, "vab", "badnets")[["n", "failed"]].tolist() == [3, 0]
    assert cell(grid, "vab", "wanet")["der_n"] == 2            # seed 2 has no baseline
    assert np.isnan(cell(grid, "none", "badnets")["der_mean"])


def test_der_formula():
    assert tables.der(0.9, 1.0, 0.9, 0.0) == pytest.approx(1.0)
    assert tables.der(0.9, 1.0, 0.9, 1.0) == pytest.approx(0.5)
    assert tables.der(0.9, 0.5, 0.7, 0.6) == pytest.approx(0.4)   # ASR rose: no credit


def test_augment_grid_compares_augmentations(results, rows):
    grid = tables.augment_grid(tables.load_trials(results))
    assert list(dict.fromkeys(grid["augment"])) == ["attentionmix", "mixup", "cutmix",
                                                    "attentive_cutmix"]
    assert set(grid["defense"]) == {"vab"}
    mixup = grid[(grid["augment"] == "mixup") & (grid["attack"] == "badnets")].iloc[0]
    expected = ok_rows(rows, "vab", "badnets", augment="mixup")
    assert mixup["n"] == len(expected) == 2
    assert mixup["asr_mean"] == pytest.approx(np.mean([r["asr"] for r in expected]))
    assert mixup["der_n"] == 2


def test_unused_thresholds_do_not_split_the_no_defense_row(tmp_path, rows):
    varied = [dict(r, t_f=None, t_m=None) if r["defense"] == "none" else r for r in rows]
    grid = tables.ablation_grid(pd.DataFrame(varied))
    assert len(tables.split_sections(grid)) == 1
    assert cell(grid, "none", "badnets")["n"] == 3


def test_each_poison_rate_is_a_section_with_its_own_baseline(rows):
    lower = [dict(r, trial_id=f"p{r['trial_id']}", poison_rate=0.05,
                  asr=None if r["asr"] is None else r["asr"] / 2) for r in rows]
    grid = tables.ablation_grid(pd.DataFrame(rows + lower))
    assert [s["poison_rate"] for s, _ in tables.split_sections(grid)] == [0.05, 0.1]
    half = grid[(grid["poison_rate"] == 0.05) & (grid["defense"] == "none")
                & (grid["attack"] == "badnets")].iloc[0]
    assert half["n"] == 3
    assert half["asr_mean"] == pytest.approx(cell(grid[grid["poison_rate"] == 0.1], "none",
                                                  "badnets")["asr_mean"] / 2)


def test_threshold_runs_make_one_section_each_unless_filtered(search_results):
    trials = tables.load_trials(search_results)
    assert len(tables.split_sections(tables.ablation_grid(trials))) == 12
    one = tables.ablation_grid(trials, t_f=0.1, t_m=0.1)
    assert len(tables.split_sections(one)) == 1
    assert cell(one, "vab", "badnets")["asr_mean"] == pytest.approx(0.3 - 0.1 - 0.2 * 0.1)


def test_filter_matching_nothing_names_the_present_values(grid, results):
    with pytest.raises(ConfigError, match="cifar10.*synthetic|synthetic"):
        tables.ablation_grid(tables.load_trials(results), dataset="cifar10")


# ---------------------------------------------------------------------------------------------
# Renderers and the command line

def test_markdown_cells(grid):
    text = tables.render_grid(grid, "md")
    none_line = next(line for line in text.splitlines() if line.startswith("| none |"))
    assert "(n=3)" in none_line and " ± " in none_line
    f_at = next(line for line in text.splitlines() if line.startswith("| F+AT |"))
    assert "failed" in f_at
    f_at_sst = next(line for line in text.splitlines() if line.startswith("| F+AT+SST |"))
    assert tables.MISSING in f_at_sst
    assert "(n=2, 1 failed)" in text
    assert "| defense | badnets BA | badnets ASR | badnets DER |" in text


def test_cell_text_is_percent_with_one_decimal(grid, rows):
    got = tables.cell_text(cell(grid, "none", "badnets"), "ba")
    values = [100 * r["ba"] for r in ok_rows(rows, "none", "badnets")]
    assert got == f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f} (n=3)"


def test_latex_and_html(grid):
    latex = tables.render_grid(grid, "latex")
    assert r"\begin{tabular}" in latex and r"\multicolumn{3}{c}{badnets}" in latex
    assert r"$\pm$" in latex and "F+AT+SST+S" in latex and "t\\_f" in latex
    html = tables.render_grid(grid, "html")
    assert html.count("<table") == 1 and '<th colspan="3">wanet</th>' in html


def run_table(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "analysis" / "ablation_table.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_command_line_writes_a_file(results, tmp_path):
    out = tmp_path / "table.tex"
    done = run_table(str(results), "--format", "latex", "--out", str(out), "--t-f", "0.2")
    assert done.returncode == 0, done.stderr
    assert r"\toprule" in out.read_text()


def test_command_line_prints_both_tables(results, capsys):
    assert ablation_table.main([str(results)]) == 0
    printed = capsys.readouterr().out
    assert "## Ablation (Table 4)" in printed and "## Augmentation comparison" in printed


@pytest.mark.parametrize("args", [["does-not-exist"], ["RESULTS", "--dataset", "cifar10"],
                                  ["RESULTS", "--t-m", "0.7"], ["EMPTY"]])
def test_command_line_bad_input_is_one_line_and_exit_2(results, tmp_path, capsys, args):
    named = {"RESULTS": str(results), "EMPTY": str(tmp_path)}
    assert ablation_table.main([named.get(a, a) for a in args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "error:" in err


def test_command_line_rejects_a_threshold_outside_0_1(results):
    done = run_table(str(results), "--t-f", "2")
    assert done.returncode == 2 and "not a number in [0, 1]" in done.stderr


# ---------------------------------------------------------------------------------------------
# Figures

def rendered(paths: list[Path]) -> set[str]:
    for path in paths:
        assert path.exists() and path.stat().st_size > 1000, path
    return {p.name for p in paths}


def test_every_ablation_figure_renders(results, tmp_path, capsys):
    names = rendered(plots.render_all(results, tmp_path))
    expected = {"variant_bars"} | {f"{kind}_{attack}" for kind in
                                   ("entropy_histogram", "filter_quality", "training_curves")
                                   for attack in ATTACKS}
    assert names == {f"{stem}.{ext}" for stem in expected for ext in ("png", "svg")}
    notes = capsys.readouterr().out
    assert "skipped thresholds" in notes and "skipped pareto_front" in notes


def test_search_figures_render(search_results, tmp_path):
    names = rendered(plots.render_all(search_results, tmp_path))
    assert {"thresholds_synthetic_badnets_vab.png", "pareto_front.svg"} <= names


def test_entropy_histogram_at_a_chosen_split(results, tmp_path):
    history = pd.read_parquet(results / "history")
    trial_id = history["trial_id"].iloc[0]
    fig = plots.entropy_histogram_figure(history, trial_id, split=0)
    assert "split victim 0" in fig.axes[0].get_title()
    with pytest.raises(IndexError, match="invalid --split: 99"):
        plots.entropy_histogram_figure(history, trial_id, split=99)


def test_plots_command_line(search_results, tmp_path):
    only_pareto = tmp_path / "results"
    only_pareto.mkdir()
    (only_pareto / plots.PARETO_FILE).write_bytes((search_results / plots.PARETO_FILE).read_bytes())
    done = subprocess.run([sys.executable, str(ROOT / "analysis" / "plots.py"),
                           str(only_pareto), "--out", str(tmp_path / "figs")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "figs" / "pareto_front.png").stat().st_size > 1000
    assert "skipped variant_bars" in done.stdout and "skipped thresholds" in done.stdout


def test_search_without_a_second_variant_has_no_bars(search_results, tmp_path, capsys):
    plots.render_variant_bars(tables.load_trials(search_results), tmp_path, print)
    assert "skipped variant_bars" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The notebook

def test_notebook_is_valid_with_an_id_on_every_cell():
    """nbformat warns today, and will refuse later, a cell without an id."""
    nbformat = pytest.importorskip("nbformat")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nbformat.validate(nbformat.read(ROOT / "analysis" / "results.ipynb", as_version=4))


def test_notebook_runs_end_to_end(rows, tmp_path, monkeypatch):
    small = [r for r in rows if r["attack"] == "badnets" and r["defense"] in ("none", "vab")]
    outputs = run_notebook(write_results(tmp_path / "results", small), tmp_path / "figures",
                           monkeypatch)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("vb-sweep-grid" in o.get("data", {}).get("text/html", "") for o in outputs)
    assert (tmp_path / "figures" / "variant_bars.png").exists()


def test_notebook_finds_the_readme_commands_results_and_writes_nothing_there(
        rows, tmp_path, monkeypatch):
    """No environment variable: the notebook, run from a checkout, reads results/ablation-smoke
    (where the README's command writes) and leaves that folder as it was."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "analysis", checkout / "analysis",
                    ignore=shutil.ignore_patterns("__pycache__"))
    small = [r for r in rows if r["attack"] == "badnets" and r["defense"] in ("none", "vab")]
    results = write_results(checkout / "results" / "ablation-smoke", small)
    before = sorted(path.relative_to(results) for path in results.rglob("*"))
    outputs = run_notebook(None, None, monkeypatch, checkout=checkout)
    assert any(str(results) in "".join(o.get("text", "")) for o in outputs)
    assert sorted(path.relative_to(results) for path in results.rglob("*")) == before


def test_best_epoch_table_shows_the_best_ba_epochs_figures(tmp_path, capsys):
    rows = [trial_row("t1", "badnets", "none", 0, ba=0.90, asr=0.95, best_ba=0.93,
                      best_ba_asr=0.97, best_epoch=7),
            trial_row("t2", "badnets", "vab", 0, ba=0.85, asr=0.02, best_ba=0.88,
                      best_ba_asr=0.04, best_epoch=5)]
    folder = write_results(tmp_path / "best", rows)
    assert ablation_table.main([str(folder)]) == 0
    last = capsys.readouterr().out
    assert "| vab | 85.0 | 2.0 |" in last and "at the last epoch" in last
    assert ablation_table.main([str(folder), "--epoch", "best"]) == 0
    best = capsys.readouterr().out
    assert "| vab | 88.0 | 4.0 |" in best and "at the best-BA epoch" in best
    assert "| none | 93.0 | 97.0 |" in best


def test_best_epoch_of_rows_without_it_is_a_one_line_error(results, capsys):
    assert ablation_table.main([str(results), "--epoch", "best"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "best-epoch" in err


def test_training_curves_mark_the_best_ba_epoch_and_the_stages():
    history = pd.DataFrame({"trial_id": ["t"] * 4, "epoch": [1, 2, 3, 4],
                            "stage": ["mix", "mix", "sst", "sst"],
                            "ba": [0.5, 0.8, 0.7, 0.75], "asr": [0.9, 0.2, 0.05, 0.0],
                            "ra": [0.1, 0.6, 0.7, 0.7]})
    fig = plots.training_curves_figure(history, "t")
    texts = [text.get_text() for text in fig.axes[0].texts]
    assert "best BA 80.0 (ASR 20.0), epoch 2" in texts and {"mix", "sst"} <= set(texts)
    assert [line.get_label() for line in fig.axes[0].lines[:3]] == ["BA", "ASR", "RA"]
    assert plots.training_curves_figure(history, "other") is None


def test_variant_bars_label_every_bar_even_a_zero_one():
    section = pd.DataFrame({"attack": ["badnets"] * 2, "defense": ["none", "vab"], "n": [1, 1],
                            "ba_mean": [0.95, 0.9], "ba_std": [0.0, 0.0],
                            "asr_mean": [0.97, 0.0], "asr_std": [0.0, 0.0], "failed": [0, 0]})
    fig = plots.variant_bars_figure(section)
    ba_axis, asr_axis = fig.axes[:2]
    assert [text.get_text() for text in ba_axis.texts] == ["95", "90"]
    assert [text.get_text() for text in asr_axis.texts] == ["97", "0"]  # the 0% bar is labelled


def test_a_search_folder_gets_optunas_own_views_instead_of_the_heatmap(search_results, tmp_path):
    import shutil

    import optuna

    from vb_sweep.commands.search import open_study
    from vb_sweep.grid import manifest_for, write_manifest

    folder = tmp_path / "search"
    shutil.copytree(search_results, folder)
    write_manifest(folder, manifest_for("threshold_search", "thresholds-x", "smoke", {}))
    study, _ = open_study(f"sqlite:///{folder / plots.STUDY_FILE}", "thresholds-x")
    space = {name: optuna.distributions.FloatDistribution(0.05, 0.5) for name in ("t_f", "t_m")}
    for _ in range(6):
        trial = study.ask(space)
        study.tell(trial, [0.9 - 0.2 * trial.params["t_m"], 0.1 * trial.params["t_f"]])
    names = rendered(plots.render_all(folder, tmp_path / "figures"))
    views = {name.split(".")[0] for name in names if name.startswith("optuna_")}
    assert views == {"optuna_pareto_front", *(f"optuna_{view}_{objective}"
                                              for view in ("contour", "slice", "importances")
                                              for objective in ("ba", "asr"))}
    assert not [name for name in names if name.startswith("thresholds_")]


# ---------------------------------------------------------------------------------------------
# Schedule length as an axis: one folder per length, read together

# (BA, ASR, best-BA epoch's BA) per variant and number of epochs.
SCHEDULE = {
    "none": {20: (0.75, 0.99, 0.76), 200: (0.85, 0.99, 0.86)},
    "F+AT": {20: (0.62, 0.08, 0.63), 200: (0.80, 0.04, 0.81)},
    "vab": {20: (0.61, 0.02, 0.64), 200: (0.83, 0.01, 0.84)},
}


@pytest.fixture(scope="module")
def schedule_results(tmp_path_factory) -> list[Path]:
    folders = []
    for epochs in (20, 200):
        rows = [trial_row(f"e{epochs:03d}{i}", "badnets", defense, 0, ba=values[epochs][0],
                          asr=values[epochs][1], best_ba=values[epochs][2], best_ba_asr=0.5,
                          best_epoch=epochs // 2, epochs=epochs)
                for i, (defense, values) in enumerate(SCHEDULE.items())]
        folders.append(write_results(tmp_path_factory.mktemp(f"epochs{epochs}"), rows))
    return folders


def test_each_schedule_length_is_a_section_with_its_own_baseline(schedule_results):
    grid = tables.ablation_grid(tables.load_trials(*schedule_results))
    assert sorted(grid["epochs"].unique()) == [20, 200]
    vab_200 = grid[(grid["defense"] == "vab") & (grid["epochs"] == 200)].iloc[0]
    # DER against the 200-epoch no-defense run, not the 20-epoch one
    assert vab_200["der_mean"] == pytest.approx(((0.99 - 0.01) - (0.85 - 0.83) + 1) / 2)


def test_schedule_curve_sets_each_variant_against_no_defense_at_the_same_length(
        schedule_results):
    curve = tables.schedule_curve(tables.load_trials(*schedule_results)).set_index(
        ["defense", "epochs"])
    assert curve.loc[("vab", 20), "ba_vs_none"] == pytest.approx(0.61 - 0.75)
    assert curve.loc[("vab", 200), "ba_vs_none"] == pytest.approx(0.83 - 0.85)
    assert curve.loc[("F+AT", 200), "asr_mean"] == pytest.approx(0.04)
    assert curve.loc[("none", 20), "ba_vs_none"] == 0
    one_length = tables.load_trials(schedule_results[0])
    assert tables.schedule_curve(one_length).empty


def test_a_length_run_with_no_defense_alone_joins_the_curve(schedule_results, tmp_path):
    """`--defenses none --epochs 100` leaves t_f and t_m blank in its section (no variant
    there uses them); the curve still shows it beside the other lengths."""
    alone = write_results(tmp_path / "epochs100", [trial_row(
        "e1000", "badnets", "none", 0, ba=0.80, asr=0.99, best_ba=0.81, best_ba_asr=0.99,
        best_epoch=50, epochs=100)])
    curve = tables.schedule_curve(tables.load_trials(*schedule_results, alone))
    assert sorted(curve["epochs"].unique()) == [20, 100, 200]
    at_100 = curve[curve["epochs"] == 100]
    assert at_100["defense"].tolist() == ["none"] and at_100["ba_vs_none"].item() == 0
    assert at_100["t_f"].item() == curve.loc[curve["defense"] == "vab", "t_f"].iloc[0]


def test_by_epochs_command_line_prints_last_and_best_epoch_tables(schedule_results, capsys):
    folders = [str(folder) for folder in schedule_results]
    assert ablation_table.main([*folders, "--by-epochs"]) == 0
    printed = capsys.readouterr().out
    assert "| defense | 20 epochs | 200 epochs |" in printed
    assert "| vab | 61.0 / 2.0 (-14.0) | 83.0 / 1.0 (-2.0) |" in printed
    assert "| none | 75.0 / 99.0 | 85.0 / 99.0 |" in printed
    assert ablation_table.main([*folders, "--by-epochs", "--epoch", "best"]) == 0
    assert "| vab | 64.0 / 50.0 (-12.0) | 84.0 / 50.0 (-2.0) |" in capsys.readouterr().out
    assert ablation_table.main([*folders, "--epochs", "200"]) == 0
    assert "t_m 0.1, 200 epochs" in capsys.readouterr().out
    for bad in (["--by-epochs", "--findings"], ["--by-epochs", "--format", "latex"],
                ["--epochs", "50"], ["--epochs", "0"]):
        try:
            code = ablation_table.main([*folders, *bad])
        except SystemExit as stop:  # argparse's errors
            code = stop.code
        assert code == 2, bad
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_schedule_curve_figure_renders_from_the_folders_together(schedule_results, tmp_path):
    trials = tables.load_trials(*schedule_results)
    names = rendered(plots.render_schedule_curves(trials, tmp_path, print))
    assert names == {"schedule_curve_badnets.png", "schedule_curve_badnets.svg"}
    notes = []
    assert plots.render_schedule_curves(tables.load_trials(schedule_results[0]), tmp_path,
                                        notes.append) == []
    assert notes and "two or more schedule lengths" in notes[0]


def test_plots_command_draws_the_schedule_curve_from_several_folders(schedule_results,
                                                                    tmp_path, capsys):
    folders = [str(folder) for folder in schedule_results]
    assert plots.main([*folders, "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "schedule_curve_badnets.png").exists()
    assert plots.main([folders[0], "--out", str(tmp_path / "one")]) == 0
    assert not (tmp_path / "one" / "schedule_curve_badnets.png").exists()
    notes = []  # a folder given twice: its trials are read once
    plots.render_all([schedule_results[0]] * 2, tmp_path / "twice", note=notes.append)
    assert any("also in an earlier folder" in line for line in notes)
