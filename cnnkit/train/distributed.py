"""Process-group setup for `torchrun ... -m cnnkit.train` (DistributedDataParallel).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single process
and nothing here touches torch.distributed.
"""

import dataclasses
import os

import torch
import torch.distributed as dist

from .config import parse_device


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def pick_device(requested, process):
    """The torch.device of this process: cuda:LOCAL_RANK under torchrun on CUDA."""
    device = parse_device(requested)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", process.local_rank if process.distributed else 0)
        torch.cuda.set_device(device)
    return device


def init_process_group(device_type):
    """Join the torchrun process group (gloo on CPU, nccl on CUDA); ProcessInfo()."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessInfo()
    process = ProcessInfo(int(os.environ["RANK"]), world_size,
                          int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return process


def wait_for_all(process):
    """Every process reaches this point before any goes on: a rank that ends its run (and
    tears down its connections) while another is still communicating can abort that one."""
    if process.distributed:
        dist.barrier()


def destroy_process_group():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor, process, device):
    """Sum a tensor over all processes (in place on a copy on `device`; returns it on CPU)."""
    if not process.distributed:
        return tensor
    reduced = tensor.to(device)
    dist.all_reduce(reduced)
    return reduced.cpu()


def any_process(flag, process, device):
    """True if `flag` is True on any process (used to stop every rank at the same step)."""
    if not process.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


def convert_sync_batchnorm(model, device_type):
    """BatchNorm -> SyncBatchNorm: cnnkit's (fused kernels) when available, else torch's,
    which runs on CUDA only; on CPU without cnnkit's, BatchNorm stays per process."""
    try:
        from cnnkit.nn import convert_sync_batchnorm as cnnkit_convert
    except ImportError:
        cnnkit_convert = None
    if cnnkit_convert is not None:
        return cnnkit_convert(model)
    if device_type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
