"""The one protocol every search strategy speaks: ask for plans, tell their results.

Like Optuna's ask/tell: ``ask(n)`` returns up to ``n`` proposals (full pruning plans);
``tell(proposals, results)`` feeds back what the evaluator measured for each one, in the same
order, ``None`` for a failed evaluation. A plan measured over its target is told as a mapping
with ``"over_budget": 1.0``, its metrics and, as ``"reward"``, the reward it would get at zero
accuracy (``amc.search.penalty_of``), so that the agent learns to avoid it (DDPG stores it in
its replay buffer; the Optuna agents complete its trial with that value and, where the sampler
takes constraints, an infeasible ``budget`` constraint). Agents hold no evaluator
and no storage, so the same agent runs in a plain loop, in ``amc.search.run_search`` on Ray, or
in a test.

Optional: ``rebuild_replay(proposals_with_results) -> int``. On resume the service calls it after
``load_state_dict`` with a ``(proposal, result)`` pair per completed (or over-budget) trial of
the record, oldest first, so that an agent gets back what its checkpoint lacks (DDPG its replay
buffer; the Optuna agents the trials told after the last checkpoint). It returns how many trials
it took in.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from amc.plan import PruningPlan

# What an evaluation reports back to an agent: "reward" always (higher is better); metrics such
# as "accuracy", "latency_ms", "flops", "params" where measured; "over_budget": 1.0 for a plan
# measured over its target (its reward is then the penalty). None marks a failed evaluation.
Result = Mapping[str, float] | None


@dataclass(frozen=True)
class Proposal:
    """One plan an agent wants evaluated.

    Attributes:
        plan: the full pruning plan (meets the budget).
        params: the per-unit decisions as plain numbers (recorded as Optuna trial params).
        episode: the agent's running count of proposals, from 0.
        info: agent-specific JSON-ready data it needs back in ``tell`` (e.g. DDPG's actions).
    """

    plan: PruningPlan
    params: Mapping[str, float]
    episode: int
    info: Mapping[str, Any] = field(default_factory=dict)


class Agent(abc.ABC):
    """Base class of every search strategy (see the module docstring for the protocol)."""

    name: str = ""
    #: names of the objectives this agent optimises, in order (all maximised unless noted)
    objectives: tuple[str, ...] = ("reward",)

    @abc.abstractmethod
    def ask(self, n: int = 1) -> list[Proposal]:
        """Return up to ``n`` proposals."""

    @abc.abstractmethod
    def tell(self, proposals: Sequence[Proposal], results: Sequence[Result]) -> None:
        """Feed back the results of ``proposals`` (same order; ``None`` for failures)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: JSON-ready values and tensors only, never pickle."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`, so the next ``ask`` continues identically."""


def check_told(proposals: Sequence[Proposal], results: Sequence[Result]) -> None:
    """Refuse a ``tell`` whose proposals and results do not pair up one to one."""
    if len(proposals) != len(results):
        raise ValueError(
            f"tell got {len(proposals)} proposals but {len(results)} results; "
            f"pass one result (or None) per proposal"
        )
