"""Drop-in torch.nn modules backed by cnnkit's fused kernels."""

from .lrn import LocalResponseNorm  # noqa: F401
from .batchnorm import BatchNorm2d, BatchNormReLU2d  # noqa: F401
from .sync_batchnorm import SyncBatchNorm2d, SyncBatchNormReLU2d, convert_sync_batchnorm  # noqa: F401
from .blocks import BasicBlock, Bottleneck, PlainBlock  # noqa: F401
from .conv_bn import ConvBNReLU2d, bn_act_conv  # noqa: F401
from .pooling import MaxPool2d  # noqa: F401
from .quantization import fuser_method_mapping  # noqa: F401
