"""The ResNet paper's CIFAR-10 networks (He et al., 2015, section 4.2): ResNet-20/32/44/56/110
and their plain counterparts plain-20/32/44/56.

A 3x3 stem of 16 filters, three stages of n blocks with 16, 32 and 64 filters (6n + 2
layers), global average pooling and a linear classifier. A ResNet's blocks are
BasicBlocks; where the shape changes, its shortcuts follow the paper's option A
(identity, with stride-2 subsampling and zero-padded channels: no parameters; ResNet-20
has 269,722) or option B (a 1x1 projection and BatchNorm; 2,752 more parameters). A
plain network is the same stack of convolutions and BatchNorms with the shortcuts
removed (PlainBlock): as many parameters as the option-A ResNet, under the same names.
"""

import torch.nn.functional as F
from torch import nn

from cnnkit.nn.blocks import (
    BasicBlock,
    PlainBlock,
    applies_relu,
    conv1x1,
    default_norm_layer,
    shortcut_norm_layer,
)

from ._checks import check_image_batch

SHORTCUTS = ("A", "B")


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride` and zero-pad the channels to `planes`."""

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.stride = stride
        self.extra_channels = planes - inplanes

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))

    def extra_repr(self):
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class _CifarNetwork(nn.Module):
    """Stem, three stages of `make_block(inplanes, planes, stride)`, pooling, classifier."""

    def __init__(self, name, depth, num_classes, in_channels, fused, make_block):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"{name}: depth must be 6n + 2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.model_name = f"{name}{depth}"
        self.depth = depth
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = default_norm_layer(fused)(16)
        self.relu = nn.ReLU(inplace=True)
        inplanes, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(make_block(inplanes, planes, stride if index == 0 else 1))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.inplanes = inplanes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        check_image_batch(x, self.model_name, self.in_channels)
        x = self.bn1(self.conv1(x))
        x = x if applies_relu(self.bn1) else self.relu(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class CifarResNet(_CifarNetwork):
    """A CIFAR ResNet of `depth` = 6n + 2 layers with option-A or option-B shortcuts."""

    def __init__(self, depth, num_classes=10, in_channels=3, fused=True, memory_efficient=False,
                 shortcut="A"):
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut: expected 'A' (zero-padding identity) or 'B' "
                             f"(projection), got {shortcut!r}")
        norm_layer = default_norm_layer(fused)

        def make_block(inplanes, planes, stride):
            downsample = None
            if stride != 1 or inplanes != planes:
                if shortcut == "A":
                    downsample = ZeroPadShortcut(inplanes, planes, stride)
                else:
                    downsample = nn.Sequential(conv1x1(inplanes, planes, stride),
                                               shortcut_norm_layer(fused)(planes))
            return BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm_layer,
                              memory_efficient=memory_efficient)

        super().__init__("resnet", depth, num_classes, in_channels, fused, make_block)
        self.shortcut = shortcut


class CifarPlainNet(_CifarNetwork):
    """A CIFAR plain network of `depth` = 6n + 2 layers: a CifarResNet without shortcuts."""

    def __init__(self, depth, num_classes=10, in_channels=3, fused=True, memory_efficient=False):
        norm_layer = default_norm_layer(fused)

        def make_block(inplanes, planes, stride):
            return PlainBlock(inplanes, planes, stride, norm_layer=norm_layer,
                              memory_efficient=memory_efficient)

        super().__init__("plain", depth, num_classes, in_channels, fused, make_block)


def resnet20(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-20 for 32x32 images: 269,722 parameters (option A)."""
    return CifarResNet(20, num_classes, in_channels, fused, **kwargs)


def resnet32(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-32 for 32x32 images: 464,154 parameters (option A)."""
    return CifarResNet(32, num_classes, in_channels, fused, **kwargs)


def resnet44(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-44 for 32x32 images: 658,586 parameters (option A)."""
    return CifarResNet(44, num_classes, in_channels, fused, **kwargs)


def resnet56(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-56 for 32x32 images: 853,018 parameters (option A)."""
    return CifarResNet(56, num_classes, in_channels, fused, **kwargs)


def resnet110(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-110 for 32x32 images: 1,727,962 parameters (option A)."""
    return CifarResNet(110, num_classes, in_channels, fused, **kwargs)


def plain20(num_classes=10, in_channels=3, fused=True, **kwargs):
    """Plain-20 for 32x32 images: 269,722 parameters, as ResNet-20's."""
    return CifarPlainNet(20, num_classes, in_channels, fused, **kwargs)


def plain32(num_classes=10, in_channels=3, fused=True, **kwargs):
    """Plain-32 for 32x32 images: 464,154 parameters, as ResNet-32's."""
    return CifarPlainNet(32, num_classes, in_channels, fused, **kwargs)


def plain44(num_classes=10, in_channels=3, fused=True, **kwargs):
    """Plain-44 for 32x32 images: 658,586 parameters, as ResNet-44's."""
    return CifarPlainNet(44, num_classes, in_channels, fused, **kwargs)


def plain56(num_classes=10, in_channels=3, fused=True, **kwargs):
    """Plain-56 for 32x32 images: 853,018 parameters, as ResNet-56's."""
    return CifarPlainNet(56, num_classes, in_channels, fused, **kwargs)
