"""The attacks and the defense are real: full `smoke` trials on the generated data.

Slow (a minute or more per trial on 2 cores): run with `python -m pytest -m slow`.
"""

import pytest
import torch

from vb_sweep.cache import ArtifactCache
from vb_sweep.config import preset_config
from vb_sweep.metrics import predict
from vb_sweep.trial import load_trial_data, make_attack, run_trial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ArtifactCache(tmp_path_factory.mktemp("cache"))


def smoke(**changes):
    return preset_config("smoke", **changes).validate()


@pytest.fixture(scope="module")
def clean_ba(cache):
    return run_trial(smoke(attack="badnets", defense="none", poison_rate=0.0), cache=cache).row["ba"]


WANET_TOO_SUBTLE = pytest.mark.xfail(strict=True, reason=(
    "WaNet's warp (k=4, s=0.5) moves pixels by about a quarter pixel on average; 8 epochs on "
    "5,000 images do not learn it (smoke ASR 0.07). Known limitation of the smoke scale."))


@pytest.mark.parametrize("attack", ["badnets", "blend",
                                    pytest.param("wanet", marks=WANET_TOO_SUBTLE)])
def test_dirty_label_attacks_take_without_defense(cache, clean_ba, attack):
    row = run_trial(smoke(attack=attack, defense="none"), cache=cache).row
    assert row["asr"] >= 0.9, row
    assert row["ba"] >= clean_ba - 0.05, (row["ba"], clean_ba)


def test_sig_lifts_target_predictions_of_triggered_images(cache):
    # The vab_paper SIG (d = 20 on 10% of the target class: 50 images here) does not take at
    # the smoke scale (ASR 0.00); BackdoorBench's d = 40 on half the target class does.
    config = smoke(attack="sig", defense="none", attack_preset="backdoorbench", poison_rate=0.5)
    saved = {}
    result = run_trial(config, cache=cache, save_checkpoint=lambda s: saved.update(s))
    data = load_trial_data(config)
    attack = make_attack(config, data)
    from vb_sweep.models import build_model
    from vb_sweep.trial import step_settings

    model = build_model(config.model, data.train.num_classes)
    model.load_state_dict(saved["model"])
    normalize = step_settings(config, data, "cpu", 64, None).normalize
    non_target = data.test.images[data.test.labels != config.target]
    clean_rate = (predict(model, non_target, normalize, 512) == config.target).float().mean()
    triggered_rate = result.row["asr"]
    assert triggered_rate >= clean_rate + 0.2, (triggered_rate, float(clean_rate))
    assert triggered_rate >= 10 * clean_rate, (triggered_rate, float(clean_rate))
    assert torch.isfinite(clean_rate)


@pytest.fixture(scope="module")
def badnets_rows(cache):
    none = run_trial(smoke(attack="badnets", defense="none"), cache=cache).row
    vab = run_trial(smoke(attack="badnets", defense="vab"), cache=cache).row
    return none, vab


def test_vab_defeats_badnets(badnets_rows):
    none, vab = badnets_rows
    assert none["asr"] - none["clean_target_rate"] >= 0.9, none
    # What the trigger adds over the model's own bias towards the target: the under-trained
    # smoke Beneficiary (see below) predicts the target for about half of all clean images, so
    # its raw ASR (0.59 for seed 0) says nothing about a backdoor.
    assert vab["asr"] - vab["clean_target_rate"] <= 0.1, vab
    assert vab["first_filter_recall"] >= 0.9


@pytest.mark.xfail(strict=True, reason=(
    "AttentionMix trains the Beneficiary slowly: 4 mix epochs leave it far below plain training "
    "(smoke BA 0.45 at 8 epochs, against 0.99 without defense; 0.58 at 12 epochs). The model "
    "never predicts 5 of the 10 classes and gives the target to 58% of clean images."))
def test_vab_keeps_ba_near_no_defense_and_asr_low(badnets_rows):
    none, vab = badnets_rows
    assert vab["ba"] >= none["ba"] - 0.1, (vab["ba"], none["ba"])
    assert vab["asr"] <= 0.2, vab
