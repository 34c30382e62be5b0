"""Reference strategies: uniform, random and global-magnitude pruning plans.

They learn nothing from ``tell``; benchmarks compare the learning agents against them.

- ``uniform``: one keep ratio for every unit, the largest that meets the budget (bisection).
- ``random``: independent uniform keep ratios in ``[lower_bound, 1]`` (and, where the space offers
  layer skipping, each skippable block skipped with probability 1/2), repaired onto the budget.
- ``global_magnitude``: Torch-Pruning's global pruning: channels of every unit ranked together
  by their group L1 magnitude (normalised by the group mean), the least important removed until
  the budget is met (bisection on how many are removed).

Example:
    >>> agent = RandomAgent(space, seed=0)
    >>> [proposal] = agent.ask(1)
    >>> space.cost_fraction(proposal.params) <= space.target.fraction
    True
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from agents import (
    Setting,
    check_settings,
    check_state_format,
)
from agents.base import Agent, Proposal, Result, check_told

# Relative slack of budget checks: cost models are float sums of integer counts.
BUDGET_EPS = 1e-9


class _Baseline(Agent):
    """Shared plumbing: settings, the episode counter, plans with provenance."""

    SETTINGS: Mapping[str, Setting] = {}

    def __init__(self, space: Any, seed: int = 0, **settings: Any) -> None:
        self.space = space
        self.seed = seed
        self.settings = check_settings(self.name, settings, self.SETTINGS)
        self.episode = 0
        self._found: tuple[float | None, Any] | None = None

    def _at_budget(self, find: Any) -> Any:
        """``find()`` for the budget in force, found again whenever the online latency
        calibration (``space.calibrate_latency``) has moved it."""
        table = getattr(self.space, "latency_table", None)
        budget = None if table is None else float(table.scale)
        if self._found is None or self._found[0] != budget:
            self._found = (budget, find())
        return self._found[1]

    def _propose(
        self, keep: Mapping[str, float], skip: Sequence[str] = (), **info: Any
    ) -> Proposal:
        plan = self.space.make_plan(dict(keep), skip=skip, agent=self.name, episode=self.episode)
        params = {name: float(plan.units[name].keep_ratio) for name in keep}
        for block in self.space.skippable:
            params[f"skip:{block}"] = float(block in plan.skip)
        proposal = Proposal(plan=plan, params=params, episode=self.episode, info=info)
        self.episode += 1
        return proposal

    def tell(self, proposals: Sequence[Proposal], results: Sequence[Result]) -> None:
        """Ignored: reference strategies do not learn."""
        check_told(proposals, results)

    def state_dict(self) -> dict[str, Any]:
        """The episode counter (and RNG state where the agent draws random numbers)."""
        return {"format": f"amc.agent.{self.name}/1", "episode": self.episode}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        check_state_format(state, f"amc.agent.{self.name}/1")
        self.episode = int(state["episode"])


class UniformAgent(_Baseline):
    """The same keep ratio for every unit: the largest that meets the budget.

    Every ``ask`` returns this one plan; it is the reference a non-uniform plan must beat.
    The ratio is found again whenever the online latency calibration has moved the budget
    (``space.calibrate_latency``), as every other agent's plans follow it.
    """

    name = "uniform"

    @property
    def keep_ratio(self) -> float:
        """The largest uniform keep ratio that meets the budget as now calibrated."""
        return float(self._at_budget(lambda: uniform_keep_ratio(self.space)))

    def ask(self, n: int = 1) -> list[Proposal]:
        """``n`` copies of the uniform plan (a reference, not a search)."""
        return [self._propose(_uniform(self.space, self.keep_ratio)) for _ in range(n)]


class RandomAgent(_Baseline):
    """Independent uniform keep ratios in ``[lower_bound, 1]`` per unit (and each skippable
    block skipped with probability 1/2 where the space offers layer skipping), repaired onto
    the budget with ``space.repair``.

    Episode e draws from a generator seeded with ``(seed, e)``: the plans depend on the episode
    number alone, so a search resumed from a checkpoint older than its last trials (whose
    episode counter is moved past the recorded ones) draws new plans, not the lost ones again.
    """

    name = "random"

    def ask(self, n: int = 1) -> list[Proposal]:
        """``n`` random plans, each repaired onto the budget."""
        proposals = []
        low = self.space.lower_bound
        for _ in range(n):
            rng = np.random.default_rng((self.seed, self.episode))
            keep = {
                unit.name: float(rng.uniform(low, 1.0)) if unit.channel_prunable else 1.0
                for unit in self.space.units
            }
            skip = [block for block in self.space.skippable if rng.random() < 0.5]
            proposals.append(self._propose(self.space.repair(keep, skip=skip), skip))
        return proposals


class GlobalMagnitudeAgent(_Baseline):
    """Torch-Pruning-style global magnitude pruning onto the budget (deterministic).

    Each unit's channels are scored with Torch-Pruning's ``GroupMagnitudeImportance`` (L1, or
    L2 when the space's criterion is ``l2``) over every layer the unit couples, normalised by
    the group's mean so units of different scale compare. Channels are removed in increasing
    score order across all units, never below ``lower_bound`` of a unit, and the number removed
    is bisected to the least that meets the budget (again whenever the online latency
    calibration has moved it).
    """

    name = "global_magnitude"

    def __init__(self, space: Any, seed: int = 0, **settings: Any) -> None:
        super().__init__(space, seed, **settings)
        self.scores = channel_scores(space)

    @property
    def keep(self) -> dict[str, float]:
        """The global-magnitude keep ratios that meet the budget as now calibrated."""
        return dict(self._at_budget(lambda: global_keep(self.space, self.scores)))

    def ask(self, n: int = 1) -> list[Proposal]:
        """``n`` copies of the global-magnitude plan."""
        return [self._propose(self.keep) for _ in range(n)]


def _uniform(space: Any, keep_ratio: float) -> dict[str, float]:
    return {unit.name: keep_ratio if unit.channel_prunable else 1.0 for unit in space.units}


def meets_budget(space: Any, keep: Mapping[str, float]) -> bool:
    """Whether ``keep`` meets the space's target (with a tiny float slack)."""
    fraction = space.target.fraction
    return space.cost_fraction(keep) <= fraction * (1 + BUDGET_EPS) + BUDGET_EPS


def uniform_keep_ratio(space: Any, iterations: int = 60) -> float:
    """The largest single keep ratio in ``[lower_bound, 1]`` whose plan meets the budget."""
    low, high = space.lower_bound, 1.0
    if meets_budget(space, _uniform(space, high)):
        return high
    for _ in range(iterations):
        middle = (low + high) / 2
        if meets_budget(space, _uniform(space, middle)):
            low = middle
        else:
            high = middle
    return low


def channel_scores(space: Any) -> dict[str, np.ndarray]:
    """Per unit, Torch-Pruning's normalised group magnitude of each output channel."""
    import torch_pruning as tp

    from amc.units import build_graph

    model = copy.deepcopy(space.model).eval()
    graph = build_graph(model, space.example_inputs)
    p = 2 if getattr(space, "criterion", "l1") == "l2" else 1
    importance = tp.importance.GroupMagnitudeImportance(p=p, normalizer="mean")
    scores = {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for unit in space.units:
            root = model.get_submodule(unit.name)
            pruner = graph.get_pruner_of_module(root)
            group = graph.get_pruning_group(
                root, pruner.prune_out_channels, list(range(unit.channels))
            )
            values = importance(group)
            if values is None:  # nothing to score: keep the first channels (as apply_plan does)
                values = torch.arange(unit.channels, 0, -1, dtype=torch.float32)
            values = values.detach().float().cpu().flatten()
            if values.numel() != unit.channels and values.numel() % unit.channels == 0:
                values = values.reshape(unit.channels, -1).mean(1)
            scores[unit.name] = values.numpy()
    return scores


def global_keep(space: Any, scores: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Keep ratios after removing the globally least important channels onto the budget."""
    units = [unit for unit in space.units if unit.channel_prunable]
    # global order: ascending score, ties broken by unit order then channel index
    entries = sorted(
        (float(score), index, channel)
        for index, unit in enumerate(units)
        for channel, score in enumerate(scores[unit.name])
    )
    floors = [max(1, int(np.ceil(space.lower_bound * unit.channels - 1e-9))) for unit in units]
    owner = np.array([index for _, index, _ in entries], dtype=np.int64)

    def keep_after(removed: int) -> dict[str, float]:
        cut = np.bincount(owner[:removed], minlength=len(units))
        keep = {unit.name: 1.0 for unit in space.units}
        for index, unit in enumerate(units):
            kept = max(floors[index], unit.channels - int(cut[index]))
            keep[unit.name] = kept / unit.channels
        return keep

    low, high = 0, len(entries)
    if meets_budget(space, keep_after(low)):
        return keep_after(low)
    if not meets_budget(space, keep_after(high)):
        return space.repair(keep_after(high))
    while high - low > 1:  # invariant: low fails, high meets the budget
        middle = (low + high) // 2
        if meets_budget(space, keep_after(middle)):
            high = middle
        else:
            low = middle
    return keep_after(high)
