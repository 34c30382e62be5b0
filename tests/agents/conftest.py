"""Shared pieces of the agent tests: small search spaces, a synthetic scorer, state round trips."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load, save
from torch import nn

from amc.space import SearchSpace
from tests.tiny_models import LeNet, ResidualNet

X = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))

# Small settings so every agent's learning path runs in a fraction of a second.
FAST_SETTINGS: dict[str, dict[str, Any]] = {
    "ddpg": {"warmup": 2, "net_arch": [16, 16], "batch_size": 8},
    "tpe": {"n_startup_trials": 2},
    "cmaes": {"n_startup_trials": 1, "popsize": 4},
    "nsga2": {"population_size": 4},
    "random": {},
    "uniform": {},
    "global_magnitude": {},
}


def _build(model: nn.Module, target: str, **options: Any) -> SearchSpace:
    torch.manual_seed(0)
    return SearchSpace.build(model.eval(), X, target, **options)


@pytest.fixture(scope="session")
def lenet_space() -> SearchSpace:
    """LeNet (conv1, conv2, fc1) at half the FLOPs."""
    torch.manual_seed(0)
    return _build(LeNet(), "flops=0.5")


@pytest.fixture(scope="session")
def residual_nm_space() -> SearchSpace:
    """A residual net at 60% of its params, with 2:4 offered to eligible units."""
    torch.manual_seed(0)
    return _build(ResidualNet(), "params=0.6", nm=(2, 4), round_to=4)


@pytest.fixture(scope="session")
def residual_skip_space() -> SearchSpace:
    """The residual net at 60% of its FLOPs, its two residual blocks offered to skip."""
    torch.manual_seed(0)
    return _build(ResidualNet(), "flops=0.6", skip_blocks=True)


class ChainNet(nn.Module):
    """Six convs of growing width and shrinking resolution: units of very different cost."""

    widths = (16, 16, 32, 32, 64, 64)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for index, width in enumerate(self.widths):
            stride = 2 if index in (2, 4) else 1
            layers += [nn.Conv2d(channels, width, 3, stride, 1), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture(scope="session")
def chain_space() -> SearchSpace:
    """ChainNet at 30% of its FLOPs: six units for the search-quality tests."""
    torch.manual_seed(0)
    return _build(ChainNet(), "flops=0.3")


class HiddenSensitivity:
    """A synthetic evaluator: accuracy falls quadratically with each unit's removed fraction.

    ``reward = 1 - sum_i s_i * (1 - keep_i) ** 2`` with hidden per-unit sensitivities ``s_i``
    (``keep_i`` from the plan's channel counts), so no training is needed and the optimum under
    the budget can be computed independently (see ``optimum``).
    """

    def __init__(self, space: SearchSpace, sensitivities: Mapping[str, float]) -> None:
        self.space = space
        self.sensitivities = dict(sensitivities)
        self.calls = 0

    def keep(self, plan: Any) -> dict[str, float]:
        channels = plan.channels(self.space.graph)
        return {unit.name: channels[unit.name] / unit.channels for unit in self.space.units}

    def reward_of_keep(self, keep: Mapping[str, float]) -> float:
        return 1.0 - sum(s * (1.0 - keep[name]) ** 2 for name, s in self.sensitivities.items())

    def __call__(self, plan: Any) -> dict[str, float]:
        self.calls += 1
        keep = self.keep(plan)
        reward = self.reward_of_keep(keep)
        return {
            "reward": reward,
            "accuracy": reward,
            "latency_ms": 10.0 * self.space.cost_fraction(keep),
        }


def random_sensitivities(space: SearchSpace, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {unit.name: float(rng.uniform(0.05, 1.0)) for unit in space.units}


def plan_cost_fraction(space: SearchSpace, plan: Any) -> float:
    """The target resource of ``plan`` as a fraction of dense, from its channel counts."""
    channels = plan.channels(space.graph)
    keep = {unit.name: channels[unit.name] / unit.channels for unit in space.units}
    return space.cost_fraction(keep, skip=plan.skip)


def round_trip(state: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``state`` as JSON text plus a safetensors blob and read it back.

    Fails on anything that is neither JSON nor a tensor (so no pickle can hide in a state).
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(value, Mapping):
            assert all(isinstance(k, str) for k in value), f"non-string key at {path}"
            return {k: encode(v, f"{path}/{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [encode(v, f"{path}/{i}") for i, v in enumerate(value)]
        assert value is None or isinstance(value, bool | int | float | str), (
            f"{path}: {type(value).__name__} is neither JSON nor a tensor"
        )
        return value

    text = json.dumps(encode(state, ""))
    blob = save(tensors) if tensors else b""
    loaded = load(blob) if blob else {}

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__tensor__"}:
                return loaded[value["__tensor__"]]
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(json.loads(text))
