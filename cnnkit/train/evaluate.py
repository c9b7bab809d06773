"""evaluate_checkpoint(): top-1/top-5 of a saved model on its data set's test split."""

import os
import warnings

import torch

from cnnkit.data import DataFormatError, load_dataset

from . import checkpoint as ckpt
from .config import TrainConfig, available_cores, parse_device
from .metrics import ClassificationMeter
from .pipeline import InputPipeline, make_loader


def _warn_skipped(error):
    warnings.warn(f"{error}; using the previous checkpoint", stacklevel=3)


def load_model_checkpoint(source):
    """(path, state) of a checkpoint file, or of a run directory's newest intact one."""
    source = os.fspath(source)
    if os.path.isdir(source):
        return ckpt.load_latest_checkpoint(source, on_skip=_warn_skipped)
    state = ckpt.load_checkpoint(source)
    if not isinstance(state, dict) or "model_name" not in state or "model" not in state:
        raise ckpt.CheckpointError(f"{source}: not a cnnkit training checkpoint")
    return source, state


def build_model(path, state, device):
    from cnnkit.models import get_model, list_models

    name = state["model_name"]
    if name not in list_models():
        raise ckpt.CheckpointError(f"{path}: model {name!r} is not in this cnnkit's zoo; "
                                   "evaluate it with the cnnkit version that wrote it")
    model = get_model(name, **state["model_kwargs"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ckpt.CheckpointError(
            f"{path}: weights do not fit model {name!r} "
            f"({ckpt.describe_load_error(error)})") from None
    return model.to(device).eval()


@torch.no_grad()
def evaluate_checkpoint(source, data_dir=None, device="cpu", batch_size=1000, ten_crop=None,
                        limit=None, optimize=False, workers=None):
    """Returns (path, metrics dict, ClassificationMeter, test set) for the checkpoint's
    test set; ``optimize`` runs cnnkit.optimize_for_inference's frozen form of the model;
    ``workers`` processes (default: the cores available) decode an image folder. Files
    that cannot be decoded are left out, with a warning each."""
    from cnnkit.inference import optimize_for_inference
    from cnnkit.models import model_info

    device = parse_device(device)
    path, state = load_model_checkpoint(source)
    config = TrainConfig.from_dict(state["config"])
    model = build_model(path, state, device)
    if optimize:
        model = optimize_for_inference(model)
    test_set = load_dataset(config.dataset, data_dir or config.data_dir, train=False).subset(limit)
    _check_classes(path, state, test_set)
    use_ten_crop = config.ten_crop if ten_crop is None else ten_crop
    caveat = config.ten_crop_caveat(use_ten_crop)
    if caveat:
        warnings.warn(caveat, stacklevel=2)
    pipeline = InputPipeline(state["data_stats"], model_info(state["model_name"]).input_size[1:],
                             ten_crop=use_ten_crop)
    meter = ClassificationMeter(test_set.num_classes)
    workers = available_cores() if workers is None else workers
    loader = make_loader(test_set, batch_size, pipeline, train=False, workers=workers,
                         on_skip=_warn_unreadable, device=device)
    for images, labels in loader:
        inputs = pipeline.evaluate(images)
        if use_ten_crop:
            probabilities = torch.stack([model(crop).float().softmax(1) for crop in inputs])
            logits = probabilities.mean(0).clamp_min(1e-12).log()
        else:
            logits = model(inputs).float()
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        meter.update(logits, labels, loss)
    loader.close()
    return path, meter.compute(), meter, test_set


def _warn_unreadable(path, reason):
    warnings.warn(f"skipping {path}: cannot decode it ({reason})", stacklevel=2)


def _check_classes(path, state, test_set):
    """The test set's labels mean what the model learned: the same class names in the same
    order (checkpoints record them; older ones do not)."""
    trained = tuple(state.get("classes") or test_set.classes)
    if trained != tuple(test_set.classes):
        raise DataFormatError(
            f"{path}: the model was trained on classes {', '.join(trained[:5])}"
            f"{', ...' if len(trained) > 5 else ''} ({len(trained)}), the test set holds "
            f"{', '.join(test_set.classes[:5])}{', ...' if len(test_set.classes) > 5 else ''} "
            f"({len(test_set.classes)}); evaluate on the data set it was trained on")
