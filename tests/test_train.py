"""fit(): learning, the run's files, exact resume after an interruption, and DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cnnkit.data import write_synthetic_cifar10, write_synthetic_mnist
from cnnkit.train import fit, load_checkpoint, load_latest_checkpoint

QUICK = dict(dataset="mnist", batch_size=32, threads=1, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(write_synthetic_mnist(tmp_path_factory.mktemp("synthetic"), train=640, test=200))


def test_short_run_beats_chance_and_writes_its_files(data_dir, tmp_path):
    result = fit("lenet5", data_dir=data_dir, epochs=2, output=str(tmp_path), **QUICK)
    assert not result.interrupted
    assert result.test["count"] == 200
    assert result.test["top1_acc"] > 0.5  # chance is 0.1
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,lr,train_loss") and len(csv_lines) == 3
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test top-1 accuracy" in (tmp_path / "log.txt").read_text()
    state = load_checkpoint(result.checkpoint)
    assert (state["epoch"], state["step"], state["model_name"]) == (2, 0, "lenet5")
    # The LeNet recipe: SGD on the paper's schedule x100, 0.05 for the first three epochs.
    assert result.history[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("options", [
    dict(channels_last=True, amp=True),  # bfloat16 autocast on CPU
    pytest.param(dict(compile=True), marks=pytest.mark.slow),
])
def test_training_options_still_learn(data_dir, tmp_path, options):
    result = fit("lenet5", data_dir=data_dir, epochs=2, output=str(tmp_path), **options, **QUICK)
    assert result.config.amp == options.get("amp", False)
    assert result.test["top1_acc"] > 0.5
    assert all(torch.isfinite(t).all() for t in _weights(result).values())


def _weights(result):
    return load_checkpoint(result.checkpoint)["model"]


def test_interrupted_run_resumes_to_the_same_result(data_dir, tmp_path):
    settings = dict(data_dir=data_dir, epochs=3, augment="crop,flip", **QUICK)
    reference = fit("lenet5", output=str(tmp_path / "whole"), **settings)

    def stop_mid_epoch(trainer, epoch, step):
        if (epoch, step) == (1, 6):
            trainer.request_stop()

    output = str(tmp_path / "split")
    first = fit("lenet5", output=output, on_batch_end=stop_mid_epoch, **settings)
    assert first.interrupted and len(first.history) == 1
    state = load_checkpoint(first.checkpoint)
    assert (state["epoch"], state["step"]) == (1, 7)
    resumed = fit("lenet5", output=output, resume=True, **settings)
    assert not resumed.interrupted
    for name, tensor in _weights(reference).items():
        assert torch.equal(tensor, _weights(resumed)[name]), name
    def without_timings(history):
        return [{k: v for k, v in record.items() if not k.endswith("_s")} for record in history]

    assert without_timings(resumed.history) == without_timings(reference.history)
    assert resumed.test == reference.test


def test_resume_skips_a_corrupt_latest_checkpoint(data_dir, tmp_path, capsys):
    settings = dict(data_dir=data_dir, output=str(tmp_path), **QUICK)
    fit("lenet5", epochs=2, **settings)
    path, _ = load_latest_checkpoint(tmp_path)
    with open(path, "r+b") as file:
        file.seek(100)
        file.write(b"garbage")
    result = fit("lenet5", epochs=3, resume=True, **settings)
    out = capsys.readouterr().out
    assert "checksum mismatch" in out and "resumed from" in out and "e0001" in out
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


def test_resume_from_a_file_into_another_runs_directory(data_dir, tmp_path, capsys):
    other = tmp_path / "other"
    fit("lenet5", epochs=4, seed=1, data_dir=data_dir, output=str(other), **QUICK)
    first = fit("lenet5", epochs=1, data_dir=data_dir, output=str(tmp_path / "first"), **QUICK)
    resumed = fit("lenet5", epochs=2, resume=first.checkpoint, data_dir=data_dir,
                  output=str(other), **QUICK)
    # The other run's later-named checkpoints no longer win over the one just written.
    path, state = load_latest_checkpoint(other)
    assert path == resumed.checkpoint and state["history"] == resumed.history
    assert "set aside" in capsys.readouterr().out
    # They are moved aside, not deleted.
    assert sorted(os.listdir(other / "superseded")) == [
        "checkpoint-e0003-s0000000.pt", "checkpoint-e0004-s0000000.pt"]
    again = fit("lenet5", epochs=3, resume=True, data_dir=data_dir, output=str(other), **QUICK)
    assert again.history[:2] == resumed.history and len(again.history) == 3


def test_resume_refuses_another_model(data_dir, tmp_path):
    from cnnkit.train import CheckpointError

    fit("lenet5", epochs=1, data_dir=data_dir, output=str(tmp_path), **QUICK)
    with pytest.raises(CheckpointError, match="checkpoint is for dataset 'mnist'"):
        fit("lenet5", dataset="fashion-mnist", resume=True, output=str(tmp_path),
            progress=False)


def _torchrun(args, nproc):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--standalone", "-m", "cnnkit.train"] + args
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return str(write_synthetic_cifar10(tmp_path_factory.mktemp("cifar"), train=128, test=64))


@pytest.mark.slow
@pytest.mark.parametrize("model, dataset, extra", [
    ("lenet5", "mnist", ["--epochs", "2", "--batch-size", "32", "--lr", "0.05"]),
    # BatchNorm: SyncBN must give each half-batch the statistics of the whole batch. Two
    # images per process make per-process statistics visibly different. One step only: its
    # runs differ by the order of the sums alone, where each further step of a deep net on
    # so few images amplifies that difference by a factor that depends on the CPU's vector
    # width (four steps put AVX2 machines 13x past the tolerance below).
    ("resnet20", "cifar10", ["--epochs", "1", "--batch-size", "4", "--limit-train", "4",
                             "--lr", "0.005"]),
])
def test_two_gloo_processes_match_one_process(model, dataset, extra, request, tmp_path):
    data = request.getfixturevalue("data_dir" if dataset == "mnist" else "cifar_dir")
    args = [model, "--dataset", dataset, "--data-dir", data, "--augment", "crop,flip",
            "--optimizer", "sgd", "--schedule", "constant", "--no-progress",
            "--threads", "1"] + extra
    single = _torchrun(args + ["--output", str(tmp_path / "one")], 1)
    assert single.returncode == 0, single.stderr[-8000:]
    double = _torchrun(args + ["--output", str(tmp_path / "two")], 2)
    assert double.returncode == 0, double.stderr[-8000:]  # the workers' own messages too
    assert double.stdout.count("test top-1 accuracy") == 1  # rank 0 alone reports
    _, one = load_latest_checkpoint(tmp_path / "one")
    _, two = load_latest_checkpoint(tmp_path / "two")
    assert one["config"]["batch_size"] == two["config"]["batch_size"]
    for name, tensor in one["model"].items():
        # Same global batches and augmentation; only the order of the sums differs.
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=2e-5)
    assert one["history"][-1]["train_loss"] == pytest.approx(two["history"][-1]["train_loss"],
                                                             rel=1e-3)
