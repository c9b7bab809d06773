"""get_model(name, weights=...): local checkpoints and state_dicts, loaded strictly, and
never a download; list_models(pattern)."""

import pathlib

import pytest
import torch

from cnnkit.models import get_model, list_models
from cnnkit.train.checkpoint import save_checkpoint


def same_weights(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture
def trained():
    """A lenet5 whose weights differ from any fresh build's."""
    torch.manual_seed(1)
    return get_model("lenet5")


def test_weights_none_is_a_random_init(trained):
    torch.manual_seed(1)
    assert same_weights(get_model("lenet5", weights=None), trained)


def test_state_dict(trained):
    assert same_weights(get_model("lenet5", weights=trained.state_dict()), trained)


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
@pytest.mark.parametrize("as_path", [str, pathlib.Path])
def test_torch_saved_file(trained, tmp_path, wrap, as_path):
    # torchvision's .pth files are bare state_dicts; training scripts often wrap them.
    state = trained.state_dict() if wrap is None else {wrap: trained.state_dict(), "epoch": 3}
    torch.save(state, tmp_path / "weights.pth")
    assert same_weights(get_model("lenet5", weights=as_path(tmp_path / "weights.pth")), trained)


def test_cnnkit_checkpoint(trained, tmp_path):
    # As cnnkit train writes them: a header and checksum, the state_dict under "model".
    path = save_checkpoint({"model_name": "lenet5", "model": trained.state_dict(), "epoch": 1},
                           tmp_path / "checkpoint-e0001-s0000000.pt")
    assert same_weights(get_model("lenet5", weights=path), trained)


def test_loading_is_strict(trained, tmp_path):
    state = trained.state_dict()
    state.pop(next(reversed(state)))
    with pytest.raises(RuntimeError, match="Missing key"):
        get_model("lenet5", weights=state)
    with pytest.raises(RuntimeError, match="size mismatch"):  # kwargs reach the builder
        get_model("lenet5", weights=trained.state_dict(), num_classes=7)


@pytest.mark.parametrize("weights", ["DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2", "no-such.pth"])
def test_download_names_are_refused(weights):
    with pytest.raises(ValueError, match="never downloads") as error:
        get_model("resnet50", weights=weights)
    assert 'weights="resnet50-0676ba61.pth"' in str(error.value)


def test_weights_enum_is_refused():
    class ResNet50_Weights:  # what torchvision's WeightsEnum members offer
        url = "https://download.pytorch.org/models/resnet50-0676ba61.pth"

        def get_state_dict(self, progress=True):
            raise AssertionError("downloaded")

    with pytest.raises(ValueError, match="never downloads"):
        get_model("resnet50", weights=ResNet50_Weights())


def test_pretrained():
    with pytest.raises(ValueError, match="never downloads"):
        get_model("lenet5", pretrained=True)
    model = get_model("lenet5", pretrained=False, num_classes=3)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


def test_weights_of_a_wrong_type():
    with pytest.raises(TypeError, match="weights must be None, a path or a state_dict, got int"):
        get_model("lenet5", weights=3)


def test_list_models_pattern():
    assert list_models() == list(list_models(None))
    assert list_models("resnet*") == [name for name in list_models() if name.startswith("resnet")]
    assert list_models("vgg1?") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert list_models("*_bn") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    assert list_models("nothing*") == []
