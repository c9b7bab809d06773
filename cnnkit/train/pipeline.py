"""From uint8 batches to the model's input: augmentation, size, normalisation."""

import torch

from cnnkit.data import augment

TEN_CROP_MARGIN = 8 / 7  # AlexNet: 224 crops of 256 images


def data_statistics(train_set, augmentations):
    """What the pipeline needs from the training set (kept in checkpoints so that
    evaluation does not need the training set): channel mean/std, colour PCA."""
    mean, std = augment.channel_stats(train_set.images)
    stats = {"mean": mean, "std": std}
    if "pca" in augmentations and train_set.images.shape[1] == 3:
        eigenvalues, eigenvectors = augment.compute_color_pca(train_set.images)
        stats["pca"] = {"eigenvalues": eigenvalues, "eigenvectors": eigenvectors}
    return stats


class InputPipeline:
    """train(batch, generator, shard) and evaluate(batch) for one model input size."""

    def __init__(self, stats, input_size, augmentations=(), channels_last=False,
                 ten_crop=False):
        self.stats = stats
        self.input_size = tuple(input_size)  # (h, w)
        self.augmentations = tuple(augmentations)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.ten_crop = ten_crop

    def _finish(self, images):
        images = augment.normalize(images, self.stats["mean"], self.stats["std"])
        return images.contiguous(memory_format=self.memory_format)

    def train(self, images, generator, shard=(0, 1)):
        """Augmented float batch; crops and flips run on uint8, before conversion."""
        if "crop" in self.augmentations:
            size = images.shape[-1]
            images = augment.random_crop(images, images.shape[-2:], padding=max(size // 8, 1),
                                         generator=generator, shard=shard)
        if "flip" in self.augmentations:
            images = augment.random_horizontal_flip(images, generator=generator, shard=shard)
        images = augment.fit_size(augment.to_float(images), self.input_size)
        if "pca" in self.augmentations and "pca" in self.stats:
            pca = self.stats["pca"]
            images = augment.pca_color_noise(images, pca["eigenvalues"], pca["eigenvectors"],
                                             generator=generator, shard=shard)
        return self._finish(images)

    def evaluate(self, images):
        """(N, C, h, w), or (10, N, C, h, w) crops with ten_crop."""
        # The scale training used (zero-padding, centre crop or resize): the model knows
        # objects at that size only.
        images = augment.fit_size(augment.to_float(images), self.input_size)
        if not self.ten_crop:
            return self._finish(images)
        crops = augment.ten_crop(self._with_margin(images), self.input_size)
        return torch.stack([self._finish(crop) for crop in crops])

    def _with_margin(self, images):
        """Training-scale images zero-padded by TEN_CROP_MARGIN: the crops then move the
        view a few pixels, as training's padded random crops do, without rescaling it."""
        h, w = self.input_size
        return augment.center_pad(images, (round(h * TEN_CROP_MARGIN), round(w * TEN_CROP_MARGIN)))
