"""FrozenModule: what cnnkit.optimize_for_inference returns. It runs the optimised module it
holds and refuses whatever would make that module disagree with its source model."""

from torch import nn

from .errors import FROZEN, FrozenModuleError


class FrozenModule(nn.Module):
    """An optimised inference module (``module``) that cannot be trained, converted or
    loaded into: its convolutions hold BatchNorms folded into their weights and weights
    prepacked for oneDNN, which a conversion, a training step or a new state would leave
    stale. ``forward`` is ``module``'s; nothing changes across calls."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        nn.Module.train(self, False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode=True):
        if mode:
            raise FrozenModuleError(FROZEN.format(action="training"))
        return self

    def requires_grad_(self, requires_grad=True):
        if requires_grad:
            raise FrozenModuleError(FROZEN.format(action="computing gradients"))
        return self

    def load_state_dict(self, state_dict, strict=True, assign=False):
        raise FrozenModuleError(FROZEN.format(action="loading a state_dict"))

    def _apply(self, fn, recurse=True):
        raise FrozenModuleError(
            FROZEN.format(action="converting it (.to(), .cuda(), .double(), ...)")
        )
