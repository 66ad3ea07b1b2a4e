"""How the networks run, as in the authors' code (docs/method.md section 9): BatchNorm passes,
initialisation, the reported best epoch, and cache keys that cover the precision."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

import vb_sweep.device
from vb_sweep.artifacts import load_trial_data, new_network, prepare_victim, victim_cache_parts
from vb_sweep.augment import Normalizer
from vb_sweep.cache import ArtifactCache, cache_key
from vb_sweep.config import preset_config, scaled_schedule
from vb_sweep.engine import SSTSettings, StepSettings, mix_epoch, sst_epoch
from vb_sweep.errors import ConfigError
from vb_sweep.models import build_model
from vb_sweep.models.base import FeatureClassifier
from vb_sweep.trial import best_epoch, trial_id_for

TINY = dict(train_per_class=12, test_per_class=6, warm_up=2, eval_batch_size=256,
            batch_size=32, victim_batch_size=32, **scaled_schedule(4))


class InputNormNet(FeatureClassifier):
    """BatchNorm straight on the input: its running statistics are those of the images."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3, momentum=None)  # cumulative average over every pass
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4, 10)
        self.seen: list[torch.Tensor] = []          # inputs of train-mode passes
        self.bn.register_forward_hook(
            lambda module, args, out: self.seen.append(args[0].detach().clone())
            if module.training else None)

    def features(self, x):
        return self.conv(self.bn(x))

    def classify(self, feature_map):
        return self.linear(feature_map.mean((2, 3)))


def one_mix_step(passes: str):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,))
    normalize = Normalizer(torch.full((3,), 0.5), torch.full((3,), 0.25), "cpu")
    # No augmentation and t_m = 0 (the mask covers everything): each mixed image is the mean
    # of two clean ones, with about half their variance.
    settings = StepSettings(normalize, batch_size=16, padding=None, t_m=0.0,
                            batchnorm_passes=passes)
    model = InputNormNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    mix_epoch(model, optimizer, images, labels, torch.arange(16), 10, settings)
    return model, normalize(images)


def channel_moments(batch: torch.Tensor) -> torch.Tensor:
    return torch.stack([batch.sum((0, 2, 3)), batch.pow(2).sum((0, 2, 3))])


def test_batchnorm_running_statistics_see_the_clean_views_by_default():
    model, clean = one_mix_step("authors")
    clean_var = clean.var((0, 2, 3))
    # Train-mode passes: the two clean views (attention), then the two mixed halves.
    assert len(model.seen) == 4
    for view in model.seen[:2]:
        assert torch.allclose(channel_moments(view), channel_moments(clean), rtol=1e-5)
    joint, _ = one_mix_step("joint")
    assert len(joint.seen) == 1  # the mixed batch only; the attention pass ran in eval mode
    assert not torch.allclose(channel_moments(joint.seen[0][:16]), channel_moments(clean),
                              rtol=1e-2)
    authors_gap = (model.bn.running_var - clean_var).abs()
    joint_gap = (joint.bn.running_var - clean_var).abs()
    assert (authors_gap < 0.6 * joint_gap).all(), (model.bn.running_var, joint.bn.running_var,
                                                   clean_var)


def sst_batch_sizes(min_unlabeled_batch: int, ds_size: int) -> list[int]:
    """The batch sizes BatchNorm sees in train mode during one SST epoch of 64 labeled images
    in 4 steps of 16 and a Ds of ``ds_size``; a tiny Ds (3: one image a step) is what SIG, CL
    and WaNet give at cpu scale."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64 + ds_size, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (64 + ds_size,))
    normalize = Normalizer(torch.full((3,), 0.5), torch.full((3,), 0.25), "cpu")
    settings = StepSettings(normalize, batch_size=16, padding=None, t_m=0.1)
    sst = SSTSettings(views=2, lambda_u=0.5, sharpen_temperature=None, suppress_unlabeled=False,
                      suppress_labeled=False, min_unlabeled_batch=min_unlabeled_batch)
    model = InputNormNet()
    sst_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), images, labels,
              torch.arange(64), torch.arange(64, 64 + ds_size), None, 10, settings, sst)
    return [batch.shape[0] for batch in model.seen]


def test_a_tiny_ds_never_reaches_batchnorm_one_image_at_a_time():
    authors = sst_batch_sizes(min_unlabeled_batch=1, ds_size=3)
    # Each step: 2 pseudo-label passes, 2 attention passes, 2 mixed halves, 2 unlabeled views.
    assert len(authors) == 4 * 8 and authors.count(1) == 4 * 4
    # A Ds under the floor is left out: 2 attention passes and 2 mixed halves a step, all of 16.
    assert sst_batch_sizes(min_unlabeled_batch=8, ds_size=3) == [16] * (4 * 4)


def test_floored_unlabeled_batches_never_fall_under_the_floor():
    # Ds of 10 in 4 steps: the authors' covering batches are 3, 3, 3, 1; at a floor of 4 the
    # batches are 4, 4, 2 and the 2 joins the batch before it.
    authors = sst_batch_sizes(min_unlabeled_batch=1, ds_size=10)
    assert sorted(set(authors)) == [1, 3, 16] and authors.count(1) == 4
    floored = sst_batch_sizes(min_unlabeled_batch=4, ds_size=10)
    assert len(floored) == 4 * 8
    unlabeled = [size for size in floored if size != 16]
    assert sorted(set(unlabeled)) == [4, 6] and len(unlabeled) == 4 * 4
    # A floor under the covering batch changes nothing: the authors' batches, remainder and all.
    assert sst_batch_sizes(min_unlabeled_batch=2, ds_size=10) == authors


def test_victim_and_beneficiary_start_from_different_weights_and_repeat_by_seed():
    config = preset_config("smoke", **TINY)
    data = load_trial_data(config)

    def weights(role, seed=0):
        torch.manual_seed(seed)
        return new_network(config, data, role, "cpu").state_dict()

    victim, beneficiary = weights("victim"), weights("beneficiary")
    convs = [name for name, value in victim.items() if value.dim() == 4]
    assert all(not torch.equal(victim[name], beneficiary[name]) for name in convs)
    again = weights("beneficiary")
    assert all(torch.equal(beneficiary[name], again[name]) for name in beneficiary)
    assert not torch.equal(weights("beneficiary", seed=1)[convs[0]], beneficiary[convs[0]])


def test_victim_model_chooses_the_victims_network_and_keys_its_trajectory():
    """The authors' Victim is a ResNet-18 whatever the Beneficiary: `victim_model` gives it its
    own network (drawn first, as ever), and its trajectory is keyed by that network. Unset, it
    leaves the trial id as it was before the field existed (a --resume finds those trials)."""
    own = preset_config("smoke", **TINY).validate()
    resnet = own.replace(victim_model="resnet18").validate()
    data = load_trial_data(own)
    torch.manual_seed(0)
    for role, network in (("victim", "resnet18"), ("beneficiary", "tiny_cnn")):
        assert type(new_network(resnet, data, role, "cpu")) is type(build_model(network, 10))
    assert own.victim_network == "tiny_cnn" and resnet.victim_network == "resnet18"

    def victim_key(config):
        return cache_key("victim", victim_cache_parts(config, data, "cpu"))

    assert victim_key(resnet) != victim_key(own)
    assert victim_key(own.replace(victim_model="tiny_cnn")) == victim_key(own)
    assert trial_id_for(resnet) != trial_id_for(own)
    # fields added later, at their default, are not in the id
    before = {k: v for k, v in own.to_dict().items()
              if k not in ("victim_model", "batchnorm_diagnostic", "sst_batchnorm",
                           "channels_last", "compile", "optimizer_kernel")}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert trial_id_for(own).endswith(digest[:8])
    assert preset_config("paper").victim_network == "resnet18"
    with pytest.raises(ConfigError, match="victim_model"):
        own.replace(victim_model="vgg").validate()


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18"])
def test_resnet_convolutions_are_kaiming_normal_fan_out(name):
    torch.manual_seed(0)
    weight = build_model(name, 10).layer3[0].conv2.weight  # 256 -> 256, 3x3
    fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]
    assert weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.02)
    assert weight.mean().item() == pytest.approx(0.0, abs=0.002)


def test_best_epoch_is_the_highest_ba_epoch_with_its_asr():
    history = [{"epoch": 0, "stage": "victim"},  # the Victim's split: no BA
               {"epoch": 1, "ba": 0.50, "asr": 0.90},
               {"epoch": 2, "ba": 0.80, "asr": 0.30},
               {"epoch": 3, "ba": 0.80, "asr": 0.10},  # a tie: the first one counts
               {"epoch": 4, "ba": 0.70, "asr": 0.05}]
    assert best_epoch(history) == {"best_ba": 0.80, "best_ba_asr": 0.30, "best_epoch": 2}


def test_a_victim_cached_in_one_precision_is_not_returned_for_the_other(tmp_path, monkeypatch):
    """Pins the CPU's bf16 support both ways, so the test means the same on a CPU with native
    bf16 (where an unpinned first call would already compute in bf16) and on one without."""
    cache = ArtifactCache(tmp_path / "cache")
    config = preset_config("smoke", **TINY, defense="vab").validate()
    monkeypatch.setattr(vb_sweep.device, "cpu_has_native_bf16", lambda: False)  # fp32
    fp32, cached = prepare_victim(config, cache, "cpu")
    assert cached is False
    monkeypatch.setattr(vb_sweep.device, "cpu_has_native_bf16", lambda: True)  # bf16 now
    bf16, cached = prepare_victim(config, cache, "cpu")
    assert cached is False
    assert len([key for key in cache.builds if key.startswith("victim-")]) == 2
    _, cached = prepare_victim(config, cache, "cpu")
    assert cached is True
    monkeypatch.setattr(vb_sweep.device, "cpu_has_native_bf16", lambda: False)  # fp32 again
    _, cached = prepare_victim(config, cache, "cpu")
    assert cached is True
    assert len([key for key in cache.builds if key.startswith("victim-")]) == 2


@pytest.mark.parametrize("mix_epochs, resplit_every", [(4, 3), (4, 1), (4, 4), (0, 2)])
def test_every_sst_epoch_has_the_victims_tempered_softmax(tmp_path, mix_epochs, resplit_every):
    """A re-split period that does not divide the mix stage leaves an older split in use when
    SST starts (8 mix epochs, one re-split every 5: the split made after epoch 5); it must carry
    the softmax that suppression reads, or the first SST epoch has nothing to suppress with."""
    config = preset_config("smoke", **{**TINY, "epochs": 6, "mix_epochs": mix_epochs,
                                       "lr_milestones": (3,), "lambda_u_switch": 5,
                                       "resplit_every": resplit_every}, defense="vab").validate()
    trajectory, _ = prepare_victim(config, ArtifactCache(tmp_path / "cache"), "cpu")
    for epoch in range(mix_epochs + 1, 7):
        assert trajectory.state_for(epoch).tempered_softmax is not None, epoch
    for epoch in range(1, mix_epochs + 1):  # the mix stage needs none: not kept
        state = trajectory.state_for(epoch)
        if all(state is not trajectory.state_for(e) for e in range(mix_epochs + 1, 7)):
            assert state.tempered_softmax is None, epoch


# -- the BatchNorm diagnostic ---------------------------------------------------------------------
def test_clean_batchnorm_copy_takes_the_images_statistics_and_leaves_the_model_alone():
    from vb_sweep.defense import clean_batchnorm_copy

    model = InputNormNet()
    model.bn.momentum = 0.1
    model.bn.running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    step = StepSettings(Normalizer(torch.full((3,), 0.5), torch.full((3,), 0.25), "cpu"),
                        batch_size=8, padding=None)
    probe = clean_batchnorm_copy(model, images, step, batch_size=8)
    inputs = step.normalize(images)
    # every batch of 8 weighted alike: the mean of the batch means, of the unbiased variances
    batch_means = inputs.view(5, 8, 3, 8, 8).mean(dim=(1, 3, 4))
    batch_vars = inputs.view(5, 8, 3, 8, 8).transpose(1, 2).reshape(5, 3, -1).var(dim=2)
    torch.testing.assert_close(probe.bn.running_mean, batch_means.mean(0))
    torch.testing.assert_close(probe.bn.running_var, batch_vars.mean(0))
    assert not probe.training
    torch.testing.assert_close(probe.conv.weight, model.conv.weight)
    for key, value in model.state_dict().items():  # the trained model is untouched
        assert torch.equal(value, before[key]), key


def test_batchnorm_diagnostic_adds_figures_and_changes_no_training(tmp_path):
    from vb_sweep.trial import run_trial

    config = preset_config("smoke", **TINY, defense="vab").validate()
    plain = run_trial(config, cache=ArtifactCache(tmp_path / "plain"))
    probed = run_trial(config.replace(batchnorm_diagnostic=True).validate(),
                       cache=ArtifactCache(tmp_path / "probed"))
    trained = [r for r in probed.history if r.get("ba") is not None]
    assert [r["epoch"] for r in trained] == [1, 2, 3, 4]
    for record in trained:
        for name in ("ba_clean_bn", "asr_clean_bn", "clean_target_rate_clean_bn"):
            assert 0.0 <= record[name] <= 1.0, (record["epoch"], name)
    same = ("epoch", "stage", "lr", "loss", "ba", "asr", "ra", "clean_target_rate")
    assert ([{k: r.get(k) for k in same} for r in plain.history]
            == [{k: r.get(k) for k in same} for r in probed.history])
    assert trial_id_for(config.replace(batchnorm_diagnostic=True)) != trial_id_for(config)


def test_sst_batchnorm_credible_changes_the_statistics_not_the_training(tmp_path):
    """The option re-estimates BatchNorm's running statistics on Dc after each SST epoch. In
    the authors' passes no training forward reads the running statistics, so the weights train
    exactly as without it; only what the SST epochs are evaluated with changes."""
    from vb_sweep.trial import run_trial

    config = preset_config("smoke", **TINY, defense="vab").validate()
    running = run_trial(config, cache=ArtifactCache(tmp_path / "running"))
    credible = run_trial(config.replace(sst_batchnorm="credible").validate(),
                         cache=ArtifactCache(tmp_path / "credible"))
    assert [r.get("loss") for r in running.history] == [r.get("loss") for r in credible.history]
    stages = [r["stage"] for r in running.history if r.get("ba") is not None]
    assert stages == ["mix", "mix", "sst", "sst"]

    def evaluated(result, stage):
        return [(r["ba"], r["asr"]) for r in result.history if r.get("stage") == stage]

    assert evaluated(running, "mix") == evaluated(credible, "mix")
    assert evaluated(running, "sst") != evaluated(credible, "sst")
    assert trial_id_for(config.replace(sst_batchnorm="credible")) != trial_id_for(config)
    with pytest.raises(ConfigError, match="sst_batchnorm"):
        config.replace(sst_batchnorm="clean").validate()
