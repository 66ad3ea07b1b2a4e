"""ResNet-18 for 32x32 inputs (the CIFAR variant: 3x3 stem at stride 1, no max-pool)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vb_sweep.models.base import FeatureClassifier, conv_bn_relu, init_as_authors


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(block: type[nn.Module], in_channels: int, channels: int, stride: int,
               blocks: int = 2) -> nn.Sequential:
    """``blocks`` residual blocks, the first one changing width and resolution."""
    return nn.Sequential(block(in_channels, channels, stride),
                         *(block(channels, channels) for _ in range(blocks - 1)))


class EighteenLayers(FeatureClassifier):
    """The 18-layer layout of both ResNets: a stem (the subclass's), four stages of two blocks
    (64, 128, 256, 512 channels), global pooling and a linear classifier. Feature map:
    ``layer4``'s output, (B, 512, 4, 4) for 32x32 inputs."""

    def add_stages(self, block: type[nn.Module], num_classes: int) -> None:
        """After the stem, in this order (it is the order the weights are drawn in)."""
        self.layer1 = make_stage(block, 64, 64, stride=1)
        self.layer2 = make_stage(block, 64, 128, stride=2)
        self.layer3 = make_stage(block, 128, 256, stride=2)
        self.layer4 = make_stage(block, 256, 512, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)
        init_as_authors(self)

    def stem_output(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem_output(x)))))

    def classify(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(feature_map), 1))


class ResNet18(EighteenLayers):
    """Stem: 3x3 conv, BN, ReLU."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn_relu(3, 64)
        self.add_stages(BasicBlock, num_classes)

    def stem_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)
