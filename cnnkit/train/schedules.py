"""Learning-rate schedules of the classic papers, as torch.optim.lr_scheduler objects.

All step once per epoch (scheduler.step() after each epoch; the plateau schedule takes
the epoch's validation error: scheduler.step(error)).
"""

import math

from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LRScheduler,
    MultiStepLR,
    ReduceLROnPlateau,
)

# LeCun et al. 1998, section V.D: "0.0005 for the first two passes, 0.0002 for the next
# three, 0.00005 for the next three, 0.00001 thereafter". The paper's counting is off by
# one against its own table; cnnkit uses the schedule as usually quoted: epochs 0-2,
# 3-5, 6-9, then 10 onward. (epoch at which a value ends, value); None = forever.
LENET_STEPS = ((3, 5e-4), (6, 2e-4), (10, 5e-5), (None, 1e-5))


def lenet_lr(epoch, scale=1.0):
    """The LeNet-5 learning rate of a (0-based) epoch, times scale."""
    if epoch < 0:
        raise ValueError(f"epoch: expected >= 0, got {epoch}")
    for end, value in LENET_STEPS:
        if end is None or epoch < end:
            return value * scale


class LeNetLR(LRScheduler):
    """LeNet-5's step schedule (lenet_lr) for every parameter group.

    The paper's rates belong to its diagonal Levenberg-Marquardt method, which divides
    each step by a curvature estimate; plain SGD or Adam needs them scaled up, hence
    `scale` (the whole schedule is multiplied by it; the optimizer's own lr is replaced).
    """

    def __init__(self, optimizer, scale=1.0, last_epoch=-1):
        if not scale > 0:
            raise ValueError(f"scale: expected a positive number, got {scale!r}")
        self.scale = float(scale)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [lenet_lr(max(self.last_epoch, 0), self.scale) for _ in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return self.get_lr()


class DivideOnPlateau(ReduceLROnPlateau):
    """AlexNet's schedule: divide the rate by 10 when the validation error stops
    improving (Krizhevsky et al. 2012, section 5). step(validation_error) each epoch."""

    def __init__(self, optimizer, patience=2, threshold=1e-3, min_lr=0.0):
        super().__init__(optimizer, mode="min", factor=0.1, patience=patience,
                         threshold=threshold, min_lr=min_lr)


def resnet_milestones(epochs, cifar=True):
    """ResNet's fixed steps: CIFAR at 32k and 48k of 64k iterations (50% and 75% of the
    run); ImageNet every 30 epochs (He et al. 2015, sections 3.4 and 4.2)."""
    if cifar:
        return sorted({max(1, math.ceil(epochs * 0.5)), max(1, math.ceil(epochs * 0.75))})
    return list(range(30, epochs, 30))


def build_scheduler(name, optimizer, epochs, *, scale=1.0, milestones=None, patience=2):
    """A schedule by name: lenet, plateau, step (milestones, /10 each), cosine, constant."""
    if name == "lenet":
        return LeNetLR(optimizer, scale=scale)
    if name == "plateau":
        return DivideOnPlateau(optimizer, patience=patience)
    if name == "step":
        return MultiStepLR(optimizer, list(milestones or resnet_milestones(epochs)), gamma=0.1)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(
        f"schedule: unknown schedule {name!r}; expected lenet, plateau, step, cosine or constant"
    )


SCHEDULES = ("lenet", "plateau", "step", "cosine", "constant")
