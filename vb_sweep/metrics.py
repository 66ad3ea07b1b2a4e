"""Metrics of docs/method.md section 6: BA, ASR, RA, filter quality, DER."""

from __future__ import annotations

import torch


@torch.no_grad()
def predict(model, images: torch.Tensor, normalize, batch_size: int,
            autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Predicted labels for uint8 images, in large no-grad batches, in eval mode."""
    return torch.cat([logits.argmax(1) for logits in
                      iterate_logits(model, images, normalize, batch_size, autocast_dtype)])


@torch.no_grad()
def iterate_logits(model, images, normalize, batch_size, autocast_dtype=None):
    was_training = model.training
    model.eval()
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = normalize(images[start:start + batch_size])
            with torch.autocast(batch.device.type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                yield model(batch).float()
    finally:
        model.train(was_training)


def backdoor_metrics(clean_pred: torch.Tensor, clean_labels: torch.Tensor,
                     triggered_pred: torch.Tensor, triggered_labels: torch.Tensor,
                     target: int) -> dict[str, float]:
    """BA on the clean test set; ASR and RA on the triggered non-target test images.

    ``clean_target_rate`` is the share of clean non-target images predicted as the target: the
    ASR the model would score with no trigger at all. A model biased towards the target (an
    under-trained one, say) has a high ASR without any backdoor; ASR minus this rate is what
    the trigger itself adds.
    """
    non_target = clean_labels != target
    return {
        "ba": (clean_pred == clean_labels).float().mean().item(),
        "asr": (triggered_pred == target).float().mean().item(),
        "ra": (triggered_pred == triggered_labels).float().mean().item(),
        "clean_target_rate": (clean_pred[non_target] == target).float().mean().item(),
    }


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (ties averaged)."""
    positives = positives.bool()
    n_pos = int(positives.sum())
    n_neg = positives.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores.double())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    order = values.argsort()
    sorted_values = values[order]
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True,
                                                  return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank_of_group = ends - (counts.double() - 1) / 2  # 1-based average rank
    ranks = torch.empty_like(values)
    ranks[order] = mean_rank_of_group[inverse]
    return ranks


def filter_quality(suspicious: torch.Tensor, poisoned: torch.Tensor,
                   normalized_entropy: torch.Tensor) -> dict[str, float | int]:
    """How well the suspicious set Ds detects the poisoned samples (ground truth)."""
    suspicious, poisoned = suspicious.bool(), poisoned.bool()
    caught = int((suspicious & poisoned).sum())
    n_suspicious = int(suspicious.sum())
    n_poisoned = int(poisoned.sum())
    return {
        "suspicious_size": n_suspicious,
        "credible_size": int((~suspicious).sum()),
        "poisoned_in_suspicious": caught,
        "poisoned_in_credible": n_poisoned - caught,
        "filter_precision": caught / n_suspicious if n_suspicious else float("nan"),
        "filter_recall": caught / n_poisoned if n_poisoned else float("nan"),
        # Low entropy marks a poisoned sample, so the poison score is the negated entropy.
        "filter_auroc": auroc(-normalized_entropy.float(), poisoned),
    }


def defense_effectiveness_rate(ba_none: float, asr_none: float,
                               ba_def: float, asr_def: float) -> float:
    """DER = [max(0, ASR_none - ASR_def) - max(0, BA_none - BA_def) + 1] / 2."""
    return (max(0.0, asr_none - asr_def) - max(0.0, ba_none - ba_def) + 1.0) / 2.0
