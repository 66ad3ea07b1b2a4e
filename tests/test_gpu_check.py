"""The GPU check: its CPU mode end to end (a real subprocess, as a user runs it), its estimates,
and, on a machine with CUDA, the real thing (marked gpu)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "gpu_check.py"
sys.path.insert(0, str(REPO / "experiments"))

import gpu_check  # noqa: E402


def run_check(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_cpu_mode_writes_its_report_without_ray_or_mlflow(tmp_path):
    done = run_check("--device", "cpu", "--out", str(tmp_path), "--model", "tiny_cnn",
                     "--images", "200")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["environment"]["device_type"] == "cpu"
    assert report["environment"]["precision"] in ("fp32", "bf16")
    assert [b["batch"] for b in report["bare_model"]] == [32, 64]
    options = report["engine_options"]
    assert [row["option"] for row in options] == ["default", "NCHW layout", "torch.compile",
                                                  "foreach optimizer", "fused optimizer"]
    assert options[0]["train_speedup"] == 1.0
    assert all(row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
               for row in options)
    assert "torch.compile" in done.stdout
    assert {s["stage"] for s in report["stages"]["stages"]} == {
        "entropy pass", "victim epoch", "plain epoch", "attentionmix epoch", "sst epoch"}
    trial = report["trial"]
    assert trial["nan_values"] == 0 and trial["row"]["status"] == "ok"
    assert [r["stage"] for r in trial["history"]] == ["victim", "mix", "sst"]
    assert trial["peak_memory_bytes"] > 0
    assert report["full_trial_seconds"]["total"] > 0
    assert [g["trials_per_gpu"] for g in report["grid"]] == [1, 2]
    assert "one 200-epoch paper V&B trial" in done.stdout
    assert "best --trials-per-gpu" in done.stdout


def test_the_check_imports_neither_ray_nor_mlflow():
    code = ("import sys; sys.argv = ['x']; import runpy; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='not_main'); "
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_full_trial_is_extrapolated_from_each_stages_images_per_second():
    rates = {"entropy pass": 10_000.0, "victim epoch": 1000.0, "plain epoch": 1000.0,
             "attentionmix epoch": 800.0, "sst epoch": 500.0}
    stages = [{"stage": name, "images_per_s": rate} for name, rate in rates.items()]
    full = gpu_check.full_trial_seconds(stages, poison_s=0.5, images=100)
    victim_epochs = 3 + 20 + 99  # epoch 0, the warm-up's two, the re-splits every 5 epochs
    assert full["poison"] == pytest.approx(0.5 * 50_000 / 100)
    assert full["victim"] == pytest.approx((50_000 + (victim_epochs - 1) * 10_000) / 1000
                                           + victim_epochs * 50_000 / 10_000)
    assert full["mix"] == pytest.approx(100 * 2 * 40_000 / 800)  # two views of Dc
    assert full["sst"] == pytest.approx(100 * (2 * 40_000 + 2 * 10_000) / 500)  # K = 2
    assert full["evaluation"] == pytest.approx(200 * 2 * 10_000 / 10_000)
    assert full["total"] == pytest.approx(sum(v for k, v in full.items() if k != "total"))


def test_grid_estimate_uses_the_measured_slowdown_per_concurrency():
    rates = [{"trials_per_device": 1, "images_per_s_per_trial": 1000.0},
             {"trials_per_device": 2, "images_per_s_per_trial": 800.0},
             {"trials_per_device": 4, "images_per_s_per_trial": 300.0}]
    grid = gpu_check.grid_estimates(600.0, rates)
    assert [g["trial_seconds"] for g in grid] == [600.0, 750.0, 2000.0]
    # 36 trials on 8 GPUs: 5 waves at 1 per GPU, 3 at 2, 2 at 4
    assert [g["grid_seconds"] for g in grid] == [3000.0, 2250.0, 4000.0]


def test_asking_for_cuda_without_it_is_a_one_line_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run_check("--device", "cuda", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--device cpu" in done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_on_the_gpu(tmp_path):
    done = run_check("--out", str(tmp_path), timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["environment"]["device_type"] == "cuda"
    assert report["trial"]["nan_values"] == 0
    assert all(math.isfinite(g["grid_seconds"]) for g in report["grid"])
