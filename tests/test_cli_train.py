"""`cnnkit train` and `cnnkit evaluate`: exit codes and one-line messages for mistakes."""

import subprocess
import sys

import pytest

from cnnkit.data import write_synthetic_mnist
from cnnkit.train.checkpoint import list_checkpoints
from cnnkit.train.cli import evaluate_main, train_main

QUICK = ["--dataset", "mnist", "--batch-size", "32", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(write_synthetic_mnist(tmp_path_factory.mktemp("synthetic"), train=320, test=100))


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("run"))
    assert train_main(["lenet5", "--data-dir", data_dir, "--epochs", "1",
                       "--output", output] + QUICK) == 0
    return output


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_train_reports_test_accuracy(trained_run, capsys, data_dir, tmp_path):
    assert train_main(["lenet5", "--data-dir", data_dir, "--epochs", "1",
                       "--output", str(tmp_path)] + QUICK) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("lenet5 on mnist: test top-1 accuracy ") and "top-5 error" in last


def test_ten_crop_of_a_model_trained_without_shifts_says_what_to_expect(trained_run, data_dir, capsys):
    assert evaluate_main([trained_run, "--data-dir", data_dir, "--ten-crop", "--limit-test", "20"]) == 0
    err = capsys.readouterr().err
    assert "ten-crop" in err and "trained without crop and flip augmentation" in err
    assert evaluate_main([trained_run, "--data-dir", data_dir, "--limit-test", "20"]) == 0
    assert "ten-crop" not in capsys.readouterr().err  # single view: nothing to say


def test_unknown_model(capsys):
    assert train_main(["lenet7"]) == 1
    line = _error_line(capsys)
    assert line.startswith("cnnkit train: error: unknown model 'lenet7'; choose one of: lenet5")


def test_missing_data(tmp_path, capsys):
    assert train_main(["lenet5", "--data-dir", str(tmp_path / "none"), "--output",
                       str(tmp_path / "out")]) == 1
    line = _error_line(capsys)
    assert "no such directory" in line and "dataset-fashion-mnist" in line


def test_truncated_data(tmp_path, capsys):
    write_synthetic_mnist(tmp_path, train=20, test=10, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    assert train_main(["lenet5", "--dataset", "mnist", "--data-dir", str(tmp_path),
                       "--output", str(tmp_path / "out")]) == 1
    assert "truncated" in _error_line(capsys)


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "epochs: expected a positive int, got 0"),
    (["--augment", "crop,warp"], "augment: unknown augmentation 'warp'"),
    (["--lr-scale", "-1"], "lr_scale: expected a finite positive number"),
    (["--amp", "--amp-dtype", "float16", "--device", "cpu"], "float16 autocast needs CUDA"),
    (["--dataset", "foo"],
     "dataset: unknown data set 'foo'; expected one of: fashion-mnist, mnist, cifar10"),
    (["--lr", "inf"], "lr: expected a finite positive number, got inf"),
    (["--weight-decay", "inf"], "weight_decay: expected a finite number >= 0, got inf"),
    (["--device", "bogus"], "device: expected cpu, cuda or cuda:N, got 'bogus'"),
    (["--device", "meta"], "device: expected cpu, cuda or cuda:N, got 'meta'"),
])
def test_bad_values(args, message, capsys, data_dir, tmp_path):
    code = train_main(["lenet5", "--data-dir", data_dir, "--output", str(tmp_path)] + QUICK + args)
    assert code == 1
    assert message in _error_line(capsys)


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_without_cuda(no_cuda, capsys, data_dir, tmp_path):
    code = train_main(["lenet5", "--data-dir", data_dir, "--output", str(tmp_path),
                       "--device", "cuda"] + QUICK)
    assert code == 1
    assert _error_line(capsys).startswith("cnnkit train: error: device: 'cuda' requested but "
                                          "this torch has no usable CUDA device")


def test_cuda_index_out_of_range(monkeypatch, capsys, data_dir, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code = train_main(["lenet5", "--data-dir", data_dir, "--output", str(tmp_path),
                       "--device", "cuda:2"] + QUICK)
    assert code == 1
    assert "device: 'cuda:2' requested but there are 2 CUDA devices" in _error_line(capsys)


@pytest.mark.parametrize("make_output", [
    lambda tmp_path: tmp_path / "file",  # an existing file
    lambda tmp_path: tmp_path / "file" / "run",  # below a file
])
def test_output_that_cannot_be_a_directory(make_output, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    output = make_output(tmp_path)
    # No data set at --data-dir: the output directory is checked before any data loads.
    code = train_main(["lenet5", "--data-dir", str(tmp_path / "none"), "--output", str(output)]
                      + QUICK)
    assert code == 1
    assert _error_line(capsys).startswith(f"cnnkit train: error: --output {output}: cannot "
                                          "create the run directory")
    assert (tmp_path / "file").read_text() == "x"


def test_help_names_the_models(capsys):
    assert train_main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "summary --list" not in out
    assert "one of: lenet5, alexnet," in out and "resnet110" in out


def test_usage_errors_exit_2(capsys):
    assert train_main(["lenet5", "--optimizer", "rmsprop"]) == 2
    assert "invalid choice: 'rmsprop'" in capsys.readouterr().err
    assert train_main([]) == 2
    assert train_main(["--help"]) == 0


def test_resume_without_checkpoint(tmp_path, capsys, data_dir):
    assert train_main(["lenet5", "--data-dir", data_dir, "--output", str(tmp_path), "--resume"]
                      + QUICK) == 1
    assert "nothing to resume" in _error_line(capsys)


def test_evaluate(trained_run, capsys):
    assert evaluate_main([trained_run, "--per-class"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 11 and out[-1].endswith("loss " + out[-1].rsplit(" ", 1)[1])
    assert "100 test images, top-1 accuracy" in out[-1] and "top-5 error" in out[-1]
    assert evaluate_main([list_checkpoints(trained_run)[0], "--ten-crop"]) == 0


def test_evaluate_optimized_gives_the_same_figures(trained_run, capsys):
    assert evaluate_main([trained_run]) == 0
    plain = capsys.readouterr().out.strip().splitlines()[-1]
    assert evaluate_main([trained_run, "--optimize"]) == 0
    optimized = capsys.readouterr().out.strip().splitlines()[-1]
    # The same predictions; the loss may differ in its last printed digit (BN folded).
    assert optimized.split(", loss")[0] == plain.split(", loss")[0]


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_evaluate_refuses_a_limit_below_one(trained_run, capsys, limit):
    assert evaluate_main([trained_run, "--limit-test", limit]) == 1
    assert _error_line(capsys) == ("cnnkit evaluate: error: --limit-test: expected a positive "
                                   f"int, got {limit}")


def test_evaluate_bad_device(trained_run, capsys, no_cuda):
    assert evaluate_main([trained_run, "--device", "bogus"]) == 1
    assert "device: expected cpu, cuda or cuda:N, got 'bogus'" in _error_line(capsys)
    assert evaluate_main([trained_run, "--device", "cuda"]) == 1
    assert "device: 'cuda' requested but this torch has no usable CUDA" in _error_line(capsys)


def test_evaluate_bad_checkpoints(trained_run, tmp_path, capsys):
    assert evaluate_main([str(tmp_path / "missing.pt")]) == 1
    assert "no such checkpoint" in _error_line(capsys)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(open(list_checkpoints(trained_run)[0], "rb").read()[:-1])
    assert evaluate_main([str(damaged)]) == 1
    assert "truncated checkpoint" in _error_line(capsys)
    other = tmp_path / "other.pt"
    other.write_bytes(b"\x80\x04K\x01.")
    assert evaluate_main([str(other)]) == 1
    assert "not a cnnkit checkpoint" in _error_line(capsys)


def test_incompatible_checkpoint(trained_run, tmp_path, capsys):
    import torch

    from cnnkit.train.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(list_checkpoints(trained_run)[0])
    state["model"]["features.0.weight"] = torch.zeros(3, 1, 5, 5)
    save_checkpoint(state, tmp_path / "changed.pt")
    assert evaluate_main([str(tmp_path / "changed.pt")]) == 1
    line = _error_line(capsys)
    assert "weights do not fit model 'lenet5'" in line and "features.0.weight" in line


def test_command_line_has_no_traceback(tmp_path):
    process = subprocess.run([sys.executable, "-m", "cnnkit", "evaluate", str(tmp_path / "x.pt")],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 1
    expected = f"cnnkit evaluate: error: {tmp_path / 'x.pt'}: no such checkpoint"
    assert process.stderr.strip() == expected
    assert "Traceback" not in process.stderr


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    import signal

    data = write_synthetic_mnist(tmp_path / "data", train=3200, test=100)
    command = [sys.executable, "-u", "-m", "cnnkit", "train", "lenet5", "--data-dir", str(data),
               "--output", str(tmp_path / "run")] + QUICK
    process = subprocess.Popen(command + ["--epochs", "200"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait until training is under way
        if line.startswith("epoch   1/200"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "continue with the same command and --resume" in out
    assert "Traceback" not in err
    saved = list_checkpoints(tmp_path / "run")
    assert saved
    resumed = subprocess.run(command + ["--epochs", "3", "--resume"],
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "test top-1 accuracy" in resumed.stdout


def test_evaluate_warns_when_the_newest_checkpoint_is_damaged(trained_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    newest = list_checkpoints(run)[0]
    shutil.copy(newest, run / "checkpoint-e0000-s0000001.pt")  # an older intact one to fall back on
    with open(newest, "r+b") as file:
        file.seek(-3, 2)
        file.write(b"\x00\x01\x02")
    assert evaluate_main([str(run)]) == 0
    err = capsys.readouterr().err
    assert f"cnnkit evaluate: {newest}: checksum mismatch" in err and "using the previous checkpoint" in err
