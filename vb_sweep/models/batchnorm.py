"""BatchNorm running statistics re-estimated from a set of images, for any network."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: torch.Tensor,
                         normalize: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                         autocast_dtype: torch.dtype | None = None) -> nn.Module:
    """Replace ``model``'s BatchNorm running statistics with exact averages over ``images``
    (uint8, not augmented; ``normalize`` turns a batch into the network's input), every batch
    weighted alike, under ``autocast_dtype`` if given. The weights are untouched and the model
    is left in the mode it was in, also on an error."""
    layers = [module for module in model.modules()
              if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the pass
    was_training = model.training
    model.train()
    try:
        with torch.autocast(images.device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            for batch in images.split(batch_size):
                model(normalize(batch))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return model
