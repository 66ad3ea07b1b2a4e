"""The trained attacks (Dynamic, CL-16) and their budgets, on tiny random data with tiny budgets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vb_sweep.attacks import ATTACKS, build_attack
from vb_sweep.attacks.budgets import ATTACK_BUDGETS, attack_budget
from vb_sweep.attacks.cl import pgd_linf
from vb_sweep.augment import Normalizer
from vb_sweep.cache import ArtifactCache
from vb_sweep.data.base import ImageDataset
from vb_sweep.errors import ConfigError

TINY_DYNAMIC = {"classifier": "small_cnn", "generator_width": 4, "batch_size": 32,
                "mask_epochs": 1, "mask_lr_milestones": [], "pattern_epochs": 1}
TINY_CL = {"classifier": "small_cnn", "train_epochs": 1, "batch_size": 32, "pgd_steps": 3,
           "pgd_step_size": 8 / 255}


def make_dataset(per_class: int = 20, num_classes: int = 4, seed: int = 0) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    n = per_class * num_classes
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.arange(num_classes).repeat(per_class)
    return ImageDataset(images, labels, num_classes, [f"c{i}" for i in range(num_classes)],
                        "tiny")


@pytest.fixture(scope="module")
def train() -> ImageDataset:
    return make_dataset()


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def dynamic(train, cache_root):
    attack = build_attack("dynamic", target=1, **TINY_DYNAMIC)
    cache = ArtifactCache(cache_root)
    attack.prepare(train, cache=cache)
    assert [key.split("-")[:2] for key in cache.builds] == [["dynamic", "generators"]]
    return attack


@pytest.fixture(scope="module")
def cl(train, cache_root):
    attack = build_attack("cl", target=1, poison_rate=0.5, **TINY_CL)
    cache = ArtifactCache(cache_root)
    attack.prepare(train, cache=cache)
    assert sorted(key.rsplit("-", 1)[0] for key in cache.builds) == ["cl-adversarial",
                                                                     "clean-model"]
    return attack


# -- registry and budgets ---------------------------------------------------------------------
def test_both_trained_attacks_are_registered():
    for name in ("dynamic", "cl"):
        cls = ATTACKS.get(name)
        assert cls.requires_training is True
        assert set(cls.presets) >= {"vab_paper", "backdoorbench"}
    assert ATTACKS.get("cl").clean_label and not ATTACKS.get("dynamic").clean_label


@pytest.mark.parametrize("preset", sorted(ATTACK_BUDGETS))
@pytest.mark.parametrize("name", ["dynamic", "cl", "badnets"])
def test_every_budget_is_a_valid_set_of_overrides(preset, name):
    overrides = attack_budget(preset, name)
    attack = build_attack(name, **overrides)
    assert all(attack.settings[key] == value for key, value in overrides.items())
    assert attack_budget("paper", name) == {}


@pytest.mark.parametrize("name, overrides, field", [
    ("dynamic", {"p_attack": 2}, "dynamic setting p_attack"),
    ("dynamic", {"mask_epochs": -1}, "dynamic setting mask_epochs"),
    ("dynamic", {"mask_lr_milestones": 10}, "dynamic setting mask_lr_milestones"),
    ("cl", {"epsilon": -0.1}, "cl setting epsilon"),
    ("cl", {"pgd_steps": 1.5}, "cl setting pgd_steps"),
    ("cl", {"patch": [[1, 2]]}, "cl setting patch"),
])
def test_bad_setting_is_a_config_error_naming_the_field(name, overrides, field):
    with pytest.raises(ConfigError) as error:
        build_attack(name, **overrides)
    assert error.value.field == field


def test_unknown_classifier_is_reported_at_prepare(train):
    with pytest.raises(ConfigError, match="classifier"):
        build_attack("dynamic", **{**TINY_DYNAMIC, "classifier": "vgg99"}).prepare(train)


# -- Dynamic ----------------------------------------------------------------------------------
def test_dynamic_trigger_before_prepare_is_a_clear_error(train):
    attack = build_attack("dynamic")
    with pytest.raises(RuntimeError, match=r"prepare\("):
        attack.apply_trigger(train.images[:2])
    with pytest.raises(RuntimeError, match=r"prepare\("):
        attack.poison_train(train)


def test_dynamic_trigger_is_input_aware(dynamic, train):
    images = train.images[:6]
    patterns, masks = dynamic.trigger_parts(images)
    assert patterns.shape == (6, 3, 32, 32) and masks.shape == (6, 1, 32, 32)
    assert 0 <= float(masks.min()) and float(masks.max()) <= 1
    assert not torch.allclose(patterns[0], patterns[1])  # each input its own pattern...
    assert not torch.allclose(masks[0], masks[1])        # ...and its own mask
    triggered = dynamic.apply_trigger(images)
    assert triggered.dtype == torch.uint8 and triggered.shape == images.shape
    single = dynamic.apply_trigger(images[2:3])
    assert (single.int() - triggered[2:3].int()).abs().max() <= 1  # per image, not per batch
    assert dynamic.apply_trigger(images[:0]).shape == (0, 3, 32, 32)


def test_dynamic_poisoned_set_has_poisoned_and_cross_samples(dynamic, train):
    poisoned = dynamic.poison_train(train)
    n = len(train)
    assert int(poisoned.poisoned.sum()) == round(0.1 * n) == int(poisoned.cross.sum())
    assert not (poisoned.poisoned & poisoned.cross).any()
    assert (poisoned.labels[poisoned.poisoned] == 1).all()
    # a cross sample carries another image's trigger but keeps its true label
    assert torch.equal(poisoned.labels[poisoned.cross], train.labels[poisoned.cross])
    assert not torch.equal(poisoned.images[poisoned.cross], train.images[poisoned.cross])
    untouched = ~(poisoned.poisoned | poisoned.cross)
    assert torch.equal(poisoned.images[untouched], train.images[untouched])
    assert torch.equal(poisoned.original_labels, train.labels)


def test_dynamic_generators_come_from_the_cache(dynamic, train, cache_root):
    cache = ArtifactCache(cache_root)
    # poison_rate and cross_ratio shape the poisoned set only: the same generators serve them
    again = build_attack("dynamic", target=1, poison_rate=0.2, cross_ratio=2.0, **TINY_DYNAMIC)
    again.prepare(train, cache=cache)
    assert cache.builds == []
    assert torch.equal(again.apply_trigger(train.images[:4]), dynamic.apply_trigger(
        train.images[:4]))
    other_target = build_attack("dynamic", target=2, **TINY_DYNAMIC)
    other_target.prepare(train, cache=cache)
    assert len(cache.builds) == 1


# -- CL ---------------------------------------------------------------------------------------
def test_pgd_stays_within_the_linf_budget_and_raises_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    normalize = Normalizer(torch.full((3,), 0.5), torch.full((3,), 0.25), "cpu")
    adversarial = pgd_linf(model, images, labels, normalize, 16 / 255, 2 / 255, 10)
    change = (adversarial.int() - images.int()).abs()
    assert adversarial.dtype == torch.uint8 and change.max() <= 16 and change.max() > 0

    def loss(x):
        with torch.no_grad():
            return nn.functional.cross_entropy(model(normalize(x)), labels)

    assert loss(adversarial) > loss(images)


def test_cl_poisons_target_images_keeps_labels_and_stamps_the_patch(cl, train):
    poisoned = cl.poison_train(train)
    target_count = int((train.labels == 1).sum())
    assert int(poisoned.poisoned.sum()) == round(0.5 * target_count)
    assert (train.labels[poisoned.poisoned] == 1).all()
    assert torch.equal(poisoned.labels, train.labels)
    assert not poisoned.cross.any()
    images, clean = poisoned.images[poisoned.poisoned], train.images[poisoned.poisoned]
    assert torch.equal(images, cl.apply_trigger(images))  # the patch is on
    outside_patch = torch.ones(32, 32, dtype=torch.bool)
    outside_patch[4:6, 4:6] = False
    change = (images.int() - clean.int()).abs()[:, :, outside_patch]
    assert change.max() <= 16 and change.max() > 0
    untouched = ~poisoned.poisoned
    assert torch.equal(poisoned.images[untouched], train.images[untouched])


def test_cl_trigger_is_the_badnets_patch(train):
    images = train.images[:3]
    assert torch.equal(build_attack("cl").apply_trigger(images),
                       build_attack("badnets").apply_trigger(images))
    assert torch.equal(build_attack("cl", preset="backdoorbench").apply_trigger(images),
                       build_attack("badnets", preset="backdoorbench").apply_trigger(images))


def test_cl_needs_prepare_on_the_same_training_set(cl, train):
    with pytest.raises(RuntimeError, match=r"prepare\("):
        build_attack("cl", **TINY_CL).poison_train(train)
    with pytest.raises(RuntimeError, match=r"prepare\("):
        cl.poison_train(make_dataset(seed=5))


def test_cl_adversarial_images_and_clean_model_come_from_the_cache(cl, train, cache_root):
    cache = ArtifactCache(cache_root)
    again = build_attack("cl", target=1, poison_rate=0.5, preset="backdoorbench", **TINY_CL)
    again.prepare(train, cache=cache)  # another patch: the same adversarial images
    assert cache.builds == []
    assert torch.equal(again.adversarial, cl.adversarial)
    assert again.crafting_record == cl.crafting_record
    assert 0 <= cl.crafting_record["adversarial_accuracy"] <= 1
    other_rate = build_attack("cl", target=1, poison_rate=0.25, **TINY_CL)
    other_rate.prepare(train, cache=cache)  # new images to perturb, the same clean network
    assert [key.rsplit("-", 1)[0] for key in cache.builds] == ["cl-adversarial"]
