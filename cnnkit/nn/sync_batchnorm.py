"""Synchronised BatchNorm: cnnkit's BatchNorm modules with their training statistics and
backward reductions all-reduced over a process group, as torch.nn.SyncBatchNorm does."""

import torch.distributed as dist
from torch import nn

from cnnkit.nn.batchnorm import BatchNorm2d, BatchNormReLU2d, _BatchNormAct2d


class _Synchronised:
    """``process_group`` is what was given, as in torch.nn.SyncBatchNorm; it is resolved at
    forward time, None meaning torch.distributed's default group."""

    def _synchronising_group(self):
        if not self.training or not dist.is_available() or not dist.is_initialized():
            return None
        return self.process_group if self.process_group is not None else dist.group.WORLD


class SyncBatchNorm2d(_Synchronised, BatchNorm2d):
    """cnnkit.nn.BatchNorm2d synchronised over ``process_group`` in training."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group


class SyncBatchNormReLU2d(_Synchronised, BatchNormReLU2d):
    """cnnkit.nn.BatchNormReLU2d synchronised over ``process_group`` in training."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None, activation="relu", negative_slope=0.01,
                 *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         activation, negative_slope, bias=bias)
        self.process_group = process_group


def _synchronised(module, process_group):
    if isinstance(module, (SyncBatchNorm2d, SyncBatchNormReLU2d)):
        return None
    if isinstance(module, BatchNormReLU2d):
        new = SyncBatchNormReLU2d.from_torch(module, activation=module.activation,
                                             negative_slope=module.negative_slope)
    elif isinstance(module, _BatchNormAct2d) or type(module) is nn.BatchNorm2d:
        new = SyncBatchNorm2d.from_torch(module)
    else:
        return None
    new.process_group = process_group
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new


def convert_sync_batchnorm(module, process_group=None):
    """``module`` with every cnnkit BatchNorm2d / BatchNormReLU2d and every torch.nn.BatchNorm2d
    replaced by its synchronised cnnkit form, sharing its parameters and buffers (like
    torch.nn.SyncBatchNorm.convert_sync_batchnorm). Returns the converted module."""
    converted = _synchronised(module, process_group)
    if converted is not None:
        return converted
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, process_group)
        if new_child is not child:
            module.add_module(name, new_child)
    return module
