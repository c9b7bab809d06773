"""The classic networks, each buildable fused (cnnkit modules) or from plain torch.nn.

Every builder takes num_classes, in_channels and fused=True|False; fused=False builds the
same architecture, with the same state_dict, from torch.nn modules only.
"""

from .lenet import LeNet5, lenet5  # noqa: F401
from .registry import MODELS, ModelInfo, get_model, list_models, model_info  # noqa: F401
