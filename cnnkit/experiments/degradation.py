"""The degradation problem that motivated ResNet (He et al. 2015, section 4.2, Figure 6).

Plain CIFAR networks of growing depth and the ResNets with the same layers are trained
with one recipe, the paper's: a deeper plain network ends with a higher training error
(an optimisation failure, not overfitting), a deeper ResNet with a lower one.

    cnnkit experiment degradation [--depths 20,56] [--epochs 10] [--limit-train 10000] ...

Each model trains into OUTPUT/<model> with the training loop's checkpoints, so an
interrupted experiment continues where it stopped when rerun with the same command; a
model that finished is read back from its last checkpoint, not trained again. The
settings are recorded in OUTPUT/experiment.json and a rerun with other settings is
refused. The report (degradation_report) goes to OUTPUT: errors.csv/.jsonl, the figure
degradation.png and results.md.

The default budget takes about half an hour on two CPU cores: 10 epochs on the first 10,000
training images, test error on the first 2,000 test images (the paper: 64k iterations of
batch 128 on all 50,000 CIFAR-10 images, about 164 epochs). Fashion-MNIST is used unless
--data-dir holds CIFAR-10; its 28x28 images are zero-padded to the networks' 32x32.
"""

import argparse
import dataclasses
import json
import os
import shlex
import sys

import torch

from cnnkit.data import is_cifar10_directory, list_datasets
from cnnkit.train import checkpoint as ckpt
from cnnkit.train.cli import EXIT_INTERRUPTED, USER_ERRORS, print_error
from cnnkit.train.config import ConfigError, TrainConfig
from cnnkit.train.progress import Progress

from . import degradation_report

PLAIN_DEPTHS = (20, 32, 44, 56)  # the depths of the paper's plain networks (and of the zoo's)
FAMILIES = ("plain", "resnet")
DEFAULT_OUTPUT = os.path.join("runs", "degradation")
DEFAULTS = dict(depths=(20, 56), epochs=10, limit_train=10_000, limit_test=2_000, seed=0)
SETTINGS_FILE = "experiment.json"


@dataclasses.dataclass
class ModelRun:
    name: str  # plain20, resnet56, ...
    family: str  # plain or resnet
    depth: int
    history: list  # the training loop's per-epoch records
    config: dict  # the resolved TrainConfig, as saved in the checkpoint
    params: int


@dataclasses.dataclass
class DegradationResult:
    runs: list  # ModelRun, plain networks first, by depth
    verdicts: list  # one line per family: does depth hurt (plain) or help (resnet)?
    reproduced: bool  # both as in the paper
    files: dict  # what was written: errors_csv, errors_jsonl, figure, results


def model_names(depths):
    return [f"{family}{depth}" for family in FAMILIES for depth in depths]


def check_depths(depths):
    depths = sorted(set(depths))
    unknown = [depth for depth in depths if depth not in PLAIN_DEPTHS]
    if unknown or len(depths) < 2:
        raise ConfigError(f"depths: expected at least two of {', '.join(map(str, PLAIN_DEPTHS))}"
                          f" (the paper's plain networks), got {', '.join(map(str, depths)) or 'none'}")
    return tuple(depths)


def default_dataset(data_dir):
    """CIFAR-10 where data_dir holds it (the paper's data), otherwise Fashion-MNIST."""
    return "cifar10" if data_dir and is_cifar10_directory(data_dir) else "fashion-mnist"


def run(output=DEFAULT_OUTPUT, depths=DEFAULTS["depths"], *, dataset=None, data_dir=None,
        epochs=DEFAULTS["epochs"], limit_train=DEFAULTS["limit_train"],
        limit_test=DEFAULTS["limit_test"], batch_size=None, seed=DEFAULTS["seed"], device=None,
        threads=None, progress=True, command=None):
    """Train plain and residual networks of each depth with one recipe and write the report.

    limit_train / limit_test: use the first N images of each split (None: all of them);
    batch_size None: the recipe's 128. Returns a DegradationResult, or None when training
    was interrupted (Ctrl-C): calling again with the same arguments continues.
    """
    depths = check_depths(depths)
    training = dict(dataset=dataset or default_dataset(data_dir), epochs=epochs,
                    limit_train=limit_train, limit_test=limit_test, batch_size=batch_size, seed=seed)
    training = {key: value for key, value in training.items() if value is not None}
    TrainConfig(model=model_names(depths)[0], **training).resolved()  # bad values fail here
    _claim_output(output, training)
    say = Progress.write
    say(_plan(depths, training))
    runs = []
    for name in model_names(depths):
        model_run = _train(name, os.path.join(output, name), dict(
            training, data_dir=data_dir, device=device, threads=threads, progress=progress), say)
        if model_run is None:
            say("stopped; rerun the same command to continue")
            return None
        runs.append(model_run)
    verdicts, reproduced = degradation_report.verdicts(runs)
    files = degradation_report.write(output, runs, verdicts,
                                     command or _python_call(output, depths, training))
    say(degradation_report.markdown_table(runs))
    for line in verdicts:
        say(line)
    say(f"report: {files['results']}, figure: {files['figure']}")
    return DegradationResult(runs, verdicts, reproduced, files)


def _plan(depths, training):
    names = ", ".join(model_names(depths))
    images = lambda key: f"the first {training[key]:,}" if key in training else "all"  # noqa: E731
    return (f"degradation experiment on {training['dataset']}: {names}; {training['epochs']} epochs "
            f"on {images('limit_train')} training images, test error on {images('limit_test')} "
            "test images, one recipe for all (the paper: about 164 epochs on all 50,000 CIFAR-10 "
            "images)")


def _claim_output(output, training):
    """Record the settings in OUTPUT/experiment.json, or check them against those there:
    a model's checkpoints only continue the run they came from."""
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--output {output}: cannot create the directory "
                          f"({error.strerror or error})") from None
    path = os.path.join(output, SETTINGS_FILE)
    if os.path.exists(path):
        try:
            with open(path) as file:
                saved = json.load(file)["training"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}: not a degradation experiment's settings ({error}); "
                              "pass another --output") from None
        if saved != training:
            changed = sorted(key for key in set(saved) | set(training)
                             if saved.get(key) != training.get(key))
            described = ", ".join(f"{key} {saved.get(key, 'all')} there, {training.get(key, 'all')} now"
                                  for key in changed)
            raise ConfigError(f"--output {output}: holds a degradation experiment with other settings "
                              f"({described}); rerun with its settings to continue it, or pass "
                              "another --output")
        return
    temporary = f"{path}{ckpt.TEMPORARY_SUFFIX}{os.getpid()}"
    with open(temporary, "w") as file:
        json.dump({"experiment": "degradation", "training": training}, file, indent=1)
    os.replace(temporary, path)


def _train(name, run_dir, settings, say):
    """One model: read back if it finished, else trained (continued from its newest
    checkpoint if it has one). None if training was interrupted."""
    from cnnkit.train import fit

    finished = _finished_state(run_dir, settings["epochs"])
    if finished is not None:
        say(f"{name}: finished earlier, read from {run_dir}")
    else:
        resume = bool(ckpt.list_checkpoints(run_dir)) if os.path.isdir(run_dir) else False
        result = fit(name, output=run_dir, resume=resume,
                     **{key: value for key, value in settings.items() if value is not None})
        if result.interrupted:
            return None
        finished = _finished_state(run_dir, settings["epochs"])
    return _model_run(name, finished)


def _finished_state(run_dir, epochs):
    """The newest checkpoint's state if it ends the run (every epoch done), else None."""
    if not os.path.isdir(run_dir) or not ckpt.list_checkpoints(run_dir):
        return None
    _, state = ckpt.load_latest_checkpoint(run_dir)
    return state if state.get("epoch") == epochs and state.get("step") == 0 else None


def _model_run(name, state):
    from cnnkit.models import get_model

    family = next(family for family in FAMILIES if name.startswith(family))
    with torch.device("meta"):  # only to count the parameters
        model = get_model(name, **state["model_kwargs"])
    return ModelRun(name, family, int(name[len(family):]), list(state["history"]), state["config"],
                    sum(p.numel() for p in model.parameters()))


def _python_call(output, depths, training):
    arguments = ", ".join([repr(output), repr(depths)] + [f"{k}={v!r}" for k, v in training.items()])
    return f"cnnkit.experiments.degradation.run({arguments})"


# ---- command line ------------------------------------------------------------------------


def _depths(text):
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated depths, got {text!r}") from None


def _limit(text):
    """A count of images, or "all"."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive count or 'all', got {text!r}")
    return value


def parser():
    p = argparse.ArgumentParser(
        prog="cnnkit experiment degradation",
        description="Train plain and residual CIFAR networks of two or more depths with one "
                    "recipe and compare their training and test error (He et al. 2015, "
                    "Figure 6). Rerun the same command to continue an interrupted run.")
    add = p.add_argument
    depths = ",".join(map(str, DEFAULTS["depths"]))
    add("--depths", type=_depths, default=DEFAULTS["depths"],
        help=f"comma-separated depths among {', '.join(map(str, PLAIN_DEPTHS))} (default: {depths})")
    add("--dataset", choices=list_datasets(),
        help="default: cifar10 when --data-dir holds it, else fashion-mnist")
    add("--data-dir", help="directory of the data set (default: its standard location)")
    add("--epochs", type=int, default=DEFAULTS["epochs"], help="default: %(default)s")
    add("--limit-train", type=_limit, default=DEFAULTS["limit_train"],
        help="train on the first N images, or all (default: %(default)s)")
    add("--limit-test", type=_limit, default=DEFAULTS["limit_test"],
        help="test error on the first N images, or all (default: %(default)s)")
    add("--batch-size", type=int, help="default: the ResNet CIFAR recipe's 128")
    add("--seed", type=int, default=DEFAULTS["seed"], help="default: %(default)s")
    add("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    add("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    add("--output", default=DEFAULT_OUTPUT, help="default: %(default)s")
    add("--no-progress", dest="progress", action="store_false",
        help="no progress bar (there is one only when stderr is a terminal)")
    return p


def main(argv):
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error: argparse already printed
        return int(exit_.code or 0)
    command = shlex.join(["cnnkit", "experiment", "degradation", *argv])
    try:
        result = run(args.output, args.depths, dataset=args.dataset, data_dir=args.data_dir,
                     epochs=args.epochs, limit_train=args.limit_train, limit_test=args.limit_test,
                     batch_size=args.batch_size, seed=args.seed, device=args.device,
                     threads=args.threads, progress=args.progress, command=command)
    except USER_ERRORS as error:
        return print_error("experiment degradation", error)
    except KeyboardInterrupt:
        print("cnnkit experiment degradation: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_INTERRUPTED if result is None else 0
