"""What a paper-scale trial costs on this machine's GPU, in one command of about 5 minutes.

    python experiments/gpu_check.py --out gpu-check            # on a CUDA machine
    python experiments/gpu_check.py --device cpu --out DIR     # the same check, tiny, on a CPU

It needs only torch, torchvision, numpy, pandas and pyarrow (no Ray, MLflow or Optuna), and
prints a report that it also writes as JSON (OUT/gpu_check.json):
- the device, torch and CUDA versions, the precision and memory format the trials use;
- the bare model's train and no-grad images/s at the paper preset's batch size and larger ones,
  and each stage's images/s and overhead share against it (experiments/benchmark.py's method);
- each engine option against the default engine (NCHW layout, torch.compile, the foreach and
  fused optimizer kernels): the bare model's train and evaluation images/s, their speedups, and
  the seconds of the first passes (a compilation's included), to tell which to turn on there;
- a short `paper`-preset trial (poisoning, Victim, mix stage, SST stage, evaluation) on generated
  data (50,000 images on a GPU), its schedule cut by the preset's own scaling, with its stage
  timings, a check that no history value is NaN, and its row;
- the extrapolated wall time of one full 200-epoch `paper` V&B trial, and of the 36-trial
  Table 4 grid on 8 GPUs at 1, 2 and 4 trials per GPU, from the throughput measured with that
  many concurrent processes on this one device;
- the peak device memory of the trial (GPU: allocated by torch; CPU: the process's peak RSS),
  to choose --trials-per-gpu from.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vb_sweep.artifacts import load_trial_data, place_for  # noqa: E402
from vb_sweep.cache import ArtifactCache  # noqa: E402
from vb_sweep.config import preset_config, scaled_schedule  # noqa: E402
from vb_sweep.device import autocast_dtype, precision_name  # noqa: E402
from experiments.throughput import (EVAL, STEP, BareModel, engine_option_lines,  # noqa: E402
                                    engine_option_rates, stage_figures, timed)
from vb_sweep.trial import run_trial  # noqa: E402
from vb_sweep.victim import updates_after_epochs  # noqa: E402

GRID_TRIALS, GRID_GPUS = 36, 8  # the six-attack Table 4 on 8 GPUs
# device -> the check's size: training images, Beneficiary epochs of the short trial, the bare
# model's batch sizes, seconds per measurement, trials per device to try, and how long the
# concurrent processes get to start before they measure together; on a CPU, the cpu preset's
# network (a ResNet-18 check takes about 8 minutes on 2 cores) and smaller batches
SIZES = {
    "cuda": {"images": 50_000, "epochs": 4, "batches": (128, 256, 512), "seconds": 3.0,
             "concurrency": (1, 2, 4), "start_delay": 30.0, "model": "resnet18", "config": {}},
    "cpu": {"images": 300, "epochs": 2, "batches": (32, 64), "seconds": 0.5,
            "concurrency": (1, 2), "start_delay": 10.0, "model": "small_cnn",
            "config": {"batch_size": 32, "victim_batch_size": 32, "eval_batch_size": 64}},
}


def check_config(device: str, model: str, images: int, epochs: int):
    """The `paper` preset on generated data, its schedule scaled to ``epochs``."""
    per_class = max(2, images // 10)
    size = SIZES["cuda" if device.startswith("cuda") else "cpu"]
    return preset_config("paper", dataset="synthetic", model=model, device=device,
                         defense="vab", train_per_class=per_class,
                         test_per_class=min(1000, max(10, per_class // 5)),
                         **scaled_schedule(epochs), **size["config"]).validate()


def environment(device: str, config) -> dict:
    cuda = device.startswith("cuda")
    return {"device": torch.cuda.get_device_name(device) if cuda else platform.processor()
            or platform.machine(),
            "device_type": "cuda" if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "precision": precision_name(config.amp, device),
            "memory_format": "channels_last" if config.channels_last else "contiguous",
            "compile": config.compile, "optimizer_kernel": config.optimizer_kernel,
            "threads": torch.get_num_threads(),
            "model": config.model}


def bare_model_rates(config, device: str, batches, seconds: float) -> list[dict]:
    from vb_sweep.models import build_model

    model = place_for(config, build_model(config.model, 10), device)
    bare = BareModel(model, (3, 32, 32), device, autocast_dtype(config.amp, device), seconds)
    return [{"batch": batch, "train_images_per_s": bare.rate(batch, STEP),
             "eval_images_per_s": bare.rate(batch, EVAL)} for batch in batches]


# -- the short trial ----------------------------------------------------------------------------
def short_trial(config, device: str) -> dict:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as folder:
        result = run_trial(config, cache=ArtifactCache(folder), sweep="gpu-check",
                           on_epoch=lambda r: print(f"  trial epoch {r['epoch']} ({r['stage']})"
                                                    f" {r.get('seconds', 0):.1f} s", flush=True))
    numbers = [value for record in result.history for value in record.values()
               if isinstance(value, float)]
    peak = (torch.cuda.max_memory_allocated(device) if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"row": result.row, "history": result.history,
            "nan_values": sum(math.isnan(value) for value in numbers),
            "peak_memory_bytes": peak, "stage_seconds": stage_seconds(result.history)}


def stage_seconds(history: list[dict]) -> dict:
    """Mean seconds of one Beneficiary epoch (training and evaluation) per stage."""
    seconds: dict[str, list[float]] = {}
    for record in history:
        if record.get("seconds") is not None:
            seconds.setdefault(record["stage"], []).append(record["seconds"])
    return {stage: sum(values) / len(values) for stage, values in seconds.items()}


def victim_epochs(config) -> int:
    """Victim epochs of a trial: epoch 0, the warm-up ones, one per re-split."""
    return config.warm_up + sum(updates_after_epochs(config.epochs, config.mix_epochs,
                                                     config.resplit_every))


FULL_TRAIN, FULL_TEST = 50_000, 10_000  # CIFAR-10
SUSPICIOUS_SHARE = 0.2  # the split the stage figures run on (throughput.stage_figures)


def full_trial_seconds(stages: list[dict], poison_s: float, images: int) -> dict:
    """One 200-epoch `paper` V&B trial on CIFAR-10, from each stage's measured images/s, with
    Ds a fifth of the training set at every split. The Victim trains on all of it once, then
    on Ds, with an entropy pass over all of it after each epoch; AttentionMix sees two views
    of each credible image, SST adds K views of each suspicious one; every Beneficiary epoch
    ends with a no-grad pass over the clean and the poisoned test set. (The short trial's own
    epochs cannot be scaled: on generated data its split is nothing like CIFAR-10's.)"""
    full = preset_config("paper")
    rate = {stage["stage"]: stage["images_per_s"] for stage in stages}
    suspicious = SUSPICIOUS_SHARE * FULL_TRAIN
    credible = FULL_TRAIN - suspicious
    victim = victim_epochs(full)
    parts = {"poison": poison_s * FULL_TRAIN / images,
             "victim": (FULL_TRAIN + (victim - 1) * suspicious) / rate["victim epoch"]
             + victim * FULL_TRAIN / rate["entropy pass"],
             "mix": full.mix_epochs * 2 * credible / rate["attentionmix epoch"],
             "sst": (full.epochs - full.mix_epochs)
             * (2 * credible + full.sst_augmentations * suspicious) / rate["sst epoch"],
             "evaluation": full.epochs * 2 * FULL_TEST / rate["entropy pass"]}
    return {**parts, "total": sum(parts.values())}


# -- concurrency --------------------------------------------------------------------------------
def worker(args) -> int:
    """One of several concurrent processes: mix-stage epochs for ``--seconds`` from a common
    start time; prints its images/s as JSON."""
    from vb_sweep.artifacts import step_settings
    from vb_sweep.defense import beneficiary_optimizer
    from vb_sweep.engine import mix_epoch
    from vb_sweep.models import build_model

    config = check_config(args.device, args.model, args.images, 2)
    data = load_trial_data(config)
    model = place_for(config, build_model(config.model, data.train.num_classes), args.device)
    optimizer = beneficiary_optimizer(model, config)
    step = step_settings(config, data, args.device, config.batch_size, config.crop_padding)
    images = data.train.images.to(args.device)
    labels = data.train.labels.to(args.device)
    everything = torch.arange(labels.numel(), device=args.device)

    def epoch():
        mix_epoch(model, optimizer, images, labels, everything, data.train.num_classes, step)

    timed(epoch, args.device)  # warm-up: kernels chosen, memory allocated
    time.sleep(max(0.0, args.start_at - time.time()))
    done, elapsed = 0, 0.0
    while elapsed < args.seconds:
        elapsed += timed(epoch, args.device)
        done += 2 * labels.numel()
    print(json.dumps({"images_per_s": done / elapsed}), flush=True)
    return 0


def concurrent_rates(args, concurrency) -> list[dict]:
    """Mix-stage images/s per process with K processes sharing the device, for each K."""
    rows = []
    for count in concurrency:
        start_at = time.time() + args.size["start_delay"]  # every process has started by then
        command = [sys.executable, __file__, "--worker", "--device", args.device,
                   "--model", args.model, "--images", str(args.images),
                   "--seconds", str(args.seconds), "--start-at", str(start_at)]
        env = dict(os.environ)
        if args.device == "cpu":  # the cores shared out, as Ray gives each trial its CPUs
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // count))
        processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
                     for _ in range(count)]
        rates = [json.loads(process.communicate()[0].strip().splitlines()[-1])["images_per_s"]
                 for process in processes]
        rows.append({"trials_per_device": count, "images_per_s_per_trial": sum(rates) / count,
                     "images_per_s_total": sum(rates)})
    return rows


def grid_estimates(trial_seconds: float, rates: list[dict]) -> list[dict]:
    """The 36-trial grid on 8 GPUs at K trials per GPU: waves of 8K trials, each trial slowed
    by the measured per-trial throughput at K. Every trial is counted as a full V&B trial, so
    this is an upper bound (none and F are cheaper; the mixing variants share the mix stage)."""
    alone = rates[0]["images_per_s_per_trial"]
    estimates = []
    for rate in rates:
        per_trial = trial_seconds * alone / rate["images_per_s_per_trial"]
        waves = math.ceil(GRID_TRIALS / (GRID_GPUS * rate["trials_per_device"]))
        estimates.append({"trials_per_gpu": rate["trials_per_device"],
                          "trial_seconds": per_trial, "grid_seconds": waves * per_trial})
    return estimates


# -- the report ---------------------------------------------------------------------------------
def environment_line(env: dict) -> str:
    return (f"device: {env['device']} ({env['device_type']}), torch {env['torch']}, CUDA "
            f"{env['cuda']}, {env['precision']}, {env['memory_format']}, model {env['model']}")


def report_lines(report: dict) -> list[str]:
    lines = [environment_line(report["environment"])]
    for bare in report["bare_model"]:
        lines.append(f"bare model, batch {bare['batch']}: train {bare['train_images_per_s']:.0f}"
                     f" img/s, no-grad {bare['eval_images_per_s']:.0f} img/s")
    lines.extend(engine_option_lines(report["engine_options"]))
    for stage in report["stages"]["stages"]:
        lines.append(f"{stage['stage']:<18} {stage['images_per_s']:>9.0f} img/s  overhead "
                     f"{stage['overhead']:.1%}")
    trial = report["trial"]
    lines.append(f"short trial ({trial['images']} images, {trial['epochs']} epochs): "
                 f"BA {trial['row']['ba']:.3f} ASR {trial['row']['asr']:.3f}, poison "
                 f"{trial['row']['poison_s']:.1f} s, Victim {trial['row']['victim_s']:.1f} s, "
                 f"Beneficiary {trial['row']['beneficiary_s']:.1f} s, NaN values "
                 f"{trial['nan_values']}, peak memory {trial['peak_memory_bytes'] / 2**30:.2f} "
                 "GiB")
    full = report["full_trial_seconds"]
    lines.append(f"one 200-epoch paper V&B trial: about {full['total'] / 60:.1f} min (Victim "
                 f"{full['victim'] / 60:.1f}, mix {full['mix'] / 60:.1f}, SST "
                 f"{full['sst'] / 60:.1f}, evaluation {full['evaluation'] / 60:.1f})")
    for grid in report["grid"]:
        lines.append(f"36-trial grid on 8 such devices at {grid['trials_per_gpu']} per device: "
                     f"about {grid['grid_seconds'] / 3600:.1f} h "
                     f"({grid['trial_seconds'] / 60:.1f} min per trial)")
    best = min(report["grid"], key=lambda grid: grid["grid_seconds"])
    lines.append(f"best --trials-per-gpu: {best['trials_per_gpu']}")
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"),
                        help="folder for gpu_check.json (default gpu-check)")
    parser.add_argument("--model", default=None,
                        help="default: the paper preset's resnet18 (on a CPU: small_cnn)")
    parser.add_argument("--images", type=int, default=None,
                        help="generated training images (default: 50,000 on a GPU, 300 on a CPU)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="the short trial's Beneficiary epochs (default 4 on a GPU)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"gpu_check.py: error: --device {args.device}: no CUDA device here "
                       "(use --device cpu)\n")
    size = SIZES[kind]
    args.model = args.model or size["model"]
    args.images = args.images or size["images"]
    args.epochs = args.epochs or size["epochs"]
    args.seconds = args.seconds or size["seconds"]
    args.size = size
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    started = time.perf_counter()
    config = check_config(args.device, args.model, args.images, args.epochs)
    data = load_trial_data(config)
    report = {"environment": environment(args.device, config)}
    print(environment_line(report["environment"]), flush=True)
    report["bare_model"] = bare_model_rates(config, args.device, args.size["batches"],
                                            args.seconds)
    report["engine_options"] = engine_option_rates(config, args.device, args.seconds)
    print("\n".join(engine_option_lines(report["engine_options"])), flush=True)
    report["stages"] = stage_figures(config, data, args.device, args.seconds)
    trial = short_trial(config, args.device)
    report["trial"] = {"images": len(data.train), "epochs": config.epochs, **trial}
    report["full_trial_seconds"] = full_trial_seconds(report["stages"]["stages"],
                                                      trial["row"]["poison_s"], len(data.train))
    rates = concurrent_rates(args, args.size["concurrency"])
    report["concurrency"] = rates
    report["grid"] = grid_estimates(report["full_trial_seconds"]["total"], rates)
    report["check_seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n".join(report_lines(report)))
    print(f"report: {args.out / 'gpu_check.json'} ({report['check_seconds']:.0f} s)")
    return 1 if trial["nan_values"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
