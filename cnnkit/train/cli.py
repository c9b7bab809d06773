"""`cnnkit train MODEL [options]` and `cnnkit evaluate CHECKPOINT [options]`.

A user's mistake (missing data, unknown model, bad value, damaged checkpoint) ends with
one line saying what is wrong and what to do, and exit status 1; argparse's usage errors
exit with 2; Ctrl-C saves a checkpoint and exits with 130.
"""

import argparse
import contextlib
import io
import sys
import warnings

import torch

from cnnkit.data import DataError, list_datasets
from cnnkit.models import list_models

from .checkpoint import CheckpointError
from .config import AMP_DTYPES, AUGMENTATIONS, OPTIMIZERS, ConfigError
from .recipes import RECIPE_SETTINGS, recipe_for
from .schedules import SCHEDULES

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130
USER_ERRORS = (DataError, CheckpointError, ConfigError)


def _milestones(text):
    try:
        return tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs, got {text!r}")


def train_parser(model=None):
    """The parser of `cnnkit train`. With `model` (a name of the zoo), the help of each
    setting a recipe fills in gives that model's value; without, it points at the recipe."""
    recipe = recipe_for(model) if model in list_models() else None
    if recipe is None:
        description = ("Train a model of the zoo. Settings left out come from the model's "
                       "recipe; `cnnkit train MODEL --help` shows them.")
    else:
        description = f"Train a model of the zoo. The defaults below are {model}'s recipe."
    parser = argparse.ArgumentParser(prog="cnnkit train", description=description)

    def add(*flags, help=None, **kwargs):
        setting = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if setting in RECIPE_SETTINGS:
            if recipe is None:
                default = "the model's recipe"
            elif setting in recipe:
                default = str(recipe[setting]).replace("%", "%%")  # argparse %-formats help
            else:  # left to TrainConfig's None (only threads is): torch's own choice
                default = f"torch's choice, {torch.get_num_threads()} here"
            help = f"{help} (default: {default})" if help else f"default: {default}"
        parser.add_argument(*flags, help=help, **kwargs)

    add("model", help=f"model name, one of: {', '.join(list_models())}")
    add("--dataset", help=f"one of: {', '.join(list_datasets())}")
    add("--data-dir", help="directory of the data set (default: $CNNKIT_DATA, else the data "
                           "set's standard location)")
    add("--epochs", type=int)
    add("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    add("--optimizer", choices=OPTIMIZERS)
    add("--lr", type=float, help="initial learning rate (the lenet schedule uses --lr-scale)")
    add("--momentum", type=float)
    add("--weight-decay", type=float)
    add("--schedule", choices=SCHEDULES)
    add("--lr-scale", type=float, help="factor on the LeNet schedule's rates")
    add("--milestones", type=_milestones, help="epochs where the step schedule divides by 10")
    add("--augment", help=f"comma-separated subset of {','.join(AUGMENTATIONS)}, or none")
    add("--fused", action=argparse.BooleanOptionalAction, default=None,
        help="build the model from cnnkit's fused modules (default) or plain torch.nn")
    add("--channels-last", action="store_true", default=None)
    add("--compile", action="store_true", default=None, help="torch.compile the model")
    add("--amp", action="store_true", default=None,
        help="mixed precision autocast (bfloat16; float16 with --amp-dtype on CUDA)")
    add("--amp-dtype", choices=AMP_DTYPES)
    add("--ten-crop", action="store_true", default=None, help="AlexNet's 10-crop evaluation")
    add("--seed", type=int)
    add("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    add("--threads", type=int, help="CPU threads for torch")
    add("--output", help="directory for logs, metrics, plot and checkpoints (runs/MODEL)")
    add("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
        help="continue from the output directory's newest checkpoint, or from CHECKPOINT")
    add("--no-progress", dest="progress", action="store_false", default=None,
        help="no progress bar (there is one only when stderr is a terminal)")
    add("--limit-train", type=int, help="train on the first N examples only")
    add("--limit-test", type=int, help="evaluate on the first N examples only")
    add("--eval-batch-size", type=int)
    add("--workers", type=int, help="processes decoding an image folder (default: the cores "
                                    "available; 0 decodes in the training process)")
    return parser


def _model_for_help(argv):
    """The model a `cnnkit train ... --help` names, so its help can show that model's
    recipe; None otherwise. Parsed with the real options, so that no option's value
    (--output resnet20) is taken for the model."""
    if not {"-h", "--help"} & set(argv):
        return None
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the real parse reports errors
            args, _ = train_parser().parse_known_args([a for a in argv if a not in ("-h", "--help")])
    except SystemExit:  # no model given, or a usage error
        return None
    return args.model


def _parse(parser, argv):
    try:
        return parser.parse_args(argv), None
    except SystemExit as exit_:  # --help or a usage error: argparse already printed
        return None, int(exit_.code or 0)


def print_error(command, error):
    """A user's mistake as one line on stderr, `cnnkit COMMAND: error: ...`; returns EXIT_ERROR."""
    message = " ".join(str(error).split("\n")[0].split())
    print(f"cnnkit {command}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def train_main(argv):
    args, code = _parse(train_parser(_model_for_help(argv)), argv)
    if args is None:
        return code
    from .loop import fit

    settings = {key: value for key, value in vars(args).items() if value is not None}
    try:
        result = fit(**settings)
    except USER_ERRORS as error:
        return print_error("train", error)
    except KeyboardInterrupt:
        print("cnnkit train: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_INTERRUPTED if result.interrupted else 0


def evaluate_parser():
    parser = argparse.ArgumentParser(
        prog="cnnkit evaluate",
        description="Top-1 and top-5 of a checkpoint (or a run directory's newest intact "
                    "checkpoint) on its data set's test split.")
    add = parser.add_argument
    add("checkpoint")
    add("--data-dir")
    add("--device", default="cpu")
    add("--batch-size", type=int, default=1000)
    add("--ten-crop", action=argparse.BooleanOptionalAction, default=None)
    add("--limit-test", type=int)
    add("--per-class", action="store_true", help="also print each class's accuracy")
    add("--workers", type=int, help="processes decoding an image folder (default: the cores "
                                    "available)")
    add("--optimize", action="store_true",
        help="run the frozen inference model of cnnkit.optimize_for_inference (BatchNorm "
             "folded into the convolutions, prepacked weights)")
    return parser


def evaluate_main(argv):
    args, code = _parse(evaluate_parser(), argv)
    if args is None:
        return code
    from .evaluate import evaluate_checkpoint
    from .metrics import per_class_accuracy

    for flag, value in (("--batch-size", args.batch_size), ("--limit-test", args.limit_test)):
        if value is not None and value <= 0:
            return print_error("evaluate", f"{flag}: expected a positive int, got {value}")
    if args.workers is not None and args.workers < 0:
        return print_error("evaluate", f"--workers: expected an int >= 0, got {args.workers}")
    try:
        with warnings.catch_warnings(record=True) as caught:  # shown as one line each
            warnings.simplefilter("always")
            path, metrics, meter, test_set = evaluate_checkpoint(
                args.checkpoint, args.data_dir, args.device, args.batch_size, args.ten_crop,
                args.limit_test, optimize=args.optimize, workers=args.workers)
    except USER_ERRORS as error:
        return print_error("evaluate", error)
    for warning in caught:
        print(f"cnnkit evaluate: {warning.message}", file=sys.stderr)
    if args.per_class:
        for name, accuracy in zip(test_set.classes, per_class_accuracy(meter.confusion)):
            print(f"  {name:<14} {100 * float(accuracy):6.2f}%")
    print(f"{path}: {metrics['count']} test images, top-1 accuracy "
          f"{100 * metrics['top1_acc']:.2f}% (error {100 * metrics['top1_err']:.2f}%), "
          f"top-5 error {100 * metrics['top5_err']:.2f}%, loss {metrics['loss']:.4f}")
    return 0
