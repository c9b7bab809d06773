"""What the frozen layers share: buffers instead of parameters, a weight reordered once into
oneDNN's blocked layout (opaque, so copies and pickles reorder it again), and no gradients."""

import torch
from torch import nn

from .errors import FROZEN, FrozenModuleError


class PrepackedLayer(nn.Module):
    """Base of FrozenConv2d and FrozenLinear. ``weight`` and ``bias`` are buffers (nothing
    here trains); ``_packed`` is ``prepack()``'s oneDNN weight, or None where oneDNN does
    not run the layer. Nothing changes after construction: concurrent calls share it all
    read-only."""

    def __init__(self, weight, bias, input_shape):
        super().__init__()
        self.register_buffer("weight", weight.detach())
        self.register_buffer("bias", None if bias is None else bias.detach())
        self.input_shape = None if input_shape is None else tuple(input_shape)

    def prepack(self):
        """The weight reordered for oneDNN, for inputs of ``input_shape`` (None: oneDNN
        would not pay)."""
        raise NotImplementedError

    def _pack(self):
        weight = self.weight
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            return None
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return None
        return self.prepack()

    def _onednn_runs(self, input):
        """True where the call runs on the prepacked weight: float32 CPU input, no
        autocast, and not under torch.compile / torch.export (which see only the plain
        tensors: the oneDNN weight is opaque to them, so it is not touched before this)."""
        return (
            not torch.compiler.is_compiling()
            and self._packed is not None
            and input.dtype == torch.float32
            and input.device.type == "cpu"
            and input.numel() > 0
            and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu")
        )

    @staticmethod
    def refuse_gradients(*tensors):
        if torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
        ):
            raise FrozenModuleError(FROZEN.format(action="computing gradients"))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._packed = self._pack()
