"""The formulas of docs/method.md sections 1-3, each checked against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from vb_sweep.augment import Normalizer, random_crop, random_flip, standard_augment
from vb_sweep.config import VARIANTS, TrialConfig, scaled_schedule
from vb_sweep.defense import lambda_u, learning_rate, stage_of
from vb_sweep.engine import pseudo_labels, suppress, unlabeled_batch_size
from vb_sweep.metrics import (auroc, backdoor_metrics, defense_effectiveness_rate,
                              filter_quality)
from vb_sweep.mixing import (attention_mix, attention_mix_weights, attentive_cutmix, cutmix,
                             mixup, normalized_attention)
from vb_sweep.victim import (SmoothedEntropy, min_max, prediction_entropy, split_suspicious,
                             updates_after_epochs, warmup_threshold)


# -- Victim filtering -----------------------------------------------------------------------
def test_entropy_matches_definition_and_never_nan():
    logits = torch.tensor([[0.0, 0.0], [100.0, -100.0], [1e4, 0.0]])
    entropy = prediction_entropy(logits)
    assert entropy[0].item() == pytest.approx(math.log(2))
    assert entropy[1].item() == pytest.approx(0.0, abs=1e-6)
    assert not torch.isnan(entropy).any()


def test_entropy_split_on_known_logits():
    # Confident, less confident, uniform: entropies 0-ish, middle, log(3).
    logits = torch.tensor([[10.0, 0, 0], [2.0, 0, 0], [0.0, 0, 0]])
    normalized = min_max(prediction_entropy(logits))
    assert normalized[0] == 0 and normalized[2] == 1
    middle = normalized[1].item()
    assert torch.equal(split_suspicious(normalized, middle + 1e-3),
                       torch.tensor([True, True, False]))
    assert torch.equal(split_suspicious(normalized, 0.0), torch.tensor([False, False, False]))


def test_smoothing_blends_with_previous_raw_entropy():
    smoother = SmoothedEntropy(0.75)
    first = smoother.update(torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(first, torch.tensor([0.0, 0.5, 1.0]))
    second = smoother.update(torch.tensor([2.0, 1.0, 0.0]))
    # 0.75 * new + 0.25 * old = [1.5, 1.0, 0.5] -> min-max [1, 0.5, 0]
    assert torch.allclose(second, torch.tensor([1.0, 0.5, 0.0]))
    off = SmoothedEntropy(1.0)
    off.update(torch.tensor([0.0, 1.0]))
    assert torch.allclose(off.update(torch.tensor([1.0, 0.0])), torch.tensor([1.0, 0.0]))


def test_warmup_threshold_schedule():
    assert warmup_threshold(1, 0.2) == pytest.approx(0.6)
    assert warmup_threshold(2, 0.2) == pytest.approx(0.2)
    assert warmup_threshold(3, 0.2) == pytest.approx(0.2)
    assert warmup_threshold(1, 0.4, step=0.1) == pytest.approx(0.9)  # ImageNet-subset schedule


def test_victim_resplits_every_fifth_epoch_then_every_epoch():
    updates = updates_after_epochs(200, 100, 5)
    assert [e for e, u in enumerate(updates, 1) if u][:3] == [5, 10, 15]
    assert sum(updates[:100]) == 20 and sum(updates[100:]) == 99  # none after the last epoch
    assert all(updates[100:199])


# -- AttentionMix ---------------------------------------------------------------------------
def test_attention_mix_label_weights_by_hand():
    # 1x4 "images": own attention [1, 1, 0, 0] -> after min-max the same; mask (t_m 0.5) = first
    # two pixels. Partner attention [0, 1, 1, 2] -> normalised [0, .5, .5, 1].
    attention = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 1.0, 1.0, 2.0]]])
    normalized = normalized_attention(attention, (1, 4), "nearest")
    assert torch.allclose(normalized[1], torch.tensor([[0.0, 0.5, 0.5, 1.0]]))
    mask = (normalized >= 0.5).float()
    own, partner = attention_mix_weights(normalized, mask, torch.tensor([1, 0]))
    assert own[0].item() == pytest.approx(1.0)        # all of image 0's mass is in its mask
    assert partner[0].item() == pytest.approx(0.25)   # partner: 0.5 of 2.0 inside it
    assert own[1].item() == pytest.approx(1.0)        # image 1's mask covers all its mass
    assert partner[1].item() == pytest.approx(0.5)    # image 0: mass 1 of 2 in cols 1-3

    images = torch.stack([torch.full((1, 1, 4), 10.0), torch.full((1, 1, 4), 20.0)])
    targets = torch.eye(2)
    mixed, mixed_targets = attention_mix(images, targets, attention, t_m=0.5,
                                         interpolation="nearest", perm=torch.tensor([1, 0]))
    w, wc = 1.0, 0.25
    weight_partner = w * wc / (w + wc)
    assert mixed_targets[0].tolist() == pytest.approx([1 - w + w * w / (w + wc), weight_partner])
    assert mixed_targets.sum(1).tolist() == pytest.approx([1.0, 1.0])
    keep = w / (w + wc)
    expected_row = [keep * 10 + (1 - keep) * 20] * 2 + [10.0, 10.0]
    assert mixed[0, 0, 0].tolist() == pytest.approx(expected_row)


def test_attention_mix_weights_sum_to_one_on_random_batches():
    torch.manual_seed(0)
    images = torch.randn(16, 3, 8, 8)
    targets = F.one_hot(torch.randint(0, 10, (16,)), 10).float()
    attention = torch.rand(16, 2, 2)
    for interpolation in ("bilinear", "nearest"):
        _, mixed_targets = attention_mix(images, targets, attention, 0.1, interpolation)
        assert torch.allclose(mixed_targets.sum(1), torch.ones(16), atol=1e-6)


def test_attention_mix_leaves_pixels_outside_the_mask_untouched():
    attention = torch.zeros(2, 4, 4)
    attention[:, :2, :2] = 1.0  # mask = top-left quadrant for both images
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    mixed, _ = attention_mix(images, torch.eye(2), attention, 0.5, "nearest",
                             perm=torch.tensor([1, 0]))
    # W = 1 (own mass all inside), Wc = 1 (partner's mass all inside the same quadrant): 50/50.
    assert torch.allclose(mixed[0, :, :2, :2], torch.full((3, 2, 2), 0.5))
    assert torch.equal(mixed[0, :, 2:, :], images[0, :, 2:, :])
    assert torch.equal(mixed[0, :, :, 2:], images[0, :, :, 2:])


def test_baselines_keep_label_mass_and_shapes():
    torch.manual_seed(1)
    images = torch.rand(8, 3, 16, 16)
    targets = F.one_hot(torch.arange(8) % 4, 4).float()
    attention = torch.rand(8, 4, 4)
    for mixed, mixed_targets in (mixup(images, targets), cutmix(images, targets),
                                 attentive_cutmix(images, targets, attention)):
        assert mixed.shape == images.shape
        assert torch.allclose(mixed_targets.sum(1), torch.ones(8), atol=1e-6)


def test_mixup_lambda_is_at_least_half():
    torch.manual_seed(2)
    targets = torch.eye(2)
    for _ in range(20):
        _, mixed_targets = mixup(torch.rand(2, 1, 2, 2), targets, perm=torch.tensor([1, 0]))
        assert mixed_targets[0, 0] >= 0.5


# -- semi-supervised suppression ------------------------------------------------------------
def test_suppression_clips_onehot_minus_tempered_softmax():
    onehot = torch.tensor([[1.0, 0.0, 0.0]])
    victim_soft = F.softmax(torch.tensor([[6.0, 0.0, 3.0]]) / 3.0, dim=1)
    suppressed = suppress(onehot, victim_soft)
    expected = (onehot - victim_soft).clamp(0, 1)
    assert torch.allclose(suppressed, expected)
    assert suppressed[0, 1] == 0 and suppressed[0, 2] == 0  # negatives clipped, not renormalised
    assert suppressed[0, 0].item() == pytest.approx(1 - victim_soft[0, 0].item())


def test_pseudo_labels_average_views_then_argmax():
    # Two views of two samples: view logits disagree on sample 0; the average decides.
    view_logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 5.0]])
    labels = pseudo_labels(view_logits, views=2, num_classes=2, sharpen_temperature=None)
    assert labels.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    sharpened = pseudo_labels(view_logits, 2, 2, sharpen_temperature=0.5)
    assert torch.allclose(sharpened.sum(1), torch.ones(2))
    assert 0.5 < sharpened[0, 0] < 1.0


def test_unlabeled_batches_cover_both_sets_and_survive_empty_ds():
    steps, u_batch = unlabeled_batch_size(1000, 130, 128)
    assert steps == 8 and u_batch * steps >= 130
    assert unlabeled_batch_size(1000, 0, 128) == (8, 0)


def test_a_tiny_ds_gets_unlabeled_batches_of_the_floor_not_of_one():
    assert unlabeled_batch_size(20_000, 44, 128) == (157, 1)  # the authors' covering size
    assert unlabeled_batch_size(20_000, 44, 128, minimum=8) == (157, 8)
    assert unlabeled_batch_size(20_000, 8, 128, minimum=8) == (157, 8)
    assert unlabeled_batch_size(20_000, 5, 128, minimum=8) == (157, 0)  # under it: labeled only
    assert unlabeled_batch_size(20_000, 5, 128) == (157, 1)
    assert unlabeled_batch_size(50_000, 5_000, 128, minimum=8) == (391, 13)  # usual Ds: as is
    assert TrialConfig().min_unlabeled_batch == 8


# -- schedules and variants -----------------------------------------------------------------
def test_paper_schedule():
    config = TrialConfig(**scaled_schedule(200))
    assert [learning_rate(config, e) for e in (1, 50, 51, 100, 101, 150, 151, 200)] == \
        pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])
    assert lambda_u(config, 101) == 0.1 and lambda_u(config, 150) == 0.1
    assert lambda_u(config, 151) == 0.5
    assert config.mix_epochs == 100 and config.resplit_every == 5


def test_variant_flags_turn_on_exactly_their_components():
    on = {name: {k for k, v in vars(flags).items() if v} for name, flags in VARIANTS.items()}
    assert on["none"] == set()
    assert on["F"] == {"filter"}
    assert on["F+AT"] == {"filter", "mix"}
    assert on["F+AT+SST"] == {"filter", "mix", "sst"}
    assert on["F+AT+SST+S"] == {"filter", "mix", "sst", "suppress_unlabeled"}
    assert on["vab"] == {"filter", "mix", "sst", "suppress_unlabeled", "suppress_labeled"}
    stages = {d: [stage_of(TrialConfig(defense=d, epochs=4, mix_epochs=2), e) for e in (1, 3)]
              for d in VARIANTS}
    assert stages["none"] == ["plain", "plain"]
    assert stages["F"] == ["filtered", "filtered"]
    assert stages["F+AT"] == ["mix", "mix"]
    assert stages["vab"] == ["mix", "sst"]


# -- augmentation and metrics ---------------------------------------------------------------
def test_random_crop_is_a_window_of_the_padded_image():
    torch.manual_seed(3)
    images = torch.randint(0, 256, (40, 3, 6, 6), dtype=torch.uint8)
    cropped = random_crop(images, 2)
    torch.manual_seed(3)
    torch.randint(0, 256, (40, 3, 6, 6), dtype=torch.uint8)
    # the offsets drawn as the seeded runs have always drawn them: every row offset, then every
    # column offset
    dy, dx = torch.randint(0, 5, (40,)), torch.randint(0, 5, (40,))
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        assert torch.equal(cropped[i], padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6]), i
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 10  # each image draws its own offset
    flipped = random_flip(images)
    for i in range(len(images)):
        assert torch.equal(flipped[i], images[i]) or torch.equal(flipped[i], images[i].flip(2))


def test_normalizer_standardises_per_channel():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.25, 0.2, 0.3])
    expected = (images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(Normalizer(mean, std, "cpu")(images), expected, atol=1e-6)
    floats = images.float()
    Normalizer(mean, std, "cpu")(floats)
    assert torch.equal(floats, images.float())  # a float input is not scaled in place


def test_no_flip_keeps_crops_unmirrored_and_gtsrb_defaults_to_it():
    torch.manual_seed(4)
    images = torch.arange(64 * 3 * 4 * 4, dtype=torch.uint8).view(64, 3, 4, 4)
    assert torch.equal(standard_augment(images, 0, flip=False), images)
    assert not torch.equal(standard_augment(images, 0, flip=True), images)
    assert TrialConfig(dataset="gtsrb").flip is False
    assert TrialConfig(dataset="cifar10").flip is True
    assert TrialConfig(dataset="gtsrb", horizontal_flip=True).flip is True


def test_auroc_and_filter_quality():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    positives = torch.tensor([False, False, True, True])
    assert auroc(scores, positives) == pytest.approx(0.75)
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == pytest.approx(0.5)
    quality = filter_quality(torch.tensor([True, True, False, False]),
                             torch.tensor([True, False, True, False]),
                             torch.tensor([0.0, 0.1, 0.5, 1.0]))
    assert quality["filter_precision"] == 0.5 and quality["filter_recall"] == 0.5
    assert quality["suspicious_size"] == 2 and quality["poisoned_in_credible"] == 1


def test_backdoor_metrics_and_the_clean_target_rate():
    # Clean: labels 0 1 2 3, predicted 0 0 2 0 -> BA 2/4; of the non-target (1, 2, 3), two are
    # predicted as the target 0 without any trigger.
    clean_pred, clean_labels = torch.tensor([0, 0, 2, 0]), torch.tensor([0, 1, 2, 3])
    triggered_pred, triggered_labels = torch.tensor([0, 0, 3]), torch.tensor([1, 2, 3])
    metrics = backdoor_metrics(clean_pred, clean_labels, triggered_pred, triggered_labels, 0)
    assert metrics["ba"] == pytest.approx(0.5)
    assert metrics["asr"] == pytest.approx(2 / 3)
    assert metrics["ra"] == pytest.approx(1 / 3)
    assert metrics["clean_target_rate"] == pytest.approx(2 / 3)


def test_der():
    assert defense_effectiveness_rate(0.9, 1.0, 0.85, 0.0) == pytest.approx((1.0 - 0.05 + 1) / 2)
    assert defense_effectiveness_rate(0.9, 0.1, 0.95, 0.3) == pytest.approx(0.5)
