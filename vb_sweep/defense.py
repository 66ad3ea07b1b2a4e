"""The Beneficiary's run for each defense variant (docs/method.md sections 2-4).

``run_beneficiary`` trains B epoch by epoch on the variant's data — all of D (none), the credible
set (F), with the mixing augmentation (F+AT), then semi-supervised with or without suppression —
evaluates BA/ASR/RA after every epoch and emits one history record per epoch. It knows nothing of
Ray, MLflow or Parquet: progress and checkpoints leave through callbacks.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from vb_sweep.config import TrialConfig
from vb_sweep.device import optimizer_kernel_args
from vb_sweep.engine import SSTSettings, StepSettings, mix_epoch, plain_epoch, sst_epoch
from vb_sweep.metrics import backdoor_metrics, filter_quality, predict
from vb_sweep.models.batchnorm import reestimate_batchnorm
from vb_sweep.results import HISTOGRAM_BINS
from vb_sweep.timing import section
from vb_sweep.victim import VictimState, VictimTrajectory


@dataclass
class EvalSet:
    """The test set on the device: clean images and the triggered non-target images."""

    clean_images: torch.Tensor
    clean_labels: torch.Tensor
    triggered_images: torch.Tensor
    triggered_labels: torch.Tensor
    target: int


def learning_rate(config: TrialConfig, epoch: int) -> float:
    """Base lr times gamma for every milestone already passed (1-based epochs)."""
    passed = sum(epoch > milestone for milestone in config.lr_milestones)
    return config.lr * config.lr_gamma ** passed


def lambda_u(config: TrialConfig, epoch: int) -> float:
    return config.lambda_u[0] if epoch <= config.lambda_u_switch else config.lambda_u[1]


def stage_of(config: TrialConfig, epoch: int) -> str:
    flags = config.flags
    if not flags.filter:
        return "plain"
    if flags.sst and epoch > config.mix_epochs:
        return "sst"
    return "mix" if flags.mix else "filtered"


def evaluate(model, eval_set: EvalSet, step: StepSettings, batch_size: int) -> dict[str, float]:
    clean = predict(model, eval_set.clean_images, step.normalize, batch_size, step.autocast_dtype)
    triggered = predict(model, eval_set.triggered_images, step.normalize, batch_size,
                        step.autocast_dtype)
    return backdoor_metrics(clean, eval_set.clean_labels, triggered, eval_set.triggered_labels,
                            eval_set.target)


def clean_batchnorm_copy(model, images: torch.Tensor, step: StepSettings, batch_size: int):
    """A copy of ``model`` (same weights) whose BatchNorm running statistics are re-estimated
    from ``images``; in eval mode."""
    return reestimate_batchnorm(copy.deepcopy(model), images, step.normalize, batch_size,
                                step.autocast_dtype).eval()


def clean_batchnorm_metrics(model, data: "BeneficiaryData", eval_set: EvalSet,
                            step: StepSettings, config: TrialConfig) -> dict[str, float]:
    """BA, ASR and the clean target rate of the Beneficiary with BatchNorm statistics taken
    from the clean training images (ground truth: a diagnostic, not a defense)."""
    clean = data.images[~data.poisoned.to(data.images.device)]
    probe = clean_batchnorm_copy(model, clean, step, config.batch_size)
    metrics = evaluate(probe, eval_set, step, config.eval_batch_size)
    return {f"{name}_clean_bn": metrics[name]
            for name in ("ba", "asr", "clean_target_rate")}


def entropy_histograms(state: VictimState, poisoned: torch.Tensor) -> dict[str, list[int]]:
    entropy = state.entropy.float()
    def histogram(values):
        return torch.histc(values, bins=HISTOGRAM_BINS, min=0.0, max=1.0).long().tolist()
    return {"entropy_hist_poisoned": histogram(entropy[poisoned]),
            "entropy_hist_benign": histogram(entropy[~poisoned])}


def split_record(state: VictimState, poisoned: torch.Tensor) -> dict:
    """Filter quality of one split against the ground truth, plus its entropy histograms."""
    return {**filter_quality(state.suspicious, poisoned, state.entropy),
            **entropy_histograms(state, poisoned)}


@dataclass
class BeneficiaryData:
    images: torch.Tensor          # uint8 (N, C, H, W) on the device, poisoned
    labels: torch.Tensor          # int64 (N,) on the device, the labels the defense sees
    poisoned: torch.Tensor        # bool (N,) on the CPU: ground truth, for metrics only
    num_classes: int


def train_one_epoch(config, epoch, model, optimizer, data: BeneficiaryData,
                    trajectory: VictimTrajectory | None, step: StepSettings):
    stage = stage_of(config, epoch)
    everything = torch.arange(data.labels.numel(), device=data.labels.device)
    if stage == "plain":
        return plain_epoch(model, optimizer, data.images, data.labels, everything, step)
    state = trajectory.state_for(epoch)
    suspicious_mask = state.suspicious.to(data.labels.device)
    credible = torch.nonzero(~suspicious_mask)[:, 0]
    if stage == "filtered":
        return plain_epoch(model, optimizer, data.images, data.labels, credible, step)
    if stage == "mix":
        return mix_epoch(model, optimizer, data.images, data.labels, credible,
                         data.num_classes, step)
    flags = config.flags
    sst = SSTSettings(config.sst_augmentations, lambda_u(config, epoch),
                      config.sharpen_temperature, flags.suppress_unlabeled,
                      flags.suppress_labeled, config.min_unlabeled_batch)
    victim_soft = None
    if flags.suppress_unlabeled or flags.suppress_labeled:
        victim_soft = state.tempered_softmax.to(data.labels.device)
    suspicious = torch.nonzero(suspicious_mask)[:, 0]
    return sst_epoch(model, optimizer, data.images, data.labels, credible, suspicious,
                     victim_soft, data.num_classes, step, sst)


def beneficiary_optimizer(model, config: TrialConfig) -> torch.optim.SGD:
    """The Beneficiary's SGD (docs/method.md section 2) with the config's lr, momentum and
    weight decay, in the config's update kernel."""
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay,
                           **optimizer_kernel_args(config.optimizer_kernel))


def beneficiary_epoch(config: TrialConfig, epoch: int, model, optimizer, data: BeneficiaryData,
                      eval_set: EvalSet, trajectory: VictimTrajectory | None,
                      step: StepSettings) -> dict:
    """Train one epoch at its learning rate, evaluate, and return the epoch's history record."""
    lr = learning_rate(config, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    started = time.perf_counter()
    stats = train_one_epoch(config, epoch, model, optimizer, data, trajectory, step)
    if not math.isfinite(stats.loss):
        raise FloatingPointError(f"the training loss is {stats.loss} in epoch {epoch} "
                                 f"(stage {stage_of(config, epoch)}, lr {lr:g}): the run "
                                 "diverged")
    train_seconds = time.perf_counter() - started
    if config.sst_batchnorm == "credible" and stage_of(config, epoch) == "sst":
        with section("batchnorm re-estimation"):
            credible = ~trajectory.state_for(epoch).suspicious.to(data.images.device)
            reestimate_batchnorm(model, data.images[credible], step.normalize,
                                 config.batch_size, step.autocast_dtype)
    with section("evaluation"):
        metrics = evaluate(model, eval_set, step, config.eval_batch_size)
    record = {"epoch": epoch, "stage": stage_of(config, epoch), "lr": lr, "loss": stats.loss,
              **metrics, "seconds": time.perf_counter() - started,
              "images_per_s": stats.images / max(train_seconds, 1e-9)}
    if config.batchnorm_diagnostic:
        with section("batchnorm diagnostic"):
            record.update(clean_batchnorm_metrics(model, data, eval_set, step, config))
    if trajectory is not None:
        record.update(split_record(trajectory.state_for(epoch), data.poisoned))
    return record


def checkpoint_state(epoch: int, model, optimizer, history: list[dict]) -> dict:
    """What resumes a Beneficiary after ``epoch``: weights, optimizer, random state, history."""
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "history": history}


def run_beneficiary(config: TrialConfig, model, data: BeneficiaryData, eval_set: EvalSet,
                    trajectory: VictimTrajectory | None, step: StepSettings,
                    on_epoch: Callable[[dict], None] | None = None,
                    checkpoint: dict | None = None,
                    save_checkpoint: Callable[[dict], None] | None = None,
                    last_epoch: int | None = None) -> list[dict]:
    """Train the Beneficiary after the ``checkpoint``'s epoch (or from the start) up to
    ``last_epoch`` (default: ``config.epochs``); return the history records."""
    optimizer = beneficiary_optimizer(model, config)
    history: list[dict] = []
    first_epoch = 1
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["cpu_rng"])
        if checkpoint.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(checkpoint["cuda_rng"])
        history = list(checkpoint["history"])
        first_epoch = checkpoint["epoch"] + 1
    elif trajectory is not None:
        record = {"epoch": 0, "stage": "victim", **split_record(trajectory.states[0], data.poisoned)}
        history.append(record)
        if on_epoch:
            on_epoch(record)

    last_epoch = config.epochs if last_epoch is None else last_epoch
    for epoch in range(first_epoch, last_epoch + 1):
        with section(f"{stage_of(config, epoch)} epoch"):
            record = beneficiary_epoch(config, epoch, model, optimizer, data, eval_set,
                                       trajectory, step)
            history.append(record)
            with section("report and checkpoint"):
                if on_epoch:
                    on_epoch(record)
                if save_checkpoint:
                    save_checkpoint(checkpoint_state(epoch, model, optimizer, history))
    return history
