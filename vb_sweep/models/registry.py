"""Model names -> constructors, and ``build_model``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from vb_sweep.errors import ConfigError
from vb_sweep.models.base import FeatureClassifier
from vb_sweep.models.preact_resnet import PreActResNet18
from vb_sweep.models.resnet import ResNet18
from vb_sweep.models.small_cnn import SmallCNN, TinyCNN
from vb_sweep.registry import Registry

MODELS: Registry[Callable[[int], FeatureClassifier]] = Registry("model")
MODELS.register("small_cnn")(SmallCNN)
MODELS.register("tiny_cnn")(TinyCNN)
MODELS.register("resnet18")(ResNet18)
MODELS.register("preact_resnet18")(PreActResNet18)


def build_model(name: str, num_classes: int) -> FeatureClassifier:
    """A freshly initialised model mapping normalised float images to ``num_classes`` logits,
    its convolutions initialised as in the authors' ResNet (``init_as_authors``)."""
    constructor = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("num_classes", num_classes, "an integer >= 2")
    return init_as_authors(constructor(num_classes))


def init_as_authors(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_out, ReLU gain) convolution weights, BatchNorm at weight 1 and bias 0
    (METHOD.md section 9); linear layers keep PyTorch's default. Draws from torch's global
    generator: build the model under the seed it should have."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
