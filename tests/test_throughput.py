"""The benchmark's bare-model rates run the model the way each kind of pass does."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from experiments.throughput import BATCH_STATS, EVAL, STEP, BareModel


class Pause(nn.Module):
    """A layer that takes a known time: the timing tests' bounds hold on a busy machine."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def bare_model(pause: float = 0.0) -> tuple[BareModel, nn.BatchNorm2d]:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3)
    model = nn.Sequential(norm, Pause(pause), nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    return BareModel(model, (3, 4, 4), "cpu", None, seconds=0.01), norm


@pytest.mark.parametrize("mode, moves_statistics, trains", [
    (EVAL, False, False), (BATCH_STATS, True, False), (STEP, True, True)])
def test_each_pass_mode_runs_the_model_as_the_engine_does(mode, moves_statistics, trains):
    bare, norm = bare_model()
    weights = bare.model[3].weight.detach().clone()
    assert bare.rate(16, mode) > 0
    assert (norm.num_batches_tracked.item() > 0) == moves_statistics
    assert (not torch.equal(weights, bare.model[3].weight)) == trains
    assert bare.model.training  # left in train mode, as the stages expect


def test_a_step_of_parts_forwards_each_part_and_steps_the_optimiser_once():
    bare, norm = bare_model()
    steps = []
    bare.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    assert bare.rate((16, 16, 4), STEP) > 0
    assert norm.num_batches_tracked.item() == 3 * len(steps)  # three forwards a step
    assert bare.optimizer.defaults["momentum"] == 0.9  # the Beneficiary's optimiser
    assert bare.key(16, STEP) == bare.key((16,), STEP)


def test_a_stage_is_timed_against_the_bare_passes_run_after_each_of_its_steps():
    bare, norm = bare_model(pause=0.01)  # every forward of the bare model takes >= 10 ms
    bare.rounds = 3
    steps_run = []

    def stage(after_step):
        for _ in range(4):
            time.sleep(0.005)  # the stage's own work
            steps_run.append(1)
            after_step()

    tracked = norm.num_batches_tracked.item()
    figure = bare.timed_stage("steps", stage, 64, [((8, 8), STEP), (16, BATCH_STATS)])
    assert len(steps_run) == 12 and figure["rounds"] == 3
    # warm-up (3 passes of each) plus, after each of the 12 steps, a 2-part step and a no-grad pass
    assert norm.num_batches_tracked.item() - tracked == 3 * 3 + 12 * 3
    # the stage's 4 x 5 ms, without the bare passes' 4 x 3 forwards x 10 ms (>= 0.14 s with them)
    assert 0.02 <= figure["seconds"] < 0.13
    assert figure["overhead"] == 0.0 and figure["model_share"] == 1.0
    assert figure["overhead_low"] <= figure["overhead"] <= figure["overhead_high"]
    with pytest.raises(ValueError, match="pass mode"):
        bare.rate(16, "train")


def test_a_stage_slower_than_its_bare_passes_shows_the_difference_as_overhead():
    bare, _ = bare_model()

    def stage(after_step):
        time.sleep(0.2)
        after_step()

    figure = bare.timed_stage("sleepy", stage, 16, [(16, STEP)])
    assert figure["seconds"] >= 0.2 and figure["overhead"] > 0.5


def test_breakdown_times_every_part_of_a_whole_trial(capsys):
    """benchmark.py --breakdown: the trial's sections, nested as in the code, their own time
    adding up to the trial's wall time, and the engine options it ran with."""
    from experiments import benchmark

    tiny = ["train_per_class=12", "test_per_class=6", "warm_up=2", "batch_size=32",
            "victim_batch_size=32", "epochs=2", "mix_epochs=1", "lr_milestones=[1]",
            "lambda_u_switch=1", "min_unlabeled_batch=1"]
    assert benchmark.main(["--preset", "smoke", "--breakdown", "--set", *tiny]) == 0
    printed = capsys.readouterr().out
    assert "engine options: precision" in printed and "channels_last=True" in printed
    for part in ("victim", "entropy pass", "mix epoch", "attention (no-grad)", "sst epoch",
                 "pseudo-labels (no-grad)", "backward", "evaluation", "trial wall time",
                 "victim: forward"):
        assert part in printed, part
    table = printed[printed.index("section (own time)"):printed.index("trial wall time")]
    rows = [line.split() for line in table.splitlines()[1:] if line.strip()]
    own_seconds = sum(float(row[-3]) for row in rows if row[-1].isdigit())
    outside = float(rows[-1][-2])  # the last row: outside every section (seconds, share)
    wall = float(printed[printed.index("trial wall time"):].split()[3])
    assert own_seconds + outside == pytest.approx(wall, abs=0.05 * len(rows) + 0.1)
