"""The model registry: zoo names and ``package.module:callable`` specs to ``nn.Module``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from amc.errors import ModelSpecError, unknown_name
from amc.zoo._spec import call_with_accepted, import_callable, is_callable_spec
from amc.zoo.mobilenet import mobilenetv2
from amc.zoo.resnet import resnet20, resnet56
from amc.zoo.vgg import vgg11
from amc.zoo.vit import vit_tiny

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vgg11": vgg11,
    "mobilenetv2": mobilenetv2,
    "vit_tiny": vit_tiny,
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, passing ``kwargs`` (``num_classes``, ``in_channels``, ...).

    Raises:
        UnknownNameError: ``name`` is not in :data:`MODELS` (with a "did you mean").

    Example:
        >>> get_model("resnet20", num_classes=10, in_channels=1).fc.out_features
        10
    """
    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[name](**kwargs)


def resolve_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build a model from a zoo name or a ``package.module:callable`` spec.

    Only the keyword arguments the factory's signature accepts are passed, so callers can
    always offer ``num_classes``, ``in_channels`` and ``image_size``.

    Raises:
        UnknownNameError: an unknown zoo name.
        ModelSpecError: a callable spec that cannot be imported or does not return a module.

    Example:
        >>> resolve_model("vgg11", num_classes=5, image_size=32).classifier.out_features
        5
    """
    if not is_callable_spec(spec):
        if spec not in MODELS:
            raise unknown_name("model", spec, MODELS)
        return call_with_accepted(MODELS[spec], kwargs)
    factory = import_callable(spec, "model", ModelSpecError)
    model = call_with_accepted(factory, kwargs)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"Model spec {spec!r} returned {type(model).__name__}, expected a torch.nn.Module."
        )
    return model
