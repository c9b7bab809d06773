"""Whole models under CPU bfloat16 autocast (`cnnkit train --amp`): the convolutions run in
bfloat16 and hand the fused BatchNorm a bfloat16 activation while its parameters stay
float32, exactly as torch.nn.BatchNorm2d sees it. Fused and plain models must agree."""

import copy

import pytest
import torch

from cnnkit.models import get_model

MODELS = {"resnet20": (2, 3, 32, 32), "resnet18": (2, 3, 64, 64), "vgg11_bn": (2, 3, 32, 32)}


def _models(name):
    """The plain model, the fused one and a float32 copy of the plain one, same weights;
    dropout off so that the three compute the same function."""
    torch.manual_seed(0)
    reference = get_model(name, fused=False, num_classes=10)
    fused = get_model(name, fused=True, num_classes=10)
    fused.load_state_dict(reference.state_dict())
    for model in (reference, fused):
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return reference, fused, copy.deepcopy(reference)


def _step(model, x, target, autocast=True):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), target)
    loss.backward()
    return {"output": out, **{name: p.grad for name, p in model.named_parameters()}}


def _relative_error(result, truth):
    return ((result.float() - truth).norm() / truth.norm()).item()


# bfloat16's unit roundoff, 2^-8 relative: a value rounded once to it is off by up to this.
BF16_EPS = 2.0**-8


def _assert_training_step_as_accurate(fused, reference, truth):
    """A training step in bfloat16 is off float32's by percents to tens of percents: each
    layer rounds its activations to bfloat16 and BatchNorm's backward, on a small batch,
    amplifies that. Fused and torch.nn runs round at different places, so their errors are
    two independent draws of the same size, and any one tensor's pair may differ by 2x
    either way (more so for max-abs errors of small tensors). Their root mean square over
    all the model's tensors (each relative to its own size) concentrates instead: the ratio
    sits within 0.93-1.03 on AVX2 and AVX-512 CPUs alike, and 1.25 lets the fused kernels
    add an independent error of at most 3/4 of torch.nn's own (sqrt(1 + 0.75^2) = 1.25).
    BatchNorm scales off by 8 ulps (3%) give 1.8-2.0. Tensors whose exact value bfloat16 cannot
    resolve at all (torch.nn's own error as large as the tensor: a conv bias before a
    BatchNorm has an exact gradient of zero) say nothing and are left out."""
    resolved = [key for key in truth if _relative_error(reference[key], truth[key]) < 1]
    assert len(resolved) >= len(truth) // 2

    def aggregate(run):
        return (sum(_relative_error(run[key], truth[key]) ** 2 for key in resolved)
                / len(resolved)) ** 0.5

    assert aggregate(fused) <= 1.25 * aggregate(reference)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_step_as_accurate_as_plain_model(name, channels_last):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    reference, fused, exact = (m.to(memory_format=memory_format) for m in _models(name))
    x = torch.randn(MODELS[name]).to(memory_format=memory_format)
    target = torch.randint(0, 10, (x.size(0),))
    truth = _step(exact, x, target, autocast=False)
    ours, theirs = _step(fused, x, target), _step(reference, x, target)
    assert ours["output"].dtype == theirs["output"].dtype == torch.bfloat16
    assert all(ours[key].dtype == torch.float32 for key in truth if key != "output")
    _assert_training_step_as_accurate(ours, theirs, truth)
    for key, buffer in exact.state_dict().items():
        if "running" in key:
            torch.testing.assert_close(fused.state_dict()[key], buffer, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", list(MODELS))
def test_inference_as_accurate_as_plain_model(name):
    reference, fused, exact = (m.eval() for m in _models(name))
    x = torch.randn(MODELS[name])
    with torch.no_grad():
        truth = {"output": exact(x)}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, theirs = {"output": fused(x)}, {"output": reference(x)}
    assert ours["output"].dtype == theirs["output"].dtype == torch.bfloat16
    # Inference does not amplify rounding: both are off float32 by a few bfloat16 ulps, ours
    # (BatchNorm folded into the convolution) rounding at other places than torch.nn's. Half
    # as much error again, plus the one rounding of the output itself, bounds that.
    error = _relative_error(ours["output"], truth["output"])
    assert error <= 1.5 * _relative_error(theirs["output"], truth["output"]) + BF16_EPS
