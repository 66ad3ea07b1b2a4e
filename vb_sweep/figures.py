"""Small per-trial figures, rendered to PNG bytes (MLflow artifacts, notebooks)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def entropy_histogram_png(poisoned_counts: list[int], benign_counts: list[int],
                          title: str = "Victim prediction entropy") -> bytes:
    """Normalised-entropy histograms of poisoned vs benign samples (the paper's Figure 1)."""
    bins = len(poisoned_counts)
    edges = np.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for counts, label, colour in ((benign_counts, "benign", "tab:blue"),
                                  (poisoned_counts, "poisoned", "tab:red")):
        total = max(1, sum(counts))
        ax.stairs(np.asarray(counts) / total, edges, fill=True, alpha=0.5, color=colour,
                  label=f"{label} (n={sum(counts)})")
    ax.set_xlabel("normalised entropy")
    ax.set_ylabel("share of samples")
    ax.set_title(title)
    ax.legend()
    return _png(fig)


def _as_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).cpu().numpy()


def trigger_preview_png(clean: torch.Tensor, triggered: torch.Tensor, attack: str) -> bytes:
    """Rows: clean image, triggered image, amplified |difference| for a few uint8 images."""
    columns = clean.shape[0]
    fig, axes = plt.subplots(3, columns, figsize=(1.6 * columns, 5), squeeze=False)
    difference = (triggered.int() - clean.int()).abs()
    scale = 255.0 / max(1, int(difference.max()))
    rows = (("clean", clean), ("triggered", triggered),
            (f"|diff| x{scale:.0f}", (difference * scale).clamp(0, 255).to(torch.uint8)))
    for row, (name, images) in enumerate(rows):
        for column in range(columns):
            ax = axes[row][column]
            ax.imshow(_as_hwc(images[column]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(name)
    fig.suptitle(f"{attack} trigger")
    return _png(fig)
