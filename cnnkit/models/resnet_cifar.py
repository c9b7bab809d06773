"""The ResNet paper's CIFAR-10 networks: ResNet-20/32/44/56/110 (He et al., 2015, section 4.2).

A 3x3 stem of 16 filters, three stages of n BasicBlocks with 16, 32 and 64 filters
(6n + 2 layers), global average pooling and a linear classifier. Shortcuts are the
paper's option A: identity, with stride-2 subsampling and zero-padded channels where
the shape changes, so they add no parameters (ResNet-20: 269,722 parameters).
"""

import torch.nn.functional as F
from torch import nn

from cnnkit.nn.blocks import BasicBlock, applies_relu, default_norm_layer

from ._checks import check_image_batch


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


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10, in_channels=3, fused=True, memory_efficient=False):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        norm_layer = default_norm_layer(fused)
        self.depth = depth
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(16)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for index in range(blocks_per_stage):
                shortcut = None
                if index == 0 and (stride != 1 or self.inplanes != planes):
                    shortcut = ZeroPadShortcut(self.inplanes, planes, stride)
                blocks.append(
                    BasicBlock(
                        self.inplanes, planes, stride if index == 0 else 1, shortcut,
                        norm_layer=norm_layer, memory_efficient=memory_efficient,
                    )
                )
                self.inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        check_image_batch(x, f"resnet{self.depth}", self.in_channels)
        x = self.bn1(self.conv1(x))
        x = x if applies_relu(self.bn1) else self.relu(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet20(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-20 for 32x32 images: 269,722 parameters."""
    return CifarResNet(20, num_classes, in_channels, fused, **kwargs)


def resnet32(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-32 for 32x32 images: 464,154 parameters."""
    return CifarResNet(32, num_classes, in_channels, fused, **kwargs)


def resnet44(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-44 for 32x32 images: 658,586 parameters."""
    return CifarResNet(44, num_classes, in_channels, fused, **kwargs)


def resnet56(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-56 for 32x32 images: 853,018 parameters."""
    return CifarResNet(56, num_classes, in_channels, fused, **kwargs)


def resnet110(num_classes=10, in_channels=3, fused=True, **kwargs):
    """ResNet-110 for 32x32 images: 1,727,962 parameters."""
    return CifarResNet(110, num_classes, in_channels, fused, **kwargs)
