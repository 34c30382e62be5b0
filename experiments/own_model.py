"""Bring your own model and data: the two factory functions experiments/own_model.yaml names.

amc calls ``model: experiments.own_model:my_model`` and ``data: experiments.own_model:my_data``
with the keyword arguments each signature accepts: the model factory is offered
``num_classes``, ``in_channels`` and ``image_size`` (plus ``model_kwargs``), the data factory
``input_shape``. Copy this file next to your code, replace the bodies with your own network and
your own data loading, and point the YAML at ``yourpackage.yourmodule:your_function``.

The data factory returns :class:`amc.zoo.DataSplits` (or a ``(train, test)`` pair of datasets
of ``(input, label)`` samples). Here it draws simple shapes, so nothing is downloaded.

Try them:
    >>> data = my_data(input_shape=(1, 32, 32))
    >>> model = my_model(num_classes=data.num_classes, in_channels=1)
    >>> model(data.train.tensors[0][:2]).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from amc.zoo import DataSplits

SHAPES = ("horizontal bar", "vertical bar", "square", "cross")


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MyNet(nn.Module):
    """A plain CNN: five conv-BN-ReLU layers, global average pooling, a linear classifier."""

    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(in_channels, width),
            _conv(width, width),
            _conv(width, 2 * width, stride=2),
            _conv(2 * width, 2 * width),
            _conv(2 * width, 4 * width, stride=2),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


def my_model(num_classes: int = len(SHAPES), in_channels: int = 1, width: int = 16) -> nn.Module:
    """The model factory: any ``nn.Module`` whose Conv/Linear layers amc can prune."""
    return MyNet(num_classes, in_channels, width)


def my_data(
    input_shape: tuple[int, int, int] = (1, 32, 32), n: int = 1000, seed: int = 0
) -> DataSplits:
    """The data factory: ``n`` noisy images of four shapes at random places, 80/20 split."""
    channels, height, width = input_shape
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), size=n)
    images = rng.normal(0.0, 0.3, size=(n, height, width)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        size = int(rng.integers(min(height, width) // 4, min(height, width) // 2))
        top = int(rng.integers(0, height - size))
        left = int(rng.integers(0, width - size))
        middle_row, middle_col = top + size // 2, left + size // 2
        if label == 0:  # horizontal bar
            image[middle_row - 1 : middle_row + 2, left : left + size] += 1.0
        elif label == 1:  # vertical bar
            image[top : top + size, middle_col - 1 : middle_col + 2] += 1.0
        elif label == 2:  # filled square
            image[top : top + size, left : left + size] += 1.0
        else:  # cross
            image[middle_row - 1 : middle_row + 2, left : left + size] += 1.0
            image[top : top + size, middle_col - 1 : middle_col + 2] += 1.0
    inputs = torch.from_numpy(images).unsqueeze(1).expand(-1, channels, -1, -1).contiguous()
    targets = torch.from_numpy(labels).long()
    n_test = n // 5
    return DataSplits(
        train=TensorDataset(inputs[n_test:], targets[n_test:]),
        test=TensorDataset(inputs[:n_test], targets[:n_test]),
        num_classes=len(SHAPES),
        input_shape=(channels, height, width),
        name="experiments.own_model:my_data",
    )
