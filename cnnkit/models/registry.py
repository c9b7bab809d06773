"""The model zoo as data: one record per model, and get_model / list_models over it.

Builders are named as "module:function" and imported on first use, so listing the zoo
or reading its metadata builds nothing. MACs count the multiply-accumulates of the
convolutions and fully connected layers at the default input size (the convention of
the ResNet and VGG papers); `cnnkit.summary` recomputes them and the tests hold the two
equal.
"""

import dataclasses
import importlib


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
]

MODELS = {info.name: info for info in _MODELS}


def list_models():
    """Names accepted by get_model, in the zoo's order."""
    return list(MODELS)


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


def get_model(name, **kwargs):
    """Build a model of the zoo by name: get_model("resnet50", num_classes=10, fused=False).

    Keyword arguments go to the builder (num_classes, in_channels, fused, and the
    builder's own options).
    """
    info = model_info(name)
    return get_builder(name)(**{**info.builder_kwargs, **kwargs})
