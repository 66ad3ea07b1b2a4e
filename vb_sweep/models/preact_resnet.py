"""PreAct-ResNet-18 for 32x32 inputs, as in BackdoorBench and the usual CIFAR code: a plain 3x3
stem conv, pre-activation blocks (BN-ReLU before each conv), no BN-ReLU after the last block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vb_sweep.models.resnet import EighteenLayers


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


class PreActResNet18(EighteenLayers):
    """Stem: a plain 3x3 conv (its blocks activate their own inputs); the feature map is
    ``layer4``'s output before any activation."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.add_stages(PreActBlock, num_classes)

    def stem_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)
