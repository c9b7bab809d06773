"""BatchLoader: batches of a whole-tensor data set by indexing, sharded across processes.

Sharding follows torch.utils.data.DistributedSampler: every process draws the same
seeded permutation for the epoch, pads it to a multiple of the world size by repeating
its head, and takes every world_size-th index starting at its rank. With batch size
b = B / world_size per process, the processes' k-th batches together are exactly the
k-th global batch of B a single process would see, so a DDP run takes the same steps.
"""

import math

import torch


class BatchLoader:
    """Yields (images, labels): uint8 (b, C, H, W) and int64 (b,) tensors on `device`.

    batch_size is per process. shuffle draws a new permutation each epoch from
    (seed, epoch), so any epoch's order can be recomputed when a run resumes.
    pad=True makes all shards the same length (training under DDP needs equal step
    counts); pad=False gives each example to exactly one shard (exact evaluation counts).
    """

    def __init__(self, dataset, batch_size, *, shuffle=False, seed=0, drop_last=False,
                 rank=0, world_size=1, pad=True, device="cpu"):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.device = torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def shard_indices(self):
        """This process's indices for the current epoch, in order."""
        count = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(count, generator=generator)
        else:
            order = torch.arange(count)
        if self.pad and self.world_size > 1 and count % self.world_size:
            total = math.ceil(count / self.world_size) * self.world_size
            order = order.repeat(math.ceil(total / max(count, 1)))[:total]
        return order[self.rank::self.world_size]

    def __len__(self):
        count = len(self.dataset)
        if self.pad:
            shard = math.ceil(count / self.world_size)
        else:
            shard = len(range(self.rank, count, self.world_size))
        if self.drop_last:
            return shard // self.batch_size
        return math.ceil(shard / self.batch_size)

    def iter_from(self, start_batch=0):
        """Iterate the epoch's batches, skipping the first start_batch (for resuming)."""
        indices = self.shard_indices()
        pin = self.device.type == "cuda"
        for batch in range(start_batch, len(self)):
            index = indices[batch * self.batch_size:(batch + 1) * self.batch_size]
            images = self.dataset.images.index_select(0, index)
            labels = self.dataset.labels.index_select(0, index)
            if pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield (images.to(self.device, non_blocking=pin),
                   labels.to(self.device, non_blocking=pin))

    def __iter__(self):
        return self.iter_from(0)

    def decode_rate(self):
        """Images per second spent decoding: None, the images are tensors already (see
        FolderLoader)."""
        return None

    def close(self):
        """Nothing to stop (FolderLoader stops its worker processes)."""
