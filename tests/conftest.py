"""Shared fixtures: tiny models and their example inputs."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import TINY_MODELS

# One thread per test process: on a shared 2-core machine more threads fight each other.
torch.set_num_threads(1)


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, torch.Tensor]:
    """(name, model in eval mode, example input) for each tiny model."""
    torch.manual_seed(0)
    model = TINY_MODELS[request.param]().eval()
    return request.param, model, torch.randn(2, 1, 16, 16)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (`-n 2 --dist loadgroup`, scripts/test.sh) every test that uses the
    # session's local Ray runs in one worker, so one Ray is started, not one per worker.
    for item in items:
        uses_ray = "ray_session" in getattr(item, "fixturenames", ())
        if uses_ray or item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.xdist_group("ray"))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session() -> object:
    """One local Ray (2 CPUs, no dashboard) for every ``@pytest.mark.ray`` test of the session."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
