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


def _error(result, truth):
    return (result.float() - truth).abs().max().item()


def _assert_as_accurate(fused, reference, truth):
    """bfloat16 rounding alone moves a deep net's outputs and gradients by percents: hold
    the fused model's error against float32 to that of torch.nn's own bfloat16 run."""
    for key, exact in truth.items():
        allowed = 2 * _error(reference[key], exact) + 1e-2 * exact.abs().max().item()
        assert _error(fused[key], exact) <= allowed, key


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
    _assert_as_accurate(ours, theirs, truth)
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
    _assert_as_accurate(ours, theirs, truth)
