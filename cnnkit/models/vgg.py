"""VGG-11/13/16/19 and their BatchNorm forms (Simonyan and Zisserman, 2014; configurations
A, B, D, E), state_dict-identical to torchvision's.

fused=True runs each BatchNorm + ReLU of the _bn forms as one cnnkit op. `features` holds
torchvision's layers at torchvision's indices (features.0 conv, features.1 BN, features.2
ReLU, ...) and skips a ReLU that the norm before it has applied.
"""

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.nn.blocks import applies_relu, default_norm_layer

from ._checks import check_image_batch

CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}

# Five 2x2/2 max-pools: a smaller image has no pixel left before the classifier.
MIN_INPUT_SIZE = 32


def make_layers(config, in_channels=3, batch_norm=False, fused=True):
    norm_layer = default_norm_layer(fused) if batch_norm else None
    layers = []
    for value in config:
        if value == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, value, kernel_size=3, padding=1))
        if norm_layer is not None:
            layers.append(norm_layer(value))
        layers.append(nn.ReLU(inplace=True))
        in_channels = value
    return Features(*layers)


class Features(nn.Sequential):
    """VGG's convolutional part: nn.Sequential's forward, except that a ReLU right after a
    norm that applies the ReLU itself (cnnkit's fused BatchNormReLU2d) is skipped. Decided
    at each call, so a norm swapped in after construction runs with its ReLU."""

    def forward(self, input):
        previous = None
        for layer in self:
            if not (isinstance(layer, nn.ReLU) and applies_relu(previous)):
                input = layer(input)
            previous = layer
        return input


class VGG(nn.Module):
    def __init__(self, features, num_classes=1000, init_weights=True, dropout=0.5, *,
                 in_channels=3, name="VGG"):
        super().__init__()
        self.in_channels = in_channels
        self.name = name
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, _BatchNorm):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x):
        check_image_batch(x, self.name, self.in_channels, min_size=MIN_INPUT_SIZE)
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def _vgg(name, config, batch_norm, num_classes, in_channels, fused, **kwargs):
    features = make_layers(CONFIGS[config], in_channels, batch_norm, fused)
    return VGG(features, num_classes, in_channels=in_channels, name=name, **kwargs)


def vgg11(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """VGG-11 (configuration A): 132,863,336 parameters."""
    return _vgg("vgg11", "A", False, num_classes, in_channels, fused, **kwargs)


def vgg11_bn(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """VGG-11 with BatchNorm: 132,868,840 parameters."""
    return _vgg("vgg11_bn", "A", True, num_classes, in_channels, fused, **kwargs)


def vgg13(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """VGG-13 (configuration B): 133,047,848 parameters."""
    return _vgg("vgg13", "B", False, num_classes, in_channels, fused, **kwargs)


def vgg13_bn(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """VGG-13 with BatchNorm: 133,053,736 parameters."""
    return _vgg("vgg13_bn", "B", True, num_classes, in_channels, fused, **kwargs)


def vgg16(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """VGG-16 (configuration D): 138,357,544 parameters."""
    return _vgg("vgg16", "D", False, num_classes, in_channels, fused, **kwargs)


def vgg16_bn(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """VGG-16 with BatchNorm: 138,365,992 parameters."""
    return _vgg("vgg16_bn", "D", True, num_classes, in_channels, fused, **kwargs)


def vgg19(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """VGG-19 (configuration E): 143,667,240 parameters."""
    return _vgg("vgg19", "E", False, num_classes, in_channels, fused, **kwargs)


def vgg19_bn(num_classes=1000, in_channels=3, fused=True, **kwargs):
    """VGG-19 with BatchNorm: 143,678,248 parameters."""
    return _vgg("vgg19_bn", "E", True, num_classes, in_channels, fused, **kwargs)
