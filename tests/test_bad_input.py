"""Every bad input is one line naming the field, exit status 2, before any work: no Ray cluster
starts, no data is loaded for a sweep, and the output folder is not created (or left as it was).

The cases follow the categories of an audit of 118 bad inputs: unknown choices, out-of-range
and non-finite numbers, malformed --set, resources the machine does not have, folders that are
files, unreachable services, other sweeps' folders, and the analysis scripts' bad inputs. Each
command is called in this process, with ``ray.init`` made to fail loudly: a case that gets as far
as starting a cluster is a failure of the check, not a slow pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vb_sweep import cli

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vb_sweep.analysis import ablation_table, plots  # noqa: E402

# (arguments, a word the one line must hold) for both sweep commands.
SWEEP_CASES = [
    (["--preset", "huge"], "preset"),
    (["--epochs", "0"], "epochs"),
    (["--epochs", "four"], "--epochs"),
    (["--set", "no_such_field=1"], "--set field"),
    (["--set", "epochs"], "--set"),
    (["--epochs", "2", "--set", "epochs=3"], "--set epochs"),  # which length? refused
    (["--set", "lr=NaN"], "lr"),
    (["--set", "momentum=1.5"], "momentum"),
    (["--set", "lr_milestones=5"], "lr_milestones"),
    (["--set", "lambda_u=[0.1]"], "lambda_u"),
    (["--set", "victim_temperature=hot"], "victim_temperature"),
    (["--set", "crop_padding=-1"], "crop_padding"),
    (["--set", "warm_up_step=Infinity"], "warm_up_step"),
    (["--set", "train_per_class=0"], "train_per_class"),
    (["--set", "train_per_class=100000000"], "train_per_class"),
    (["--set", "device=tpu"], "device"),
    (["--set", "device=cuda"], "device"),
    (["--set", "seed=-1"], "seed"),
    (["--set", "seed=99999999999999999999999"], "seed"),
    (["--set", "target=10"], "target"),
    (["--set", "batchnorm_passes=eval"], "batchnorm_passes"),
    (["--set", "min_unlabeled_batch=0"], "min_unlabeled_batch"),
    (["--gpus", "1"], "--gpus"),
    (["--cpus", "0"], "--cpus"),
    (["--cpus", "100000"], "--cpus"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial"),
    (["--trials-per-gpu", "0"], "--trials-per-gpu"),
    (["--max-failures", "-1"], "--max-failures"),
    (["--verbose", "5"], "--verbose"),
    (["--address", "127.0.0.1:1"], "--address"),
    (["--address", "ray://127.0.0.1:10001"], "--address"),
    (["--mlflow-uri", "ftp://example"], "--mlflow-uri"),
    (["--mlflow-uri", "http://127.0.0.1:1"], "--mlflow-uri"),
    (["--retry-failed"], "--retry-failed"),
    (["--sweep", "../escape"], "--sweep"),
    (["--preset", "cpu", "--data-root", "missing-folder"], "data_root"),
    (["--preset", "cpu"], "data_root"),  # CIFAR-10 needs --data-root
    (["--preset", "cpu", "--data-root", "TRUNCATED_CIFAR"], "data_root"),
    (["--epochs", "two"], "allowed: an integer"),
]
ABLATION_CASES = [
    (["--attacks", "nope"], "attack"),
    (["--defenses", "F+AT", "F+X"], "defense variant"),
    (["--datasets", "mnist"], "dataset"),
    (["--poison-rates", "2.0"], "poison rate"),
    (["--poison-rates", "lots"], "--poison-rates"),
    (["--seeds", "0", "0"], "--seeds"),
    (["--seeds", "-3"], "seed"),
    (["--seeds", "0", "4294967296"], "seed"),
    (["--t-f", "1.5"], "t_f"),
    (["--t-m", "-0.1"], "t_m"),
    (["--report-epoch", "middle"], "--report-epoch"),
    (["--epochs", "20", "20"], "--epochs"),
    (["--epochs", "20", "0"], "--epochs"),
]
SEARCH_CASES = [
    (["--attack", "nope"], "attack"),
    (["--defense", "none"], "--defense"),
    (["--defense", "V&B"], "defense"),
    (["--poison-rate", "1.5"], "poison_rate"),
    (["--t-f-range", "0.5", "0.1"], "--t-f-range"),
    (["--t-m-range", "0", "2"], "t_m range high"),
    (["--n-trials", "0"], "--n-trials"),
    (["--concurrency", "0"], "--concurrency"),
    (["--storage", "bogus://nowhere"], "--storage"),
    (["--storage", "sqlite:///MISSING/study.db"], "--storage"),
    (["--storage", "sqlite://"], "--storage"),
    (["--storage", "postgresql://user:secret@127.0.0.1:1/db"], "--storage"),
    (["--sampler-seed", "x"], "allowed: an integer"),
    (["--sampler-seed", "99999999999999999999999"], "--sampler-seed"),
]
RUN_CASES = [
    (["--attack", "nope"], "attack"),
    (["--defense", "V&B"], "defense"),
    (["--augment", "cutout"], "augment"),
    (["--attack-preset", "mine"], "attack_preset"),
    (["--poison-rate", "1.5"], "poison_rate"),
    (["--target", "10"], "target"),
    (["--dataset", "mnist"], "dataset"),
    (["--t-f", "-0.1"], "t_f"),
    (["--epochs", "0"], "epochs"),
    (["--epochs", "2", "--set", "epochs=3"], "--set epochs"),
    (["--seed", "99999999999999999999999"], "seed"),
    (["--threads", "0"], "--threads"),
    (["--device", "tpu"], "device"),
    (["--device", "cuda"], "device"),
    (["--set", "lr=NaN"], "lr"),
    (["--dataset", "cifar10", "--data-root", "missing-folder"], "data_root"),
    (["--dataset", "cifar10", "--data-root", "TRUNCATED_CIFAR"], "data_root"),
    (["--cache-dir", "A_FILE/cache"], "--cache-dir"),
    (["--epochs", "two"], "allowed: an integer"),
]
SHOW_ATTACKS_CASES = [
    (["--attacks", "nope"], "attack"),
    (["--dataset", "mnist"], "dataset"),
    (["--attack-preset", "mine"], "attack preset"),
    (["--preset", "huge"], "--preset"),
    (["--out", "gallery.xyz"], "--out"),
    (["--out", "A_FILE/gallery.png"], "--out"),
]


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    """A bad input must be refused before Ray starts: starting it fails the test at once."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("a Ray cluster was started for a bad input")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def call(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's errors
        return stop.code


def assert_one_line_error(code: int, err: str, word: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "error:" in lines[0] and word in lines[0], lines


@pytest.fixture
def places(tmp_path) -> dict[str, str]:
    """Stand-ins a case's arguments may name: a file, a missing folder, and a CIFAR-10 folder
    whose batches are cut short (the real layout, files that do not load)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    truncated = tmp_path / "truncated" / "cifar-10-batches-py"
    truncated.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (truncated / name).write_bytes(b"\x80\x04\x95")  # a pickle's first bytes
    return {"A_FILE": str(a_file), "MISSING": str(tmp_path / "missing"),
            "TRUNCATED_CIFAR": str(truncated.parent)}


def placed(args: list[str], places: dict[str, str]) -> list[str]:
    for name, path in places.items():
        args = [arg.replace(name, path) for arg in args]
    return args


def sweep_case(command: str, args: list[str], word: str, tmp_path, capsys, places) -> None:
    out = tmp_path / "out"
    required = ["--attack", "badnets"] if command == "search" and "--attack" not in args else []
    code = call(cli.main, [command, *required, *placed(args, places), "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, word)
    assert not out.exists(), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("args, word", SWEEP_CASES + ABLATION_CASES)
def test_ablation_bad_input(args, word, tmp_path, capsys, places):
    sweep_case("ablation", args, word, tmp_path, capsys, places)


@pytest.mark.parametrize("args, word", SWEEP_CASES + SEARCH_CASES)
def test_search_bad_input(args, word, tmp_path, capsys, places):
    sweep_case("search", args, word, tmp_path, capsys, places)
    assert "secret" not in capsys.readouterr().err


@pytest.mark.parametrize("args, word", RUN_CASES)
def test_run_bad_input(args, word, tmp_path, capsys, places):
    out = tmp_path / "out"
    code = call(cli.main, ["run", *placed(args, places), "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, word)
    assert not out.exists()


@pytest.mark.parametrize("args, word", SHOW_ATTACKS_CASES)
def test_show_attacks_bad_input(args, word, tmp_path, capsys, places):
    out = tmp_path / "attacks.png"
    code = call(cli.main, ["show-attacks", "--out", str(out), *placed(args, places)])
    assert_one_line_error(code, capsys.readouterr().err, word)
    assert not out.exists() and not list(tmp_path.glob("gallery*"))


# A place no folder can be made: a file, under a file, under /proc (root may write anywhere
# else, so permissions alone cannot stand in for this).
UNMAKEABLE = {"a file": "A_FILE", "under a file": "A_FILE/sub", "under /proc": "/proc/vb-sweep"}


@pytest.mark.parametrize("place", UNMAKEABLE)
@pytest.mark.parametrize("command, folder", [("ablation", "out"), ("ablation", "cache-dir"),
                                             ("ablation", "storage-path"), ("search", "out"),
                                             ("run", "out"), ("run", "cache-dir")])
def test_a_folder_that_cannot_be_made(command, folder, place, tmp_path, capsys, places):
    out = tmp_path / "out"
    paths = {"out": str(out), folder: placed([UNMAKEABLE[place]], places)[0]}
    required = ["--attack", "badnets"] if command == "search" else []
    code = call(cli.main, [command, *required, *[f"--{k}={v}" for k, v in paths.items()]])
    assert_one_line_error(code, capsys.readouterr().err, f"--{folder}")
    assert Path(places["A_FILE"]).read_text() == "not a folder"
    assert folder == "out" or not out.exists()


def test_another_sweeps_folder_is_left_as_it_was(tmp_path, capsys):
    from vb_sweep.grid import manifest_for, write_manifest

    out = tmp_path / "out"
    write_manifest(out, manifest_for("threshold_search", "theirs", "smoke", {}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = call(cli.main, ["ablation", "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "--out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- the analysis scripts -------------------------------------------------------------------------
@pytest.fixture
def results(tmp_path):
    """A results folder with one trial row and its history."""
    from vb_sweep.results import write_trial

    out = tmp_path / "results"
    row = {"sweep": "s", "trial_id": "badnets-none-s0-x", "dataset": "synthetic",
           "model": "tiny_cnn", "attack": "badnets", "attack_preset": "vab_paper",
           "poison_rate": 0.1, "target": 0, "defense": "none", "augment": "attentionmix",
           "t_f": 0.1, "t_m": 0.5, "seed": 0, "preset": "smoke", "ba": 0.9, "asr": 0.9,
           "ra": 0.1, "status": "ok", "epochs": 2}
    write_trial(out, row, [{"sweep": "s", "trial_id": row["trial_id"], "epoch": 1,
                            "stage": "plain", "ba": 0.9, "asr": 0.9}])
    vab = {**row, "trial_id": "badnets-vab-s0-x", "defense": "vab", "ba": 0.85, "asr": 0.02}
    split = {"sweep": "s", "trial_id": vab["trial_id"], "epoch": 0, "stage": "victim",
             "entropy_hist_poisoned": [5] + [0] * 19, "entropy_hist_benign": [1] * 20}
    write_trial(out, vab, [split])  # one split with histograms: --split 0 or -1
    return out


ANALYSIS_CASES = [
    (ablation_table.main, ["missing-folder"], "results"),
    (ablation_table.main, ["RESULTS", "--out", "A_FILE/table.md"], "--out"),
    (ablation_table.main, ["RESULTS", "--out", "RESULTS"], "--out"),
    (ablation_table.main, ["RESULTS", "--epochs", "two"], "--epochs"),
    (plots.main, ["RESULTS", "--out", "A_FILE/figures"], "--out"),
    (plots.main, ["RESULTS", "--split", "5"], "--split"),
    (plots.main, ["RESULTS", "--split", "last"], "allowed: an integer"),
    (ablation_table.main, ["RESULTS", "--dataset", "mnist"], "--dataset"),
    (ablation_table.main, ["RESULTS", "--epoch", "middle"], "--epoch"),
    (ablation_table.main, ["RESULTS", "--format", "pdf"], "--format"),
    (plots.main, ["missing-folder"], "results"),
    (plots.main, ["EMPTY"], "nothing to plot"),
    (plots.main, ["RESULTS", "--trial", "no-such-trial"], "--trial"),
]


@pytest.mark.parametrize("main, args, word", ANALYSIS_CASES)
def test_analysis_bad_input(main, args, word, results, tmp_path, capsys, places):
    empty = tmp_path / "empty"
    empty.mkdir()
    places = {**places, "RESULTS": str(results), "EMPTY": str(empty),
              "missing-folder": str(tmp_path / "missing")}
    argv = placed(args, places)
    if "--out" not in args:
        argv += ["--out", str(tmp_path / "figures")]
    code = call(main, argv)
    assert_one_line_error(code, capsys.readouterr().err, word)
    assert not (tmp_path / "figures").exists()


def test_a_corrupt_pareto_front_is_refused_before_any_figure(results, tmp_path, capsys):
    (results / "pareto.parquet").write_bytes(b"PAR1 not really")
    code = call(plots.main, [str(results), "--out", str(tmp_path / "figures")])
    assert_one_line_error(code, capsys.readouterr().err, "pareto.parquet")
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("main", [ablation_table.main, plots.main])
def test_a_corrupt_results_file_is_refused_unless_skipped(main, results, tmp_path, capsys):
    """One corrupt Parquet file and one of another schema in trials/: a table or figure without
    them would be silently partial, so it is refused (one line naming the file);
    --skip-unreadable makes it from the rest, each skipped file named in a warning."""
    import pandas as pd

    (results / "trials" / "corrupt.parquet").write_bytes(b"PAR1 not really")
    pd.DataFrame({"something": ["else"]}).to_parquet(results / "trials" / "other.parquet")
    figures = ["--out", str(tmp_path / "figures")] if main is plots.main else []
    code = call(main, [str(results), *figures])
    assert_one_line_error(code, capsys.readouterr().err, "--skip-unreadable")
    assert call(main, [str(results), *figures, "--skip-unreadable"]) == 0
    captured = capsys.readouterr()
    assert "badnets" in captured.out or main is plots.main
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert any("corrupt.parquet" in line for line in warnings), captured.err
    assert any("other.parquet" in line for line in warnings), captured.err

