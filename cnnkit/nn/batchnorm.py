"""cnnkit.nn.BatchNorm2d and cnnkit.nn.BatchNormReLU2d: nn.BatchNorm2d run by cnnkit's fused
BatchNorm + activation (+ residual add) op.

Both subclass torch.nn.BatchNorm2d, so isinstance holds for code that looks for BatchNorm
(BN freezing, weight-decay exclusion, converters), and parameters, buffers, state_dict keys,
loading (including checkpoints without num_batches_tracked), momentum=None, affine=False and
track_running_stats=False are nn.BatchNorm2d's own.
"""

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.functional.batch_norm import batch_norm_act
from cnnkit.nn.tracing import traced_module_call
from cnnkit.reference.batch_norm import activation_code


def batch_norm_arguments(bn):
    """(use batch statistics, running_mean, running_var, momentum factor) for one forward of
    the BatchNorm module ``bn`` (torch's or cnnkit's), exactly as nn.BatchNorm2d.forward
    derives them; counts the batch in num_batches_tracked when ``bn`` tracks statistics."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep_running = not bn.training or bn.track_running_stats
    running_mean = bn.running_mean if keep_running else None
    running_var = bn.running_var if keep_running else None
    return batch_stats, running_mean, running_var, factor


class _BatchNormAct2d(nn.BatchNorm2d):
    """The forward shared by the 2-d modules: nn.BatchNorm2d's, with an activation."""

    activation = None
    negative_slope = 0.01

    def _synchronising_group(self):
        """The process group to synchronise over now; None: this rank alone. The
        SyncBatchNorm variants (cnnkit/nn/sync_batchnorm.py) override it."""
        return None

    def forward(self, input, residual=None):
        traced = traced_module_call(self, input, **({} if residual is None else {"residual": residual}))
        if traced is not None:
            return traced
        self._check_input_dim(input)
        batch_stats, running_mean, running_var, factor = batch_norm_arguments(self)
        return batch_norm_act(
            input, running_mean, running_var, self.weight, self.bias, batch_stats, factor,
            self.eps, self.activation, self.negative_slope, residual,
            process_group=self._synchronising_group(),
        )

    def _init_batch_norm(self, num_features, eps, momentum, affine, track_running_stats,
                         device, dtype, bias):
        # `bias` (keyword-only, torch >= 2.12) is passed on only when it changes something,
        # so the modules also run on torch versions without it.
        extra = {} if bias else {"bias": False}
        _BatchNorm.__init__(self, num_features, eps, momentum, affine, track_running_stats,
                            device, dtype, **extra)

    @classmethod
    def from_torch(cls, bn, **kwargs):
        """A module of this class holding ``bn``'s configuration, parameters and buffers
        (shared, not copied); ``kwargs`` go to the constructor (e.g. activation)."""
        module = cls(
            bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
            track_running_stats=bn.track_running_stats,
            bias=not bn.affine or bn.bias is not None, **kwargs,
        )
        return share_state(bn, module)


def share_state(source, target):
    """``target`` (a BatchNorm module) holding ``source``'s parameter and buffer tensors
    themselves, not copies, in ``source``'s mode."""
    for name in ("weight", "bias"):
        setattr(target, name, getattr(source, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        target._buffers[name] = source._buffers.get(name)
    return target.train(source.training)


class BatchNorm2d(_BatchNormAct2d):
    """Drop-in for torch.nn.BatchNorm2d (same arguments, state and results).

    ``forward(input, residual=None)``: with a residual, returns BN(input) + residual.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        self._init_batch_norm(num_features, eps, momentum, affine, track_running_stats, device,
                              dtype, bias)


class BatchNormReLU2d(_BatchNormAct2d):
    """act(BatchNorm2d(input) [+ residual]) as one op; nn.BatchNorm2d's state_dict.

    ``activation`` is "relu" (default), "leaky_relu" (with ``negative_slope``), or None /
    "identity". ``forward(input, residual=None)``: a residual is added before the
    activation (the end of a ResNet block).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, activation="relu",
                 negative_slope=0.01, *, bias=True):
        activation_code(activation)  # a ValueError here rather than at the first forward
        self._init_batch_norm(num_features, eps, momentum, affine, track_running_stats, device,
                              dtype, bias)
        self.activation = activation
        self.negative_slope = negative_slope

    def extra_repr(self):
        text = super().extra_repr() + f", activation={self.activation!r}"
        if self.activation == "leaky_relu":
            text += f", negative_slope={self.negative_slope}"
        return text
