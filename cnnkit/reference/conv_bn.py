"""Reference Conv + BatchNorm + activation compositions, in eager torch ops only."""

import torch.nn.functional as F


def _act(x, activation, negative_slope):
    if activation == "relu":
        return F.relu(x)
    if activation == "leaky_relu":
        return F.leaky_relu(x, negative_slope)
    return x


def conv_bn_act(
    input,
    conv_weight,
    conv_bias,
    running_mean,
    running_var,
    bn_weight,
    bn_bias,
    training=False,
    momentum=0.1,
    eps=1e-5,
    activation="relu",
    negative_slope=0.01,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    residual=None,
):
    """act(batch_norm(conv2d(input)) [+ residual]): what cnnkit.nn.ConvBNReLU2d computes."""
    out = F.conv2d(input, conv_weight, conv_bias, stride, padding, dilation, groups)
    out = F.batch_norm(out, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    if residual is not None:
        out = out + residual
    return _act(out, activation, negative_slope)


def bn_act_conv2d(
    input,
    running_mean,
    running_var,
    bn_weight,
    bn_bias,
    conv_weight,
    conv_bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    activation="relu",
    negative_slope=0.01,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
):
    """conv2d(act(batch_norm(input))): what cnnkit.functional.bn_act_conv2d computes."""
    out = F.batch_norm(
        input, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps
    )
    out = _act(out, activation, negative_slope)
    return F.conv2d(out, conv_weight, conv_bias, stride, padding, dilation, groups)
