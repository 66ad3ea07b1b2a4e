"""The sweep's pieces that need no cluster: the grid of configurations and its checks, the output
folder's manifest, the Table 4-style table, resource planning, the fault hooks, MLflow logging
into a real SQLite store and the Optuna study's resume bookkeeping."""

from __future__ import annotations

import pandas as pd
import pytest

from vb_sweep.config import DEFENSES
from vb_sweep.errors import ConfigError
from vb_sweep.grid import (GridOptions, build_grid, build_table_grid, check_output_folder,
                           manifest_for, write_grid_files, write_manifest)
from vb_sweep.results import read_trials, write_trial
from vb_sweep.sweep import (TrialRecorder, base_spec, fault_injection, plan_resources,
                            trial_spec)
from vb_sweep.tracking import SweepTracker, default_tracking_uri
from vb_sweep.trial import trial_id_for


# -- the grid -------------------------------------------------------------------------------------
def test_smoke_defaults_are_badnets_none_vab_by_one_seed():
    configs = build_grid(GridOptions(preset="smoke"))  # the README's first run
    assert len(configs) == 2
    assert {c.attack for c in configs} == {"badnets"}
    assert [c.defense for c in configs] == ["none", "vab"]
    assert {c.resplit_every for c in configs} == {5}  # the authors' period in the mix stage
    assert {c.seed for c in configs} == {0}
    cpu = build_grid(GridOptions(preset="cpu", attacks=["badnets"]))
    assert [c.defense for c in cpu] == list(DEFENSES)
    assert {c.resplit_every for c in cpu} == {5}
    longer = build_grid(GridOptions(preset="cpu", attacks=["badnets"], epochs=[40]))
    assert {(c.mix_epochs, c.resplit_every) for c in longer} == {(20, 5)}  # not scaled to 1


def test_schedule_lengths_are_an_axis_each_scaled_and_longest_first():
    from vb_sweep.grid import longest_first

    configs = build_grid(GridOptions(preset="cpu", attacks=["badnets"],
                                     defenses=["none", "vab"], epochs=[20, 200]))
    schedules = {(c.epochs, c.mix_epochs, c.lr_milestones, c.lambda_u_switch) for c in configs}
    assert schedules == {(20, 10, (5, 10, 15), 15), (200, 100, (50, 100, 150), 150)}
    assert len({trial_id_for(c) for c in configs}) == 4
    order = [(c.epochs, c.defense) for c in longest_first(configs)]
    assert order == [(200, "none"), (200, "vab"), (20, "none"), (20, "vab")]


def test_a_table_per_schedule_length(tmp_path):
    configs = build_grid(GridOptions(defenses=["none", "vab"], epochs=[4, 8]))
    ids = [trial_id_for(c) for c in configs]
    for config, trial_id in zip(configs, ids):
        write_trial(tmp_path, finished_row(config, trial_id, config.epochs / 10, 0.5), [])
    grid = build_table_grid(configs, ids, read_trials(tmp_path))
    vab = grid.frame[grid.frame["defense"] == "vab"]
    assert list(vab["epochs"]) == [4, 8] and list(vab["ba_mean"]) == [0.4, 0.8]
    assert grid.markdown().count("### dataset synthetic") == 2
    assert "t_m 0.5, 8 epochs\n" in grid.markdown()
    assert list(grid.csv_frame()["epochs"]) == [4, 4, 8, 8]


def test_trials_start_longest_variant_first():
    from vb_sweep.grid import longest_first

    configs = build_grid(GridOptions(attacks=["badnets", "blend"], defenses=list(DEFENSES)))
    order = [(c.defense, c.attack) for c in longest_first(configs)]
    assert order[:3] == [("F+AT+SST+S", "badnets"), ("F+AT+SST+S", "blend"),
                         ("F+AT+SST", "badnets")]
    assert [defense for defense, _ in order[4:8]] == ["none", "none", "vab", "vab"]
    assert order[-2:] == [("F", "badnets"), ("F", "blend")]


def test_every_axis_multiplies_the_grid_and_overrides_reach_every_cell():
    configs = build_grid(GridOptions(
        preset="smoke", attacks=["badnets"], defenses=["none", "vab"], seeds=[0, 1],
        poison_rates=[0.05, 0.1], t_f=[0.1, 0.3], epochs=[4],
        overrides=["train_per_class=40", "lr=0.05"]))
    assert len(configs) == 1 * 2 * 2 * 2 * 2
    assert {(c.epochs, c.train_per_class, c.lr) for c in configs} == {(4, 40, 0.05)}
    assert {c.mix_epochs for c in configs} == {2}  # the schedule is scaled to --epochs
    assert len({trial_id_for(c) for c in configs}) == len(configs)


@pytest.mark.parametrize("options, field", [
    (GridOptions(attacks=["nope"]), "attack"),
    (GridOptions(defenses=["F+AT", "F+X"]), "defense variant"),
    (GridOptions(t_f=[1.5]), "t_f"),
    (GridOptions(t_m=[-0.1]), "t_m"),
    (GridOptions(poison_rates=[2.0]), "poison rate"),
    (GridOptions(seeds=[0, 0]), "--seeds"),
    (GridOptions(preset="huge"), "preset"),
    (GridOptions(overrides=["no_such_field=1"]), "--set field"),
    (GridOptions(overrides=["epochs=0"]), "epochs"),
    (GridOptions(epochs=[0]), "--epochs"),
    (GridOptions(epochs=[20, 20]), "--epochs"),
    (GridOptions(epochs=[4], overrides=["epochs=3"]), "--set epochs"),
    (GridOptions(overrides=["lr_milestones=5"]), "lr_milestones"),
    (GridOptions(overrides=["lr=NaN"]), "lr"),
    (GridOptions(overrides=["momentum=1.5"]), "momentum"),
    (GridOptions(overrides=["lambda_u=[0.1]"]), "lambda_u"),
    (GridOptions(overrides=["victim_temperature=hot"]), "victim_temperature"),
    (GridOptions(overrides=["crop_padding=-1"]), "crop_padding"),
    (GridOptions(overrides=["warm_up_step=Infinity"]), "warm_up_step"),
    (GridOptions(overrides=["share_mix_stage=maybe"]), "share_mix_stage"),
    (GridOptions(overrides=["batchnorm_passes=eval"]), "batchnorm_passes"),
])
def test_bad_options_name_their_field(options, field):
    with pytest.raises(ConfigError) as caught:
        build_grid(options)
    assert caught.value.field == field
    assert "\n" not in str(caught.value)


def test_config_error_survives_pickling_as_ray_sends_it():
    import pickle

    error = pickle.loads(pickle.dumps(ConfigError("data_root", "/missing", ["a folder"])))
    assert isinstance(error, ConfigError) and error.field == "data_root"
    assert str(error) == "invalid data_root: '/missing' (allowed: a folder)"


def test_set_overrides_the_options_fields_too():
    """--set comes last: it may change a field that is also an option or an axis."""
    configs = build_grid(GridOptions(attacks=["badnets"], defenses=["vab"], t_m=[0.3],
                                     epochs=[4], overrides=["t_m=0.1", "seed=2", "mix_epochs=1"]))
    assert [(c.t_m, c.seed, c.epochs, c.mix_epochs) for c in configs] == [(0.1, 2, 4, 1)]


def test_set_overrides_options_in_every_entry_point():
    from vb_sweep.commands.run import build_parser, config_from_args

    args = build_parser().parse_args(["--t-m", "0.3", "--epochs", "4",
                                      "--set", "t_m=0.1", "seed=3", "lr_milestones=[1, 2]"])
    config = config_from_args(args)
    assert (config.t_m, config.seed, config.lr_milestones, config.epochs) == (0.1, 3, (1, 2), 4)
    from vb_sweep.commands import search

    args = search.build_parser().parse_args(
        ["--attack", "badnets", "--seed", "1", "--set", "seed=4", "t_f=0.3"])
    assert (search.base_config(args).seed, search.base_config(args).t_f) == (4, 0.3)


# -- the output folder ----------------------------------------------------------------------------
def test_an_output_folder_holds_one_sweep(tmp_path):
    ours = manifest_for("ablation", "mine", "smoke", {})
    check_output_folder(tmp_path, ours, resume=False)  # empty: fine
    write_manifest(tmp_path, ours)
    check_output_folder(tmp_path, ours, resume=True)
    with pytest.raises(ConfigError, match="--resume"):
        check_output_folder(tmp_path, ours, resume=False)
    for other in (manifest_for("ablation", "theirs", "smoke", {}),
                  manifest_for("ablation", "mine", "paper", {}),
                  manifest_for("threshold_search", "mine", "smoke", {})):
        for resume in (False, True):
            with pytest.raises(ConfigError, match="choose another --out"):
                check_output_folder(tmp_path, other, resume=resume)


# -- the table ------------------------------------------------------------------------------------
def finished_row(config, trial_id: str, ba: float, asr: float) -> dict:
    from vb_sweep.attacks.registry import resolved_poison_rate

    described = ("dataset", "model", "attack", "attack_preset", "target", "defense", "augment",
                 "t_f", "t_m", "seed", "preset", "epochs")
    return {"sweep": "t", "trial_id": trial_id, **{k: getattr(config, k) for k in described},
            "poison_rate": resolved_poison_rate(config.attack, config.poison_rate),
            "status": "ok", "ba": ba, "asr": asr}


def test_table_has_variants_in_paper_order_and_names_missing_cells(tmp_path):
    configs = build_grid(GridOptions(attacks=["blend", "badnets"], seeds=[0, 1],
                                     defenses=["vab", "none", "F"]))
    ids = [trial_id_for(c) for c in configs]
    for config, trial_id in zip(configs, ids):
        if config.defense == "F" and config.attack == "badnets":
            if config.seed == 0:
                write_trial(tmp_path, {**finished_row(config, trial_id, 0, 0),
                                       "status": "failed", "ba": None, "asr": None,
                                       "error": "Traceback ...\nRuntimeError: boom"}, [])
            continue  # seed 1: never ran
        write_trial(tmp_path, finished_row(config, trial_id, 0.9 - 0.1 * config.seed,
                                           0.5 if config.defense == "none" else 0.02), [])
    grid = build_table_grid(configs, ids, read_trials(tmp_path))
    frame = grid.frame.set_index(["defense", "attack"])
    assert list(dict.fromkeys(grid.frame["defense"])) == ["none", "F", "vab"]
    assert list(dict.fromkeys(grid.frame["attack"])) == ["badnets", "blend"]  # paper order
    assert frame.loc[("none", "blend"), "ba_mean"] == pytest.approx(0.85)  # mean of 2 seeds
    assert frame.loc[("none", "blend"), "n"] == 2
    assert (frame.loc[("F", "badnets"), "n"], frame.loc[("F", "badnets"), "failed"]) == (0, 1)
    assert len(grid.missing) == 2
    assert any("failed: RuntimeError: boom" in line for line in grid.missing)
    assert any("not finished" in line for line in grid.missing)
    markdown, csv = write_grid_files(tmp_path, grid)
    text = markdown.read_text()
    # The analysis scripts' table: mean ± std over seeds, DER against no defense
    assert "| none | 85.0 ± 7.1 (n=2) | 50.0 ± 0.0 | — | 85.0 ± 7.1 (n=2) |" in text
    assert "| F | failed | failed | failed |" in text
    assert "### dataset synthetic, poison rate 10%, preset smoke, target 0, t_f 0.2, t_m 0.5, " \
           "16 epochs" in text
    assert "Missing cells:" in text
    frame = pd.read_csv(csv)
    assert set(frame["defense"]) == {"none", "F", "vab"} and len(frame) == 6
    assert {"dataset", "t_f", "t_m", "epochs", "ba_mean", "asr_mean", "der_mean"} \
        <= set(frame.columns)
    assert list(frame["poison_rate"]) == [0.1] * 6
    cells = {(c["attack"], c["defense"]): c for c in grid.cells()}
    assert cells[("blend", "vab")]["der"] == pytest.approx((0.5 - 0.02 + 1) / 2)


# -- resources ------------------------------------------------------------------------------------
def test_fractional_gpus_and_cpu_only_plans():
    gpu_cluster = {"CPU": 32.0, "GPU": 8.0}
    plan = plan_resources(gpu_cluster, gpus=4, trials_per_gpu=2)
    assert (plan.gpus_per_trial, plan.max_concurrent) == (0.5, 8)
    assert plan_resources(gpu_cluster).max_concurrent == 8  # every GPU by default
    cpu_cluster = {"CPU": 8.0}
    plan = plan_resources(cpu_cluster, cpus=6, cpus_per_trial=2)
    assert (plan.gpus_per_trial, plan.max_concurrent) == (0.0, 3)
    assert plan_resources(cpu_cluster).max_concurrent == 8
    for bad in ({"gpus": 9}, {"gpus": 1, "trials_per_gpu": 0}, {"cpus": 9},
                {"cpus_per_trial": 16}):
        cluster = gpu_cluster if "gpus" in bad else cpu_cluster
        with pytest.raises(ConfigError):
            plan_resources(cluster, **bad)


def test_lone_preparation_tasks_get_the_sweeps_cores_on_cpus():
    plan = plan_resources({"CPU": 2.0})
    assert plan.preparation_options(1) == ({"num_cpus": 2, "num_gpus": 0}, 2)
    assert plan.preparation_options(2) == (plan.task_options(), 1)
    assert plan.preparation_options(5) == (plan.task_options(), 1)
    gpu_plan = plan_resources({"CPU": 32.0, "GPU": 8.0}, gpus=8)
    assert gpu_plan.preparation_options(1) == (gpu_plan.task_options(), 1)
    two_nodes = plan_resources({"CPU": 8.0})  # two nodes of 4: no task can have all 8
    two_nodes.node_cpus = 4.0
    assert two_nodes.preparation_options(1) == ({"num_cpus": 4.0, "num_gpus": 0}, 4)
    two_nodes.node_cpus = 1.0
    assert two_nodes.preparation_options(1) == (two_nodes.task_options(), 1)


def test_the_status_table_is_printed_only_when_a_trial_moved():
    from types import SimpleNamespace

    from vb_sweep.sweep.session import progress_reporter

    reporter = progress_reporter(verbose=1, every_s=0)  # Tune's own time limit aside
    trial = SimpleNamespace(trial_id="a", status="RUNNING", last_result={"epoch": 1})
    assert reporter.should_report([trial])
    assert not reporter.should_report([trial])  # nothing moved
    trial.last_result = {"epoch": 2}
    assert reporter.should_report([trial])
    assert reporter.should_report([trial], done=True)  # the last table is always printed


def test_trial_line_has_elapsed_time_and_an_estimate_of_the_rest():
    from vb_sweep.sweep import trial_line

    row = {"trial_id": "badnets-vab-s0-x", "status": "ok", "ba": 0.91, "asr": 0.002,
           "wall_s": 75.2}
    line = trial_line(2, 6, row, elapsed_s=150)
    assert line == ("[2/6] badnets-vab-s0-x finished: BA 0.910 ASR 0.002 in 75 s | "
                    "elapsed 2:30, about 5:00 left")
    assert trial_line(6, 6, row, elapsed_s=400).endswith("elapsed 6:40")


def test_trial_line_shows_the_filter_of_a_filtering_variant():
    from vb_sweep.sweep import trial_line

    row = {"trial_id": "badnets-vab-s0-x", "status": "ok", "ba": 0.934, "asr": 0.0,
           "wall_s": 149.0, "filter_recall": 1.0, "filter_precision": 0.98}
    assert trial_line(1, 2, row) == ("[1/2] badnets-vab-s0-x finished: BA 0.934 ASR 0.000 "
                                        "in 149 s; filter recall 1.00 precision 0.98")
    plain = {**row, "trial_id": "badnets-none-s0-x", "filter_recall": None,
             "filter_precision": float("nan")}
    assert "filter" not in trial_line(2, 2, plain)


# -- fault hooks ----------------------------------------------------------------------------------
def test_fault_hooks_select_trials_by_id(monkeypatch, tmp_path):
    config = build_grid(GridOptions(attacks=["badnets"], defenses=["F"]))[0]
    monkeypatch.setenv("VB_SWEEP_FAULT_KILL_AT", "2:badnets-F-")
    monkeypatch.setenv("VB_SWEEP_FAULT_RAISE_AT", "1:blend")
    spec = base_spec("s", config, str(tmp_path), str(tmp_path))
    assert spec["faults"] == {"kill_at_checkpoint": 2}
    assert fault_injection("blend-vab-s0-x") == {"raise_at_record": 1}
    assert trial_spec({"trial": spec, "t_f": 0.3})["config"]["t_f"] == 0.3


# -- MLflow ---------------------------------------------------------------------------------------
def test_tracker_writes_nested_runs_into_a_sqlite_store(tmp_path):
    from mlflow import MlflowClient

    config = build_grid(GridOptions(attacks=["badnets"], defenses=["vab"]))[0]
    trial_id = trial_id_for(config)
    history = [{"epoch": 0, "stage": "victim", "credible_size": 90, "filter_recall": 0.9},
               {"epoch": 1, "stage": "mix", "ba": 0.5, "asr": 0.2, "loss": 1.0, "lr": 0.1},
               {"epoch": 2, "stage": "sst", "ba": 0.7, "asr": 0.1, "loss": 0.5, "lr": 0.01}]
    row = {"trial_id": trial_id, "status": "ok", "ba": 0.7, "asr": 0.1, "wall_s": 3.0,
           "best_ba": 0.7, "precision": "fp32"}
    uri = default_tracking_uri(tmp_path)
    for invocation in range(2):  # the second replaces the first run of the same trial
        tracker = SweepTracker(uri, "unit", artifact_root=tmp_path / "mlartifacts")
        tracker.start_invocation("ablation", {"preset": "smoke"}, resume=invocation > 0)
        run_id = tracker.log_trial(config.to_dict(), row, history, {"a.png": b"\x89PNG"})
        tracker.finish_invocation()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("unit")
    trials = client.search_runs([experiment.experiment_id], "tags.trial_id = '%s'" % trial_id)
    assert [run.info.run_id for run in trials] == [run_id]
    run = client.get_run(run_id)
    assert run.data.params["defense"] == "vab" and run.data.params["t_f"] == "0.2"
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert [m.value for m in client.get_metric_history(run_id, "ba")] == [0.5, 0.7]
    assert client.get_metric_history(run_id, "credible_size")[0].step == 0
    assert {f.path for f in client.list_artifacts(run_id)} == {"figures", "row.json"}


def test_tracker_follows_mlflow_conventions(tmp_path):
    """Readable run names, source/user/commit tags, params with the values used, the row's
    figures as one summary/ group, and the grid on the parent run."""
    from mlflow import MlflowClient

    from vb_sweep import git_commit

    config = build_grid(GridOptions(attacks=["badnets"], defenses=["F+AT+SST+S"]))[0]
    row = {"trial_id": trial_id_for(config), "status": "ok", "ba": 0.7, "asr": 0.1,
           "best_ba": 0.72, "best_epoch": 3, "precision": "fp32", "epochs": 4,
           "dataset": "synthetic", "attack": "badnets", "num_poisoned": 500, "num_train": 5000,
           "train_fingerprint": "poison-0123456789abcdef01234567",
           "test_fingerprint": "fedcba9876543210fedc"}
    tracker = SweepTracker(default_tracking_uri(tmp_path), "conventions",
                           artifact_root=tmp_path / "mlartifacts")
    tracker.start_invocation("ablation", {"preset": "smoke"}, resume=False)
    run = tracker.client.get_run(tracker.log_trial(config.to_dict(), row, [], {}))
    assert config.poison_rate is None and run.data.params["poison_rate"] == "0.1"
    assert run.info.run_name == "badnets/F+AT+SST+S/s0"
    assert run.data.params["precision"] == "fp32" and run.data.params["amp"] == "True"
    assert run.data.metrics["summary/ba"] == 0.7 and run.data.metrics["summary/best_epoch"] == 3
    assert not [key for key in run.data.metrics if key.startswith("final_")]
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert inputs["training"].name == "synthetic poisoned by badnets (500 of 5000)"
    assert inputs["training"].digest == "456789abcdef01234567"
    assert inputs["evaluation"].digest == "fedcba9876543210fedc"
    for tags in (run.data.tags, tracker.client.get_run(tracker.parent_run_id).data.tags):
        assert tags["mlflow.user"] and tags["mlflow.source.name"]
        assert tags.get("mlflow.source.git.commit") == git_commit()
    grid_file = tmp_path / "grid.md"
    grid_file.write_text("| variant | BA |\n")
    tracker.log_grid([grid_file], [{"attack": "badnets", "defense": "none", "ba": 0.9,
                                    "asr": 0.95},
                                   {"attack": "badnets", "defense": "F+AT", "ba": 0.8,
                                    "asr": 0.05, "der": 0.9}])
    parent = MlflowClient(default_tracking_uri(tmp_path)).get_run(tracker.parent_run_id)
    assert parent.data.metrics["grid/badnets/F_AT/der"] == 0.9
    assert parent.data.metrics["grid/badnets/none/asr"] == 0.95
    assert "grid.md" in {f.path for f in tracker.client.list_artifacts(tracker.parent_run_id)}


def test_an_sqlite_store_takes_one_sweep_at_a_time(tmp_path):
    from vb_sweep.tracking import lock_sqlite_store

    uri = default_tracking_uri(tmp_path / "shared")
    assert lock_sqlite_store(uri, hold=False) is None  # nothing created by a check
    assert not (tmp_path / "shared").exists()
    held = lock_sqlite_store(uri)
    with pytest.raises(ConfigError, match="no other sweep is writing"):
        lock_sqlite_store(uri, hold=False)
    held.close()
    lock_sqlite_store(uri).close()


def test_epochs_reach_mlflow_while_the_trial_runs_and_each_once(tmp_path):
    from mlflow import MlflowClient

    config = build_grid(GridOptions(attacks=["badnets"], defenses=["vab"]))[0]
    spec = {"trial_id": trial_id_for(config), "sweep": "unit", "config": config.to_dict()}
    history = [{"epoch": 0, "stage": "victim", "credible_size": 90},
               {"epoch": 1, "stage": "mix", "ba": 0.5, "asr": 0.2},
               {"epoch": 2, "stage": "sst", "ba": 0.7, "asr": 0.1}]
    uri = default_tracking_uri(tmp_path)
    tracker = SweepTracker(uri, "unit", artifact_root=tmp_path / "mlartifacts")
    tracker.start_invocation("ablation", {}, resume=False)
    recorder = TrialRecorder(tmp_path, tracker, total=1)
    client = MlflowClient(uri)

    recorder.record_epoch(spec, {**history[1], "training_iteration": 1})
    run_id = recorder.open_runs[spec["trial_id"]]
    assert client.get_run(run_id).info.status == "RUNNING"
    assert [m.value for m in client.get_metric_history(run_id, "ba")] == [0.5]
    # A retried trial reports epoch 1 again; the final report is not an epoch.
    recorder.record_epoch(spec, {**history[1], "ba": 0.55})
    recorder.record_epoch(spec, {"stage": "final", "epoch": 2, "ba": 0.7})
    row = {"trial_id": spec["trial_id"], "status": "ok", "ba": 0.7, "asr": 0.1, "epochs": 2}
    recorder.record(spec, row, history, {})

    assert client.get_run(run_id).info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "ba")] == [(1, 0.5),
                                                                                  (2, 0.7)]
    assert client.get_metric_history(run_id, "credible_size")[0].step == 0
    assert read_trials(tmp_path)["mlflow_run_id"].tolist() == [run_id]


# -- Optuna ---------------------------------------------------------------------------------------
def test_interrupted_study_trials_are_failed_and_requeued(tmp_path):
    import optuna
    from vb_sweep.commands.search import finished_trials, open_study, requeue_interrupted

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study, _ = open_study(url, "s")
    assert study.metric_names == ["ba", "asr"]  # the objectives' names, not 0 and 1
    space = {"t_f": optuna.distributions.FloatDistribution(0.1, 0.5)}
    done = study.ask(space)
    study.tell(done, [0.9, 0.1])
    interrupted = study.ask(space)  # a killed driver leaves this one RUNNING
    study, _ = open_study(url, "s")  # a new driver opens the same study
    assert requeue_interrupted(study) == 1
    assert finished_trials(study) == 1  # the interrupted one is run again, not counted
    assert study.trials[interrupted.number].state.name == "FAIL"
    again = study.ask(space)
    assert again.params == interrupted.params


def test_preparation_progress_prints_at_most_one_line_every_30_seconds(capsys):
    import torch

    from vb_sweep.sweep.cluster import PreparationProgress
    from vb_sweep.victim import VictimState

    now = [0.0]
    progress = PreparationProgress("badnets cifar10 seed 0", clock=lambda: now[0])
    state = VictimState(torch.tensor([True, False, True]), torch.zeros(3))
    progress.victim_split("victim", 1, state)          # 0 s since the start: quiet
    now[0] = 31.0
    progress.victim_split("victim", 2, state)
    now[0] = 40.0
    progress.mix_epoch({"epoch": 1, "stage": "mix", "loss": 1.5}, 10)  # 9 s later: quiet
    now[0] = 75.0
    progress.mix_epoch({"epoch": 0, "stage": "victim", "loss": None}, 10)  # not a mix epoch
    progress.mix_epoch({"epoch": 2, "stage": "mix", "loss": 1.25}, 10)
    assert capsys.readouterr().out.splitlines() == [
        "[prepare] badnets cifar10 seed 0: Victim split after epoch 2 (victim): 2 suspicious",
        "[prepare] badnets cifar10 seed 0: mix stage epoch 2/10, loss 1.250"]
