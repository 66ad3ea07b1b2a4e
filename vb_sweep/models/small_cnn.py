"""Fast CNNs for the small presets: SmallCNN (about 0.1M parameters, cpu) and TinyCNN (smoke)."""

from __future__ import annotations

import torch
from torch import nn

from vb_sweep.models.base import FeatureClassifier, conv_bn_relu


class SmallCNN(FeatureClassifier):
    """Conv-BN-ReLU blocks at 32x32, 16x16 and 8x8, global max pooling and a linear layer.

    The feature map is the last block's output, (B, 128, 8, 8): finer than ResNet-18's 4x4,
    which gives AttentionMix a usable attention map at this size. Max pooling lets one local
    pattern (such as a small trigger patch) drive the logits, as it does in deeper networks.
    """

    # Max-pooled features are large; scaling the logits down keeps SGD at lr 0.1 stable from the
    # first step (the same trick as airbench's output scale).
    logit_scale = 0.125

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        self.block1 = nn.Sequential(conv_bn_relu(3, widths[0]), conv_bn_relu(widths[0], widths[0]),
                                    nn.MaxPool2d(2))
        self.block2 = nn.Sequential(conv_bn_relu(widths[0], widths[1]), nn.MaxPool2d(2))
        self.block3 = conv_bn_relu(widths[1], widths[2])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.linear = nn.Linear(widths[2], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.block2(self.block1(x)))

    def classify(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(feature_map), 1)) * self.logit_scale


class TinyCNN(SmallCNN):
    """SmallCNN at half the width (about 27k parameters, 2.8x faster on a CPU core): the smoke
    preset's network. On the generated data it learns the BadNets trigger in the Victim's first
    epoch (split after warm-up: precision and recall 1.00) and reaches BA 0.98 in 16 epochs."""

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes, widths=(16, 32, 64))
