"""Throughput of the trial's stages against the bare model's, for the benchmark and the GPU
check: images/s of each stage, and the share of its wall time spent inside the model.

The bare model's rate is measured on random tensors at the batch sizes the stage really runs
(forward+backward+SGD step for training passes, no-grad forward for the others); a stage's model
time is the sum over its passes of images / bare rate, and the rest of its wall time (indexing,
augmentation, mixing, bookkeeping) is overhead. The rates are measured again just before and
just after each stage and averaged: a CPU's speed drifts over minutes (clock boost, other
processes). Rates taken once at the start gave 12-29% "overhead" on a 2-core machine where the
stage's steps, interleaved with bare ones, ran within 4% of them.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from vb_sweep.artifacts import step_settings
from vb_sweep.attacks import build_attack
from vb_sweep.engine import SSTSettings, mix_epoch, plain_epoch, sst_epoch, unlabeled_batch_size
from vb_sweep.metrics import iterate_logits
from vb_sweep.device import place_model
from vb_sweep.models import build_model
from vb_sweep.victim import prediction_entropy


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


# How a pass runs the model: a training step (forward, backward, SGD step); a no-grad forward in
# eval mode; a no-grad forward in train mode, where BatchNorm computes (and keeps) the batch's
# statistics, as the authors' code takes the Beneficiary's attention and pseudo-labels.
STEP, EVAL, BATCH_STATS = "step", "eval", "batch-stats"
PASS_MODES = (STEP, EVAL, BATCH_STATS)


class BareModel:
    """The bare model's images/s on random tensors in each pass mode, measured once per batch
    size and mode (until measured afresh), and the model time of a stage's passes."""

    def __init__(self, model, shape, device: str, autocast_dtype, seconds: float = 2.0,
                 rounds: int = 1):
        self.model, self.shape, self.device = model, shape, device
        self.autocast_dtype, self.seconds, self.rounds = autocast_dtype, seconds, rounds
        self.rates: dict[tuple[int, str], float] = {}

    @staticmethod
    def key(batch_size: int, mode: str) -> tuple[int, str]:
        return max(1, batch_size), mode

    def rate(self, batch_size: int, mode: str) -> float:
        key = self.key(batch_size, mode)
        if key not in self.rates:
            self.rates[key] = self._measure(*key)
        return self.rates[key]

    def model_seconds(self, passes) -> float:
        """``passes``: (images, batch size, mode) per kind of pass of a stage."""
        return sum(images / self.rate(batch, mode) for images, batch, mode in passes if images)

    def timed_stage(self, name: str, run, images: int, passes) -> dict:
        """``run`` timed ``rounds`` times, each against the bare rates of its ``passes``
        measured right before and right after it (the mean of the two model times): the round
        of median overhead, with the lowest and highest overhead of all rounds."""
        before = self.fresh_model_seconds(passes)
        rounds = []
        for _ in range(self.rounds):
            seconds = timed(run, self.device)
            after = self.fresh_model_seconds(passes)
            rounds.append(stage_figure(name, seconds, images, (before + after) / 2))
            before = after
        rounds.sort(key=lambda figure: figure["overhead"])
        return {**rounds[len(rounds) // 2], "rounds": len(rounds),
                "overhead_low": rounds[0]["overhead"], "overhead_high": rounds[-1]["overhead"]}

    def fresh_model_seconds(self, passes) -> float:
        for _, batch, mode in passes:
            self.rates.pop(self.key(batch, mode), None)
        return self.model_seconds(passes)

    def _measure(self, batch_size: int, mode: str) -> float:
        if mode not in PASS_MODES:
            raise ValueError(f"pass mode {mode!r} (allowed: {', '.join(PASS_MODES)})")
        model, dtype, train = self.model, self.autocast_dtype, mode == STEP
        x = torch.randn(batch_size, *self.shape, device=self.device)
        y = torch.randint(0, 10, (batch_size,), device=self.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None), \
                    torch.set_grad_enabled(train):
                loss = F.cross_entropy(model(x), y)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        model.train(mode != EVAL)
        for _ in range(3):
            step()
        count, elapsed = 0, 0.0
        while elapsed < self.seconds:
            elapsed += timed(step, self.device)
            count += batch_size
        model.train()
        return count / elapsed


def stage_figure(name: str, seconds: float, images: int, model_seconds: float) -> dict:
    return {"stage": name, "seconds": seconds, "images_per_s": images / seconds,
            "model_share": min(1.0, model_seconds / seconds),
            "overhead": max(0.0, 1 - model_seconds / seconds)}


def stage_figures(config, data, device: str, bare_seconds: float = 2.0,
                  rounds: int = 1) -> dict:
    """Every stage's throughput and overhead in the config's precision, on the config's data
    poisoned by its attack: {"bare": {...}, "stages": [stage_figure, ...]}, each stage's the
    median of ``rounds`` runs (``BareModel.timed_stage``). Every stage runs the Beneficiary's
    network, the Victim epoch too: it measures the engine's overhead, not what a Victim of
    another ``victim_model`` costs."""
    attack = build_attack(config.attack, target=config.target, seed=config.seed)
    poisoned = attack.poison_train(data.train)
    images, labels = poisoned.images.to(device), poisoned.labels.to(device)
    n, classes = labels.numel(), data.train.num_classes
    torch.manual_seed(0)
    model = place_model(build_model(config.model, classes), device)
    step = step_settings(config, data, device, config.batch_size, config.crop_padding)
    victim_step = step_settings(config, data, device, config.victim_batch_size, None)
    bare = BareModel(model, tuple(images.shape[1:]), device, step.autocast_dtype, bare_seconds,
                     rounds)
    b = config.batch_size
    bare_figures = {"train_batch": b, "train_images_per_s": bare.rate(b, STEP),
                    "victim_batch": config.victim_batch_size,
                    "victim_train_images_per_s": bare.rate(config.victim_batch_size, STEP),
                    "eval_batch": config.eval_batch_size,
                    "eval_images_per_s": bare.rate(config.eval_batch_size, EVAL)}

    everything = torch.arange(n, device=device)
    suspicious, credible = everything[: n // 5], everything[n // 5:]
    m, u = credible.numel(), suspicious.numel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    victim_soft = torch.full((n, classes), 0.1, device=device).half()

    def entropy_pass():
        for logits in iterate_logits(model, images, step.normalize, config.eval_batch_size,
                                     step.autocast_dtype):
            prediction_entropy(logits)

    stages = [
        bare.timed_stage("entropy pass", entropy_pass, n, [(n, config.eval_batch_size, EVAL)]),
        bare.timed_stage("victim epoch",
                         lambda: plain_epoch(model, optimizer, images, labels, everything,
                                             victim_step),
                         n, [(n, config.victim_batch_size, STEP)]),
        bare.timed_stage("plain epoch",
                         lambda: plain_epoch(model, optimizer, images, labels, everything, step),
                         n, [(n, b, STEP)])]
    # Two views per credible image (SST adds K views of an unlabeled batch). In the authors'
    # passes (the default) every view and half goes through the model on its own, the no-grad
    # ones in train mode; "joint" forwards the whole step's batch at once and takes the
    # attention in one eval-mode pass.
    views = 2 * m
    joint = config.batchnorm_passes == "joint"
    mix_passes = ([(views, 2 * b, STEP), (views, 2 * b, EVAL)] if joint
                  else [(views, b, STEP), (views, b, BATCH_STATS)])
    stages.append(bare.timed_stage(
        "attentionmix epoch",
        lambda: mix_epoch(model, optimizer, images, labels, credible, classes, step),
        views, mix_passes))
    sst = SSTSettings(config.sst_augmentations, 0.5, None, True, True,
                      config.min_unlabeled_batch)
    _, u_batch = unlabeled_batch_size(m, u, b, config.min_unlabeled_batch)
    k_views = config.sst_augmentations * u
    sst_passes = ([(views + k_views, 2 * b + config.sst_augmentations * u_batch, STEP),
                   (views, 2 * b, EVAL)] if joint
                  else [*mix_passes, (k_views, u_batch, STEP), (k_views, u_batch, BATCH_STATS)])
    stages.append(bare.timed_stage(
        "sst epoch",
        lambda: sst_epoch(model, optimizer, images, labels, credible, suspicious, victim_soft,
                          classes, step, sst),
        views + k_views, sst_passes))
    return {"bare": bare_figures, "stages": stages}
