"""FolderLoader: batches of an ImageFolder, decoded by DataLoader worker processes.

It is a BatchLoader (the same seeded, sharded, resumable order of indices); only the
fetching differs: the workers decode each file with a per-image transform
(cnnkit.data.decode) and stack the batch, still uint8. Every image's random box is drawn
from (seed, epoch, index), so a batch decodes alike with any number of workers and when a
run resumes.

A file that cannot be decoded is left out of its batch and reported once to `on_skip`
(path, reason); `skipped` maps every such path to its reason.
"""

import random
import time

import torch

from .decode import DECODE_ERRORS, decode_image
from .errors import DataError
from .loader import BatchLoader


class _DecodedFiles(torch.utils.data.Dataset):
    """Item (index, epoch): (uint8 (H, W, 3) image or None, label, path, reason, seconds
    the decoding took)."""

    def __init__(self, samples, transform, seed):
        self.samples = samples
        self.transform = transform
        self.seed = seed

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        started = time.perf_counter()
        index, epoch = key
        path, label = self.samples[index]
        rng = random.Random(((self.seed * 1_000_003 + epoch) << 32) + index)
        try:
            image, reason = decode_image(path, self.transform, rng), None
        except DECODE_ERRORS as error:
            image, reason = None, f"{type(error).__name__}: {error}"
        return image, label, path, reason, time.perf_counter() - started


def _collate(items):
    """A batch: uint8 (N, 3, H, W) images (channels_last strides, as decoded), int64 labels,
    [(path, reason)] of the files left out, and the seconds the worker spent on it."""
    started = time.perf_counter()
    good = [item for item in items if item[0] is not None]
    skipped = [(path, reason) for image, _, path, reason, _ in items if image is None]
    if good:
        images = torch.stack([item[0] for item in good]).permute(0, 3, 1, 2)
    else:
        images = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    labels = torch.tensor([item[1] for item in good], dtype=torch.int64)
    seconds = sum(item[4] for item in items) + time.perf_counter() - started
    return images, labels, skipped, seconds


class _EpochBatches:
    """The DataLoader's batch sampler: the loader's current epoch and start batch, read
    when iteration begins (persistent workers keep the one DataLoader for every epoch)."""

    def __init__(self, loader):
        self.loader = loader
        self.start = 0

    def __len__(self):
        return len(self.loader) - self.start

    def __iter__(self):
        loader = self.loader
        indices, size = loader.shard_indices().tolist(), loader.batch_size
        for batch in range(self.start, len(loader)):
            yield [(index, loader.epoch) for index in indices[batch * size:(batch + 1) * size]]


class FolderLoader(BatchLoader):
    """BatchLoader for an ImageFolder: `transform` (decode.ResizeCenterCrop or
    RandomResizedCrop) brings every image to one size; `workers` processes decode
    (0: in this process)."""

    def __init__(self, dataset, batch_size, *, transform, workers=0, on_skip=None, **kwargs):
        super().__init__(dataset, batch_size, **kwargs)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"workers: expected an int >= 0, got {workers!r}")
        self.workers = workers
        self.on_skip = on_skip
        self.skipped = {}
        self.decoded, self.decode_seconds = 0, 0.0
        self._batches = _EpochBatches(self)
        self._loader = torch.utils.data.DataLoader(
            _DecodedFiles(dataset.samples, transform, self.seed), batch_sampler=self._batches,
            num_workers=workers, collate_fn=_collate, persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda")

    def decode_rate(self):
        """Images per second the workers together decode this epoch (None before any)."""
        if not self.decode_seconds:
            return None
        return self.decoded / self.decode_seconds * max(self.workers, 1)

    def iter_from(self, start_batch=0):
        self._batches.start = start_batch
        self.decoded, self.decode_seconds = 0, 0.0
        pin = self.device.type == "cuda"
        for images, labels, skipped, seconds in self._loader:
            self.decoded += len(labels) + len(skipped)
            self.decode_seconds += seconds
            for path, reason in skipped:
                if path not in self.skipped:
                    self.skipped[path] = reason
                    if self.on_skip is not None:
                        self.on_skip(path, reason)
            if not len(labels):
                if self.world_size > 1:  # the other processes would wait for this one's step
                    raise DataError(f"no file of a batch could be decoded ({skipped[0][0]}, ...)")
                continue
            yield (images.to(self.device, non_blocking=pin),
                   labels.to(self.device, non_blocking=pin))

    def close(self):
        """Stop the worker processes (they also stop when the loader is collected)."""
        self._loader = None
