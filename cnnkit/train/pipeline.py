"""From uint8 batches to the model's input: augmentation, size, normalisation.

In-memory data sets (MNIST, CIFAR) arrive at their own size. Image folders arrive decoded
by `decode_transform`: for AlexNet's recipe, the short side resized to 256 and the central
256x256 kept, from which training takes random 224 (or 227) crops and evaluation the
centre or ten crops; with "resized_crop", at the model's size already.
"""

import torch

from cnnkit.data import (
    BatchLoader,
    FolderLoader,
    ImageFolder,
    RandomResizedCrop,
    ResizeCenterCrop,
    augment,
)

TEN_CROP_MARGIN = 8 / 7  # AlexNet: 224 crops of 256 images


def folder_image_size(input_size):
    """The side image-folder images are decoded to, for a model input of (h, w): 256 for
    the ImageNet models (AlexNet's 224 crops and Caffe's 227 alike), 8/7 of the input for
    the others."""
    side = max(input_size)
    return 256 if 224 <= side <= 256 else round(side * TEN_CROP_MARGIN)


def data_statistics(train_set, augmentations):
    """What the pipeline needs from the training set (kept in checkpoints so that
    evaluation does not need the training set): channel mean/std, colour PCA. An image
    folder takes ImageNet's."""
    if isinstance(train_set, ImageFolder):
        stats = {"mean": list(augment.IMAGENET_MEAN), "std": list(augment.IMAGENET_STD)}
        if "pca" in augmentations:
            stats["pca"] = {"eigenvalues": torch.tensor(augment.IMAGENET_PCA_EIGENVALUES),
                            "eigenvectors": torch.tensor(augment.IMAGENET_PCA_EIGENVECTORS)}
        return stats
    mean, std = augment.channel_stats(train_set.images)
    stats = {"mean": mean, "std": std}
    if "pca" in augmentations and train_set.images.shape[1] == 3:
        eigenvalues, eigenvectors = augment.compute_color_pca(train_set.images)
        stats["pca"] = {"eigenvalues": eigenvalues, "eigenvectors": eigenvectors}
    return stats


def make_loader(dataset, batch_size, pipeline, *, train, workers=0, on_skip=None, **options):
    """A data set's loader: a BatchLoader over in-memory tensors, or a FolderLoader whose
    `workers` decode an image folder with the pipeline's per-image step; `options` are
    BatchLoader's (shuffle, seed, rank, world_size, pad, device)."""
    if isinstance(dataset, ImageFolder):
        return FolderLoader(dataset, batch_size, transform=pipeline.decode_transform(train),
                            workers=workers, on_skip=on_skip, **options)
    return BatchLoader(dataset, batch_size, **options)


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

    def decode_transform(self, train):
        """The per-image step for image-folder files (cnnkit.data.decode)."""
        if train and "resized_crop" in self.augmentations:
            return RandomResizedCrop(self.input_size)
        return ResizeCenterCrop(folder_image_size(self.input_size))

    def _larger_than_input(self, images):
        return images.shape[-2] > self.input_size[0] and images.shape[-1] > self.input_size[1]

    def train(self, images, generator, shard=(0, 1)):
        """Augmented float batch; crops and flips run on uint8, before conversion."""
        if "crop" in self.augmentations:
            if self._larger_than_input(images):  # AlexNet: random 224 crops of 256 images
                images = augment.random_crop(images, self.input_size, generator=generator,
                                             shard=shard)
            else:  # CIFAR: a translation by up to 1/8 of the image, zeros shifted in
                images = augment.random_crop(images, images.shape[-2:],
                                             padding=max(images.shape[-1] // 8, 1),
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
        images = augment.to_float(images)
        if self.ten_crop and self._larger_than_input(images):
            views = images  # AlexNet's ten crops of its 256x256 images
        else:
            # The scale training used (zero-padding, centre crop or resize): the model knows
            # objects at that size only.
            images = augment.fit_size(images, self.input_size)
            if not self.ten_crop:
                return self._finish(images)
            views = self._with_margin(images)
        crops = augment.ten_crop(views, self.input_size)
        return torch.stack([self._finish(crop) for crop in crops])

    def _with_margin(self, images):
        """Training-scale images zero-padded by TEN_CROP_MARGIN: the crops then move the
        view a few pixels, as training's padded random crops do, without rescaling it."""
        h, w = self.input_size
        return augment.center_pad(images, (round(h * TEN_CROP_MARGIN), round(w * TEN_CROP_MARGIN)))
