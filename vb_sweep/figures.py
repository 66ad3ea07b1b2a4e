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


STAGE_COLORS = {"plain": "#7f7f7f", "filtered": "#1f77b4", "mix": "#ff7f0e", "sst": "#2ca02c"}


def _measured(record: dict, key: str) -> bool:
    value = record.get(key)
    return isinstance(value, (int, float)) and not np.isnan(value)


def draw_training_curves(ax, records: list[dict], title: str) -> bool:
    """BA, ASR and RA after every Beneficiary epoch on ``ax``, each stage shaded, the best-BA
    epoch (the paper's figure; the first on a tie) marked beside the last one (the row's).
    False when no record has a BA."""
    trained = sorted((r for r in records if _measured(r, "ba")), key=lambda r: r["epoch"])
    if not trained:
        return False
    epochs = [int(r["epoch"]) for r in trained]
    for key, label, colour in (("ba", "BA", "#1f77b4"), ("asr", "ASR", "#d62728"),
                               ("ra", "RA", "#2ca02c")):
        if any(_measured(r, key) for r in trained):
            ax.plot(epochs, [100 * r[key] if _measured(r, key) else np.nan for r in trained],
                    marker=".", label=label, color=colour)
    start = 0
    for end in range(1, len(trained) + 1):  # one shaded span per run of a stage
        if end == len(trained) or trained[end]["stage"] != trained[start]["stage"]:
            stage = trained[start]["stage"]
            ax.axvspan(epochs[start] - 0.5, epochs[end - 1] + 0.5, alpha=0.08,
                       color=STAGE_COLORS.get(stage, "#999999"))
            ax.text((epochs[start] + epochs[end - 1]) / 2, 101, stage, ha="center", fontsize=7)
            start = end
    best = max(trained, key=lambda r: r["ba"])
    ax.axvline(best["epoch"], color="#555555", linestyle="--", linewidth=0.8)
    ax.annotate(f"best BA {100 * best['ba']:.1f} (ASR {100 * best['asr']:.1f}), epoch "
                f"{int(best['epoch'])}", (best["epoch"], 50), fontsize=7, rotation=90,
                ha="right", va="center")
    ax.set_xlabel("Beneficiary epoch")
    ax.set_ylabel("%")
    ax.set_ylim(0, 108)
    ax.set_title(title)
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    return True


def training_curves_png(records: list[dict],
                        title: str = "BA, ASR and RA per epoch") -> bytes | None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if not draw_training_curves(ax, records, title):
        plt.close(fig)
        return None
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
