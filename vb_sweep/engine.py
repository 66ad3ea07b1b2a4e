"""The training steps every stage is made of: one epoch of plain supervised training, one of
mixing-augmented training on two views, one of semi-supervised suppression training.

The dataset lives on the training device as uint8; a step gathers its batch by index, augments
it as a batch and converts it to float there. No per-image Python anywhere in a step.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vb_sweep.augment import Normalizer, standard_augment
from vb_sweep.mixing import AUGMENTATIONS, attention_from_features
from vb_sweep.timing import section


@dataclass
class StepSettings:
    """What a training step needs besides the model and data."""

    normalize: Normalizer
    batch_size: int
    padding: int | None              # crop padding; None: no augmentation at all
    autocast_dtype: torch.dtype | None = None
    augment: str = "attentionmix"
    t_m: float = 0.1
    interpolation: str = "bilinear"
    flip: bool = True                # horizontal flip in the standard augmentation
    batchnorm_passes: str = "authors"  # config.BATCHNORM_PASSES: how B's passes meet BN


@dataclass
class EpochStats:
    loss: float
    images: int  # images that went through forward + backward


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum y log softmax(logits), averaged over the batch (y need not sum to 1)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def _inputs(images_uint8: torch.Tensor, settings: StepSettings) -> torch.Tensor:
    with section("augment"):
        if settings.padding is not None:
            images_uint8 = standard_augment(images_uint8, settings.padding, settings.flip)
        return settings.normalize(images_uint8)


def autocast(device_type: str, settings: StepSettings):
    """bf16 autocast where the settings ask for it (a no-op context otherwise)."""
    return torch.autocast(device_type, dtype=settings.autocast_dtype,
                          enabled=settings.autocast_dtype is not None)


def _step(model, optimizer, loss_fn, settings: StepSettings) -> float:
    with section("forward"), autocast(settings.normalize.mean.device.type, settings):
        loss = loss_fn()
    with section("backward"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with section("optimizer step"):
        optimizer.step()
    return loss.detach()


def _shuffled_batches(indices: torch.Tensor, batch_size: int):
    order = indices[torch.randperm(indices.numel(), device=indices.device)]
    return order.split(batch_size)


def plain_epoch(model, optimizer, images, labels, indices, settings: StepSettings) -> EpochStats:
    """Cross-entropy on ``indices`` with standard augmentation (or none, for the Victim)."""
    model.train()
    total = torch.zeros((), device=images.device)
    for batch in _shuffled_batches(indices, settings.batch_size):
        x = _inputs(images[batch], settings)
        total += _step(model, optimizer, lambda: F.cross_entropy(model(x), labels[batch]),
                       settings) * batch.numel()
    return EpochStats(float(total) / max(1, indices.numel()), indices.numel())


def _separate_passes(settings: StepSettings) -> bool:
    return settings.batchnorm_passes == "authors"


def forward_parts(model, parts: list[torch.Tensor], settings: StepSettings) -> torch.Tensor:
    """The model's logits on the concatenation of ``parts``: one forward per part (each with
    its own batch statistics) in the authors' way, one forward of the whole batch otherwise."""
    if _separate_passes(settings):
        return torch.cat([model(part) for part in parts if part.shape[0]])
    return model(torch.cat(parts))


@torch.no_grad()
def attention_maps(model, views: list[torch.Tensor], settings: StepSettings) -> torch.Tensor:
    """The Beneficiary's attention on the clean views, without gradients: in train mode, one
    view at a time (the authors' way), or in eval mode on all of them at once ("joint")."""
    with section("attention (no-grad)"), autocast(views[0].device.type, settings):
        if _separate_passes(settings):
            features = torch.cat([model.forward_with_features(view)[1] for view in views])
        else:
            model.eval()
            _, features = model.forward_with_features(torch.cat(views))
            model.train()
    return attention_from_features(features)


def mixed_views(model, images_uint8, targets, settings: StepSettings):
    """Two independently augmented views of each image, mixed by the configured mixer."""
    x = _inputs(images_uint8.repeat(2, 1, 1, 1), settings)  # both views in one batched op
    y = targets.repeat(2, 1)
    augmentation = AUGMENTATIONS.get(settings.augment)
    attention = (attention_maps(model, list(x.chunk(2)), settings)
                 if augmentation.needs_attention else None)
    with section("mix"):
        return augmentation.mix(x, y, attention, t_m=settings.t_m,
                                interpolation=settings.interpolation)


def mix_epoch(model, optimizer, images, labels, indices, num_classes,
              settings: StepSettings) -> EpochStats:
    """Training on the credible set with the mixing augmentation (2 views per image)."""
    model.train()
    total = torch.zeros((), device=images.device)
    for batch in _shuffled_batches(indices, settings.batch_size):
        targets = F.one_hot(labels[batch], num_classes).float()
        x, y = mixed_views(model, images[batch], targets, settings)
        halves = list(x.chunk(2))
        total += _step(model, optimizer,
                       lambda: soft_cross_entropy(forward_parts(model, halves, settings), y),
                       settings) * batch.numel()
    return EpochStats(float(total) / max(1, indices.numel()), 2 * indices.numel())


def suppress(labels_onehot: torch.Tensor, victim_soft: torch.Tensor) -> torch.Tensor:
    """clip(onehot - softmax(V(x) / T_v), 0, 1); not renormalised (the authors' code)."""
    return (labels_onehot - victim_soft).clamp(0.0, 1.0)


def pseudo_labels(view_logits: torch.Tensor, views: int, num_classes: int,
                  sharpen_temperature: float | None) -> torch.Tensor:
    """Average softmax over K views; one-hot argmax, or MixMatch sharpening if T is given."""
    probs = F.softmax(view_logits.float(), dim=1).view(views, -1, num_classes).mean(0)
    if sharpen_temperature is None:
        return F.one_hot(probs.argmax(1), num_classes).float()
    sharpened = probs.pow(1.0 / sharpen_temperature)
    return sharpened / sharpened.sum(1, keepdim=True)


@dataclass
class SSTSettings:
    views: int                        # K
    lambda_u: float
    sharpen_temperature: float | None
    suppress_unlabeled: bool
    suppress_labeled: bool
    min_unlabeled_batch: int = 1      # config.min_unlabeled_batch


@torch.no_grad()
def no_grad_logits(model, views: list[torch.Tensor], settings: StepSettings) -> torch.Tensor:
    """The Beneficiary's logits on each view in its own train-mode pass (the authors' way of
    taking pseudo-labels: batch statistics, running statistics updated)."""
    with section("pseudo-labels (no-grad)"), autocast(views[0].device.type, settings):
        return torch.cat([model(view) for view in views])


def unlabeled_targets(view_logits: torch.Tensor, u_idx: torch.Tensor, victim_soft,
                      num_classes: int, sst: "SSTSettings") -> torch.Tensor:
    """The soft targets of every unlabeled view: the pseudo-label over the K views, suppressed
    by the Victim's tempered softmax when the variant suppresses, repeated for each view."""
    guess = pseudo_labels(view_logits, sst.views, num_classes, sst.sharpen_temperature)
    if sst.suppress_unlabeled:
        guess = suppress(guess, victim_soft[u_idx].float())
    return guess.repeat(sst.views, 1)


def unlabeled_batch_size(labeled: int, unlabeled: int, batch_size: int,
                         minimum: int = 1) -> tuple[int, int]:
    """Steps per epoch and the unlabeled batch size so one epoch covers both sets once, but at
    least ``minimum`` images, so a tiny Ds does not reach BatchNorm's train mode a few images
    at a time; a floor above the covering size cycles through Ds more than once an epoch. A Ds
    smaller than ``minimum`` gets no unlabeled batch (0): SST then trains on the labeled set
    alone, as AttentionMix does."""
    steps = max(1, math.ceil(labeled / batch_size))
    if unlabeled < max(1, minimum):
        return steps, 0
    return steps, max(_covering_batch(unlabeled, steps), minimum)


def _covering_batch(unlabeled: int, steps: int) -> int:
    """The authors' unlabeled batch: the size that goes through Ds once in ``steps`` steps."""
    return math.ceil(unlabeled / steps)


def _unlabeled_batches(unlabeled_idx: torch.Tensor, u_batch: int, steps: int):
    """Ds in shuffled batches of ``u_batch``, cycled so every labeled step has one even when Ds
    splits into fewer. Where the floor raised ``u_batch`` above the covering batch, a shorter
    last batch joins the one before it; the authors' covering batches keep their remainder."""
    if not u_batch:
        return itertools.repeat(unlabeled_idx[:0])
    batches = list(_shuffled_batches(unlabeled_idx, u_batch))
    floored = u_batch > _covering_batch(unlabeled_idx.numel(), steps)
    if floored and len(batches) > 1 and batches[-1].numel() < u_batch:
        batches[-2:] = [torch.cat(batches[-2:])]
    return itertools.cycle(batches)


def sst_epoch(model, optimizer, images, labels, labeled_idx, unlabeled_idx, victim_soft,
              num_classes, settings: StepSettings, sst: SSTSettings) -> EpochStats:
    """Semi-supervised suppression training (docs/method.md section 3) on the mixed labeled batch
    and K views of an unlabeled batch; ``settings.batchnorm_passes`` says how they meet the
    model (separate passes, pseudo-labels from no-grad passes; or one joint forward)."""
    model.train()
    steps, u_batch = unlabeled_batch_size(labeled_idx.numel(), unlabeled_idx.numel(),
                                          settings.batch_size, sst.min_unlabeled_batch)
    labeled_batches = _shuffled_batches(labeled_idx, settings.batch_size)
    unlabeled_batches = _unlabeled_batches(unlabeled_idx, u_batch, steps)
    total = torch.zeros((), device=images.device)
    seen = 0
    for l_batch, u_idx in zip(labeled_batches, unlabeled_batches):
        targets = F.one_hot(labels[l_batch], num_classes).float()
        if sst.suppress_labeled:
            targets = suppress(targets, victim_soft[l_batch].float())
        x_mix, y_mix = mixed_views(model, images[l_batch], targets, settings)
        u_views = _inputs(images[u_idx].repeat(sst.views, 1, 1, 1), settings)
        parts = [*x_mix.chunk(2), *u_views.chunk(sst.views)]
        n_mix = x_mix.shape[0]
        guess = None
        if u_idx.numel() and _separate_passes(settings):
            guess = unlabeled_targets(no_grad_logits(model, parts[2:], settings), u_idx,
                                      victim_soft, num_classes, sst)

        def loss_fn():
            logits = forward_parts(model, parts, settings)
            loss = soft_cross_entropy(logits[:n_mix], y_mix)
            if u_idx.numel() == 0:
                return loss
            u_logits = logits[n_mix:]
            u_targets = guess if guess is not None else unlabeled_targets(
                u_logits.detach(), u_idx, victim_soft, num_classes, sst)
            return loss + sst.lambda_u * soft_cross_entropy(u_logits, u_targets)

        total += _step(model, optimizer, loss_fn, settings) * l_batch.numel()
        seen += n_mix + u_views.shape[0]
    return EpochStats(float(total) / max(1, labeled_idx.numel()), seen)
