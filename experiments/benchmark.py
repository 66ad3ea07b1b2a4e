"""Throughput of every stage of a trial against the bare model's.

    python experiments/benchmark.py [--dataset synthetic|cifar10] [--data-root DIR]
        [--model small_cnn] [--train-per-class N] [--device auto] [--threads N]

For each stage (entropy pass, Victim epoch, AttentionMix epoch, SST epoch, plain epoch) it prints
images/s and the share of wall time spent inside the model's forward/backward, estimated from
the bare model's throughput on random tensors of the same batch size: model time = images
through forward+backward / bare training rate + images through no-grad forward / bare eval rate.
The rest (indexing, augmentation, mixing, bookkeeping) is overhead; the goal is under 10%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vb_sweep.attacks import build_attack  # noqa: E402
from vb_sweep.config import preset_config  # noqa: E402
from vb_sweep.engine import (SSTSettings, mix_epoch, plain_epoch, sst_epoch,  # noqa: E402
                             unlabeled_batch_size)
from vb_sweep.metrics import iterate_logits  # noqa: E402
from vb_sweep.models import build_model  # noqa: E402
from vb_sweep.artifacts import load_trial_data, step_settings  # noqa: E402
from vb_sweep.device import place_model, resolve_device  # noqa: E402
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


def bare_rates(model, batch_size: int, shape, device: str, autocast_dtype, seconds=3.0):
    """Images/s of forward+backward+SGD step, and of no-grad forward, on random tensors."""
    x = torch.randn(batch_size, *shape, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train_step():
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step():
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            model(x)

    rates = []
    for step, train in ((train_step, True), (eval_step, False)):
        model.train(train)
        for _ in range(3):
            step()
        count, elapsed = 0, 0.0
        while elapsed < seconds:
            elapsed += timed(step, device)
            count += batch_size
        rates.append(count / elapsed)
    model.train()
    return rates


def report(name: str, seconds: float, images: int, trained: int, forwarded: int, rates) -> None:
    model_seconds = trained / rates[0] + forwarded / rates[1]
    print(f"{name:<18} {images / seconds:>9.0f} img/s {seconds:>8.2f} s  "
          f"model share {min(1.0, model_seconds / seconds):>5.1%}  "
          f"overhead {max(0.0, 1 - model_seconds / seconds):>5.1%}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--train-per-class", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = preset_config(args.preset, dataset=args.dataset, data_root=args.data_root,
                           model=args.model, train_per_class=args.train_per_class).validate()
    device = resolve_device(args.device)
    data = load_trial_data(config)
    attack = build_attack(config.attack, target=config.target, seed=config.seed)
    poisoned = attack.poison_train(data.train)
    images, labels = poisoned.images.to(device), poisoned.labels.to(device)
    n = labels.numel()
    torch.manual_seed(0)
    model = place_model(build_model(config.model, data.train.num_classes), device)
    step = step_settings(config, data, device, config.batch_size, config.crop_padding)
    victim_step = step_settings(config, data, device, config.victim_batch_size, None)
    shape = tuple(images.shape[1:])
    print(f"{config.dataset}: {n} training images, model {config.model}, device {device}, "
          f"{torch.get_num_threads()} threads, batch {config.batch_size} "
          f"(Victim {config.victim_batch_size})")
    rates = bare_rates(model, config.batch_size, shape, device, step.autocast_dtype)
    victim_rates = bare_rates(model, config.victim_batch_size, shape, device,
                              victim_step.autocast_dtype)
    eval_rates = bare_rates(model, config.eval_batch_size, shape, device, step.autocast_dtype)
    print(f"bare model: train {rates[0]:.0f} img/s (batch {config.batch_size}), "
          f"{victim_rates[0]:.0f} img/s (batch {config.victim_batch_size}); "
          f"eval {eval_rates[1]:.0f} img/s (batch {config.eval_batch_size})")

    everything = torch.arange(n, device=device)
    suspicious = everything[: n // 5]
    credible = everything[n // 5:]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    victim_soft = torch.full((n, data.train.num_classes), 0.1, device=device).half()

    def entropy_pass():
        for logits in iterate_logits(model, images, step.normalize, config.eval_batch_size,
                                     step.autocast_dtype):
            prediction_entropy(logits)

    seconds = timed(entropy_pass, device)
    report("entropy pass", seconds, n, 0, n, eval_rates)
    seconds = timed(lambda: plain_epoch(model, optimizer, images, labels, everything,
                                        victim_step), device)
    report("victim epoch", seconds, n, n, 0, victim_rates)
    seconds = timed(lambda: plain_epoch(model, optimizer, images, labels, everything, step), device)
    report("plain epoch", seconds, n, n, 0, rates)
    # The mixing stages train on two views per image (SST also on K views of an unlabeled
    # batch): the bare model is timed at those batch sizes, as per-image speed depends on them.
    m = credible.numel()
    mix_rates = bare_rates(model, 2 * config.batch_size, shape, device, step.autocast_dtype)
    seconds = timed(lambda: mix_epoch(model, optimizer, images, labels, credible,
                                      data.train.num_classes, step), device)
    report("attentionmix epoch", seconds, 2 * m, 2 * m, 2 * m, mix_rates)
    sst = SSTSettings(config.sst_augmentations, 0.5, None, True, True)
    u = suspicious.numel()
    _, u_batch = unlabeled_batch_size(m, u, config.batch_size)
    sst_rates = bare_rates(model, 2 * config.batch_size + config.sst_augmentations * u_batch,
                           shape, device, step.autocast_dtype)
    seconds = timed(lambda: sst_epoch(model, optimizer, images, labels, credible, suspicious,
                                      victim_soft, data.train.num_classes, step, sst), device)
    trained = 2 * m + config.sst_augmentations * u
    # Its attention pass is a no-grad forward of the labeled batch's two views.
    report("sst epoch", seconds, trained, trained, 2 * m, (sst_rates[0], mix_rates[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
