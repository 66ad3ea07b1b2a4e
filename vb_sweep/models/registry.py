"""Model names -> constructors, and ``build_model``."""

from __future__ import annotations

from typing import Callable

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
    """A freshly initialised model mapping normalised float images to ``num_classes`` logits."""
    constructor = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("num_classes", num_classes, "an integer >= 2")
    return constructor(num_classes)

