"""Shared fixtures: tiny models and their example inputs."""

from __future__ import annotations

import os

import pytest
import torch

from tests.tiny_models import TINY_MODELS

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, torch.Tensor]:
    """(name, model in eval mode, example input) for each tiny model."""
    torch.manual_seed(0)
    model = TINY_MODELS[request.param]().eval()
    return request.param, model, torch.randn(2, 1, 16, 16)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
