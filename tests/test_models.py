"""Model registry, output and feature-map shapes, one-pass features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vb_sweep.errors import ConfigError
from vb_sweep.models import MODELS, build_model

FEATURE_SHAPES = {"small_cnn": (128, 8, 8), "tiny_cnn": (64, 8, 8), "resnet18": (512, 4, 4),
                  "preact_resnet18": (512, 4, 4)}


def test_registered_names():
    assert set(MODELS.names()) == set(FEATURE_SHAPES)


@pytest.mark.parametrize("name", sorted(FEATURE_SHAPES))
@pytest.mark.parametrize("num_classes", [10, 43])
def test_logits_and_feature_map(name, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, features = model.forward_with_features(x)
        assert logits.shape == (3, num_classes)
        assert features.shape == (3, *FEATURE_SHAPES[name])
        torch.testing.assert_close(model(x), logits)


@pytest.mark.parametrize("name", sorted(FEATURE_SHAPES))
def test_features_come_from_one_pass(name):
    model = build_model(name, 10)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    calls = []
    first_conv.register_forward_hook(lambda *_: calls.append(1))
    logits, features = model.forward_with_features(torch.randn(2, 3, 32, 32))
    assert len(calls) == 1
    # Both outputs belong to the same graph: gradients reach the first layer from either.
    (logits.sum() + features.square().mean()).backward()
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(FEATURE_SHAPES))
def test_models_use_batchnorm(name):
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_model(name, 10).modules())


def test_parameter_counts():
    def count(name):
        return sum(p.numel() for p in build_model(name, 10).parameters())
    assert 50_000 < count("small_cnn") < 200_000
    assert count("resnet18") == 11_173_962          # the usual CIFAR ResNet-18
    assert count("preact_resnet18") == 11_171_146   # the usual CIFAR PreAct-ResNet-18


def test_small_cnn_learns_a_batch():
    torch.manual_seed(0)
    model = build_model("small_cnn", 4)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (model.eval()(x).argmax(1) == y).all()


def test_bad_names_and_class_counts():
    with pytest.raises(ConfigError) as info:
        build_model("vgg16", 10)
    assert info.value.field == "model" and "small_cnn" in str(info.value)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ConfigError) as info:
            build_model("small_cnn", bad)
        assert info.value.field == "num_classes"
