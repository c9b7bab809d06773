"""Small user-facing fixes: `cnnkit --version`, a closed stdout pipe, progress bars off a
terminal, the 1-epoch training plot, per-model defaults in `cnnkit train MODEL --help`,
and argument checks of cnnkit.summary and cnnkit.fuse."""

import io
import os
import re
import subprocess
import sys

import matplotlib.figure
import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.cli import main as cli_main
from cnnkit.train.cli import train_main
from cnnkit.train.progress import Progress
from cnnkit.train.records import plot_history


def test_version(capsys):
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out == f"cnnkit {cnnkit.__version__}\n"


def test_closed_pipe_exits_quietly():
    # `cnnkit summary --list | head -3` where head is gone: the pipe has no reader left.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "cnnkit", "summary", "--list"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 1  # as CPython's docs do on EPIPE


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, a pipe
    with Progress(10, 0, "epoch 1/1") as progress:
        assert progress.bar is None
    assert sys.stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with Progress(10, 0, "epoch 1/1") as progress:
        assert progress.bar is not None
    with Progress(10, 0, "epoch 1/1", enabled=False) as progress:  # --no-progress
        assert progress.bar is None


def test_progress_bar_shows_the_decoding_rate_beside_the_training_rate(monkeypatch):
    from cnnkit.train.metrics import ClassificationMeter

    monkeypatch.setattr(sys, "stderr", _Terminal())
    meter = ClassificationMeter(2)
    for decode_rate, expected in ((None, None), (123.4, ", data 123 img/s")):
        with Progress(20, 0, "epoch 1/1") as progress:
            for _ in range(10):
                progress.advance(4, meter, decode_rate)
            postfix = progress.bar.postfix
        assert "train " in postfix and "img/s" in postfix
        assert (expected in postfix) if expected else ("data" not in postfix)


def test_plot_of_one_epoch_shows_every_point(monkeypatch, tmp_path):
    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *args, **kwargs: (figures.append(self), save(self, *args, **kwargs)))
    record = dict(epoch=1, lr=0.1, train_loss=2.0, test_loss=1.9, train_top1_acc=0.3,
                  test_top1_acc=0.35)
    plot_history([record], tmp_path / "training.png", "one epoch")
    assert (tmp_path / "training.png").stat().st_size > 0
    (figure,) = figures
    lines = [line for axis in figure.axes for line in axis.lines]
    assert len(lines) == 5 and len(figure.axes[2].lines) == 1  # the learning rate has one
    for line in lines:  # a single point shows only as a marker
        assert line.get_marker() not in (None, "None", "", " ")


def _train_help(capsys, *argv):
    assert train_main([*argv, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


def _help_of(text, option, next_option):
    return re.search(f"{option} (.*?) {next_option}", text).group(1)


def test_train_help_gives_the_models_recipe(capsys):
    lenet = _train_help(capsys, "lenet5")
    assert "lenet5's recipe" in lenet
    assert _help_of(lenet, "--epochs EPOCHS", "--batch-size") == "default: 12"
    assert "(default: 64)" in _help_of(lenet, "--batch-size BATCH_SIZE", "--optimizer")
    assert "(default: 0.05)" in _help_of(lenet, "--lr LR", "--momentum")
    assert _help_of(lenet, "--threads THREADS", "--output") == "CPU threads for torch (default: 1)"
    assert "(default: fashion-mnist)" in _help_of(lenet, "--dataset DATASET", "--data-dir")

    resnet = _train_help(capsys, "resnet56")
    assert _help_of(resnet, "--epochs EPOCHS", "--batch-size") == "default: 164"
    assert "(default: 128)" in _help_of(resnet, "--batch-size BATCH_SIZE", "--optimizer")
    assert "torch's choice" in _help_of(resnet, "--threads THREADS", "--output")

    # The model is found as argparse finds it: an option's value is not taken for it.
    assert "resnet56's recipe" in _train_help(capsys, "--output", "resnet20", "resnet56")


def test_train_help_without_a_model_claims_no_default(capsys):
    text = _train_help(capsys)
    assert "cnnkit train MODEL --help" in text
    assert "torch's choice" not in _help_of(text, "--threads THREADS", "--output")
    assert "the model's recipe" in _help_of(text, "--epochs EPOCHS", "--batch-size")


class _MustNotRun(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        raise AssertionError("the model ran before input_size was checked")


@pytest.mark.parametrize("input_size, error", [
    ((3, -1, 32), ValueError),
    ((3, 0, 32), ValueError),
    ((3, 32), ValueError),
    ((1, 2, 3, 32, 32), ValueError),
    ("abc", TypeError),
    ((3, 32.5, 32), TypeError),
    ((3, 32.0, 32), TypeError),
    ((3, "32", 32), TypeError),
    ((3, True, 32), TypeError),
    (32, TypeError),
    (None, TypeError),
])
def test_summary_checks_input_size_first(input_size, error):
    with pytest.raises(error, match="input_size"):
        cnnkit.summary(_MustNotRun(), input_size)


def test_summary_takes_sizes_of_any_int_type():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert cnnkit.summary(model, [3, 8, 8]).input_shape == (1, 3, 8, 8)
    assert cnnkit.summary(model, torch.Size([2, 3, 8, 8])).input_shape == (2, 3, 8, 8)


def test_fuse_checks_its_argument():
    with pytest.raises(TypeError, match="^fuse: model must be a torch.nn.Module, got int$"):
        cnnkit.fuse(3)


def test_cnnkit_train_is_reachable_from_import_cnnkit_and_loaded_lazily():
    code = (
        "import sys, cnnkit\n"
        "assert 'cnnkit.train' not in sys.modules, 'import cnnkit loaded the training stack'\n"
        "assert callable(cnnkit.train.fit)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
