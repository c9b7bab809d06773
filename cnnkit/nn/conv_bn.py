"""cnnkit.nn.ConvBNReLU2d: Conv2d -> BatchNorm2d -> activation (-> + residual) as one module.

The vendor convolution, then cnnkit's fused BN (+ residual add) + activation op: on batch
statistics in training, on the running statistics in eval (one pass, nothing cached).
Folding the BN into the convolution is the explicit step cnnkit.optimize_for_inference.
"""

from torch import nn

from cnnkit.functional.conv_bn import bn_act_conv2d, check_activation
from cnnkit.nn.batchnorm import BatchNormReLU2d, batch_norm_arguments


class ConvBNReLU2d(nn.Module):
    r"""act(BatchNorm2d(Conv2d(input)) [+ residual]), with nn.Conv2d's and nn.BatchNorm2d's
    arguments, parameters and buffers.

    Submodules ``conv`` (an nn.Conv2d) and ``bn`` (cnnkit's BatchNormReLU2d), so the
    state_dict keys are conv.weight, (conv.bias,) bn.weight, bn.bias, bn.running_mean,
    bn.running_var and bn.num_batches_tracked; the state of an ``nn.Sequential(conv, bn)``
    or ``nn.Sequential(conv, bn, nn.ReLU())`` (keys ``0.*``, ``1.*``) loads as well.

    ``activation`` is "relu" (default), "leaky_relu" (with ``negative_slope``) or None /
    "identity".
    ``forward(input, residual=None)`` computes act(BN(conv(input)) + residual).

    The convolution, then the fused BN (+ residual) + activation op, in training (updating
    the running statistics exactly as nn.BatchNorm2d does) and in eval alike.
    cnnkit.optimize_for_inference folds the BN into the convolution and runs the residual
    add and activation as the convolution's epilogue.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=False,
        eps=1e-5,
        momentum=0.1,
        activation="relu",
        device=None,
        dtype=None,
        *,
        negative_slope=0.01,
        padding_mode="zeros",
    ):
        super().__init__()
        check_activation(activation, negative_slope)
        factory = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            **factory,
        )
        self.bn = BatchNormReLU2d(
            out_channels,
            eps=eps,
            momentum=momentum,
            activation=activation,
            negative_slope=negative_slope,
            **factory,
        )

    # One source of truth for train and eval: the fused BN module's own settings.
    @property
    def activation(self):
        return self.bn.activation

    @property
    def negative_slope(self):
        return self.bn.negative_slope

    @classmethod
    def from_torch(cls, conv, bn, activation="relu", negative_slope=0.01):
        """A ConvBNReLU2d computing act(bn(conv(x))) with the given modules' state.

        ``conv`` is an nn.Conv2d; ``bn`` an nn.BatchNorm2d (or cnnkit's BatchNorm2d /
        BatchNormReLU2d) with ``conv.out_channels`` features. No copies: the new module
        holds ``conv`` itself and a fused BN sharing ``bn``'s parameters and buffers, so an
        optimizer built on the old modules keeps training the new one.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_torch: conv must be an nn.Conv2d, got {type(conv).__name__}")
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or isinstance(bn, nn.SyncBatchNorm):
            raise TypeError(f"from_torch: bn must be a BatchNorm2d, got {type(bn).__name__}")
        if bn.num_features != conv.out_channels:
            raise ValueError(
                f"from_torch: bn.num_features ({bn.num_features}) must equal conv.out_channels "
                f"({conv.out_channels})"
            )
        check_activation(activation, negative_slope)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.conv = conv
        module.bn = _share_state(bn, activation, negative_slope)
        module.training = conv.training  # bn keeps its own mode (a frozen BN stays frozen)
        return module

    def forward(self, input, residual=None):
        # An unbatched (3-D) input passes the convolution and fails in bn, with
        # nn.BatchNorm2d's ValueError.
        return self.bn(self.conv(input), residual=residual)

    # --- loading nn.Sequential(conv, bn[, relu]) state --------------------------------

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        renames = {f"{prefix}0.": f"{prefix}conv.", f"{prefix}1.": f"{prefix}bn."}
        if not any(key.startswith((f"{prefix}conv.", f"{prefix}bn.")) for key in state_dict):
            for key in [k for k in state_dict if k.startswith(tuple(renames))]:
                old = key[: len(prefix) + 2]
                state_dict[renames[old] + key[len(old) :]] = state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _share_state(bn, activation, negative_slope):
    """cnnkit's fused BN with `bn`'s settings, holding `bn`'s own parameter and buffer tensors."""
    if (
        type(bn) is BatchNormReLU2d
        and bn.activation == activation
        and (activation != "leaky_relu" or bn.negative_slope == negative_slope)
    ):
        return bn
    return BatchNormReLU2d.from_torch(bn, activation=activation, negative_slope=negative_slope)


def bn_act_conv(bn, conv, input, activation="relu", negative_slope=0.01):
    """conv(act(bn(input))) for BatchNorm2d-like ``bn`` and nn.Conv2d ``conv`` modules,
    keeping only ``input`` for backward (cnnkit.functional.bn_act_conv2d).

    Handles the module bookkeeping as nn.BatchNorm2d.forward does: num_batches_tracked,
    momentum=None (cumulative average), track_running_stats=False and eval mode.
    ``bn``'s own activation, if it has one, is ignored: ``activation`` applies.
    """
    if conv.padding_mode != "zeros":
        raise ValueError(
            f"bn_act_conv: conv.padding_mode must be 'zeros', got {conv.padding_mode!r}"
        )
    batch_stats, running_mean, running_var, factor = batch_norm_arguments(bn)
    return bn_act_conv2d(
        input, running_mean, running_var, bn.weight, bn.bias, conv.weight, conv.bias,
        batch_stats, factor, bn.eps, activation, negative_slope,
        conv.stride, conv.padding, conv.dilation, conv.groups,
    )
