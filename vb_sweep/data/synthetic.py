"""The project's own generated dataset: 10 classes of 32x32 RGB shapes and textures.

Each image is one object (a shape, or a disc-shaped patch of a texture) at a random position,
size, rotation and colour on a smoothly varying coloured background, plus pixel noise. Everything
is drawn from one seeded generator and rendered with batched tensor ops (one loop over the 10
classes, none over images), so the same arguments give byte-identical images, 5,000 of them
in a fraction of a second.

Objects sit near the centre and fill a good part of the frame, as in CIFAR-10. With small
objects anywhere in the frame (radius 3.5-9 px, centres 9-23 px) two things went wrong at the
smoke scale: AttentionMix, which blends a partner's high-attention region into each image and
labels the result by attention mass, mostly blended in the partner's background while the label
gave the partner about 40% of its weight (tiny CNN on clean data: BA 0.17 after 2 mix epochs,
0.50 with centred objects); and the Victim learned the stripe classes about as early as the
trigger, so its split after warm-up had precision 0.60 for BadNets (small CNN; the tiny CNN on
centred objects: 0.99, recall 0.99).
Difficulty comes from similar classes (disc and ring, square and triangle, checkerboard and
dots, the stripe orientations), colour, size and contrast; the tiny CNN of the smoke preset
reaches about 0.96-0.99 test accuracy in 16 epochs on 5,000 images.
Objects are drawn at half opacity: an object's colour lies halfway between its own colour and
the background's, at least 0.15 from the background in RGB distance. At full opacity the shapes
were so easy that a network never needed anything else to fit the target class: the
label-consistent attack (CL-16, a 16/255 perturbation plus a patch) did not take even on half
the target class (ASR 0.00, BA 0.998), while on CIFAR-10 it does (0.77). At half opacity it
takes as on natural images, though not in every run (at half the target class ASR 0.00-0.98,
above 0.6 in four of seven runs, against 0.00 without the patch).
The pixel noise is kept low (about 2.5/255, sensor-like) on purpose: at 0.05 (13/255) it buried
the Blend trigger (a 0.1-weighted noise image, about 8/255 per pixel), whose no-defense ASR
stayed at 0.09 on the smoke preset; at 0.01 it reaches 0.97-0.99, as on natural images.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from vb_sweep.data.base import DatasetSplits, ImageDataset

SHAPES = ["disc", "square", "triangle", "ring", "cross"]
TEXTURES = ["horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard", "dots"]
CLASS_NAMES = SHAPES + TEXTURES
SIZE = 32
DEFAULT_TRAIN_PER_CLASS = 500
DEFAULT_TEST_PER_CLASS = 100
TRAIN_SEED, TEST_SEED = 0, 1

# Rendering constants (pixels or [0, 1] intensities).
RADIUS_RANGE = (6.0, 11.0)
CENTRE_RANGE = (13.0, 19.0)     # object centres, in pixels, on both axes
MIN_CONTRAST = 0.3          # least RGB distance between object and background colour
OBJECT_OPACITY = 0.5
BACKGROUND_AMPLITUDE = 0.15
PIXEL_NOISE_STD = 0.01


def load_synthetic(root: Path | None = None, *, download: bool = False,
                   train_per_class: int | None = None,
                   test_per_class: int | None = None) -> DatasetSplits:
    """Generate the train and test splits (``root`` and ``download`` are not used)."""
    train = generate_synthetic(train_per_class or DEFAULT_TRAIN_PER_CLASS, seed=TRAIN_SEED)
    test = generate_synthetic(test_per_class or DEFAULT_TEST_PER_CLASS, seed=TEST_SEED)
    return DatasetSplits(train, test)


def generate_synthetic(per_class: int, seed: int = 0) -> ImageDataset:
    """``per_class`` images of each class, classes interleaved (label = index % 10)."""
    num_classes = len(CLASS_NAMES)
    count = per_class * num_classes
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % num_classes

    background = _background(count, gen)
    foreground = _contrasting_colour(background.mean(dim=(2, 3)), gen)
    alpha = _object_alpha(labels, gen)
    images = torch.lerp(background, foreground[:, :, None, None], OBJECT_OPACITY * alpha)
    images.add_(torch.randn(images.shape, generator=gen), alpha=PIXEL_NOISE_STD)
    images = images.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return ImageDataset(images, labels, num_classes, list(CLASS_NAMES), "synthetic")


# -- background and colours ------------------------------------------------------------------

def _background(count: int, gen: torch.Generator) -> torch.Tensor:
    """A base colour plus low-frequency colour noise (a 4x4 field upsampled): (N, 3, H, W)."""
    base = 0.15 + 0.7 * torch.rand(count, 3, 1, 1, generator=gen)
    field = BACKGROUND_AMPLITUDE * torch.randn(count, 3, 4, 4, generator=gen)
    field = F.interpolate(field, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return field.add_(base).clamp_(0, 1)


def _contrasting_colour(background: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random colour per image, replaced by the background's inverse when too similar."""
    colour = torch.rand(background.shape, generator=gen)
    too_close = (colour - background).norm(dim=1, keepdim=True) < MIN_CONTRAST
    return torch.where(too_close, 1 - background, colour)


# -- objects -------------------------------------------------------------------------------

def _uniform(bounds: tuple[float, float], shape: tuple[int, ...],
             gen: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=gen)


def _object_alpha(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Coverage in [0, 1] of each image's object: (N, 1, H, W)."""
    count = labels.shape[0]
    radius = _uniform(RADIUS_RANGE, (count,), gen)
    centre = _uniform(CENTRE_RANGE, (count, 2), gen)
    angle = 2 * math.pi * torch.rand(count, generator=gen)
    jitter = (torch.rand(count, generator=gen) - 0.5) * math.radians(30)
    period = 4 + 3 * torch.rand(count, generator=gen)
    phase = 2 * math.pi * torch.rand(count, generator=gen)
    flip = torch.where(torch.rand(count, generator=gen) < 0.5, 1.0, -1.0)

    alpha = torch.empty(count, SIZE, SIZE)
    for label, name in enumerate(CLASS_NAMES):
        idx = torch.nonzero(labels == label).flatten()
        r = radius[idx, None, None]
        if name in SHAPES:  # shapes turn freely
            u, v = _rotated_coordinates(centre[idx], angle[idx])
            alpha[idx] = _coverage(_shape_distance(name, u, v, r))
        else:  # textures keep their orientation up to a small jitter
            u, v = _rotated_coordinates(centre[idx], jitter[idx] + _texture_angle(name) * flip[idx])
            inside = _coverage(torch.sqrt(u ** 2 + v ** 2) - 1.2 * r)
            alpha[idx] = inside * _texture(name, u, v, period[idx, None, None],
                                           phase[idx, None, None])
    return alpha[:, None]


def _rotated_coordinates(centre: torch.Tensor, angle: torch.Tensor):
    """Pixel-centre coordinates relative to ``centre``, rotated by ``angle``: two (n, H, W)."""
    grid = torch.arange(SIZE, dtype=torch.float32) + 0.5
    y, x = grid[None, :, None], grid[None, None, :]
    dx, dy = x - centre[:, 0, None, None], y - centre[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return dx * cos + dy * sin, dy * cos - dx * sin


def _coverage(distance: torch.Tensor) -> torch.Tensor:
    """Antialiased inside-ness from a signed distance (negative inside), about 1 px wide."""
    return (0.5 - distance).clamp(0, 1)


def _shape_distance(name: str, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor):
    if name == "disc":
        return torch.sqrt(u ** 2 + v ** 2) - r
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) - 0.8 * r
    if name == "triangle":  # equilateral, inradius r / 2: the max of three half-plane distances
        h = math.sqrt(3) / 2
        return torch.maximum(torch.maximum(-v, h * u + v / 2), -h * u + v / 2) - r / 2
    if name == "ring":
        return (torch.sqrt(u ** 2 + v ** 2) - r).abs() - (0.2 * r).clamp(min=0.8)
    if name == "cross":
        width = (0.3 * r).clamp(min=1.0)
        bar_u = torch.maximum(u.abs() - r, v.abs() - width)
        bar_v = torch.maximum(v.abs() - r, u.abs() - width)
        return torch.minimum(bar_u, bar_v)
    raise KeyError(name)


def _texture_angle(name: str) -> float:
    """Diagonal stripes lean either way (by ``flip``), so horizontal flips keep the class."""
    return math.radians(45) if name == "diagonal_stripes" else 0.0


def _texture(name: str, u: torch.Tensor, v: torch.Tensor, period: torch.Tensor,
             phase: torch.Tensor) -> torch.Tensor:
    """Soft binary pattern in [0, 1] in the texture's frame (``u`` across, ``v`` down)."""
    across, down = 2 * math.pi * u / period, 2 * math.pi * v / period
    if name in ("horizontal_stripes", "diagonal_stripes"):
        signal = torch.sin(down + phase)
    elif name == "vertical_stripes":
        signal = torch.sin(across + phase)
    elif name == "checkerboard":
        signal = 1.5 * torch.sin(across + phase) * torch.sin(down)
    elif name == "dots":  # small blobs where both cosines peak
        signal = 2 * (torch.cos(across) * torch.cos(down) - 0.4)
    else:
        raise KeyError(name)
    return (2 * signal + 0.5).clamp(0, 1)
