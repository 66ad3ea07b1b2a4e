"""AttentionMix (docs/method.md section 2) and the three augmentations it is compared with.

Every mixer takes a float batch ``images`` (B, C, H, W), soft ``targets`` (B, K) and, for the
attention-based ones, the attention maps ``attention`` (B, h, w) that the Beneficiary computed
without gradients; it returns the mixed images and mixed soft targets. The partner of image i is
``perm[i]`` for a random permutation of the batch. Each is registered in ``AUGMENTATIONS``
under its ``--augment`` name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vb_sweep.errors import check_choice
from vb_sweep.registry import Registry

EPS = 1e-8


def attention_from_features(features: torch.Tensor) -> torch.Tensor:
    """A = sum over channels of F_c^2: (B, C, h, w) -> (B, h, w)."""
    return features.float().pow(2).sum(1)


def normalized_attention(attention: torch.Tensor, size: tuple[int, int],
                         interpolation: str = "bilinear") -> torch.Tensor:
    """Resize attention maps to the image size and min-max normalise each to [0, 1]."""
    check_choice("attention_interpolation", interpolation, ("bilinear", "nearest"))
    extra = {"align_corners": False} if interpolation == "bilinear" else {}
    resized = F.interpolate(attention[:, None].float(), size=size, mode=interpolation, **extra)[:, 0]
    low = resized.amin(dim=(1, 2), keepdim=True)
    high = resized.amax(dim=(1, 2), keepdim=True)
    return (resized - low) / (high - low).clamp_min(EPS)


def attention_mix_weights(attention: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor):
    """W: image i's attention mass inside its own mask; Wc: the partner's mass inside it."""
    own = (attention * mask).sum((1, 2)) / attention.sum((1, 2)).clamp_min(EPS)
    partner_attention = attention[perm]
    partner = (partner_attention * mask).sum((1, 2)) / partner_attention.sum((1, 2)).clamp_min(EPS)
    return own, partner


def attention_mix(images: torch.Tensor, targets: torch.Tensor, attention: torch.Tensor,
                  t_m: float, interpolation: str = "bilinear",
                  perm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """AttentionMix: mix inside each image's high-attention mask, label by importance.

    x~ = (1 - M) x_i + M (W/(W+Wc) x_i + Wc/(W+Wc) x_j)
    y~ = (1 - W + W^2/(W+Wc)) y_i + (W Wc/(W+Wc)) y_j      (the two weights add to 1)
    """
    if perm is None:
        perm = torch.randperm(images.shape[0], device=images.device)
    attn = normalized_attention(attention, images.shape[-2:], interpolation)
    mask = (attn >= t_m).float()
    own, partner = attention_mix_weights(attn, mask, perm)
    total = (own + partner).clamp_min(EPS)
    # x~ = x_i + M Wc/(W+Wc) (x_j - x_i): the formula above in two full-size tensor ops.
    partner_share = mask[:, None] * (partner / total).view(-1, 1, 1, 1)
    mixed_images = torch.addcmul(images, partner_share, images[perm] - images)
    partner_weight = (own * partner / total)[:, None]
    mixed_targets = (1 - partner_weight) * targets + partner_weight * targets[perm]
    return mixed_images, mixed_targets


def mixup(images, targets, attention=None, perm=None):
    """Mixup with lambda ~ Beta(1, 1), lambda = max(lambda, 1 - lambda), one per batch."""
    if perm is None:
        perm = torch.randperm(images.shape[0], device=images.device)
    lam = float(torch.rand(()))  # Beta(1, 1) is uniform on [0, 1]
    lam = max(lam, 1 - lam)
    return lam * images + (1 - lam) * images[perm], lam * targets + (1 - lam) * targets[perm]


def cutmix(images, targets, attention=None, perm=None):
    """CutMix: paste a Beta(1, 1)-sized box of the partner, label by the pasted area."""
    if perm is None:
        perm = torch.randperm(images.shape[0], device=images.device)
    height, width = images.shape[-2:]
    lam = float(torch.rand(()))
    cut_h, cut_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[perm, :, top:bottom, left:right]
    pasted = (bottom - top) * (right - left) / (height * width)
    return mixed, (1 - pasted) * targets + pasted * targets[perm]


def attentive_cutmix(images, targets, attention, perm=None, cells: int = 6):
    """Attentive CutMix: paste the partner's ``cells`` most-attended feature-grid cells,
    label by the pasted area ratio."""
    if perm is None:
        perm = torch.randperm(images.shape[0], device=images.device)
    batch, grid_h, grid_w = attention.shape
    cells = min(cells, grid_h * grid_w)
    top_cells = attention[perm].flatten(1).topk(cells, dim=1).indices
    grid_mask = torch.zeros(batch, grid_h * grid_w, device=images.device)
    grid_mask.scatter_(1, top_cells, 1.0)
    mask = F.interpolate(grid_mask.view(batch, 1, grid_h, grid_w), size=images.shape[-2:],
                         mode="nearest")
    mixed = (1 - mask) * images + mask * images[perm]
    pasted = mask.mean((1, 2, 3))[:, None]
    return mixed, (1 - pasted) * targets + pasted * targets[perm]


@dataclass(frozen=True)
class Augmentation:
    """A mixing augmentation under its command-line name. ``mix(images, targets, attention,
    t_m=..., interpolation=...)`` returns the mixed images and targets; ``attention`` is the
    Beneficiary's attention maps when ``needs_attention``, None otherwise."""

    name: str
    needs_attention: bool
    mix: Callable[..., tuple[torch.Tensor, torch.Tensor]]


AUGMENTATIONS = Registry[Augmentation]("augment")


def register_augmentation(augmentation: Augmentation) -> Augmentation:
    return AUGMENTATIONS.register(augmentation.name)(augmentation)


# AttentionMix first: the tables compare the others with the first. x: images, y: targets.
register_augmentation(Augmentation("attentionmix", needs_attention=True, mix=attention_mix))
register_augmentation(Augmentation("mixup", needs_attention=False,
                                   mix=lambda x, y, attention, **_: mixup(x, y)))
register_augmentation(Augmentation("cutmix", needs_attention=False,
                                   mix=lambda x, y, attention, **_: cutmix(x, y)))
register_augmentation(Augmentation("attentive_cutmix", needs_attention=True,
                                   mix=lambda x, y, attention, **_:
                                   attentive_cutmix(x, y, attention)))
