"""The four untrained attacks, their registry and the trigger gallery, on tiny generated data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vb_sweep.attacks import ATTACKS, Attack, build_attack
from vb_sweep.data.base import ImageDataset
from vb_sweep.errors import ConfigError
from vb_sweep.figures import trigger_preview_png
from vb_sweep.gallery import render_attack_gallery

UNTRAINED = ["badnets", "blend", "wanet", "sig"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_dataset(per_class: int = 25, num_classes: int = 4, size: int = 32,
                 seed: int = 0) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    n = per_class * num_classes
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(num_classes).repeat(per_class)  # interleaved classes
    return ImageDataset(images, labels, num_classes, [f"c{i}" for i in range(num_classes)],
                        "tiny")


def random_images(n: int = 5, size: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)


# -- registry ---------------------------------------------------------------------------------
def test_registry_holds_the_untrained_attacks_with_both_presets():
    for name in UNTRAINED:
        cls = ATTACKS.get(name)
        assert cls.name == name and issubclass(cls, Attack)
        assert set(cls.presets) >= {"vab_paper", "backdoorbench"}
        assert cls.requires_training is False
    assert ATTACKS.get("sig").clean_label and not ATTACKS.get("badnets").clean_label


def test_build_attack_passes_everything_through():
    attack = build_attack("blend", target=2, poison_rate=0.05, seed=7, preset="backdoorbench",
                          pattern_seed=3)
    assert (attack.target, attack.poison_rate, attack.seed, attack.preset) == (2, 0.05, 7,
                                                                               "backdoorbench")
    assert attack.settings == {"alpha": 0.2, "pattern_seed": 3, "pattern_path": None}
    assert attack.describe()["settings"]["alpha"] == 0.2
    assert build_attack("badnets").poison_rate == 0.1


@pytest.mark.parametrize("name", UNTRAINED)
@pytest.mark.parametrize("preset", ["vab_paper", "backdoorbench"])
def test_apply_trigger_is_batched_uint8_and_pure(name, preset):
    attack = build_attack(name, preset=preset)
    images = random_images(7)
    before = images.clone()
    out = attack.apply_trigger(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(images, before)  # input untouched
    assert not torch.equal(out, images)
    # batched: each image's trigger does not depend on the rest of the batch
    assert torch.equal(attack.apply_trigger(images[2:3]), out[2:3])
    assert attack.apply_trigger(images[:0]).shape == (0, 3, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", UNTRAINED)
def test_apply_trigger_on_cuda_matches_cpu(name):
    attack = build_attack(name)
    images = random_images(6)
    on_gpu = attack.apply_trigger(images.cuda())
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8
    difference = (on_gpu.cpu().int() - attack.apply_trigger(images).int()).abs()
    assert difference.max() <= (1 if name == "wanet" else 0)  # grid_sample float rounding


# -- BadNets ----------------------------------------------------------------------------------
def test_badnets_vab_patch_pixels_exact_and_rest_untouched():
    images = random_images()
    out = build_attack("badnets").apply_trigger(images)
    expected = {(4, 4): (180, 249, 112), (4, 5): (155, 50, 126),
                (5, 4): (234, 82, 68), (5, 5): (187, 201, 219)}
    for (row, col), rgb in expected.items():
        assert (out[:, :, row, col] == torch.tensor(rgb, dtype=torch.uint8)).all()
    untouched = torch.ones(32, 32, dtype=torch.bool)
    untouched[4:6, 4:6] = False
    assert torch.equal(out[:, :, untouched], images[:, :, untouched])


def test_badnets_backdoorbench_white_square_exact_and_rest_untouched():
    images = random_images()
    out = build_attack("badnets", preset="backdoorbench").apply_trigger(images)
    assert (out[:, :, 29:32, 29:32] == 255).all()
    untouched = torch.ones(32, 32, dtype=torch.bool)
    untouched[29:32, 29:32] = False
    assert torch.equal(out[:, :, untouched], images[:, :, untouched])


def test_badnets_patch_outside_the_image_is_a_config_error():
    with pytest.raises(ConfigError, match="badnets setting row/col"):
        build_attack("badnets", preset="backdoorbench").apply_trigger(random_images(size=16))


# -- Blend ------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, alpha", [("vab_paper", 0.1), ("backdoorbench", 0.2)])
def test_blend_formula_on_known_pixels(preset, alpha):
    attack = build_attack("blend", preset=preset)
    images = random_images(4)
    pattern = attack.pattern(3, 32, 32)
    out = attack.apply_trigger(images)
    for n, c, row, col in [(0, 0, 0, 0), (1, 2, 31, 31), (2, 1, 7, 19), (3, 0, 16, 3)]:
        x, p = int(images[n, c, row, col]), int(pattern[c, row, col])
        assert int(out[n, c, row, col]) == round((1 - alpha) * x + alpha * p)
    assert int((out.int() - images.int()).abs().max()) <= math.ceil(alpha * 255)


def test_blend_pattern_is_seeded_noise_independent_of_the_poisoning_seed():
    pattern = build_attack("blend", seed=0).pattern(3, 32, 32)
    assert torch.equal(pattern, build_attack("blend", seed=5).pattern(3, 32, 32))
    assert not torch.equal(pattern, build_attack("blend", pattern_seed=1).pattern(3, 32, 32))
    assert pattern.dtype == torch.uint8 and pattern.float().std() > 50  # uniform noise


def test_blend_pattern_from_an_image_file(tmp_path):
    from PIL import Image

    path = tmp_path / "pattern.png"
    Image.new("RGB", (64, 48), (200, 0, 50)).save(path)
    attack = build_attack("blend", pattern_path=str(path))
    out = attack.apply_trigger(torch.full((2, 3, 32, 32), 100, dtype=torch.uint8))
    # 0.9 * 100 + 0.1 * (200, 0, 50)
    assert (out[:, 0] == 110).all() and (out[:, 1] == 90).all() and (out[:, 2] == 95).all()


def test_blend_pattern_file_content_is_part_of_its_description(tmp_path):
    from PIL import Image

    path = tmp_path / "pattern.png"
    Image.new("RGB", (8, 8), (200, 0, 50)).save(path)
    before = build_attack("blend", pattern_path=str(path)).describe()
    Image.new("RGB", (8, 8), (0, 200, 50)).save(path)
    after = build_attack("blend", pattern_path=str(path)).describe()
    assert before["settings"]["pattern_path"] == after["settings"]["pattern_path"]
    assert before != after  # same path, new content: a new cache key


def test_blend_missing_pattern_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="blend setting pattern_path"):
        build_attack("blend", pattern_path=str(tmp_path / "missing.png"))


# -- SIG --------------------------------------------------------------------------------------
def sig_signal(delta: float, freq: float, width: int) -> list[int]:
    return [round(delta * math.sin(2 * math.pi * j * freq / width)) for j in range(width)]


@pytest.mark.parametrize("preset, delta", [("vab_paper", 20), ("backdoorbench", 40)])
def test_sig_sinusoid_exact_without_wraparound(preset, delta):
    attack = build_attack("sig", preset=preset)
    signal = sig_signal(delta, 6, 32)
    assert attack.signal(32).tolist() == signal
    assert max(signal) == delta and min(signal) < 0
    for value in (0, 128, 250):
        images = torch.full((2, 3, 32, 32), value, dtype=torch.uint8)
        out = attack.apply_trigger(images)
        expected = torch.tensor([min(255, max(0, value + s)) for s in signal], dtype=torch.uint8)
        assert torch.equal(out, expected.expand(2, 3, 32, 32))  # every row and channel


def test_sig_on_a_random_image_matches_the_formula():
    images = random_images(3)
    out = build_attack("sig").apply_trigger(images)
    signal = torch.tensor(sig_signal(20, 6, 32))
    assert torch.equal(out, (images.int() + signal).clamp(0, 255).to(torch.uint8))


# -- WaNet ------------------------------------------------------------------------------------
def reference_wanet_grid(seed: int, k: int, s: float, grid_rescale: float, height: int):
    """The WaNet authors' code, step by step."""
    generator = torch.Generator().manual_seed(seed)
    ins = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    ins = ins / torch.mean(torch.abs(ins))
    noise_grid = F.interpolate(ins, size=height, mode="bicubic", align_corners=True)
    noise_grid = noise_grid.permute(0, 2, 3, 1)
    array1d = torch.linspace(-1, 1, steps=height)
    x, y = torch.meshgrid(array1d, array1d, indexing="ij")
    identity_grid = torch.stack((y, x), 2)[None, ...]
    grid = (identity_grid + s * noise_grid / height) * grid_rescale
    return torch.clamp(grid, -1, 1), ins


def test_wanet_grid_matches_the_reference_code():
    attack = build_attack("wanet", grid_seed=3)
    grid = attack.grid(32, 32)
    reference, field = reference_wanet_grid(3, 4, 0.5, 1.0, 32)
    assert grid.shape == (1, 32, 32, 2)
    assert torch.allclose(grid, reference, atol=1e-6)
    # align_corners upsampling keeps the field's corners; x (column) comes first
    corner = torch.clamp(torch.tensor([-1.0, -1.0]) + 0.5 * field[0, :, 0, 0] / 32, -1, 1)
    assert torch.allclose(grid[0, 0, 0], corner, atol=1e-6)
    warped = F.grid_sample(random_images(2).float(), reference.expand(2, -1, -1, -1),
                           align_corners=True).round().to(torch.uint8)
    assert torch.equal(attack.apply_trigger(random_images(2)), warped)


def test_wanet_with_zero_strength_is_the_identity():
    images = random_images(4)
    assert torch.equal(build_attack("wanet", s=0.0).apply_trigger(images), images)
    identity = build_attack("wanet", s=0.0).grid(8, 8)[0]
    assert torch.allclose(identity[2, 5], torch.tensor([-1 + 2 * 5 / 7, -1 + 2 * 2 / 7]))


def test_wanet_grid_is_a_fixed_secret_of_grid_seed():
    grid = build_attack("wanet", seed=0).grid(32, 32)
    assert torch.equal(grid, build_attack("wanet", seed=9).grid(32, 32))
    assert not torch.equal(grid, build_attack("wanet", grid_seed=1).grid(32, 32))


def test_wanet_cross_samples_keep_labels_and_are_disjoint_from_poisoned():
    train = make_dataset()  # 100 images
    result = build_attack("wanet", target=1).poison_train(train)
    assert int(result.poisoned.sum()) == 10 and int(result.cross.sum()) == 20
    assert not (result.poisoned & result.cross).any()
    assert torch.equal(result.labels[result.cross], train.labels[result.cross])
    assert (result.labels[result.poisoned] == 1).all()
    warped = build_attack("wanet", target=1).apply_trigger(train.images[result.cross])
    assert not torch.equal(result.images[result.cross], train.images[result.cross])
    assert not torch.equal(result.images[result.cross], warped)  # noise on top of the grid
    assert torch.equal(result.images[result.poisoned],
                       build_attack("wanet").apply_trigger(train.images[result.poisoned]))


def test_wanet_cross_samples_are_capped_by_what_is_left():
    result = build_attack("wanet", poison_rate=0.5).poison_train(make_dataset())
    assert int(result.poisoned.sum()) == 50 and int(result.cross.sum()) == 50


# -- poisoned sets ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["badnets", "blend", "wanet"])
@pytest.mark.parametrize("rate, expected", [(0.0, 0), (0.05, 5), (0.1, 10), (0.33, 33),
                                            (1.0, 100)])
def test_dirty_label_count_is_a_share_of_the_whole_set(name, rate, expected):
    train = make_dataset()
    snapshot = train.images.clone(), train.labels.clone()
    result = build_attack(name, target=2, poison_rate=rate).poison_train(train)
    assert torch.equal(train.images, snapshot[0]) and torch.equal(train.labels, snapshot[1])
    assert len(result) == 100 and int(result.poisoned.sum()) == expected
    assert (result.labels[result.poisoned] == 2).all()
    assert torch.equal(result.original_labels, train.labels)
    clean = ~(result.poisoned | result.cross)
    assert torch.equal(result.labels[clean], train.labels[clean])
    assert torch.equal(result.images[clean], train.images[clean])
    if name != "wanet":
        assert not result.cross.any()


def test_dirty_label_poisoned_samples_come_from_every_class():
    result = build_attack("badnets", target=0, poison_rate=0.5).poison_train(make_dataset())
    sources = result.original_labels[result.poisoned]
    assert set(sources.tolist()) == {0, 1, 2, 3}  # target-class images too, label stays 0


@pytest.mark.parametrize("rate, expected", [(0.0, 0), (0.1, 2), (0.2, 5), (0.5, 12), (1.0, 25)])
def test_clean_label_count_is_a_share_of_the_target_class(rate, expected):
    train = make_dataset()  # 25 images per class
    result = build_attack("sig", target=3, poison_rate=rate).poison_train(train)
    assert int(result.poisoned.sum()) == expected == round(rate * 25)
    assert (train.labels[result.poisoned] == 3).all()
    assert torch.equal(result.labels, train.labels)  # labels stay
    assert not result.cross.any()
    assert torch.equal(result.images[~result.poisoned], train.images[~result.poisoned])
    signal = build_attack("sig").signal(32).int()
    expected_images = (train.images[result.poisoned].int() + signal).clamp(0, 255)
    assert torch.equal(result.images[result.poisoned], expected_images.to(torch.uint8))


@pytest.mark.parametrize("name", UNTRAINED)
def test_same_seed_gives_byte_identical_poisoned_sets(name):
    train = make_dataset()
    first = build_attack(name, seed=11, poison_rate=0.2).poison_train(train)
    second = build_attack(name, seed=11, poison_rate=0.2).poison_train(train)
    for field in ("images", "labels", "poisoned", "cross", "original_labels"):
        a, b = getattr(first, field), getattr(second, field)
        assert a.dtype == b.dtype and a.numpy().tobytes() == b.numpy().tobytes()
    other = build_attack(name, seed=12, poison_rate=0.2).poison_train(train)
    assert not torch.equal(first.poisoned, other.poisoned)


# -- bad configuration ------------------------------------------------------------------------
@pytest.mark.parametrize("name", UNTRAINED)
@pytest.mark.parametrize("target", [-1, 4, 10])
def test_bad_target_is_a_config_error(name, target):
    with pytest.raises(ConfigError) as error:
        build_attack(name, target=target).poison_train(make_dataset())
    assert error.value.field == "target"


@pytest.mark.parametrize("rate", [-0.1, 1.5, "lots", float("nan")])
def test_bad_poison_rate_is_a_config_error(rate):
    with pytest.raises(ConfigError) as error:
        build_attack("badnets", poison_rate=rate)
    assert error.value.field == "poison_rate"


def test_bad_preset_and_unknown_attack_are_config_errors():
    with pytest.raises(ConfigError) as error:
        build_attack("sig", preset="paper")
    assert error.value.field == "attack preset"
    with pytest.raises(ConfigError) as error:
        build_attack("trojan")
    assert error.value.field == "attack"


@pytest.mark.parametrize("name, overrides, field", [
    ("badnets", {"size": 3}, "badnets setting"),
    ("badnets", {"patch": [[1, 2], [3, 4]]}, "badnets setting patch"),
    ("badnets", {"patch": [[[0, 0, 300]]]}, "badnets setting patch"),
    ("badnets", {"row": -1}, "badnets setting row"),
    ("blend", {"alpha": 1.5}, "blend setting alpha"),
    ("blend", {"pattern_seed": "x"}, "blend setting pattern_seed"),
    ("wanet", {"k": 1}, "wanet setting k"),
    ("wanet", {"s": -0.5}, "wanet setting s"),
    ("wanet", {"cross_ratio": "2"}, "wanet setting cross_ratio"),
    ("sig", {"delta": 300}, "sig setting delta"),
    ("sig", {"freq": -1}, "sig setting freq"),
    ("sig", {"amplitude": 20}, "sig setting"),
])
def test_bad_override_is_a_config_error_naming_the_field(name, overrides, field):
    with pytest.raises(ConfigError) as error:
        build_attack(name, **overrides)
    assert error.value.field == field
    assert field in str(error.value)


# -- gallery ----------------------------------------------------------------------------------
class UnpreparedAttack(Attack):
    name = "unprepared"
    requires_training = True
    presets = {"vab_paper": {}, "backdoorbench": {}}

    def apply_trigger(self, images):
        raise RuntimeError("generator not trained")


def test_gallery_writes_a_png_and_skips_unprepared_trained_attacks(tmp_path):
    dataset = make_dataset(per_class=2)
    attacks = [build_attack(name) for name in UNTRAINED] + [UnpreparedAttack()]
    with pytest.warns(UserWarning, match=r"prepare\(\) it first"):
        written = render_attack_gallery(dataset, attacks, tmp_path / "out" / "gallery.png")
    assert written == [tmp_path / "out" / "gallery.png"]
    assert written[0].read_bytes().startswith(PNG_MAGIC)


def test_gallery_svg_also_writes_the_png(tmp_path):
    written = render_attack_gallery(make_dataset(per_class=1), [build_attack("sig")],
                                    tmp_path / "gallery.svg", n_images=2)
    assert written == [tmp_path / "gallery.png", tmp_path / "gallery.svg"]
    assert written[0].read_bytes().startswith(PNG_MAGIC)
    assert b"<svg" in written[1].read_bytes()[:2000]


def test_trigger_preview_is_png_bytes():
    clean = make_dataset(per_class=1).images[:3]
    png = trigger_preview_png(clean, build_attack("wanet").apply_trigger(clean), "wanet")
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
