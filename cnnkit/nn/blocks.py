"""ResNet's residual blocks, with torchvision's constructor arguments and attribute names.

Both blocks end in one fused BatchNorm + residual add + ReLU (``bn2`` of BasicBlock,
``bn3`` of Bottleneck, called with ``residual=identity``), and their inner BatchNorm +
ReLU pairs run as one op (``bn1``, and ``bn2`` of Bottleneck, are BatchNormReLU2d). The
parameters and buffers sit where torchvision keeps them, so a torchvision checkpoint
loads with strict=True.

With ``norm_layer=nn.BatchNorm2d`` (what the models build for fused=False) the same
block runs eager torch.nn: BN, then ReLU / add + ReLU as separate ops. That is the
reference the tests hold the fused blocks to.

``memory_efficient=True`` (training only) keeps, for each conv -> BN -> ReLU -> conv
link, only the conv's input and recomputes BN + ReLU in backward, the way
memory-efficient DenseNet implementations do: the BN-ReLU output of every link inside
the block is never stored. It costs one BN-ReLU forward per link in backward.
"""

import torch
from torch import nn


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    """3x3 convolution with padding (torchvision's helper)."""
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        groups=groups,
        bias=False,
        dilation=dilation,
    )


def conv1x1(in_planes, out_planes, stride=1):
    """1x1 convolution (torchvision's helper)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def fused_norm_layers():
    """(BatchNormReLU2d, BatchNorm2d) of cnnkit, imported on use: blocks.py loads with
    cnnkit.nn, before its sibling modules may be."""
    from cnnkit.nn.batchnorm import BatchNorm2d, BatchNormReLU2d

    return BatchNormReLU2d, BatchNorm2d


def is_fused_norm(module):
    """True if `module` can apply its activation and a residual add itself."""
    if isinstance(module, nn.BatchNorm2d) and type(module) is nn.BatchNorm2d:
        return False
    return isinstance(module, fused_norm_layers()[0])


def default_norm_layer(fused):
    return fused_norm_layers()[0] if fused else nn.BatchNorm2d


def shortcut_norm_layer(fused):
    """The norm of a projection shortcut (downsample.1): BatchNorm without activation."""
    return fused_norm_layers()[1] if fused else nn.BatchNorm2d


class _ResidualBlock(nn.Module):
    """Shared forward pieces: BN + ReLU, BN + add + ReLU, fused or eager."""

    def _bn_relu(self, bn, input):
        if self._fused:
            return bn(input)
        return torch.relu(bn(input))

    def _bn_add_relu(self, bn, input, identity):
        if self._fused:
            return bn(input, residual=identity)
        return torch.relu(bn(input) + identity)

    def _bn_relu_conv(self, bn, conv, input):
        """conv(relu(bn(input))); in memory_efficient training mode only `input` is kept
        for backward and relu(bn(input)) is recomputed there."""
        if self.memory_efficient and self.training and torch.is_grad_enabled():
            return _memory_efficient_bn_relu_conv(bn, conv, input, self._fused)
        return conv(self._bn_relu(bn, input))

    def _shortcut(self, input):
        return input if self.downsample is None else self.downsample(input)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions and an identity (or projection) shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes,
        planes,
        stride=1,
        downsample=None,
        groups=1,
        base_width=64,
        dilation=1,
        norm_layer=None,
        *,
        memory_efficient=False,
    ):
        super().__init__()
        if norm_layer is None:
            norm_layer = default_norm_layer(fused=True)
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self.memory_efficient = memory_efficient
        self._fused = is_fused_norm(self.bn2)

    def forward(self, x):
        identity = self._shortcut(x)
        out = self._bn_relu_conv(self.bn1, self.conv2, self.conv1(x))
        return self._bn_add_relu(self.bn2, out, identity)


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4) and a shortcut (ResNet-50/101/152).

    The stride sits on the 3x3 convolution, as in torchvision ("ResNet v1.5"); with
    ``stride_in_1x1=True`` it sits on the first 1x1, as in the paper and its Caffe
    models, which costs fewer MACs (3.8 instead of 4.1 GMACs for ResNet-50) and some
    accuracy. The parameters are the same either way.
    """

    expansion = 4

    def __init__(
        self,
        inplanes,
        planes,
        stride=1,
        downsample=None,
        groups=1,
        base_width=64,
        dilation=1,
        norm_layer=None,
        *,
        stride_in_1x1=False,
        memory_efficient=False,
    ):
        super().__init__()
        if norm_layer is None:
            norm_layer = default_norm_layer(fused=True)
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.downsample = downsample
        self.stride = stride
        self.stride_in_1x1 = stride_in_1x1
        self.memory_efficient = memory_efficient
        self._fused = is_fused_norm(self.bn3)

    def forward(self, x):
        identity = self._shortcut(x)
        out = self._bn_relu_conv(self.bn1, self.conv2, self.conv1(x))
        out = self._bn_relu_conv(self.bn2, self.conv3, out)
        return self._bn_add_relu(self.bn3, out, identity)


def _memory_efficient_bn_relu_conv(bn, conv, input, fused):
    """conv(relu(bn(input))), storing only `input` for backward."""
    from torch.utils.checkpoint import checkpoint

    def bn_relu_conv(x):
        out = bn(x) if fused else torch.relu(bn(x))
        return conv(out)

    # Recomputing in backward must not update the running statistics a second time:
    # checkpoint's recomputation runs the forward again, so freeze the momentum update
    # there by restoring the buffers (see _preserve_running_stats).
    return checkpoint(_preserve_running_stats(bn, bn_relu_conv), input, use_reentrant=False)


def _preserve_running_stats(bn, function):
    """Wrap `function` so that its second and later calls (checkpoint's recomputation)
    leave bn's running statistics as the first call left them."""
    calls = []

    def wrapped(x):
        if not calls or not bn.track_running_stats or bn.running_mean is None:
            calls.append(1)
            return function(x)
        saved = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
        out = function(x)
        with torch.no_grad():
            bn.running_mean.copy_(saved[0])
            bn.running_var.copy_(saved[1])
            bn.num_batches_tracked.copy_(saved[2])
        return out

    return wrapped
