"""ResNet-18/34/50/101/152 (He et al., 2015), state_dict-identical to torchvision's.

fused=True builds the blocks on cnnkit's fused BatchNorm + ReLU and BatchNorm + add +
ReLU; fused=False builds the same network from torch.nn.BatchNorm2d (the reference).
stride_in_1x1=True moves each bottleneck's stride to its first 1x1 convolution, the
paper's placement (3.8 instead of 4.1 GMACs for ResNet-50 at 224x224).
"""

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.nn.blocks import (
    BasicBlock,
    Bottleneck,
    applies_relu,
    conv1x1,
    default_norm_layer,
    shortcut_norm_layer,
)

from ._checks import check_image_batch


class ResNet(nn.Module):
    """torchvision's ResNet, with its arguments, plus in_channels, fused, stride_in_1x1
    and memory_efficient."""

    def __init__(
        self,
        block,
        layers,
        num_classes=1000,
        zero_init_residual=False,
        groups=1,
        width_per_group=64,
        replace_stride_with_dilation=None,
        norm_layer=None,
        *,
        in_channels=3,
        fused=True,
        stride_in_1x1=False,
        memory_efficient=False,
    ):
        super().__init__()
        if norm_layer is None:
            norm_layer = default_norm_layer(fused)
        self._norm_layer = norm_layer
        # torchvision normalizes the projection shortcut with norm_layer too; it has no ReLU,
        # so the fused BN-ReLU's plain counterpart stands in for it there.
        fused_default = norm_layer is default_norm_layer(fused=True)
        self._shortcut_norm_layer = shortcut_norm_layer(fused=True) if fused_default else norm_layer
        self._block_options = {"memory_efficient": memory_efficient}
        if block is Bottleneck:
            self._block_options["stride_in_1x1"] = stride_in_1x1
        elif stride_in_1x1:
            raise ValueError("stride_in_1x1 applies to Bottleneck blocks only")

        self.in_channels = in_channels
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                "replace_stride_with_dilation should be None "
                f"or a 3-element tuple, got {replace_stride_with_dilation}"
            )
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_resnet_weights(self, zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                self._shortcut_norm_layer(planes * block.expansion),
            )
        layers = [
            block(
                self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                previous_dilation, self._norm_layer, **self._block_options,
            )
        ]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(
                    self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                    dilation=self.dilation, norm_layer=self._norm_layer, **self._block_options,
                )
            )
        return nn.Sequential(*layers)

    def forward(self, x):
        check_image_batch(x, "ResNet", self.in_channels)
        x = self.bn1(self.conv1(x))
        x = x if applies_relu(self.bn1) else self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        return self.fc(x.flatten(1))


def init_resnet_weights(model, zero_init_residual=False):
    """torchvision's initialisation: Kaiming-normal convs, unit BN, and optionally a zero
    last-BN weight in every block so each residual branch starts as the identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.weight is not None:
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                nn.init.constant_(m.bn3.weight, 0)
            elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                nn.init.constant_(m.bn2.weight, 0)


def _resnet(block, layers, num_classes, in_channels, fused, **kwargs):
    return ResNet(block, layers, num_classes=num_classes, in_channels=in_channels, fused=fused, **kwargs)


def resnet18(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """ResNet-18: 11,689,512 parameters, 1.8 GMACs at 224x224."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, fused, **kwargs)


def resnet34(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """ResNet-34: 21,797,672 parameters, 3.6 GMACs at 224x224."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, fused, **kwargs)


def resnet50(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """ResNet-50: 25,557,032 parameters, 4.1 GMACs at 224x224 (3.8 with stride_in_1x1)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, fused, **kwargs)


def resnet101(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """ResNet-101: 44,549,160 parameters, 7.8 GMACs at 224x224 (7.6 with stride_in_1x1)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels, fused, **kwargs)


def resnet152(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """ResNet-152: 60,192,808 parameters, 11.5 GMACs at 224x224 (11.3 with stride_in_1x1)."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes, in_channels, fused, **kwargs)
