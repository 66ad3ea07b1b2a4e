"""A whole trial on tiny generated data: caching of the Victim, resume, CLI errors."""

import subprocess
import sys

import pandas as pd
import pytest
import torch

from vb_sweep.artifacts import load_trial_data, mix_stage_cache_parts, prepare_mix_stage
from vb_sweep.cache import ArtifactCache
from vb_sweep.cli import main
from vb_sweep.config import preset_config, scaled_schedule
from vb_sweep.results import read_history, read_trials, write_trial
from vb_sweep.trial import run_trial

TINY = dict(train_per_class=12, test_per_class=6, warm_up=2, eval_batch_size=256,
            batch_size=32, victim_batch_size=32, **scaled_schedule(4))


def tiny_config(**changes):
    return preset_config("smoke", **{**TINY, **changes}).validate()


def test_victim_trajectory_is_computed_once_and_shared(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    first = run_trial(tiny_config(defense="vab"), cache=cache)
    assert first.row["victim_cached"] is False
    victim_builds = [key for key in cache.builds if key.startswith("victim-")]
    assert len(victim_builds) == 1
    second = run_trial(tiny_config(defense="F+AT", t_m=0.3), cache=cache)
    assert second.row["victim_cached"] is True and second.row["poison_cached"] is True
    assert [key for key in cache.builds if key.startswith("victim-")] == victim_builds

    uncached = run_trial(tiny_config(defense="F+AT", t_m=0.3),
                         cache=ArtifactCache(tmp_path / "other"))
    for column in ("ba", "asr", "ra", "filter_precision", "filter_recall", "credible_size"):
        assert uncached.row[column] == second.row[column], column
    losses = [r["loss"] for r in second.history if "loss" in r]
    assert losses == [r["loss"] for r in uncached.history if "loss" in r]


def test_trial_writes_row_and_history_with_filter_quality(tmp_path):
    result = run_trial(tiny_config(defense="vab"), cache=ArtifactCache(tmp_path / "cache"),
                       sweep="t", trial_id="one")
    write_trial(tmp_path, result.row, result.history)
    trials, history = read_trials(tmp_path), read_history(tmp_path)
    assert len(trials) == 1 and trials.loc[0, "status"] == "ok"
    assert trials.loc[0, "num_poisoned"] == round(0.1 * 120)
    finished = trials["finished_at"]  # a timestamp, not text
    assert pd.api.types.is_datetime64_any_dtype(finished) and str(finished.dt.tz) == "UTC"
    assert trials.loc[0, "train_fingerprint"].startswith("poison-")
    assert len(trials.loc[0, "test_fingerprint"]) == 20
    assert list(history["epoch"]) == [0, 1, 2, 3, 4]
    assert list(history["stage"]) == ["victim", "mix", "mix", "sst", "sst"]
    split = history.iloc[0]
    assert split["credible_size"] + split["suspicious_size"] == 120
    assert sum(split["entropy_hist_poisoned"]) == 12
    assert set(result.figures) == {"entropy_histogram.png", "trigger_preview.png",
                                   "training_curves.png"}
    assert all(png.startswith(b"\x89PNG") for png in result.figures.values())


def test_resumed_trial_equals_uninterrupted_one(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    config = tiny_config(defense="F+AT+SST")
    saved = {}

    def save(state):  # the mix stage (epochs 1-2) comes from the cache: no checkpoint of its own
        if state["epoch"] == 3:
            path = tmp_path / "checkpoint.pt"
            torch.save(state, path)
            saved["path"] = path

    whole = run_trial(config, cache=cache, save_checkpoint=save)
    resumed = run_trial(config, cache=cache,
                        checkpoint=torch.load(saved["path"], weights_only=True))
    assert resumed.row["ba"] == whole.row["ba"] and resumed.row["asr"] == whole.row["asr"]
    assert [r.get("loss") for r in resumed.history] == [r.get("loss") for r in whole.history]


def test_same_seed_same_result_on_cpu(tmp_path):
    config = tiny_config(defense="none")
    a = run_trial(config, cache=ArtifactCache(tmp_path / "a"))
    b = run_trial(config, cache=ArtifactCache(tmp_path / "b"))
    assert a.row["ba"] == b.row["ba"] and a.row["asr"] == b.row["asr"]
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


def test_row_records_the_attacks_own_poison_rate(tmp_path):
    """SIG's default rate is 10% of the target class: the row says 0.1 like a dirty-label
    attack's 10%, so both land in one Table 4 section; num_poisoned has the count."""
    cache = ArtifactCache(tmp_path / "cache")
    sig = run_trial(tiny_config(attack="sig", defense="none", **scaled_schedule(1)),
                    cache=cache).row
    badnets = run_trial(tiny_config(attack="badnets", defense="none", **scaled_schedule(1)),
                        cache=cache).row
    assert sig["poison_rate"] == badnets["poison_rate"] == pytest.approx(0.1)
    assert sig["num_poisoned"] == 1 and badnets["num_poisoned"] == 12  # of 12 and of 120


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "vb_sweep.cli", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, field", [
    (["--attack", "nope"], "attack"),
    (["--defense", "V&B"], "defense"),
    (["--poison-rate", "1.5"], "poison_rate"),
    (["--target", "10"], "target"),
    (["--dataset", "mnist"], "dataset"),
    (["--t-f", "-0.1"], "t_f"),
    (["--dataset", "cifar10", "--data-root", "missing-folder"], "data_root"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, field):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], lines
    assert not (out / "trials").exists()


def test_cli_unwritable_output_folder_exits_2_from_a_real_process(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = run_cli("run", "--out", str(blocker / "sub"))
    assert done.returncode == 2 and "--out" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_run_prints_progress_and_writes_parquet(tmp_path, capsys):
    settings = [f"{k}={v}" for k, v in TINY.items() if k not in ("lr_milestones", "epochs",
                                                                  "mix_epochs", "lambda_u_switch",
                                                                  "resplit_every")]
    assert main(["run", "--attack", "blend", "--defense", "vab", "--epochs", "4",
                 "--out", str(tmp_path), "--set", *settings]) == 0
    stdout = capsys.readouterr().out
    assert "epoch   4/4" in stdout and "final: BA" in stdout
    assert "victim split after warm-up" in stdout
    trials = pd.read_parquet(tmp_path / "trials")
    assert trials.loc[0, "attack"] == "blend" and trials.loc[0, "defense"] == "vab"


def test_bf16_autocast_only_where_the_device_computes_bf16_natively():
    from vb_sweep.device import autocast_dtype

    assert autocast_dtype(True, "cuda") is torch.bfloat16
    assert autocast_dtype(True, "cpu", cpu_bf16=True) is torch.bfloat16
    assert autocast_dtype(True, "cpu", cpu_bf16=False) is None
    assert autocast_dtype(False, "cuda") is None
    assert autocast_dtype(False, "cpu", cpu_bf16=True) is None


def test_mix_stage_is_trained_once_for_the_four_mixing_variants(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    rows = {defense: run_trial(tiny_config(defense=defense), cache=cache).row
            for defense in ("F+AT", "F+AT+SST", "F+AT+SST+S", "vab")}
    assert len([key for key in cache.builds if key.startswith("mix_stage-")]) == 1
    assert rows["F+AT"]["mix_stage_cached"] is False
    assert all(rows[d]["mix_stage_cached"] is True for d in ("F+AT+SST", "F+AT+SST+S", "vab"))
    plain = run_trial(tiny_config(defense="F"), cache=cache).row
    assert plain["mix_stage_cached"] is None  # no mixing: nothing to share


@pytest.mark.parametrize("defense", ["vab", "F+AT"])
def test_shared_mix_stage_gives_the_same_trial_as_an_unshared_one(tmp_path, defense):
    cache = ArtifactCache(tmp_path / "cache")
    run_trial(tiny_config(defense="F+AT+SST"), cache=cache)  # fills the shared mix stage
    shared = run_trial(tiny_config(defense=defense), cache=cache)
    alone = run_trial(tiny_config(defense=defense, share_mix_stage=False),
                      cache=ArtifactCache(tmp_path / "alone"))
    assert shared.row["mix_stage_cached"] is True and alone.row["mix_stage_cached"] is None
    for column in ("ba", "asr", "ra", "best_ba", "best_ba_asr", "best_epoch", "credible_size",
                   "filter_precision", "filter_recall", "clean_target_rate"):
        assert shared.row[column] == alone.row[column], column
    drop = ("trial_id", "seconds", "images_per_s")
    assert ([{k: v for k, v in r.items() if k not in drop} for r in shared.history]
            == [{k: v for k, v in r.items() if k not in drop} for r in alone.history])
    assert [r["epoch"] for r in shared.history] == [0, 1, 2, 3, 4]


def test_progress_sees_every_epoch_of_a_cached_mix_stage(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    run_trial(tiny_config(defense="F+AT"), cache=cache)
    seen = []
    run_trial(tiny_config(defense="vab"), cache=cache, on_epoch=seen.append)
    assert [record["epoch"] for record in seen] == [0, 1, 2, 3, 4]


class Killed(Exception):
    """Stands for the process dying in the middle of an epoch."""


def test_a_killed_mix_stage_resumes_after_its_last_finished_epoch(tmp_path):
    config, cache = tiny_config(defense="vab"), ArtifactCache(tmp_path / "cache")
    finished = []

    def die_in_epoch_2(record):
        if record["epoch"] == 2:  # before epoch 2's progress is kept
            raise Killed
        finished.append(record)

    with pytest.raises(Killed):
        prepare_mix_stage(config, cache, on_epoch=die_in_epoch_2)
    progress = cache.progress_path("mix_stage", mix_stage_cache_parts(
        config, load_trial_data(config), "cpu"))
    assert progress.exists()

    seen = []
    resumed, cached = prepare_mix_stage(config, cache, on_epoch=seen.append)
    assert cached is False and not progress.exists()
    assert [record["epoch"] for record in seen] == [0, 1, 2]
    assert seen[:2] == finished  # epoch 1 as it was (its timing too): not trained again

    alone, _ = prepare_mix_stage(config, ArtifactCache(tmp_path / "alone"))
    assert resumed["model"].keys() == alone["model"].keys()
    assert all(torch.equal(resumed["model"][name], alone["model"][name])
               for name in alone["model"])
    drop = ("seconds", "images_per_s")
    assert ([{k: v for k, v in r.items() if k not in drop} for r in resumed["history"]]
            == [{k: v for k, v in r.items() if k not in drop} for r in alone["history"]])


class Silent:
    """The trial's progress callbacks, discarded (what a Tune reporter would forward)."""

    def on_epoch(self, record):
        pass

    def save_checkpoint(self, state):
        pass


def test_a_diverging_run_stops_and_is_recorded_as_failed(tmp_path):
    from vb_sweep.sweep import run_with_recovery

    config = tiny_config(defense="none", lr=1e30)
    with pytest.raises(FloatingPointError, match="diverged"):
        run_trial(config, cache=ArtifactCache(tmp_path / "cache"))
    spec = {"sweep": "t", "trial_id": "nan", "config": config.to_dict(),
            "cache_dir": str(tmp_path / "cache")}
    row, history, _ = run_with_recovery(spec, None, Silent())
    assert row["status"] == "failed" and history == []
    assert "FloatingPointError: the training loss is" in row["error"]


def test_show_attacks_writes_the_gallery(tmp_path, capsys):
    out = tmp_path / "attacks.png"
    assert main(["show-attacks", "--attacks", "badnets", "blend", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert f"gallery of badnets, blend written to {out}" in printed
    assert "preparing" not in printed  # neither trains, so no progress lines


SEQUENCE_SCRIPT = """
import json, sys, tempfile, threading
from vb_sweep.cache import ArtifactCache
from vb_sweep.config import preset_config
from vb_sweep.trial import run_trial

def trial(changes):
    config = preset_config("smoke", **{**json.loads(sys.argv[1]), **changes}).validate()
    box = {}
    def run():  # Tune runs each trial of a reused worker in a new thread of the same process
        box["result"] = run_trial(config, cache=ArtifactCache(tempfile.mkdtemp()))
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return box["result"]

for changes in json.loads(sys.argv[2]):
    result = trial(changes)
keys = ("ba", "asr", "ra", "best_ba", "filter_precision", "filter_recall", "credible_size",
        "num_poisoned", "train_fingerprint")
print(json.dumps({"row": {key: result.row[key] for key in keys},
                  "losses": [r["loss"] for r in result.history if "loss" in r]}))
"""


def test_a_trial_after_another_in_one_process_equals_it_in_a_fresh_one():
    """What a reused sweep worker does: a trial run after a different one (another attack,
    seed and variant) in the same process gives the row and losses it gives in a new process:
    no model, optimizer, RNG or data state leaks from one trial to the next."""
    import json

    first = {"attack": "blend", "defense": "F+AT", "seed": 1}
    second = {"attack": "badnets", "defense": "vab", "seed": 0}

    def run(*trials):
        done = subprocess.run([sys.executable, "-c", SEQUENCE_SCRIPT, json.dumps(TINY),
                               json.dumps(list(trials))],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    after_another, alone = run(first, second), run(second)
    assert after_another == alone
    assert len(alone["losses"]) == 4
