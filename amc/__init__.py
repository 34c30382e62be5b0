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

from amc import zoo
from amc.artifacts import load_pruned, save_pruned
from amc.errors import AmcError
from amc.measure import LatencyStats, count_flops, count_params, measure_latency, model_size
from amc.plan import PruningPlan, UnitPlan, uniform_plan, validate_plan
from amc.prune import apply_plan
from amc.schedule import PruningRound, iterative_prune, round_schedule
from amc.units import Unit, analyze, discover_units

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
