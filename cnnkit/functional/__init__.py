"""The functional API: one module per op family, re-exported here."""

from .lrn import local_response_norm  # noqa: F401
from .batch_norm import batch_norm_act  # noqa: F401
from .conv_bn import bn_act_conv2d, conv2d_bias_act, fold_bn_into_conv  # noqa: F401
from .max_pool import max_pool2d  # noqa: F401
