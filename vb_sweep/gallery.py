"""Trigger gallery: for each attack, clean images, their triggered versions and the amplified
|difference|, so a reader can check every trigger by eye against the paper.

    render_attack_gallery(test_set, [build_attack("badnets"), build_attack("sig")], "gallery.png")

Drawing uses matplotlib's Agg canvas directly (no pyplot, no global state). The gallery only
calls ``apply_trigger``: attacks with ``requires_training`` must be prepared by the caller, and
are skipped (with a warning) if their trigger cannot be applied yet.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vb_sweep.attacks.base import Attack
from vb_sweep.data.base import ImageDataset

ROWS_PER_ATTACK = 3  # clean, triggered, |difference|
CELL_INCHES = 1.3


def render_attack_gallery(dataset: ImageDataset, attacks: list[Attack],
                          out_path: str | os.PathLike, n_images: int = 3) -> list[Path]:
    """Draw the gallery and save it as PNG (plus SVG when ``out_path`` ends in .svg, the PNG
    then next to it). Returns the paths written."""
    clean = sample_images(dataset, n_images)
    panels = [(attack, triggered) for attack in attacks
              if (triggered := _try_trigger(attack, clean)) is not None]
    figure = draw_gallery(clean, panels)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if out_path.suffix.lower() == ".svg":
        figure.savefig(out_path, format="svg")
        written.append(out_path)
        out_path = out_path.with_suffix(".png")
    figure.savefig(out_path, format="png", dpi=120)
    written.insert(0, out_path)
    return written


def sample_images(dataset: ImageDataset, n_images: int) -> torch.Tensor:
    """One image per class (each class's first, earliest classes first) for varied content,
    topped up with the first other images when there are fewer classes. uint8 (n, C, H, W)."""
    labels = dataset.labels.cpu()
    picked = sorted(int(torch.nonzero(labels == c)[0]) for c in labels.unique())[:n_images]
    extra = [i for i in range(min(len(labels), 2 * n_images)) if i not in picked]
    picked += extra[: n_images - len(picked)]
    return dataset.images[torch.tensor(picked, dtype=torch.long)].cpu()


def draw_gallery(clean: torch.Tensor, panels: list[tuple[Attack, torch.Tensor]]) -> Figure:
    """One row group per (attack, triggered images): clean / triggered / amplified |diff|."""
    n_images = clean.shape[0]
    n_rows = max(1, ROWS_PER_ATTACK * len(panels))
    figure = Figure(figsize=(CELL_INCHES * n_images + 1.2, CELL_INCHES * n_rows),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, n_images, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for group, (attack, triggered) in enumerate(panels):
        triggered = triggered.cpu()
        difference, gain = amplified_difference(clean, triggered)
        rows = [("clean", clean), ("triggered", triggered), (f"|diff| x{gain:g}", difference)]
        for offset, (label, images) in enumerate(rows):
            row = group * ROWS_PER_ATTACK + offset
            for col in range(n_images):
                _show(axes[row, col], images[col])
            axes[row, 0].set_ylabel(label, fontsize=8)
        axes[group * ROWS_PER_ATTACK, 0].set_title(_attack_title(attack), fontsize=9,
                                                   loc="left")
    if not panels:
        axes[0, 0].set_title("no attack with an applicable trigger", fontsize=9, loc="left")
    return figure


def amplified_difference(clean: torch.Tensor, triggered: torch.Tensor
                         ) -> tuple[torch.Tensor, float]:
    """|triggered - clean| scaled by an integer gain so its largest value nears 255."""
    difference = (triggered.to(torch.int16) - clean.to(torch.int16)).abs()
    peak = int(difference.max()) if difference.numel() else 0
    gain = max(1, 255 // peak) if peak else 1
    return (difference * gain).clamp(0, 255).to(torch.uint8), float(gain)


def _show(ax, image: torch.Tensor) -> None:
    pixels = image.permute(1, 2, 0).numpy()
    if pixels.shape[2] == 1:
        ax.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(pixels, interpolation="nearest")


def _attack_title(attack: Attack) -> str:
    return f"{attack.name} ({attack.preset}, target {attack.target})"


def _try_trigger(attack: Attack, clean: torch.Tensor) -> torch.Tensor | None:
    if not attack.requires_training:
        return attack.apply_trigger(clean)
    try:
        return attack.apply_trigger(clean)
    except Exception as error:  # an unprepared trained attack: skip it, keep the others
        warnings.warn(f"gallery: skipping {attack.name} (prepare() it first): {error}",
                      stacklevel=3)
        return None
