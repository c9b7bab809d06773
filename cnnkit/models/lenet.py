"""LeNet-5 in its usual modern form (LeCun et al., 1998, with tanh and average pooling).

C1 6@5x5 -> tanh -> S2 2x2 avg -> C3 16@5x5 -> tanh -> S4 2x2 avg -> C5 120@5x5 -> tanh
-> F6 84 -> tanh -> output. 61,706 parameters with 1 input channel and 10 classes.
There is no BatchNorm to fuse, so fused=True and fused=False build the same network.
"""

import torch.nn.functional as F
from torch import nn

from cnnkit.nn.tracing import traced_function_call

from ._checks import check_image_batch

# The network is laid out for 32x32 images (MNIST's 28x28 digits, padded by 2, as in the paper).
INPUT_SIZE = 32
PADDED_INPUT_SIZE = 28


class LeNet5(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),  # C1: 32 -> 28
            nn.Tanh(),
            nn.AvgPool2d(2),  # S2: 28 -> 14
            nn.Conv2d(6, 16, kernel_size=5),  # C3: 14 -> 10
            nn.Tanh(),
            nn.AvgPool2d(2),  # S4: 10 -> 5
            nn.Conv2d(16, 120, kernel_size=5),  # C5: 5 -> 1
            nn.Tanh(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(120, 84),  # F6
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, input):
        check_image_batch(
            input,
            "lenet5",
            self.in_channels,
            exact_sizes=((INPUT_SIZE, INPUT_SIZE), (PADDED_INPUT_SIZE, PADDED_INPUT_SIZE)),
        )
        return self.classifier(self.features(pad_to_input_size(input)))


def pad_to_input_size(input):
    """A 28x28 batch zero-padded by 2 to the network's 32x32; a 32x32 one as it is. (One
    call in a torch.fx graph: what it does depends on the input's size.)"""
    traced = traced_function_call(pad_to_input_size, input)
    if traced is not None:
        return traced
    if input.shape[-1] == PADDED_INPUT_SIZE:
        return F.pad(input, (2, 2, 2, 2))
    return input


def lenet5(num_classes=10, in_channels=1, fused=True):
    """LeNet-5 for 32x32 (or 28x28, zero-padded by 2) images."""
    del fused  # nothing to fuse: no BatchNorm, and tanh/avg-pool already run as single ops
    return LeNet5(num_classes=num_classes, in_channels=in_channels)
