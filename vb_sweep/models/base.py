"""The interface every model implements: logits, or logits with the last block's feature map."""

from __future__ import annotations

import torch
from torch import nn


class FeatureClassifier(nn.Module):
    """A convolutional body (``features``) followed by a pooling-and-linear head (``classify``),
    so ``forward_with_features`` yields the logits and the body's output from one pass."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The output of the last convolutional block: (B, C, h, w)."""
        raise NotImplementedError

    def classify(self, feature_map: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x, with_features=True)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """The logits; with ``with_features``, (logits, feature map) from the same pass. One
        entry point, so a compiled module compiles both (``device.place_model``)."""
        feature_map = self.features(x)
        logits = self.classify(feature_map)
        return (logits, feature_map) if with_features else logits


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def init_as_authors(model: nn.Module) -> nn.Module:
    """The authors' ResNet initialisation (docs/method.md section 9): Kaiming-normal (fan_out, ReLU
    gain) convolution weights, BatchNorm at weight 1 and bias 0; linear layers keep PyTorch's
    default. Draws from torch's global generator: build the model under the seed it should
    have. The ResNets (the authors' networks) call it; the project's small CNNs keep PyTorch's
    default initialisation, under which their presets were tuned and measured."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
