"""Learning-rate schedules: the papers' values, and behaviour as torch schedulers."""

import pytest
import torch

from cnnkit.train.schedules import (
    DivideOnPlateau,
    LeNetLR,
    build_scheduler,
    lenet_lr,
    resnet_milestones,
)

LENET_PAPER = [5e-4] * 3 + [2e-4] * 3 + [5e-5] * 4 + [1e-5] * 5


def _optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _run(scheduler, optimizer, epochs, metrics=None):
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if metrics is None:
            scheduler.step()
        else:
            scheduler.step(metrics[epoch])
    return lrs


def test_lenet_lr_table():
    assert [lenet_lr(e) for e in range(15)] == LENET_PAPER
    assert lenet_lr(100, scale=4) == pytest.approx(4e-5)
    with pytest.raises(ValueError, match="epoch"):
        lenet_lr(-1)


@pytest.mark.parametrize("scale", [1.0, 4.0, 100.0])
def test_lenet_scheduler_sets_scaled_values(scale):
    optimizer = _optimizer()
    lrs = _run(LeNetLR(optimizer, scale=scale), optimizer, 15)
    assert lrs == pytest.approx([v * scale for v in LENET_PAPER])


def test_lenet_scheduler_state_dict_resumes():
    optimizer = _optimizer()
    scheduler = LeNetLR(optimizer, scale=10)
    _run(scheduler, optimizer, 5)
    state = scheduler.state_dict()
    fresh_optimizer = _optimizer()
    fresh = LeNetLR(fresh_optimizer, scale=1)
    fresh.load_state_dict(state)
    fresh.step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(10 * lenet_lr(6))
    assert isinstance(fresh, torch.optim.lr_scheduler.LRScheduler)
    with pytest.raises(ValueError, match="scale"):
        LeNetLR(_optimizer(), scale=0)


def test_divide_on_plateau():
    optimizer = _optimizer(0.01)
    errors = [0.5, 0.4, 0.4, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3]
    lrs = _run(DivideOnPlateau(optimizer, patience=2), optimizer, len(errors), errors)
    # After two epochs without improvement beyond the best (0.4 at epoch 1), divide by 10.
    assert lrs == pytest.approx([0.01] * 5 + [0.001] * 4)


def test_resnet_steps():
    assert resnet_milestones(164) == [82, 123]
    assert resnet_milestones(90, cifar=False) == [30, 60]
    optimizer = _optimizer(0.1)
    lrs = _run(build_scheduler("step", optimizer, 8, milestones=[4, 6]), optimizer, 8)
    assert lrs == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)


def test_build_scheduler_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown schedule 'warp'"):
        build_scheduler("warp", _optimizer(), 10)
