"""The classic networks, each buildable fused (cnnkit modules) or from plain torch.nn.

Every builder takes num_classes, in_channels and fused=True|False; fused=False builds the
same architecture, with the same state_dict, from torch.nn modules only.
"""

from .alexnet import AlexNet, alexnet  # noqa: F401
from .lenet import LeNet5, lenet5  # noqa: F401
from .registry import MODELS, ModelInfo, get_model, list_models, model_info  # noqa: F401
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152  # noqa: F401
from .resnet_cifar import (  # noqa: F401
    CifarPlainNet,
    CifarResNet,
    plain20,
    plain32,
    plain44,
    plain56,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from .vgg import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn  # noqa: F401
