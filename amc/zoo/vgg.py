"""CIFAR-style VGG with batch norm and a global-average-pooled linear classifier."""

from __future__ import annotations

import torch
from torch import nn

_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG feature extractor (conv-BN-ReLU, max pools), global average pool, one Linear."""

    def __init__(
        self, config: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg11(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-11 with batch norm for 32x32 inputs (9.2M parameters at 10 classes).

    Inputs need at least 32x32 pixels (five 2x2 max pools).

    Example:
        >>> vgg11(num_classes=10)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return CifarVGG(_VGG11, num_classes=num_classes, in_channels=in_channels)
