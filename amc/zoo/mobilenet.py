"""CIFAR-style MobileNetV2 (Sandler et al., 2018): stride-1 stem and first stride-2 removed."""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s); the second stage has stride 1
# instead of ImageNet's 2, as usual for 32x32 inputs.
_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of divisor, never dropping more than 10% (as in the paper)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """Expand 1x1 (none when t=1), depthwise 3x3, linear project 1x1; residual if shapes match."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv1: nn.Conv2d | None = None
        self.bn1: nn.BatchNorm2d | None = None
        if expansion != 1:
            self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.conv1 is not None and self.bn1 is not None:
            out = self.act(self.bn1(self.conv1(out)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for small images; ``width_mult`` scales every layer but the last conv."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        stem = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks: list[nn.Module] = []
        channels = stem
        for expansion, width, repeats, stride in _CONFIG:
            out = _make_divisible(width * width_mult)
            for index in range(repeats):
                blocks.append(
                    InvertedResidual(channels, out, stride if index == 0 else 1, expansion)
                )
                channels = out
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(channels, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.act = nn.ReLU6(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(self.layers(x))))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0
) -> CifarMobileNetV2:
    """CIFAR-style MobileNetV2 (2.2M parameters at width 1.0 and 10 classes).

    Example:
        >>> mobilenetv2(width_mult=0.5)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return CifarMobileNetV2(
        num_classes=num_classes, in_channels=in_channels, width_mult=width_mult
    )
