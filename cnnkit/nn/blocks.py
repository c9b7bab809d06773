"""ResNet's residual blocks, with torchvision's constructor arguments and attribute names,
and the plain block of the ResNet paper's baselines (a BasicBlock without its shortcut).

Both blocks end in one fused BatchNorm + residual add + ReLU (``bn2`` of BasicBlock,
``bn3`` of Bottleneck, called with ``residual=identity``), and their inner BatchNorm +
ReLU pairs run as one op (``bn1``, and ``bn2`` of Bottleneck, are BatchNormReLU2d). The
parameters and buffers sit where torchvision keeps them, so a torchvision checkpoint
loads with strict=True.

With ``norm_layer=nn.BatchNorm2d`` (what the models build for fused=False) the same
block runs eager torch.nn: BN, then ReLU / add + ReLU as separate ops. That is the
reference the tests hold the fused blocks to.

Memory-saving training (``memory_efficient``; eval and no_grad are unaffected):

- ``True`` (or ``"links"``): for each conv -> BN -> ReLU -> conv link inside the block,
  only the first conv's output is kept and BN + ReLU is recomputed in backward, the way
  memory-efficient DenseNet implementations do. Of the two activation-sized tensors
  eager keeps per link (the BN input and the ReLU output) one is never stored: a
  Bottleneck keeps 4 tensors instead of 6 (640 instead of 768 channels' worth on a
  256-channel block), for one extra BN-ReLU pass per link in backward.
- ``"block"``: the block keeps only its input and recomputes its whole forward in
  backward (activation checkpointing, running statistics updated once): about one
  tensor per block, for one extra block forward in backward.

In eval mode a fused block runs the same fused BN ops on the running statistics; folding
each BatchNorm into the convolution before it, with the residual add and ReLU as that
convolution's epilogue, is the explicit step cnnkit.optimize_for_inference.
"""

import contextlib
import warnings

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from cnnkit.nn.batchnorm import BatchNorm2d, BatchNormReLU2d
from cnnkit.nn.conv_bn import bn_act_conv
from cnnkit.nn.sync_batchnorm import SyncBatchNorm2d, SyncBatchNormReLU2d
from cnnkit.nn.tracing import traced_module_call


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


def applies_relu(norm):
    """True if ``norm`` applies the ReLU (and adds a residual) itself: cnnkit's fused
    BatchNormReLU2d. The blocks and models ask at every forward, so a norm swapped in after
    construction (torch's BatchNorm2d or SyncBatchNorm, GroupNorm, torchvision's
    FrozenBatchNorm2d, nn.Identity) runs unfused, followed by the block's own add and ReLU."""
    if isinstance(norm, BatchNormReLU2d):
        return norm.activation == "relu"
    if isinstance(norm, nn.SyncBatchNorm):
        # Python's default warning filter shows this once per process.
        warnings.warn(
            "torch.nn.SyncBatchNorm in a cnnkit model runs unfused (BatchNorm, add and ReLU "
            "apart); cnnkit.nn.convert_sync_batchnorm(model) gives synchronised fused norms",
            stacklevel=2,
        )
    return False


def default_norm_layer(fused):
    return BatchNormReLU2d if fused else nn.BatchNorm2d


def shortcut_norm_layer(fused):
    """The norm of a projection shortcut (downsample.1): BatchNorm without activation."""
    return BatchNorm2d if fused else nn.BatchNorm2d


class _Block(nn.Module):
    """Shared forward pieces of the blocks: BN + ReLU, BN + add + ReLU, fused or eager
    (decided per call by the norm's type, see applies_relu), and memory-saving training."""

    def _finish_init(self, downsample, stride, memory_efficient):
        """What both blocks set after their layers (downsample last, as in torchvision,
        so the state_dict keys come in its order)."""
        self.downsample = downsample
        self.stride = stride
        self.memory_efficient = memory_efficient
        self._recompute = recompute_mode(memory_efficient)

    def _bn_relu(self, bn, input):
        if applies_relu(bn):
            return bn(input)
        return torch.relu(bn(input))

    def _bn_add_relu(self, bn, input, identity):
        if applies_relu(bn):
            return bn(input, residual=identity)
        return torch.relu(bn(input) + identity)

    def _bn_relu_conv(self, bn, conv, input):
        """conv(relu(bn(input))); in "links" memory-saving training only `input` is kept
        for backward and relu(bn(input)) is recomputed there (for a BatchNorm2d this rank
        normalises alone: a synchronised or other norm runs as it is)."""
        recomputable = isinstance(bn, nn.BatchNorm2d) and not isinstance(bn, _SYNCHRONISED)
        if self._recompute == "links" and recomputable and bn.training and torch.is_grad_enabled():
            return bn_act_conv(bn, conv, input, activation="relu")
        return conv(self._bn_relu(bn, input))

    def forward(self, x):
        if self._recompute is not None:
            # The memory-saving paths depend on the mode at each call: one node for torch.fx.
            traced = traced_module_call(self, x)
            if traced is not None:
                return traced
        if self._recompute == "block" and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False,
                              context_fn=lambda: (contextlib.nullcontext(), _RunningStatsKept(self)))
        return self._forward(x)

    def _shortcut(self, input):
        return input if self.downsample is None else self.downsample(input)


class BasicBlock(_Block):
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
        self._finish_init(downsample, stride, memory_efficient)

    def _norms(self):
        return (self.bn1, self.bn2)

    def _forward(self, x):
        identity = self._shortcut(x)
        out = self._bn_relu_conv(self.bn1, self.conv2, self.conv1(x))
        return self._bn_add_relu(self.bn2, out, identity)


class PlainBlock(_Block):
    """A BasicBlock without its shortcut: two 3x3 convolutions, each followed by BN + ReLU.

    The "plain" networks of He et al. 2015 (section 4.1, 4.2) stack these to show the
    degradation that residual learning removes. The attribute names are BasicBlock's, so a
    plain network's state_dict keys are those of its ResNet with option-A shortcuts.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, norm_layer=None, *, memory_efficient=False):
        super().__init__()
        if norm_layer is None:
            norm_layer = default_norm_layer(fused=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self._finish_init(None, stride, memory_efficient)

    def _norms(self):
        return (self.bn1, self.bn2)

    def _forward(self, x):
        out = self._bn_relu_conv(self.bn1, self.conv2, self.conv1(x))
        return self._bn_relu(self.bn2, out)


class Bottleneck(_Block):
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
        self.stride_in_1x1 = stride_in_1x1
        self._finish_init(downsample, stride, memory_efficient)

    def _norms(self):
        return (self.bn1, self.bn2, self.bn3)

    def _forward(self, x):
        identity = self._shortcut(x)
        out = self._bn_relu_conv(self.bn1, self.conv2, self.conv1(x))
        out = self._bn_relu_conv(self.bn2, self.conv3, out)
        return self._bn_add_relu(self.bn3, out, identity)


CNNKIT_BLOCKS = (BasicBlock, PlainBlock, Bottleneck)  # what cnnkit.fuse gives fused norms

_SYNCHRONISED = (SyncBatchNorm2d, SyncBatchNormReLU2d)

_RECOMPUTE_MODES = {False: None, None: None, True: "links", "links": "links", "block": "block"}


def recompute_mode(memory_efficient):
    try:
        return _RECOMPUTE_MODES[memory_efficient]
    except (KeyError, TypeError):
        raise ValueError(
            f"memory_efficient must be False, True, 'links' or 'block', got {memory_efficient!r}"
        ) from None


class _RunningStatsKept:
    """Context of a checkpointed block's recomputation in backward: the forward already
    updated the running statistics, so the replay must leave them as it found them."""

    def __init__(self, block):
        self.norms = [m for m in block.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]

    def __enter__(self):
        self.saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                      for m in self.norms]

    def __exit__(self, *exc_info):
        with torch.no_grad():
            for module, (mean, var, count) in zip(self.norms, self.saved):
                module.running_mean.copy_(mean)
                module.running_var.copy_(var)
                module.num_batches_tracked.copy_(count)
