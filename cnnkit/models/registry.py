"""The model zoo as data: one record per model, and get_model / list_models over it.

Builders are named as "module:function" and imported on first use, so listing the zoo
or reading its metadata builds nothing. MACs count the multiply-accumulates of the
convolutions and fully connected layers at the default input size (the convention of
the ResNet and VGG papers); `cnnkit.summary` recomputes them and the tests hold the two
equal.
"""

import dataclasses
import fnmatch
import importlib
import os
from collections.abc import Mapping

import torch


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: str  # "module:function" inside cnnkit.models
    params: int  # with the default num_classes and in_channels
    macs: int  # at input_size
    input_size: tuple  # (channels, height, width)
    num_classes: int
    paper: str
    builder_kwargs: dict = dataclasses.field(default_factory=dict)


_LENET = "LeCun et al., Gradient-based learning applied to document recognition, 1998"
_ALEXNET = "Krizhevsky et al., ImageNet classification with deep convolutional neural networks, 2012"
_ALEXNET_OWT = "Krizhevsky, One weird trick for parallelizing convolutional neural networks, 2014"
_VGG = "Simonyan and Zisserman, Very deep convolutional networks for large-scale image recognition, 2014"
_RESNET = "He et al., Deep residual learning for image recognition, 2015"

_MODELS = [
    ModelInfo("lenet5", "lenet:lenet5", 61_706, 416_520, (1, 32, 32), 10, _LENET),
    ModelInfo("alexnet", "alexnet:alexnet", 61_100_840, 714_188_480, (3, 224, 224), 1000,
              _ALEXNET_OWT, {"variant": "torchvision"}),
    ModelInfo("alexnet_original", "alexnet:alexnet", 62_378_344, 1_135_256_096, (3, 227, 227),
              1000, _ALEXNET, {"variant": "original"}),
    ModelInfo("vgg11", "vgg:vgg11", 132_863_336, 7_609_090_048, (3, 224, 224), 1000, _VGG),
    ModelInfo("vgg11_bn", "vgg:vgg11_bn", 132_868_840, 7_609_090_048, (3, 224, 224), 1000, _VGG),
    ModelInfo("vgg13", "vgg:vgg13", 133_047_848, 11_308_466_176, (3, 224, 224), 1000, _VGG),
    ModelInfo("vgg13_bn", "vgg:vgg13_bn", 133_053_736, 11_308_466_176, (3, 224, 224), 1000, _VGG),
    ModelInfo("vgg16", "vgg:vgg16", 138_357_544, 15_470_264_320, (3, 224, 224), 1000, _VGG),
    ModelInfo("vgg16_bn", "vgg:vgg16_bn", 138_365_992, 15_470_264_320, (3, 224, 224), 1000, _VGG),
    ModelInfo("vgg19", "vgg:vgg19", 143_667_240, 19_632_062_464, (3, 224, 224), 1000, _VGG),
    ModelInfo("vgg19_bn", "vgg:vgg19_bn", 143_678_248, 19_632_062_464, (3, 224, 224), 1000, _VGG),
    ModelInfo("resnet18", "resnet:resnet18", 11_689_512, 1_814_073_344, (3, 224, 224), 1000, _RESNET),
    ModelInfo("resnet34", "resnet:resnet34", 21_797_672, 3_663_761_408, (3, 224, 224), 1000, _RESNET),
    ModelInfo("resnet50", "resnet:resnet50", 25_557_032, 4_089_184_256, (3, 224, 224), 1000, _RESNET),
    ModelInfo("resnet101", "resnet:resnet101", 44_549_160, 7_801_405_440, (3, 224, 224), 1000,
              _RESNET),
    ModelInfo("resnet152", "resnet:resnet152", 60_192_808, 11_513_626_624, (3, 224, 224), 1000,
              _RESNET),
    ModelInfo("resnet20", "resnet_cifar:resnet20", 269_722, 40_551_040, (3, 32, 32), 10, _RESNET),
    ModelInfo("resnet32", "resnet_cifar:resnet32", 464_154, 68_862_592, (3, 32, 32), 10, _RESNET),
    ModelInfo("resnet44", "resnet_cifar:resnet44", 658_586, 97_174_144, (3, 32, 32), 10, _RESNET),
    ModelInfo("resnet56", "resnet_cifar:resnet56", 853_018, 125_485_696, (3, 32, 32), 10, _RESNET),
    ModelInfo("resnet110", "resnet_cifar:resnet110", 1_727_962, 252_887_680, (3, 32, 32), 10,
              _RESNET),
    ModelInfo("plain20", "resnet_cifar:plain20", 269_722, 40_551_040, (3, 32, 32), 10, _RESNET),
    ModelInfo("plain32", "resnet_cifar:plain32", 464_154, 68_862_592, (3, 32, 32), 10, _RESNET),
    ModelInfo("plain44", "resnet_cifar:plain44", 658_586, 97_174_144, (3, 32, 32), 10, _RESNET),
    ModelInfo("plain56", "resnet_cifar:plain56", 853_018, 125_485_696, (3, 32, 32), 10, _RESNET),
]

MODELS = {info.name: info for info in _MODELS}


def list_models(pattern=None):
    """Names accepted by get_model, in the zoo's order; with `pattern`, only those it
    matches as an fnmatch pattern (list_models("resnet*"), as torchvision and timm)."""
    return [name for name in MODELS if pattern is None or fnmatch.fnmatchcase(name, pattern)]


def model_info(name):
    """The ModelInfo record of a model of the zoo."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; expected one of: {', '.join(MODELS)}"
        ) from None


def get_builder(name):
    info = model_info(name)
    module_name, function_name = info.builder.split(":")
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, function_name)


NO_DOWNLOADS = (
    "cnnkit never downloads weights: download the torchvision .pth file yourself and pass "
    'its path, e.g. get_model("resnet50", weights="resnet50-0676ba61.pth"), or pass a '
    "cnnkit checkpoint or a state_dict"
)


def get_model(name, weights=None, **kwargs):
    """Build a model of the zoo by name: get_model("resnet50", num_classes=10, fused=False).

    weights: None for a random initialization; the path of a local checkpoint (a
    torchvision .pth file, a torch.save'd state_dict, or a cnnkit training checkpoint);
    or a state_dict. Weights are loaded strictly: every key must match and fit.
    Other keyword arguments go to the builder (num_classes, in_channels, fused, and the
    builder's own options); torchvision's old pretrained=False is accepted and ignored.
    """
    if kwargs.pop("pretrained", False):
        raise ValueError(f"get_model: pretrained=True would need a download, and {NO_DOWNLOADS}")
    info = model_info(name)
    state_dict = _state_dict_of(weights)  # before building: a bad argument fails fast
    model = get_builder(name)(**{**info.builder_kwargs, **kwargs})
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model


def _state_dict_of(weights):
    """The state_dict that `weights` (see get_model) stands for, or None."""
    if weights is None or isinstance(weights, Mapping):
        return weights
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            # "DEFAULT", "IMAGENET1K_V1", ... name torchvision's downloads, as does a typo.
            raise ValueError(f"get_model: weights={path!r} is not a local file, and {NO_DOWNLOADS}")
        return _load_file(path)
    if hasattr(weights, "get_state_dict") or hasattr(weights, "url"):  # a torchvision WeightsEnum
        raise ValueError(f"get_model: weights={weights!r} would need a download, and {NO_DOWNLOADS}")
    raise TypeError(
        f"get_model: weights must be None, a path or a state_dict, got {type(weights).__name__}"
    )


def _load_file(path):
    from cnnkit.train import checkpoint

    with open(path, "rb") as file:
        is_cnnkit = file.read(len(checkpoint.MAGIC)) == checkpoint.MAGIC
    if is_cnnkit:  # checksummed, behind a header: only load_checkpoint reads it
        state = checkpoint.load_checkpoint(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # A training checkpoint keeps the model's state_dict under "model" (cnnkit) or
    # "state_dict" (a common convention); a bare state_dict has neither key as a dict.
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            return state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"get_model: {path} holds a {type(state).__name__}, not a state_dict")
    return state
