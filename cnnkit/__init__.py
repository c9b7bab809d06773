"""cnnkit: fused CPU and CUDA kernels for classic CNNs, as drop-in torch.nn modules."""

__version__ = "0.1.0"

from cnnkit import _ops  # noqa: F401  (loads cnnkit._C and registers fake/autograd rules)
from cnnkit import functional, nn, reference  # noqa: F401
