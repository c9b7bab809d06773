"""Drop-in torch.nn modules backed by cnnkit's fused kernels."""

from .lrn import LocalResponseNorm  # noqa: F401
from .blocks import BasicBlock, Bottleneck  # noqa: F401
