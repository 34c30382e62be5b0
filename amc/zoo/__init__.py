"""Built-in models and data sets.

Example:
    >>> from amc import zoo
    >>> data = zoo.get_data("digits", input_shape=(1, 32, 32), limit=64)
    >>> model = zoo.get_model("resnet20", num_classes=data.num_classes, in_channels=1)
"""

from __future__ import annotations

from amc.zoo.data import DATASETS, DataSplits, get_data
from amc.zoo.models import MODELS, get_model, resolve_model

__all__ = ["DATASETS", "MODELS", "DataSplits", "get_data", "get_model", "resolve_model"]
