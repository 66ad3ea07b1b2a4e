"""The attacks and the defense are real: full `smoke` trials on the generated data.

Slow (half a minute to a minute per trial on one core): run with `python -m pytest -m slow`.
"""

import pytest

from vb_sweep.cache import ArtifactCache
from vb_sweep.config import preset_config
from vb_sweep.trial import run_trial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ArtifactCache(tmp_path_factory.mktemp("cache"))


def smoke(**changes):
    return preset_config("smoke", **changes).validate()


@pytest.fixture(scope="module")
def clean_ba(cache):
    return run_trial(smoke(attack="badnets", defense="none", poison_rate=0.0), cache=cache).row["ba"]


# WaNet's warp (k = 4, s = 0.5) moves pixels by about a quarter pixel; at the smoke scale the
# network implants it after about 15 epochs (ASR 0.02 after the preset's 12, 0.95 after 40).
LONGER = {"wanet": dict(epochs=40, mix_epochs=20, lr_milestones=(20, 30, 35),
                        lambda_u_switch=30)}


@pytest.mark.parametrize("attack", ["badnets", "blend", "wanet"])
def test_dirty_label_attacks_take_without_defense(cache, clean_ba, attack):
    row = run_trial(smoke(attack=attack, defense="none", **LONGER.get(attack, {})),
                    cache=cache).row
    assert row["asr"] >= 0.9, row
    assert row["ba"] >= clean_ba - 0.05, (row["ba"], clean_ba)


def test_sig_lifts_target_predictions_of_triggered_images(cache):
    # The vab_paper SIG (d = 20 on 10% of the target class: 50 images here) does not take at
    # the smoke scale (ASR 0.00): the generated classes are easy, so the network has no need of
    # the sinusoid. BackdoorBench's d = 40 on half the target class lifts the target rate of
    # triggered images from 0.00 to 0.22-0.23 (seeds 0 and 1).
    config = smoke(attack="sig", defense="none", attack_preset="backdoorbench", poison_rate=0.5)
    row = run_trial(config, cache=cache).row
    assert row["asr"] >= row["clean_target_rate"] + 0.15, row
    assert row["asr"] >= 10 * row["clean_target_rate"], row


@pytest.fixture(scope="module")
def badnets_rows(cache):
    none = run_trial(smoke(attack="badnets", defense="none"), cache=cache).row
    vab = run_trial(smoke(attack="badnets", defense="vab"), cache=cache).row
    return none, vab


def test_vab_defeats_badnets_and_keeps_ba(badnets_rows):
    none, vab = badnets_rows
    assert none["asr"] - none["clean_target_rate"] >= 0.9, none
    assert vab["asr"] <= 0.2 and vab["asr"] - vab["clean_target_rate"] <= 0.1, vab
    assert vab["ba"] >= none["ba"] - 0.1, (vab["ba"], none["ba"])
    assert vab["first_filter_recall"] >= 0.9 and vab["filter_recall"] >= 0.9, vab


@pytest.mark.xfail(strict=True, reason=(
    "The triggers are not input-aware enough at a smoke budget. With the preset's (generators "
    "of width 8, 3 + 5 epochs on 1,000 images) the attack's own classifier never learns the "
    "clean task (clean accuracy 0.10, backdoor 1.00, cross 0.06) and the no-defense ASR is "
    "0.53 (0.67 after 40 Beneficiary epochs). With all 5,000 images, the tiny CNN and 20 joint "
    "epochs it does (clean 0.997) but cannot tell an image's trigger from another's (backdoor "
    "0.51, cross 0.63), and the ASR is 0.47. Converged masks do not help: 10 mask epochs on "
    "5,000 images (density 0.036; two images' masks 88% disjoint) and 15 joint epochs "
    "(backdoor 0.68, cross 0.40) give ASR 0.41, 0.46 after 40 epochs, 0.41 with the small CNN. "
    "The 10% cross samples carry real triggers under their true labels, so a network must tell "
    "an image's own trigger from another's, which neither the attacker's classifier nor the "
    "Beneficiary learns at this budget."))
def test_dynamic_takes_without_defense(cache):
    row = run_trial(smoke(attack="dynamic", defense="none"), cache=cache).row
    assert row["asr"] >= 0.8, row


@pytest.mark.xfail(strict=True, reason=(
    "On the generated data, whose pixel noise is 2.5/255, the 16/255 PGD perturbation is the "
    "easiest feature of the poisoned target images, and the network learns it rather than the "
    "patch: ASR 0.00 at 10%, 50% and 100% of the target class; at 100% the clean target-class "
    "test images are misclassified too (BA 0.90), though patched ones are not predicted as the "
    "target. The perturbations do transfer (an independently trained tiny CNN classifies "
    "them at 0.00, as does the crafting network), and crafting on an adversarially trained "
    "network (FGSM training at 8/255) or stamping BackdoorBench's 3x3 white patch changes "
    "nothing (ASR 0.00 at half the target class)."))
def test_cl_lifts_target_predictions_of_triggered_images(cache):
    row = run_trial(smoke(attack="cl", defense="none", poison_rate=0.5), cache=cache).row
    assert row["asr"] >= row["clean_target_rate"] + 0.15, row
