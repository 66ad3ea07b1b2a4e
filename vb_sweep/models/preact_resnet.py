"""PreAct-ResNet-18 for 32x32 inputs, as in BackdoorBench and the usual CIFAR code: a plain 3x3
stem conv, pre-activation blocks (BN-ReLU before each conv), no BN-ReLU after the last block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vb_sweep.models.base import FeatureClassifier, init_as_authors
from vb_sweep.models.resnet import make_stage


class PreActBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # A projection shortcut takes the activated input; the identity takes x itself.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(FeatureClassifier):
    """Feature map: ``layer4``'s output (pre-activation), (B, 512, 4, 4) for 32x32 inputs."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.layer1 = make_stage(PreActBlock, 64, 64, stride=1)
        self.layer2 = make_stage(PreActBlock, 64, 128, stride=2)
        self.layer3 = make_stage(PreActBlock, 128, 256, stride=2)
        self.layer4 = make_stage(PreActBlock, 256, 512, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)
        init_as_authors(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))

    def classify(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(feature_map), 1))
