"""TrainConfig: every setting of a training run. None means "the model's recipe default"."""

import dataclasses
import math
import os

import torch

from cnnkit.data import list_datasets

from .recipes import recipe_for
from .schedules import SCHEDULES, resnet_milestones


def available_cores():
    """The cores this process may run on: the default number of decoding workers."""
    return len(os.sched_getaffinity(0))


class ConfigError(ValueError):
    """A training setting is invalid (an unknown model, a bad value)."""


OPTIMIZERS = ("sgd", "adam")
AUGMENTATIONS = ("crop", "resized_crop", "flip", "pca")
AMP_DTYPES = ("bfloat16", "float16")
DEVICE_TYPES = ("cpu", "cuda")  # what the training loop and the checkpoints support


def parse_device(text=None):
    """The torch.device that --device names (None: cuda when available, else cpu).

    The one check of a device for training and evaluation: a name torch does not know,
    a device type cnnkit does not train on, or CUDA that this torch or machine lacks is a
    ConfigError here rather than a traceback later."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(f"device: expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        _check_cuda(text, device)
    return device


def _check_cuda(text, device):
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {text!r} requested but this torch has no usable CUDA "
                          "device; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device: {text!r} requested but there are {count} CUDA devices "
                          f"(cuda:0 to cuda:{count - 1})")


@dataclasses.dataclass
class TrainConfig:
    model: str = "lenet5"
    dataset: str = None
    data_dir: str = None
    epochs: int = None
    batch_size: int = None  # global: split across the processes of a distributed run
    optimizer: str = None
    lr: float = None  # ignored by the lenet schedule, which sets lr_scale * LENET_STEPS
    momentum: float = None
    weight_decay: float = None
    schedule: str = None
    lr_scale: float = None
    milestones: tuple = None
    augment: str = None  # comma-separated subset of AUGMENTATIONS, or "none"
    fused: bool = True
    channels_last: bool = False
    compile: bool = False
    amp: bool = False
    amp_dtype: str = None  # bfloat16 (default; the only choice on CPU) or float16 on CUDA
    ten_crop: bool = False
    seed: int = 0
    device: str = None  # cuda when available, else cpu
    threads: int = None  # torch.set_num_threads; None keeps torch's default
    output: str = None  # default runs/<model>
    resume: object = False  # True: the output directory's newest checkpoint; or a path
    progress: bool = True
    limit_train: int = None  # use only the first N training examples (quick runs, tests)
    limit_test: int = None
    eval_batch_size: int = 1000
    keep_checkpoints: int = 2
    workers: int = None  # image-folder decoding processes; None: the cores available

    def resolved(self):
        """A copy with every None filled from the model's recipe, and values checked."""
        recipe = recipe_for(self.model)
        values = dataclasses.asdict(self)
        for key, default in recipe.items():
            if values.get(key) is None:
                values[key] = default
        config = TrainConfig(**values)
        if config.output is None:
            config.output = f"runs/{config.model}"
        if config.amp_dtype is None:
            config.amp_dtype = "bfloat16"
        config.check()
        return config

    def check(self):
        def positive(name, value, kind=int):
            if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}: expected a positive {kind.__name__}, got {value!r}")

        positive("epochs", self.epochs)
        positive("batch_size", self.batch_size)
        positive("eval_batch_size", self.eval_batch_size)
        positive("keep_checkpoints", self.keep_checkpoints)
        for name in ("limit_train", "limit_test", "threads"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if self.dataset not in list_datasets():
            raise ConfigError(f"dataset: unknown data set {self.dataset!r}; expected one of: "
                              f"{', '.join(list_datasets())}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule: expected one of {', '.join(SCHEDULES)}, "
                             f"got {self.schedule!r}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ConfigError(f"amp_dtype: expected one of {', '.join(AMP_DTYPES)}, "
                             f"got {self.amp_dtype!r}")
        # NaN fails every comparison; inf passes them but turns the weights into NaN.
        for name in ("lr", "lr_scale"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"{name}: expected a finite positive number, got {getattr(self, name)!r}")
        for name in ("momentum", "weight_decay"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"{name}: expected a finite number >= 0, got {getattr(self, name)!r}")
        if self.device is not None:
            parse_device(self.device)
        if self.workers is not None and (not isinstance(self.workers, int)
                                         or isinstance(self.workers, bool) or self.workers < 0):
            raise ConfigError(f"workers: expected an int >= 0, got {self.workers!r}")
        self._check_augmentations()

    def _check_augmentations(self):
        unknown = set(self.augmentations) - set(AUGMENTATIONS)
        if unknown:
            raise ConfigError(f"augment: unknown augmentation {sorted(unknown)[0]!r}; expected "
                             f"a comma-separated subset of {', '.join(AUGMENTATIONS)}, or none")
        if "resized_crop" in self.augmentations:
            if "crop" in self.augmentations:
                raise ConfigError("augment: crop and resized_crop are two ways to crop; pick one")
            if self.dataset != "imagefolder":
                raise ConfigError("augment: resized_crop needs --dataset imagefolder (it crops "
                                  "the decoded files; the in-memory data sets use crop)")

    @property
    def worker_count(self):
        """--workers, else the cores this process may run on (on the machine running it:
        a resumed run does not inherit another machine's count)."""
        return available_cores() if self.workers is None else self.workers

    @property
    def augmentations(self):
        if not self.augment or self.augment == "none":
            return ()
        return tuple(part.strip() for part in self.augment.split(",") if part.strip())

    def ten_crop_caveat(self, ten_crop):
        """A note where ten-crop evaluation meets a model trained without the shifts or
        flips it averages over: it then sees views it never learned, and loses accuracy
        (65% against 88% single view for LeNet-5 trained on plain Fashion-MNIST)."""
        missing = [name for name in ("crop", "flip") if name not in self.augmentations]
        if not ten_crop or not missing:
            return None
        return (f"note: ten-crop evaluation averages shifted and mirrored views, but the model "
                f"was trained without {' and '.join(missing)} augmentation: expect it to score "
                "below a single view")

    def step_milestones(self, model_input_size):
        if self.milestones:
            return list(self.milestones)
        return resnet_milestones(self.epochs, cifar=model_input_size <= 64)

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["milestones"] = list(self.milestones) if self.milestones else None
        return values

    @classmethod
    def from_dict(cls, values):
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})
