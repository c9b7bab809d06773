"""Training: fit(), schedules, metrics, checkpoints and the `cnnkit train` command."""

from .checkpoint import (  # noqa: F401
    CheckpointError,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from .config import ConfigError, TrainConfig  # noqa: F401
from .loop import FitResult, Trainer, fit  # noqa: F401
from .metrics import (  # noqa: F401
    ClassificationMeter,
    confusion_matrix,
    per_class_accuracy,
    topk_accuracy,
    topk_correct,
    topk_error,
)
from .schedules import (  # noqa: F401
    LENET_STEPS,
    DivideOnPlateau,
    LeNetLR,
    build_scheduler,
    lenet_lr,
    resnet_milestones,
)
