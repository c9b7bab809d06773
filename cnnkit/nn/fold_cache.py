"""Eval-mode Conv2d -> BatchNorm2d as one convolution with folded weights, cached.

One cache serves every module that folds: ConvBNReLU2d, the ResNet blocks and stems, and
VGG's fused features. A cached fold is reused only while
- every tensor it was made from (conv weight and bias, BN weight, bias, running mean and
  variance) is the same live object with the same storage, version counter (in-place
  updates: optimizer steps, load_state_dict), dtype, device and shape;
- no torch.optim optimizer has stepped since, where a source takes gradients (fused
  optimizers update parameters without bumping their version counters; a frozen model's
  folds outlive the steps of a head trained beside it);
- BN's eps and the inference mode are the ones it was made under (a fold made in
  inference mode is an inference tensor, unusable outside it).
In-place edits through ``.data`` bypass version counters: ``clear()`` after those.

Under autocast the folded convolution runs in the autocast dtype, as the eager
convolution would.
"""

import weakref

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from torch.optim.optimizer import register_optimizer_step_post_hook

from cnnkit.functional.conv_bn import (
    conv2d_bias_act,
    fold_bn_into_conv,
    onednn_conv2d_bias_act,
    onednn_fuses,
)


# Counts the steps of every torch.optim optimizer: a fold of trainable tensors made before
# a step is stale.
_optimizer_step = 0


def _count_optimizer_step(optimizer, args, kwargs):
    global _optimizer_step
    _optimizer_step += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class _Uncacheable(Exception):
    """A source is an inference tensor: it has no version counter to key a cache on."""


def _tensor_key(tensor):
    if tensor is None:
        return None
    if tensor.is_inference():
        raise _Uncacheable
    return (
        tensor._version,
        tensor.data_ptr(),
        tensor.dtype,
        tensor.device,
        tuple(tensor.shape),
    )


def _fold_sources(conv, bn):
    return (conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias)


class _Fold:
    """One conv's folded weight and bias, and that weight reordered for oneDNN."""

    __slots__ = ("bias", "key", "packed", "packed_for", "sources", "weight")

    def __init__(self, sources, key, weight, bias):
        # Weak references, not ids: a freed source's id and storage may be reused by a new
        # tensor (a parametrization makes a new weight on every access).
        self.sources = tuple(None if t is None else weakref.ref(t) for t in sources)
        self.key, self.weight, self.bias = key, weight, bias
        self.packed = self.packed_for = None  # the reordered weight, and its input shape

    def made_from(self, sources, key):
        return self.key == key and all(
            (ref is None and t is None) or (ref is not None and ref() is t)
            for ref, t in zip(self.sources, sources)
        )


class FoldedConvBNCache:
    """Eval-mode conv -> BN [-> add] [-> activation] as one convolution with folded
    weights, cached per conv module (see the module's docstring for when a fold is reused).

    The cache is skipped where autograd must see the fold (grad enabled and a source
    requiring grad: gradients then reach conv and BN as in eager), under torch.compile
    (which folds constants itself), and for inference-tensor parameters.
    """

    def __init__(self):
        # Weak keys: a conv that leaves the model takes its fold with it.
        self._folds = weakref.WeakKeyDictionary()

    def __reduce__(self):
        return (type(self), ())  # copies and pickles start empty: their tensors are new

    def clear(self):
        self._folds.clear()

    def cached(self, conv):
        """The cached (weight, bias) of ``conv``'s fold, or None if there is none."""
        fold = self._folds.get(conv)
        return None if fold is None else (fold.weight, fold.bias)

    def folded(self, conv, bn):
        """(weight, bias) of the one convolution equal to eval-mode bn(conv(x))."""
        return _weight_and_bias(self._cached_fold(conv, bn), conv, bn)

    def conv_bn_act(self, conv, bn, input, activation="relu", residual=None, negative_slope=0.01):
        """act(bn(conv(input)) [+ residual]) for an eval-mode ``bn`` with running
        statistics, as cnnkit.functional.conv2d_bias_act of the folded weights."""
        padding = conv.padding
        if conv.padding_mode != "zeros":
            input = F.pad(input, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            padding = 0
        fold = self._cached_fold(conv, bn)
        weight, bias = _weight_and_bias(fold, conv, bn)
        input, weight, bias, residual = _autocast(input, weight, bias, residual)
        geometry = (conv.stride, padding, conv.dilation, conv.groups)
        epilogue = (activation, negative_slope, residual)
        if fold is not None and _prepacking_applies(input, weight, bias, residual, activation,
                                                    *geometry):
            packed = _prepacked_weight(fold, input.shape, *geometry)
            return onednn_conv2d_bias_act(input, packed, bias, *geometry, *epilogue)
        return conv2d_bias_act(input, weight, bias, *geometry, *epilogue)

    def _cached_fold(self, conv, bn):
        """``conv``'s cached _Fold, refolded if a source changed; None where no cache
        applies."""
        sources = _fold_sources(conv, bn)
        if torch.compiler.is_compiling():
            return None
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources):
            return None
        try:
            key = (
                tuple(_tensor_key(t) for t in sources),
                bn.eps,
                torch.is_inference_mode_enabled(),
                # Only a tensor that takes gradients can be stepped (a frozen one gets none).
                _optimizer_step if any(t is not None and t.requires_grad for t in sources) else None,
            )
        except _Uncacheable:
            return None
        fold = self._folds.get(conv)
        if fold is None or not fold.made_from(sources, key):
            self._folds.pop(conv, None)  # free the old fold before making the new one
            with torch.no_grad():
                fold = _Fold(sources, key, *fold_bn_into_conv(*sources, bn.eps))
            self._folds[conv] = fold
        return fold


class FoldCacheOwner:
    """Mixin for an nn.Module holding a FoldedConvBNCache as ``_fold_cache``: the folds
    are freed when it goes to training (they are stale after the first step anyway) and
    when its tensors are converted (.to(), .double(), ...: refold from the new ones)."""

    def train(self, mode=True):
        if mode:
            self._fold_cache.clear()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._fold_cache.clear()
        return super()._apply(fn, recurse)


def _weight_and_bias(fold, conv, bn):
    """The cached fold's tensors, or a fold made now where nothing is cached."""
    if fold is None:
        return fold_bn_into_conv(*_fold_sources(conv, bn), bn.eps)
    return fold.weight, fold.bias


def _autocast(*tensors):
    """The tensors in the autocast dtype where autocast is on, as the eager convolution
    would see them (float64 and non-float tensors stay as they are, as autocast leaves
    them). The residual goes with them, so that the epilogue adds like dtypes."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
        for t in tensors
    )


def _prepacking_applies(input, weight, bias, residual, activation, stride, padding, dilation,
                        groups):
    """True where oneDNN computes the call and a weight reordered once into its blocked
    layout pays: float32 channels_last input. Without it oneDNN reorders the weight on
    every call (measured 1.6x slower on a 3x3 conv of ResNet-50)."""
    return (
        input.dtype == torch.float32
        and input.is_contiguous(memory_format=torch.channels_last)
        and onednn_fuses(input, weight, bias, residual, stride, padding, dilation, activation)
    )


def _prepacked_weight(fold, input_shape, stride, padding, dilation, groups):
    """The fold's weight reordered for oneDNN, for inputs of ``input_shape``."""
    if fold.packed_for != input_shape:
        fold.packed = None  # free the old reorder before making the new one
        fold.packed = torch.ops.mkldnn._reorder_convolution_weight(
            fold.weight,
            list(_pair(padding)),
            list(_pair(stride)),
            list(_pair(dilation)),
            groups,
            list(input_shape),
        )
        fold.packed_for = input_shape
    return fold.packed
