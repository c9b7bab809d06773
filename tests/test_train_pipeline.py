"""InputPipeline: evaluation shows the model images at the scale training showed them."""

import torch

from cnnkit.train.pipeline import InputPipeline


def _images(c, size, n=3):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def _views(images, input_size):
    """(single view, ten crops) with an identity normalisation."""
    channels = images.shape[1]
    stats = {"mean": [0.0] * channels, "std": [1.0] * channels}
    single = InputPipeline(stats, input_size).evaluate(images)
    crops = InputPipeline(stats, input_size, ten_crop=True).evaluate(images)
    return single, crops


def test_ten_crop_keeps_lenet_training_scale():
    # Training zero-pads 28x28 Fashion-MNIST into LeNet's 32x32 field, no rescaling.
    single, crops = _views(_images(1, 28), (32, 32))
    assert crops.shape == (10, 3, 1, 32, 32)
    assert torch.equal(crops[4], single)  # the centre crop is the single view
    # The 37x37 canvas pads 2 pixels before and 3 after: the corners are shifts of the
    # single view by those margins, never a resized copy.
    assert torch.equal(crops[0][..., 2:, 2:], single[..., :30, :30])
    assert torch.equal(crops[3][..., :29, :29], single[..., 3:, 3:])
    assert torch.equal(crops[5], crops[0].flip(-1))


def test_ten_crop_keeps_alexnet_training_scale():
    # Training resizes CIFAR's 32x32 to 224x224; the crops come from that image, padded.
    single, crops = _views(_images(3, 32, n=2), (224, 224))
    assert crops.shape == (10, 2, 3, 224, 224)
    assert torch.equal(crops[4], single)
    assert torch.equal(crops[0][..., 16:, 16:], single[..., :208, :208])
