"""Throughput of every stage of a trial against the bare model's, and what sharing saves.

    python experiments/benchmark.py [--preset smoke] [--dataset synthetic|cifar10]
        [--data-root DIR] [--model small_cnn] [--train-per-class N] [--device auto]
        [--threads N] [--grid]

For each stage (entropy pass, Victim epoch, plain epoch, AttentionMix epoch, SST epoch) it
prints images/s and the share of wall time spent inside the model, estimated from the bare
model's throughput on random tensors at the batch sizes the stage really runs: model time =
images through forward+backward / bare training rate + images through no-grad forward / bare
no-grad rate. The rest (indexing, augmentation, mixing, bookkeeping) is overhead; the goal is
under 10%. It does so in float32 and, where the device computes bf16 natively, in bf16.

``--grid`` also runs the BadNets six-variant grid twice in this process, once with the shared
mix stage and once with every trial independent, and prints both wall times and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vb_sweep.artifacts import load_trial_data, step_settings  # noqa: E402
from vb_sweep.attacks import build_attack  # noqa: E402
from vb_sweep.config import parse_overrides, preset_config  # noqa: E402
from vb_sweep.engine import (SSTSettings, mix_epoch, plain_epoch, sst_epoch,  # noqa: E402
                             unlabeled_batch_size)
from vb_sweep.metrics import iterate_logits  # noqa: E402
from vb_sweep.models import build_model  # noqa: E402
from vb_sweep.device import (autocast_dtype, place_model, precision_name,  # noqa: E402
                             resolve_device)
from vb_sweep.victim import prediction_entropy  # noqa: E402


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


class BareModel:
    """The bare model's images/s on random tensors (forward+backward+SGD step, or no-grad
    forward), measured once per batch size and mode, and the model time of a stage's passes."""

    def __init__(self, model, shape, device: str, autocast_dtype, seconds: float = 2.0):
        self.model, self.shape, self.device = model, shape, device
        self.autocast_dtype, self.seconds = autocast_dtype, seconds
        self.rates: dict[tuple[int, bool], float] = {}

    def rate(self, batch_size: int, train: bool) -> float:
        key = (max(1, batch_size), train)
        if key not in self.rates:
            self.rates[key] = self._measure(*key)
        return self.rates[key]

    def model_seconds(self, passes) -> float:
        """``passes``: (images, batch size, train) per kind of pass of a stage."""
        return sum(images / self.rate(batch, train) for images, batch, train in passes if images)

    def _measure(self, batch_size: int, train: bool) -> float:
        model, dtype = self.model, self.autocast_dtype
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

        model.train(train)
        for _ in range(3):
            step()
        count, elapsed = 0, 0.0
        while elapsed < self.seconds:
            elapsed += timed(step, self.device)
            count += batch_size
        model.train()
        return count / elapsed


def report(name: str, seconds: float, images: int, model_seconds: float) -> float:
    overhead = max(0.0, 1 - model_seconds / seconds)
    print(f"  {name:<18} {images / seconds:>9.0f} img/s {seconds:>8.2f} s  "
          f"model share {min(1.0, model_seconds / seconds):>6.1%}  overhead {overhead:>6.1%}")
    return overhead


def stage_figures(config, data, device: str) -> float:
    """Prints every stage's throughput and overhead in the config's precision; returns the
    largest overhead."""
    attack = build_attack(config.attack, target=config.target, seed=config.seed)
    poisoned = attack.poison_train(data.train)
    images, labels = poisoned.images.to(device), poisoned.labels.to(device)
    n, classes = labels.numel(), data.train.num_classes
    torch.manual_seed(0)
    model = place_model(build_model(config.model, classes), device)
    step = step_settings(config, data, device, config.batch_size, config.crop_padding)
    victim_step = step_settings(config, data, device, config.victim_batch_size, None)
    bare = BareModel(model, tuple(images.shape[1:]), device, step.autocast_dtype)
    b = config.batch_size
    print(f"bare model: train {bare.rate(b, True):.0f} img/s (batch {b}), "
          f"{bare.rate(config.victim_batch_size, True):.0f} img/s (batch "
          f"{config.victim_batch_size}); no-grad {bare.rate(config.eval_batch_size, False):.0f}"
          f" img/s (batch {config.eval_batch_size})")

    everything = torch.arange(n, device=device)
    suspicious, credible = everything[: n // 5], everything[n // 5:]
    m, u = credible.numel(), suspicious.numel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    victim_soft = torch.full((n, classes), 0.1, device=device).half()

    def entropy_pass():
        for logits in iterate_logits(model, images, step.normalize, config.eval_batch_size,
                                     step.autocast_dtype):
            prediction_entropy(logits)

    overheads = [
        report("entropy pass", timed(entropy_pass, device), n,
               bare.model_seconds([(n, config.eval_batch_size, False)])),
        report("victim epoch", timed(lambda: plain_epoch(model, optimizer, images, labels,
                                                         everything, victim_step), device),
               n, bare.model_seconds([(n, config.victim_batch_size, True)])),
        report("plain epoch", timed(lambda: plain_epoch(model, optimizer, images, labels,
                                                        everything, step), device),
               n, bare.model_seconds([(n, b, True)]))]
    # Two views per credible image (SST adds K views of an unlabeled batch). In the authors'
    # passes (the default) every view and half goes through the model on its own; "joint"
    # forwards the whole step's batch at once and takes the attention in one no-grad pass.
    views = 2 * m
    joint = config.batchnorm_passes == "joint"
    mix_passes = ([(views, 2 * b, True), (views, 2 * b, False)] if joint
                  else [(views, b, True), (views, b, False)])
    overheads.append(report(
        "attentionmix epoch",
        timed(lambda: mix_epoch(model, optimizer, images, labels, credible, classes, step),
              device), views, bare.model_seconds(mix_passes)))
    sst = SSTSettings(config.sst_augmentations, 0.5, None, True, True)
    _, u_batch = unlabeled_batch_size(m, u, b)
    k_views = config.sst_augmentations * u
    sst_passes = ([(views + k_views, 2 * b + config.sst_augmentations * u_batch, True),
                   (views, 2 * b, False)] if joint
                  else [*mix_passes, (k_views, u_batch, True), (k_views, u_batch, False)])
    overheads.append(report(
        "sst epoch",
        timed(lambda: sst_epoch(model, optimizer, images, labels, credible, suspicious,
                                victim_soft, classes, step, sst), device),
        views + k_views, bare.model_seconds(sst_passes)))
    return max(overheads)


def grid_cost(config, shared: bool) -> float:
    """Wall time of the BadNets six-variant grid run trial after trial in this process, with a
    fresh cache (the poisoned set and the Victim are built once either way)."""
    from vb_sweep.cache import ArtifactCache
    from vb_sweep.config import DEFENSES
    from vb_sweep.trial import run_trial

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        cache = ArtifactCache(folder)
        for defense in DEFENSES:
            run_trial(config.replace(attack="badnets", defense=defense,
                                     share_mix_stage=shared), cache=cache)
    return time.perf_counter() - started


def precisions(config, device: str) -> list[bool]:
    """amp settings to measure: fp32 always, bf16 where the device computes it natively."""
    return [False, True] if autocast_dtype(True, device) is not None else [False]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--train-per-class", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="any TrialConfig field, e.g. --set batchnorm_passes=joint")
    parser.add_argument("--grid", action="store_true",
                        help="also time the BadNets six-variant grid with and without sharing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = preset_config(args.preset, dataset=args.dataset, data_root=args.data_root,
                           model=args.model, train_per_class=args.train_per_class,
                           **parse_overrides(args.set)).validate()
    device = resolve_device(args.device)
    data = load_trial_data(config)
    print(f"{config.dataset}: {len(data.train)} training images, model {config.model}, "
          f"device {device}, {torch.get_num_threads()} threads, batch {config.batch_size} "
          f"(Victim {config.victim_batch_size}), BatchNorm passes {config.batchnorm_passes}")
    for amp in precisions(config, device):
        print(f"\n{precision_name(amp, device)}:")
        worst = stage_figures(config.replace(amp=amp), data, device)
        print(f"  largest overhead {worst:.1%} (goal: under 10%)")
    if args.grid:
        shared = grid_cost(config, shared=True)
        alone = grid_cost(config, shared=False)
        print(f"\nBadNets six-variant grid, one process: {shared:.0f} s with the shared mix "
              f"stage, {alone:.0f} s independent; ratio {shared / alone:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
