"""Throughput of the trial's stages against the bare model's, for benchmark.py and gpu_check.py
(beside this file, which import it; nothing in the package does): images/s of each stage, and
the share of its wall time spent inside the model.

The bare model runs on random tensors in the passes the stage really runs: the same batch
sizes, one forward per part where the engine forwards a step's batch in parts (the authors'
BatchNorm passes), one backward and one step of the Beneficiary's optimiser (SGD with momentum
and weight decay) per training step, no-grad forwards for the others. After each step of the
stage, the bare model runs that step's passes once and is timed on its own: the stage's model
time is the sum of those times, and the rest of its wall time (indexing, augmentation, mixing,
bookkeeping) is overhead. Interleaved step by step, both see the same moment of a CPU whose
speed drifts by 10-20% from one second to the next on a shared machine; rates measured in a
loop before and after a stage of 1-2 s put the same smoke-scale epoch anywhere between 0% and
25% overhead. On a GPU every step then ends in a synchronisation, so the launch latency the
host's running ahead would hide counts as overhead. The tight-loop rates (``BareModel.rate``)
are still shown as the bare model's throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median

import torch
import torch.nn.functional as F

from vb_sweep.artifacts import ENGINE_DEFAULTS, place_for, step_settings
from vb_sweep.attacks import build_attack
from vb_sweep.config import TrialConfig
from vb_sweep.defense import beneficiary_optimizer
from vb_sweep.engine import SSTSettings, mix_epoch, plain_epoch, sst_epoch, unlabeled_batch_size
from vb_sweep.metrics import iterate_logits
from vb_sweep.device import autocast_dtype
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
    """The bare model on random tensors: its images/s in each pass mode, measured once per batch
    (a size, or the sizes of the parts one step forwards separately) and mode, and the timing
    of a stage against the same passes interleaved with its steps."""

    def __init__(self, model, shape, device: str, autocast_dtype, seconds: float = 2.0,
                 rounds: int = 1, config: TrialConfig | None = None):
        self.model, self.shape, self.device = model, shape, device
        self.autocast_dtype, self.seconds, self.rounds = autocast_dtype, seconds, rounds
        self.optimizer = beneficiary_optimizer(model, config or TrialConfig())
        self.rates: dict[tuple[tuple[int, ...], str], float] = {}
        self.passes: dict[tuple[tuple[int, ...], str], Callable[[], None]] = {}

    @staticmethod
    def key(batch, mode: str) -> tuple[tuple[int, ...], str]:
        parts = (batch,) if isinstance(batch, int) else tuple(batch)
        return tuple(max(1, part) for part in parts), mode

    def rate(self, batch, mode: str) -> float:
        """images/s of ``mode`` passes of ``batch``: an int, or a tuple of part sizes that one
        pass forwards one after the other (a training pass then takes one backward and one
        optimiser step for all of them); measured in a loop of passes for ``seconds``."""
        key = self.key(batch, mode)
        if key not in self.rates:
            run_pass = self.bare_pass(batch, mode)
            count, elapsed = 0, 0.0
            while elapsed < self.seconds:
                elapsed += timed(run_pass, self.device)
                count += sum(key[0])
            self.rates[key] = count / elapsed
        return self.rates[key]

    def timed_stage(self, name: str, run, images: int, step_passes) -> dict:
        """``run(after_step)`` timed ``rounds`` times; after each of its steps ``after_step``
        runs the bare model's passes of one such step (``step_passes``: (batch, mode) each; the
        first one's images are the step's), timed on their own. A round's stage time is its wall
        time without them, its model time theirs, scaled to the stage's ``images`` (a last batch
        may be short). Returned: the round of median overhead, with the lowest and highest
        overhead of all rounds."""
        passes = [self.bare_pass(batch, mode) for batch, mode in step_passes]
        step_images = sum(self.key(*step_passes[0])[0])
        rounds = []
        for _ in range(self.rounds):
            bare = {"seconds": 0.0, "steps": 0}

            def after_step():
                bare["seconds"] += timed(lambda: [run_pass() for run_pass in passes],
                                         self.device)
                bare["steps"] += 1

            seconds = timed(lambda: run(after_step), self.device) - bare["seconds"]
            scale = images / max(1, bare["steps"] * step_images)
            rounds.append(stage_figure(name, seconds, images, bare["seconds"] * scale))
        rounds.sort(key=lambda figure: figure["overhead"])
        return {**rounds[len(rounds) // 2], "rounds": len(rounds),
                "overhead_low": rounds[0]["overhead"], "overhead_high": rounds[-1]["overhead"]}

    def bare_pass(self, batch, mode: str):
        """One ``mode`` pass of ``batch`` as a function (its random inputs made once and kept,
        warmed up); it leaves the model in the mode it found it in."""
        key = self.key(batch, mode)
        if key not in self.passes:
            self.passes[key] = self._make_pass(*key)
            for _ in range(3):
                self.passes[key]()
        return self.passes[key]

    def _make_pass(self, parts: tuple[int, ...], mode: str):
        if mode not in PASS_MODES:
            raise ValueError(f"pass mode {mode!r} (allowed: {', '.join(PASS_MODES)})")
        model, dtype, optimizer = self.model, self.autocast_dtype, self.optimizer
        train, model_mode = mode == STEP, mode != EVAL
        xs = [torch.randn(part, *self.shape, device=self.device) for part in parts]
        y = torch.randint(0, 10, (sum(parts),), device=self.device)

        def run_pass():
            found_mode = model.training
            if found_mode != model_mode:
                model.train(model_mode)
            with torch.autocast(y.device.type, dtype=dtype, enabled=dtype is not None), \
                    torch.set_grad_enabled(train):
                loss = F.cross_entropy(torch.cat([model(x) for x in xs]), y)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if found_mode != model_mode:
                model.train(found_mode)

        return run_pass


# Each engine option against the default engine (TrialConfig's engine fields).
ENGINE_VARIANTS = {"default": {}, "NCHW layout": {"channels_last": False},
                   "torch.compile": {"compile": True},
                   "foreach optimizer": {"optimizer_kernel": "foreach"},
                   "fused optimizer": {"optimizer_kernel": "fused"}}


def engine_option_rates(config, device: str, seconds: float = 2.0, rounds: int = 3) -> list[dict]:
    """The bare model's training and evaluation images/s (the config's batch sizes) with the
    default engine and with each of ``ENGINE_VARIANTS``, and the seconds their first passes
    take (a compile's included). The variants are measured in turn, ``rounds`` times, and the
    median round is kept, so a machine whose speed drifts slows them alike. Speedups are
    against the first variant, the default engine."""
    variants = []
    for name, changes in ENGINE_VARIANTS.items():
        variant = config.replace(**{**ENGINE_DEFAULTS, **changes})
        torch.manual_seed(0)
        model = place_for(variant, build_model(variant.model, 10), device)
        bare = BareModel(model, (3, 32, 32), device, autocast_dtype(variant.amp, device),
                         seconds / rounds, config=variant)
        first = timed(lambda: [bare.bare_pass(config.batch_size, STEP),
                               bare.bare_pass(config.eval_batch_size, EVAL)], device)
        variants.append((name, changes, bare, first))
    measured = {name: {STEP: [], EVAL: []} for name, *_ in variants}
    for _ in range(rounds):
        for name, _, bare, _ in variants:
            for mode, batch in ((STEP, config.batch_size), (EVAL, config.eval_batch_size)):
                bare.rates.clear()
                measured[name][mode].append(bare.rate(batch, mode))
    rows = [{"option": name, "changes": changes, "first_passes_s": first,
             "train_images_per_s": median(measured[name][STEP]),
             "eval_images_per_s": median(measured[name][EVAL])}
            for name, changes, _, first in variants]
    torch._dynamo.reset()  # nothing stays compiled after the measurement
    for row in rows:
        row["train_speedup"] = row["train_images_per_s"] / rows[0]["train_images_per_s"]
        row["eval_speedup"] = row["eval_images_per_s"] / rows[0]["eval_images_per_s"]
    return rows


def engine_option_lines(rows: list[dict]) -> list[str]:
    lines = [f"  {'engine option':<20} {'train img/s':>12} {'speedup':>8} {'eval img/s':>11} "
             f"{'speedup':>8} {'first passes':>13}"]
    for row in rows:
        lines.append(f"  {row['option']:<20} {row['train_images_per_s']:>12.0f} "
                     f"{row['train_speedup']:>7.2f}x {row['eval_images_per_s']:>11.0f} "
                     f"{row['eval_speedup']:>7.2f}x {row['first_passes_s']:>12.1f}s")
    return lines


def stage_figure(name: str, seconds: float, images: int, model_seconds: float) -> dict:
    return {"stage": name, "seconds": seconds, "images_per_s": images / seconds,
            "model_share": min(1.0, model_seconds / seconds),
            "overhead": max(0.0, 1 - model_seconds / seconds)}


def after_each_step(optimizer, epoch, *args):
    """A stage runner for ``BareModel.timed_stage``: ``epoch(*args)`` with ``after_step``
    called after each of the optimiser's steps."""
    def run(after_step):
        hook = optimizer.register_step_post_hook(lambda *_: after_step())
        try:
            epoch(*args)
        finally:
            hook.remove()
    return run


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
    model = place_for(config, build_model(config.model, classes), device)
    step = step_settings(config, data, device, config.batch_size, config.crop_padding)
    victim_step = step_settings(config, data, device, config.victim_batch_size, None)
    bare = BareModel(model, tuple(images.shape[1:]), device, step.autocast_dtype, bare_seconds,
                     rounds, config)
    b, eval_batch = config.batch_size, config.eval_batch_size
    bare_figures = {"train_batch": b, "train_images_per_s": bare.rate(b, STEP),
                    "victim_batch": config.victim_batch_size,
                    "victim_train_images_per_s": bare.rate(config.victim_batch_size, STEP),
                    "eval_batch": eval_batch,
                    "eval_images_per_s": bare.rate(eval_batch, EVAL)}

    everything = torch.arange(n, device=device)
    suspicious, credible = everything[: n // 5], everything[n // 5:]
    m, u = credible.numel(), suspicious.numel()
    optimizer = beneficiary_optimizer(model, config)  # its own: the bare passes step theirs
    victim_soft = torch.full((n, classes), 0.1, device=device).half()

    def entropy_pass(after_step):
        for logits in iterate_logits(model, images, step.normalize, eval_batch,
                                     step.autocast_dtype):
            prediction_entropy(logits)
            after_step()

    stages = [
        bare.timed_stage("entropy pass", entropy_pass, n, [(eval_batch, EVAL)]),
        bare.timed_stage("victim epoch",
                         after_each_step(optimizer, plain_epoch, model, optimizer, images,
                                         labels, everything, victim_step),
                         n, [(config.victim_batch_size, STEP)]),
        bare.timed_stage("plain epoch",
                         after_each_step(optimizer, plain_epoch, model, optimizer, images,
                                         labels, everything, step),
                         n, [(b, STEP)])]
    # Two views per credible image (SST adds K views of an unlabeled batch). In the authors'
    # passes (the default) a training step forwards each half of the views and each unlabeled
    # view on its own before its one backward, and the no-grad passes (attention, pseudo-labels)
    # run one part at a time in train mode; "joint" forwards the whole step's batch at once and
    # takes the attention in one eval-mode pass.
    joint = config.batchnorm_passes == "joint"
    mix_passes = ([(2 * b, STEP), (2 * b, EVAL)] if joint
                  else [((b, b), STEP), (b, BATCH_STATS), (b, BATCH_STATS)])
    stages.append(bare.timed_stage(
        "attentionmix epoch",
        after_each_step(optimizer, mix_epoch, model, optimizer, images, labels, credible,
                        classes, step),
        2 * m, mix_passes))
    k = config.sst_augmentations
    sst = SSTSettings(k, 0.5, None, True, True, config.min_unlabeled_batch)
    _, u_batch = unlabeled_batch_size(m, u, b, config.min_unlabeled_batch)
    sst_passes = ([(2 * b + k * u_batch, STEP), (2 * b, EVAL)] if joint
                  else [((b, b, *[u_batch] * k), STEP), *[(b, BATCH_STATS)] * 2,
                        *[(u_batch, BATCH_STATS)] * k])
    stages.append(bare.timed_stage(
        "sst epoch",
        after_each_step(optimizer, sst_epoch, model, optimizer, images, labels, credible,
                        suspicious, victim_soft, classes, step, sst),
        2 * m + k * u, sst_passes))
    return {"bare": bare_figures, "stages": stages}
