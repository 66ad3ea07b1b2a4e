"""The paper's findings (docs/method.md section 4), checked against a results grid.

    verdicts = check_findings(load_trials("results/ablation-cpu"))    # a DataFrame
    print(render_findings(verdicts))

Each finding is a claim about two cells of one Table 4 section (one attack, two variants),
judged on the cell means by a margin:
- ``holds``: the claim is true by more than the noise;
- ``fails``: it is false by more than the noise;
- ``cannot judge``: a cell is missing, the attack did not take (nothing to remove), or the
  difference is inside the noise. The noise is ``noise`` (default 0.03, a fraction) for cells of
  one seed, and twice the larger standard deviation of the two cells when both have several.
  With ``noise="seeds"`` the one-seed noise is measured instead: twice the pooled standard
  deviation of the section's cells that have several seeds (BA's for BA claims, ASR's for ASR
  claims), e.g. when only `none` and `vab` were run with several seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from vb_sweep.analysis.tables import SECTION_KEYS, ablation_grid, describe_section, split_sections
from vb_sweep.errors import ConfigError

HOLDS, FAILS, UNKNOWN = "holds", "fails", "cannot judge"
DEFAULT_NOISE = 0.03
SEEDS = "seeds"       # noise measured from the cells with several seeds
TOOK = 0.5            # an attack "took" when its no-defense ASR reaches this
SMALL_BA_COST = 0.05  # what "a small cost in BA" allows


@dataclass
class Cell:
    ba: float
    asr: float
    ba_std: float
    asr_std: float
    n: int


@dataclass
class Claim:
    """One finding for one attack: ``margin(cells)`` > 0 when the finding holds; None when the
    cells cannot judge it (the reason is ``unjudgeable(cells)``)."""

    finding: str
    attacks: tuple[str, ...] | None           # None: every attack of the grid
    variants: tuple[str, ...]                 # the cells it reads, in order
    describe: Callable[[dict[str, Cell]], str]
    margin: Callable[[dict[str, Cell]], float]
    unjudgeable: Callable[[dict[str, Cell]], str | None] = lambda cells: None
    metric: str = "asr"                       # whose standard deviation sets the noise


def _asr(cells, name):
    return f"{name} ASR {cells[name].asr:.2f}"


def _ba(cells, name):
    return f"{name} BA {cells[name].ba:.2f}"


CLAIMS = (
    Claim("filtering alone fails", ("blend", "wanet", "dynamic"), ("none", "F"),
          lambda c: f"{_asr(c, 'F')} vs {_asr(c, 'none')} (F fails while its ASR >= {TOOK:.2f})",
          lambda c: c["F"].asr - TOOK,
          lambda c: None if c["none"].asr >= TOOK else "the attack did not take"),
    Claim("AttentionMix cuts ASR sharply", None, ("F", "F+AT"),  # by more than half
          lambda c: f"{_asr(c, 'F+AT')} vs {_asr(c, 'F')} (sharply: by more than half)",
          lambda c: (c["F"].asr - c["F+AT"].asr) - c["F"].asr / 2,
          lambda c: None if c["F"].asr >= TOOK else "filtering alone already removes it"),
    Claim("AttentionMix costs little BA", None, ("F", "F+AT"),
          lambda c: f"{_ba(c, 'F+AT')} vs {_ba(c, 'F')} (little: at most {SMALL_BA_COST:.2f})",
          lambda c: SMALL_BA_COST - (c["F"].ba - c["F+AT"].ba), metric="ba"),
    Claim("SST restores BA", None, ("F+AT", "F+AT+SST"),
          lambda c: f"{_ba(c, 'F+AT+SST')} vs {_ba(c, 'F+AT')}",
          lambda c: c["F+AT+SST"].ba - c["F+AT"].ba, metric="ba"),
    Claim("SST further lowers ASR", ("wanet", "dynamic"), ("F+AT", "F+AT+SST"),
          lambda c: f"{_asr(c, 'F+AT+SST')} vs {_asr(c, 'F+AT')}",
          lambda c: c["F+AT"].asr - c["F+AT+SST"].asr),
    Claim("SST lets ASR rebound", ("badnets", "blend", "cl"), ("F+AT", "F+AT+SST"),
          lambda c: f"{_asr(c, 'F+AT+SST')} vs {_asr(c, 'F+AT')}",
          lambda c: c["F+AT+SST"].asr - c["F+AT"].asr),
    Claim("suppression removes the rebound", ("badnets", "blend", "cl"),
          ("F+AT", "F+AT+SST", "F+AT+SST+S"),
          lambda c: f"{_asr(c, 'F+AT+SST+S')} vs {_asr(c, 'F+AT+SST')}",
          lambda c: c["F+AT+SST"].asr - c["F+AT+SST+S"].asr,
          lambda c: None if c["F+AT+SST"].asr > c["F+AT"].asr else "no rebound to remove"),
    Claim("the full method is the most secure", None,
          ("F", "F+AT", "F+AT+SST", "F+AT+SST+S", "vab"),
          lambda c: f"{_asr(c, 'vab')} vs lowest other "
                    f"{min(v.asr for k, v in c.items() if k != 'vab'):.2f}",
          lambda c: min(v.asr for k, v in c.items() if k != "vab") - c["vab"].asr),
)


def _cells(section_grid: pd.DataFrame, attack: str) -> dict[str, Cell]:
    rows = section_grid[(section_grid["attack"] == attack) & (section_grid["n"] > 0)]
    return {row.defense: Cell(row.ba_mean, row.asr_mean, row.ba_std, row.asr_std, int(row.n))
            for row in rows.itertuples()}


def _noise(cells: dict[str, Cell], metric: str, noise: float) -> float:
    if all(cell.n > 1 for cell in cells.values()):
        stds = [getattr(cell, f"{metric}_std") for cell in cells.values()]
        if all(not math.isnan(std) for std in stds):
            return 2 * max(stds)
    return noise


def judge(claim: Claim, cells: dict[str, Cell], noise: float) -> tuple[str, str]:
    """(verdict, evidence) of one claim on one attack's cells."""
    missing = [name for name in claim.variants if name not in cells]
    if missing:
        return UNKNOWN, f"no {', '.join(missing)} cell"
    cells = {name: cells[name] for name in claim.variants}
    evidence = claim.describe(cells)
    reason = claim.unjudgeable(cells)
    if reason:
        return UNKNOWN, f"{evidence}: {reason}"
    margin, limit = claim.margin(cells), _noise(cells, claim.metric, noise)
    if abs(margin) <= limit:
        return UNKNOWN, f"{evidence}: margin {margin:+.2f} inside the noise ({limit:.2f})"
    return (HOLDS if margin > 0 else FAILS), f"{evidence}, margin {margin:+.2f}"


def seed_noise(section_grid: pd.DataFrame) -> dict[str, float]:
    """Per metric, twice the pooled standard deviation over the cells with several seeds."""
    several = section_grid[section_grid["n"] > 1]
    if several.empty:
        raise ConfigError("--noise", SEEDS, "a fraction, or seeds where some cells of every "
                          "section have several seeds (this one has none)")
    return {metric: 2 * math.sqrt((several[f"{metric}_std"] ** 2).mean())
            for metric in ("ba", "asr")}


def check_findings(trials: pd.DataFrame, noise: float | str = DEFAULT_NOISE,
                   **filters) -> pd.DataFrame:
    """One row per section, finding and attack: the verdict and the cells that decide it;
    ``noise``: the one-seed noise, a fraction or ``SEEDS``."""
    grid = ablation_grid(trials, **filters)
    rows = []
    for section, section_grid in split_sections(grid):
        attacks = list(dict.fromkeys(section_grid["attack"]))
        noises = seed_noise(section_grid) if noise == SEEDS else {"ba": noise, "asr": noise}
        for claim in CLAIMS:
            for attack in claim.attacks or attacks:
                if attack not in attacks:
                    continue
                verdict, evidence = judge(claim, _cells(section_grid, attack),
                                          noises[claim.metric])
                rows.append({**section, "finding": claim.finding, "attack": attack,
                             "verdict": verdict, "evidence": evidence})
    return pd.DataFrame(rows, columns=[*SECTION_KEYS, "finding", "attack", "verdict",
                                       "evidence"])


def render_findings(verdicts: pd.DataFrame) -> str:
    """Markdown: one list per section, a line per finding and attack."""
    if verdicts.empty:
        return "## Findings (docs/method.md section 4)\n\nNo trials.\n"
    parts = ["## Findings (docs/method.md section 4)"]
    for _, first in verdicts.drop_duplicates(SECTION_KEYS).iterrows():
        section = {key: first[key] for key in SECTION_KEYS}
        mask = pd.Series(True, index=verdicts.index)
        for key, value in section.items():
            mask &= verdicts[key].isna() if pd.isna(value) else verdicts[key] == value
        lines = [f"- {row.finding} ({row.attack}): {row.evidence} — **{row.verdict}**"
                 for row in verdicts[mask].itertuples()]
        parts.append(f"### {describe_section(section)}\n\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"
