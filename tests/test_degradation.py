"""`cnnkit experiment degradation` on a tiny synthetic set: the files it writes, their
structure, resuming per model, refusing other settings, and the paper's verdicts."""

import csv
import json
import os

import pytest

from cnnkit.data import write_synthetic_cifar10, write_synthetic_mnist
from cnnkit.experiments import degradation
from cnnkit.experiments import main as experiment_main
from cnnkit.experiments.degradation_report import ERROR_FIELDS, verdicts
from cnnkit.train.checkpoint import checkpoint_name
from cnnkit.train.config import ConfigError

TINY = ["--dataset", "mnist", "--limit-train", "all", "--limit-test", "all", "--batch-size", "32",
        "--threads", "1", "--no-progress"]
MODELS = ["plain20", "plain32", "resnet20", "resnet32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(write_synthetic_mnist(tmp_path_factory.mktemp("synthetic"), train=64, test=32))


@pytest.fixture(scope="module")
def one_epoch(data_dir, tmp_path_factory):
    """The experiment's command line, one epoch of depths 20 and 32: (output, stdout)."""
    output = str(tmp_path_factory.mktemp("degradation"))
    capture = pytest.MonkeyPatch()
    lines = []
    capture.setattr(degradation.Progress, "write", staticmethod(lines.append))
    try:
        code = experiment_main(["degradation", "--depths", "20,32", "--epochs", "1",
                                "--data-dir", data_dir, "--output", output, *TINY])
    finally:
        capture.undo()
    assert code == 0
    return output, lines


def test_writes_errors_per_model_and_epoch(one_epoch):
    output, _ = one_epoch
    with open(os.path.join(output, "errors.csv")) as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == ERROR_FIELDS
    assert [row["model"] for row in rows] == MODELS
    assert [row["family"] for row in rows] == ["plain", "plain", "resnet", "resnet"]
    assert [int(row["depth"]) for row in rows] == [20, 32, 20, 32]
    assert all(row["epoch"] == "1" and 0 <= float(row["train_error"]) <= 1
               and 0 <= float(row["test_error"]) <= 1 for row in rows)
    with open(os.path.join(output, "errors.jsonl")) as file:
        records = [json.loads(line) for line in file]
    assert [record["model"] for record in records] == MODELS
    assert records[0]["train_error"] == pytest.approx(float(rows[0]["train_error"]))


def test_writes_a_figure_and_a_report(one_epoch):
    output, lines = one_epoch
    with open(os.path.join(output, "degradation.png"), "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(output, "results.md")) as file:
        report = file.read()
    assert "- Command: `cnnkit experiment degradation --depths 20,32 --epochs 1" in report
    assert "- Machine: " in report and "threads" in report
    assert "all training images" in report and "1 epochs of batch 32" in report
    table = [line for line in report.splitlines() if line.startswith("| plain") or line.startswith("| resnet")]
    assert [line.split("|")[1].strip() for line in table] == MODELS
    assert "| plain20 | 20 | " in report and "- plain: plain32 ends with training error" in report
    printed = "\n".join(lines)  # the same table and verdicts on stdout
    assert all(line in printed for line in table)
    assert "resnet: resnet32 ends with training error" in printed


def test_the_plan_states_the_budget(one_epoch):
    _, lines = one_epoch
    assert lines[0].startswith("degradation experiment on mnist: plain20, plain32, resnet20, resnet32; "
                               "1 epochs on all training images")


def test_the_same_command_reads_finished_models_back(one_epoch, data_dir):
    output, _ = one_epoch
    checkpoints = {name: os.path.join(output, name, checkpoint_name(1)) for name in MODELS}
    before = {name: os.stat(path).st_mtime_ns for name, path in checkpoints.items()}
    result = degradation.run(output, (20, 32), dataset="mnist", data_dir=data_dir, epochs=1,
                             limit_train=None, limit_test=None, batch_size=32, threads=1,
                             progress=False)
    assert [run.name for run in result.runs] == MODELS
    assert {name: os.stat(path).st_mtime_ns for name, path in checkpoints.items()} == before
    assert len(result.verdicts) == 2 and isinstance(result.reproduced, bool)


def test_other_settings_are_refused(one_epoch, data_dir, capsys):
    output, _ = one_epoch
    assert experiment_main(["degradation", "--depths", "20,32", "--epochs", "2", "--data-dir",
                            data_dir, "--output", output, *TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnkit experiment degradation: error: --output ")
    assert "epochs 1 there, 2 now" in err


def test_an_interrupted_model_continues_from_its_checkpoint(data_dir, tmp_path, capsys):
    settings = dict(dataset="mnist", data_dir=data_dir, epochs=2, limit_train=None, limit_test=None,
                    batch_size=32, threads=1, progress=False)
    first = degradation.run(str(tmp_path), (20, 32), **settings)
    os.remove(tmp_path / "resnet32" / checkpoint_name(2))  # as if stopped after epoch 1
    untouched = os.stat(tmp_path / "plain20" / checkpoint_name(2)).st_mtime_ns
    capsys.readouterr()
    second = degradation.run(str(tmp_path), (20, 32), **settings)
    out = capsys.readouterr().out
    assert "resumed from" in out and "resnet32" in out.split("resumed from")[1].splitlines()[0]
    assert out.count("finished earlier") == 3
    assert [record["epoch"] for record in second.runs[-1].history] == [1, 2]
    assert second.runs[-1].history[0] == first.runs[-1].history[0]  # epoch 1 kept, not retrained
    assert os.stat(tmp_path / "plain20" / checkpoint_name(2)).st_mtime_ns == untouched


@pytest.mark.parametrize("depths", [(20,), (20, 21), (18, 56), ()])
def test_depths_are_checked(depths, tmp_path):
    with pytest.raises(ConfigError, match="depths: expected at least two of 20, 32, 44, 56"):
        degradation.run(str(tmp_path), depths)
    assert not os.listdir(tmp_path)  # refused before anything is written


def test_bad_settings_fail_before_training(tmp_path, capsys):
    assert experiment_main(["degradation", "--epochs", "0", "--output", str(tmp_path)]) == 1
    assert "epochs" in capsys.readouterr().err
    assert not os.listdir(tmp_path)
    assert experiment_main(["degradation", "--limit-train", "-3"]) == 2  # argparse's usage error
    assert "expected a positive count or 'all'" in capsys.readouterr().err


def test_unknown_experiment(capsys):
    assert experiment_main(["degradations"]) == 2
    assert "unknown experiment 'degradations'" in capsys.readouterr().err


def test_cifar10_is_used_when_the_data_directory_holds_it(tmp_path):
    assert degradation.default_dataset(None) == "fashion-mnist"
    assert degradation.default_dataset(str(tmp_path)) == "fashion-mnist"
    assert degradation.default_dataset(str(write_synthetic_cifar10(tmp_path / "cifar", 10, 10))) == "cifar10"


def _fake_run(family, depth, train_error):
    history = [{"epoch": 1, "train_top1_acc": 1.0 - train_error, "test_top1_err": train_error}]
    return degradation.ModelRun(f"{family}{depth}", family, depth, history, {}, 0)


@pytest.mark.parametrize("plain56, resnet56, reproduced", [
    (0.30, 0.09, True),  # the paper: deeper plain worse, deeper ResNet better
    (0.30, 0.10, True),  # a ResNet no worse counts
    (0.30, 0.20, False),  # deeper ResNet worse
    (0.10, 0.09, False),  # no degradation of the plain network
])
def test_verdicts_compare_the_deepest_with_the_shallowest(plain56, resnet56, reproduced):
    runs = [_fake_run("plain", 20, 0.10), _fake_run("plain", 32, 0.50), _fake_run("plain", 56, plain56),
            _fake_run("resnet", 20, 0.10), _fake_run("resnet", 56, resnet56)]
    lines, holds = verdicts(runs)
    assert holds is reproduced
    assert lines[0].startswith(f"plain: plain56 ends with training error {100 * plain56:.2f}%, plain20 with 10.00%")
    assert lines[1].startswith(f"resnet: resnet56 ends with training error {100 * resnet56:.2f}%")
