"""Pure-PyTorch reference of every cnnkit op: the tests' oracle, and the fallback when the
extension has no kernel for a backend. One module per op family, re-exported here."""

from .lrn import local_response_norm, local_response_norm_backward  # noqa: F401
from .batch_norm import batch_norm_act, batch_norm_act_backward  # noqa: F401
from .conv_bn import bn_act_conv2d, conv_bn_act  # noqa: F401
from .max_pool import max_pool2d  # noqa: F401
