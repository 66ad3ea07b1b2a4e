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
# network implants it after about 15 epochs at full lr: ASR 0.10 after the preset's 16 epochs,
# 0.89 after these 40 (seed 0, one thread; 0.98 before the authors' BatchNorm passes), so its
# bar is 0.85 where the others' is 0.9.
LONGER = {"wanet": dict(epochs=40, mix_epochs=20, lr_milestones=(20, 30, 35),
                        lambda_u_switch=30)}
MIN_ASR = {"wanet": 0.85}


@pytest.mark.parametrize("attack", ["badnets", "blend", "wanet"])
def test_dirty_label_attacks_take_without_defense(cache, clean_ba, attack):
    row = run_trial(smoke(attack=attack, defense="none", **LONGER.get(attack, {})),
                    cache=cache).row
    assert row["asr"] >= MIN_ASR.get(attack, 0.9), row
    assert row["ba"] >= clean_ba - 0.05, (row["ba"], clean_ba)


def test_sig_lifts_target_predictions_of_triggered_images(cache):
    # The vab_paper SIG (d = 20 on 10% of the target class: 50 images here) barely takes at
    # the smoke scale (ASR 0.07 against 0.00). BackdoorBench's d = 40 on half the target class
    # lifts the target rate of triggered images from 0.00 to 0.74.
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
    "The triggers are not input-aware enough at a smoke budget: the 10% cross samples carry "
    "real triggers under their true labels, so a network must tell an image's own trigger "
    "from another's, and neither the attacker's classifier nor the Beneficiary learns to. "
    "With the preset's budget (generators of width 8, 3 + 5 epochs on 1,000 images) the "
    "no-defense ASR is 0.52. Measured before the authors' BatchNorm passes: longer generator "
    "training leaves the attacker's classifier "
    "guessing (backdoor + cross accuracy about 1.2 where 1.0 is chance): 8 mask and 40 joint "
    "epochs on all 5,000 images, backdoor 0.64 and cross 0.59, downstream ASR 0.55. With the "
    "objects at full opacity: 60 joint epochs on 2,000 images, 0.58 / 0.59; batches of 32 on "
    "all 5,000 images, 0.61 / 0.63 after 17 epochs; converged masks (density 0.036, two "
    "images' masks 88% disjoint), 0.68 / 0.40 and a downstream ASR of 0.41 (0.46 after 40 "
    "Beneficiary epochs). On the cpu preset (CIFAR-10) the ASR is 0.75."))
def test_dynamic_takes_without_defense(cache):
    row = run_trial(smoke(attack="dynamic", defense="none"), cache=cache).row
    assert row["asr"] >= 0.8, row


def test_cl_lifts_target_predictions_of_triggered_images(cache):
    # As on CIFAR-10 (cpu preset: 0.04 at 10%, 0.77 at half the target class), the attack needs
    # many poisoned images: at 10% (50 images) the target rate of triggered images is 0.03. At
    # half the target class it is a race between the network learning the shapes and learning
    # the patch, and single runs spread from 0.00 to 0.98 (0.00 without the patch; with two
    # threads seeds 0, 1, 2 give 0.00, 0.98, 0.13), so the test asks for the mean lift over three
    # seeds.
    rows = [run_trial(smoke(attack="cl", defense="none", poison_rate=0.5, seed=seed),
                      cache=cache).row for seed in (0, 1, 2)]
    lifts = [row["asr"] - row["clean_target_rate"] for row in rows]
    assert sum(lifts) / len(lifts) >= 0.15, lifts
