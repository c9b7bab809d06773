"""ImageDataset: a whole data set as one uint8 image tensor and one label tensor."""

import dataclasses

import torch


@dataclasses.dataclass
class ImageDataset:
    """images: uint8 (N, C, H, W); labels: int64 (N,); classes: one name per label.

    Batches are formed by indexing these tensors (see BatchLoader): no per-image Python.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple
    name: str = ""

    def __post_init__(self):
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"images: expected a uint8 (N, C, H, W) tensor, got {self.images.dtype} "
                f"of shape {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels: expected shape ({self.images.shape[0]},) to match the images, "
                f"got {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.to(torch.int64)
        self.classes = tuple(self.classes)

    def __len__(self):
        return self.images.shape[0]

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def image_shape(self):
        """(C, H, W)."""
        return tuple(self.images.shape[1:])

    def subset(self, count):
        """The first `count` examples (all of them when count is None)."""
        if count is not None and count < 0:
            # A slice [:-n] would quietly drop the last n examples instead.
            raise ValueError(f"count: expected None or an int >= 0, got {count}")
        if count is None or count >= len(self):
            return self
        return dataclasses.replace(self, images=self.images[:count], labels=self.labels[:count])
