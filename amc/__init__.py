"""amc: search and apply non-uniform per-layer pruning plans (AutoML for Model Compression).

Example:
    >>> import torch, amc
    >>> model = amc.zoo.get_model("resnet20")
    >>> x = torch.randn(1, 3, 32, 32)
    >>> plan = amc.uniform_plan(model, x, keep_ratio=0.5)
    >>> pruned = amc.apply_plan(model, plan, x)
    >>> amc.count_flops(pruned, x) < amc.count_flops(model, x)
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amc import zoo
    from amc.artifacts import load_pruned, save_pruned
    from amc.errors import AmcError
    from amc.measure import LatencyStats, count_flops, count_params, measure_latency, model_size
    from amc.plan import PruningPlan, UnitPlan, uniform_plan, validate_plan
    from amc.prune import apply_plan
    from amc.schedule import PruningRound, iterative_prune, round_schedule
    from amc.units import Unit, analyze, discover_units

# The public names and the module each lives in, imported on first use (PEP 562): `import amc`
# and the `amc` command stay light (no torch) until a name that needs torch is touched.
_LAZY = {
    "zoo": "amc.zoo",
    "load_pruned": "amc.artifacts",
    "save_pruned": "amc.artifacts",
    "AmcError": "amc.errors",
    "LatencyStats": "amc.measure",
    "count_flops": "amc.measure",
    "count_params": "amc.measure",
    "measure_latency": "amc.measure",
    "model_size": "amc.measure",
    "PruningPlan": "amc.plan",
    "UnitPlan": "amc.plan",
    "uniform_plan": "amc.plan",
    "validate_plan": "amc.plan",
    "apply_plan": "amc.prune",
    "PruningRound": "amc.schedule",
    "iterative_prune": "amc.schedule",
    "round_schedule": "amc.schedule",
    "Unit": "amc.units",
    "analyze": "amc.units",
    "discover_units": "amc.units",
}

__version__ = "0.1.0"

__all__ = [
    "AmcError",
    "LatencyStats",
    "PruningPlan",
    "PruningRound",
    "Unit",
    "UnitPlan",
    "analyze",
    "apply_plan",
    "count_flops",
    "count_params",
    "discover_units",
    "iterative_prune",
    "load_pruned",
    "measure_latency",
    "model_size",
    "round_schedule",
    "save_pruned",
    "uniform_plan",
    "validate_plan",
    "zoo",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'amc' has no attribute {name!r}")
    value = importlib.import_module(module)
    if name != "zoo":
        value = getattr(value, name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
