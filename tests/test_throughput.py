"""The benchmark's bare-model rates run the model the way each kind of pass does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vb_sweep.throughput import BATCH_STATS, EVAL, STEP, BareModel


def bare_model() -> tuple[BareModel, nn.BatchNorm2d]:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3)
    model = nn.Sequential(norm, nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    return BareModel(model, (3, 4, 4), "cpu", None, seconds=0.01), norm


@pytest.mark.parametrize("mode, moves_statistics, trains", [
    (EVAL, False, False), (BATCH_STATS, True, False), (STEP, True, True)])
def test_each_pass_mode_runs_the_model_as_the_engine_does(mode, moves_statistics, trains):
    bare, norm = bare_model()
    weights = bare.model[2].weight.detach().clone()
    assert bare.rate(16, mode) > 0
    assert (norm.num_batches_tracked.item() > 0) == moves_statistics
    assert (not torch.equal(weights, bare.model[2].weight)) == trains
    assert bare.model.training  # left in train mode, as the stages expect


def test_rates_are_measured_afresh_around_a_stage():
    bare, _ = bare_model()
    bare.rate(16, STEP)
    before = dict(bare.rates)
    figure = bare.timed_stage("nothing", lambda: None, 16, [(16, 16, STEP)])
    assert figure["stage"] == "nothing" and 0.0 <= figure["overhead"] <= 1.0
    assert bare.rates[(16, STEP)] != before[(16, STEP)]  # measured again, not the cached rate
    with pytest.raises(ValueError, match="pass mode"):
        bare.rate(16, "train")


def test_a_stage_of_several_rounds_shows_the_median_round_and_the_range():
    bare, _ = bare_model()
    bare.rounds = 3
    runs = []
    figure = bare.timed_stage("count", lambda: runs.append(1), 16, [(16, 16, STEP)])
    assert len(runs) == 3 and figure["rounds"] == 3
    assert figure["overhead_low"] <= figure["overhead"] <= figure["overhead_high"]
