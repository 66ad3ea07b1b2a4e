"""The paper's findings checked on small grids where each holds, fails, or cannot be judged."""

from __future__ import annotations

import pandas as pd
import pytest

from vb_sweep.analysis import ablation_table
from vb_sweep.analysis.findings import FAILS, HOLDS, UNKNOWN, check_findings
from vb_sweep.errors import ConfigError
from tests.test_analysis import trial_row, write_results

# (defense -> (BA, ASR)) per attack: a grid where every finding of docs/method.md section 4 holds.
PAPER_LIKE = {
    "blend": {"none": (0.93, 0.99), "F": (0.92, 0.97), "F+AT": (0.90, 0.20),
              "F+AT+SST": (0.92, 0.30), "F+AT+SST+S": (0.92, 0.05), "vab": (0.91, 0.01)},
    "wanet": {"none": (0.91, 0.90), "F": (0.90, 0.85), "F+AT": (0.89, 0.30),
              "F+AT+SST": (0.93, 0.10), "F+AT+SST+S": (0.92, 0.08), "vab": (0.91, 0.02)},
}


def grid_rows(cells: dict, seeds=(0,), jitter=0.0) -> list[dict]:
    rows, number = [], 0
    for attack, variants in cells.items():
        for defense, (ba, asr) in variants.items():
            for seed in seeds:
                number += 1
                rows.append(trial_row(f"t{number}", attack, defense, seed,
                                      ba=ba + jitter * seed, asr=asr + jitter * seed))
    return rows


def verdicts(cells: dict, **options) -> dict[tuple[str, str], str]:
    frame = check_findings(pd.DataFrame(grid_rows(cells, **options.pop("rows", {}))), **options)
    return {(row.finding, row.attack): row.verdict for row in frame.itertuples()}


def test_every_finding_holds_on_a_paper_like_grid():
    found = verdicts(PAPER_LIKE)
    assert found[("filtering alone fails", "blend")] == HOLDS
    assert found[("filtering alone fails", "wanet")] == HOLDS
    assert found[("AttentionMix cuts ASR sharply", "blend")] == HOLDS
    assert found[("AttentionMix costs little BA", "wanet")] == HOLDS
    assert found[("SST restores BA", "wanet")] == HOLDS
    assert found[("SST further lowers ASR", "wanet")] == HOLDS
    assert found[("SST lets ASR rebound", "blend")] == HOLDS
    assert found[("suppression removes the rebound", "blend")] == HOLDS
    assert found[("the full method is the most secure", "blend")] == HOLDS
    assert ("SST lets ASR rebound", "wanet") not in found  # the paper claims it for others


def test_findings_fail_where_the_grid_says_otherwise():
    cells = {"blend": {**PAPER_LIKE["blend"], "F": (0.92, 0.10), "F+AT+SST": (0.85, 0.10),
                       "vab": (0.91, 0.40)}}
    found = verdicts(cells)
    assert found[("filtering alone fails", "blend")] == FAILS        # F removed it
    assert found[("SST restores BA", "blend")] == FAILS              # 0.90 -> 0.85
    assert found[("SST lets ASR rebound", "blend")] == FAILS         # 0.20 -> 0.10
    assert found[("the full method is the most secure", "blend")] == FAILS
    costly = {"wanet": {**PAPER_LIKE["wanet"], "F+AT": (0.70, 0.30)}}  # 20 points of BA
    assert verdicts(costly)[("AttentionMix costs little BA", "wanet")] == FAILS


def test_what_a_grid_cannot_judge_says_why():
    cells = {"blend": {**PAPER_LIKE["blend"], "none": (0.93, 0.30), "F+AT+SST": (0.91, 0.21)},
             "badnets": {"none": (0.93, 0.99), "F": (0.93, 0.01), "F+AT": (0.91, 0.00),
                         "vab": (0.92, 0.00)}}
    frame = check_findings(pd.DataFrame(grid_rows(cells)))
    by_key = {(r.finding, r.attack): r for r in frame.itertuples()}
    took = by_key[("filtering alone fails", "blend")]
    assert took.verdict == UNKNOWN and "did not take" in took.evidence
    rebound = by_key[("SST lets ASR rebound", "blend")]                 # +0.01
    assert rebound.verdict == UNKNOWN and "inside the noise" in rebound.evidence
    missing = by_key[("SST restores BA", "badnets")]
    assert missing.verdict == UNKNOWN and "no F+AT+SST cell" in missing.evidence
    already = by_key[("AttentionMix cuts ASR sharply", "badnets")]
    assert already.verdict == UNKNOWN and "already removes it" in already.evidence


def test_several_seeds_set_the_noise_from_their_spread():
    cells = {"blend": {**PAPER_LIKE["blend"], "F+AT+SST": (0.95, 0.30)}}  # BA +0.05 over F+AT
    assert verdicts(cells)[("SST restores BA", "blend")] == HOLDS
    spread = verdicts(cells, rows={"seeds": (0, 1, 2), "jitter": 0.05})
    assert spread[("SST restores BA", "blend")] == UNKNOWN  # std 0.05: noise 0.10


def test_seeds_of_some_cells_set_the_noise_of_the_one_seed_cells():
    """Only none and vab with three seeds (BA and ASR at x, x + 0.04, x - 0.04: std 0.04,
    noise 0.08): a one-seed difference of 0.05 is then inside the noise, where 0.03 judged it."""
    cells = {"blend": {**PAPER_LIKE["blend"], "F+AT+SST": (0.95, 0.30)}}  # BA +0.05 over F+AT
    rows = grid_rows(cells)
    rows += [trial_row(f"s{number}", "blend", defense, seed,
                       ba=cells["blend"][defense][0] + (0.04 if seed == 1 else -0.04),
                       asr=cells["blend"][defense][1] + (0.04 if seed == 1 else -0.04))
             for number, (defense, seed) in enumerate(
                 [(d, s) for d in ("none", "vab") for s in (1, 2)])]
    frame = pd.DataFrame(rows)
    fixed = check_findings(frame).set_index(["finding", "attack"])
    measured = check_findings(frame, noise="seeds").set_index(["finding", "attack"])
    key = ("SST restores BA", "blend")
    assert fixed.loc[key, "verdict"] == HOLDS
    assert measured.loc[key, "verdict"] == UNKNOWN
    assert "inside the noise (0.08)" in measured.loc[key, "evidence"]
    one_seed = pd.DataFrame(grid_rows(cells))
    with pytest.raises(ConfigError, match="--noise"):
        check_findings(one_seed, noise="seeds")


def test_command_line_prints_the_findings(tmp_path, capsys):
    folder = write_results(tmp_path / "grid", grid_rows(PAPER_LIKE))
    assert ablation_table.main([str(folder), "--findings"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("## Findings (docs/method.md section 4)")
    expected = ("filtering alone fails (blend): F ASR 0.97 vs none ASR 0.99 (F fails while its "
                "ASR >= 0.50), margin +0.47 — **holds**")
    assert expected in printed
