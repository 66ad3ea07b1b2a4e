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


@pytest.mark.parametrize("attack", ["badnets", "blend", "wanet"])
def test_dirty_label_attacks_take_without_defense(cache, clean_ba, attack):
    row = run_trial(smoke(attack=attack, defense="none"), cache=cache).row
    assert row["asr"] >= 0.9, row
    assert row["ba"] >= clean_ba - 0.05, (row["ba"], clean_ba)


def test_sig_lifts_target_predictions_of_triggered_images(cache):
    config = smoke(attack="sig", defense="none")
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
    assert triggered_rate >= clean_rate + 0.3, (triggered_rate, float(clean_rate))
    assert torch.isfinite(clean_rate)


def test_vab_defeats_badnets(cache):
    none = run_trial(smoke(attack="badnets", defense="none"), cache=cache).row
    vab = run_trial(smoke(attack="badnets", defense="vab"), cache=cache).row
    assert none["asr"] >= 0.9
    assert vab["asr"] <= 0.2
    assert vab["first_filter_recall"] >= 0.9
