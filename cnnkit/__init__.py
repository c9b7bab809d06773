"""cnnkit: fused CPU and CUDA kernels for classic CNNs, as drop-in torch.nn modules."""

__version__ = "0.1.0"

from cnnkit import _ops  # noqa: F401  (loads cnnkit._C and registers fake/autograd rules)
from cnnkit import functional, models, nn, reference  # noqa: F401

# The functions shadow their modules as attributes of the package, as the API asks
# (cnnkit.fuse(model), cnnkit.summary(model, size)); import the modules with `from`.
from cnnkit.fuse import fuse  # noqa: F401,E402
from cnnkit.inference import optimize_for_inference  # noqa: F401,E402
from cnnkit.summary import summary  # noqa: F401,E402

# Imported on first use, so that `import cnnkit` stays fast: the training stack (data, loop,
# CLI) and the ONNX exporter's translations pull in much that inference code never needs.
_LAZY_SUBMODULES = ("onnx", "train")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
