"""AlexNet: the 2012 paper's network and torchvision's single-GPU variant.

variant="original" (Krizhevsky et al., 2012): 96@11x11/4, ReLU, LRN, 3x3/2 overlapping
max-pool, 256@5x5, ReLU, LRN, max-pool, 384@3x3, 384@3x3, 256@3x3, max-pool, and
dropout 0.5 before each of the two 4096-unit layers. LRN uses the paper's definition and
constants (k=2, n=5, alpha=1e-4 not divided by n, beta=0.75). groups=2 splits conv2,
conv4 and conv5 as the paper's two GPUs did (conv3 and the FC layers see both halves).
Its input is 227x227 (the size the paper's arithmetic implies).

variant="torchvision": the "one weird trick" variant torchvision ships (64, 192, 384,
256, 256 filters, no LRN), with torchvision's state_dict: 61,100,840 parameters.

fused=True runs LRN on cnnkit's kernel; fused=False uses torch.nn.LocalResponseNorm
with alpha scaled by n, which computes the same function.
"""

from torch import nn

from ._checks import check_image_batch

# The smallest inputs the stride-4 stem and three 3x3/2 pools reduce to one pixel.
MIN_INPUT_SIZE = {"original": 67, "torchvision": 63}
PAPER_LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}


def paper_lrn(fused):
    if fused:
        from cnnkit.nn.lrn import LocalResponseNorm

        return LocalResponseNorm(**PAPER_LRN, convention="paper")
    # torch divides alpha by size; the paper does not.
    return nn.LocalResponseNorm(
        PAPER_LRN["size"], PAPER_LRN["size"] * PAPER_LRN["alpha"], PAPER_LRN["beta"], PAPER_LRN["k"]
    )


def _original_features(in_channels, groups, fused):
    return nn.Sequential(
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4),
        nn.ReLU(inplace=True),
        paper_lrn(fused),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups),
        nn.ReLU(inplace=True),
        paper_lrn(fused),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _torchvision_features(in_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class AlexNet(nn.Module):
    def __init__(self, num_classes=1000, in_channels=3, variant="torchvision", groups=1,
                 dropout=0.5, fused=True):
        super().__init__()
        if variant not in MIN_INPUT_SIZE:
            raise ValueError(f"alexnet: variant must be 'original' or 'torchvision', got {variant!r}")
        if groups not in (1, 2):
            raise ValueError(f"alexnet: groups must be 1 or 2, got {groups}")
        if groups != 1 and variant != "original":
            raise ValueError("alexnet: groups=2 (the two-GPU split) exists in variant='original' only")
        self.variant = variant
        self.in_channels = in_channels
        if variant == "original":
            self.features = _original_features(in_channels, groups, fused)
        else:
            self.features = _torchvision_features(in_channels)
        # At the default input size this pool is the identity; it lets other sizes reach
        # the classifier's 256x6x6 input, as in torchvision.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        if variant == "original":
            self._init_as_paper()

    def _init_as_paper(self):
        """Section 5: weights from N(0, 0.01); biases 1 in conv2, conv4, conv5 and the
        hidden FC layers (to feed the ReLUs positive inputs early), 0 elsewhere."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        for index, layer in enumerate(convs + linears):
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.constant_(layer.bias, 1.0 if index in (1, 3, 4, 5, 6) else 0.0)

    def forward(self, x):
        check_image_batch(x, f"alexnet ({self.variant})", self.in_channels,
                          min_size=MIN_INPUT_SIZE[self.variant])
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def alexnet(num_classes=1000, in_channels=3, fused=True, variant="torchvision", groups=1, **kwargs):
    """AlexNet; variant="original" (the 2012 paper) or "torchvision" (61,100,840 parameters)."""
    return AlexNet(num_classes, in_channels, variant, groups, fused=fused, **kwargs)
