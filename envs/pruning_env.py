"""AMC's pruning environment: one episode walks the prunable units, one step decides one unit.

With layer skipping on offer (a space built with ``skip_blocks``), an episode first takes one
step per skippable residual block (:attr:`amc.space.SearchSpace.skippable`): an action of 0.5
or more skips the block. The unit steps follow, so the clip knows every skipped block and the
channels fill the budget the skips free. A unit wholly inside a skipped block still takes its
step (episodes keep one length), but its action is ignored and it stays dense, as
:meth:`amc.space.SearchSpace.make_plan` records it.

Observation: AMC's layer embedding of the unit to decide (He et al. 2018, section 3.1) — its
position, kind, input/output channels, input size, stride, kernel, FLOPs, the FLOPs removed so
far and still to decide, the previous action — plus N:M eligibility, the unit's measured latency
share, the target and the resource the plan uses so far; every feature is in [0, 1]. With
layer skipping the observation ends with :data:`SKIP_FEATURES`: whether the step decides a
block (a skip step describes the block's first unit), the block's share of the dense resource,
and whether the unit lies in a skipped block (its action is then ignored).

Action: on a skip step, skip the block if the first component is >= 0.5 (taken as 1 or 0).
On a unit step, a keep ratio in [0, 1], mapped to [lower_bound, 1] and then clipped by AMC's
resource-constrained rule (:meth:`amc.space.SearchSpace.clip`), so every finished plan meets the
target by construction. With an N:M pattern the action has a second component: above 0.5 asks
for the pattern on an eligible unit (clipped too: a latency target may force the cheaper choice).
``info["action"]`` is the action actually taken, post-clip, for replay buffers.

Reward: 0 until the last step; then ``scorer(plan)`` is called once (see :class:`PruningEnv`).

Example:
    >>> env = PruningEnv(model, torch.randn(1, 3, 32, 32), "flops=0.5", scorer=lambda plan: 0.0)
    >>> obs, info = env.reset(seed=0)
    >>> terminated = False
    >>> while not terminated:
    ...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    >>> info["plan"].predict(env.space.graph).flops <= 0.5 * env.space.graph.dense_flops
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from torch import nn

from amc.errors import AmcError, ConfigError, did_you_mean
from amc.plan import PruningPlan
from amc.space import SearchSpace, Target
from amc.units import UNIT_KINDS

REWARDS = ("err", "flops", "latency")

#: Names of the observation's features, in order.
FEATURES = (
    "index",
    *(f"kind_{kind}" for kind in UNIT_KINDS),
    "in_channels",
    "out_channels",
    "height",
    "width",
    "stride",
    "kernel",
    "flops",
    "flops_removed",
    "flops_rest",
    "previous_action",
    "nm_eligible",
    "latency_share",
    "target",
    "resource_used",
    "previous_nm",
)

#: Features appended to :data:`FEATURES` when the space offers layer skipping.
SKIP_FEATURES = ("skip_step", "block_share", "in_skipped_block")

Scorer = Callable[[PruningPlan], "float | Mapping[str, float]"]


class ResetNeededError(AmcError, ResetNeeded):
    """``step`` was called before ``reset`` or after the episode ended."""


class PruningEnv(gym.Env[np.ndarray, np.ndarray]):
    """AMC's environment over the units of one model (see the module docstring).

    Args:
        model: the dense model (never modified).
        example_inputs: a tensor the model accepts.
        target: ``"flops=0.5"``, ``"params=0.5"``, ``"latency=0.5"`` or a :class:`Target`.
        scorer: ``scorer(plan)`` evaluates a finished plan. A float is the reward, used as is.
            A mapping with ``"reward"`` gives it directly; otherwise its ``"error"`` (or
            ``1 - "accuracy"``) goes into AMC's reward form chosen by ``reward``.
        lower_bound, round_to, nm, criterion, device: as in :meth:`SearchSpace.build`.
        space: a prepared :class:`SearchSpace` (then model, example_inputs and target may be
            omitted; a latency table is not measured again).
        reward: AMC's reward form for a scorer that reports an error: ``"err"`` (-error),
            ``"flops"`` (-error * log FLOPs) or ``"latency"`` (-error * log latency in µs).
            FLOPs and latency come from the scorer's ``"flops"``/``"latency_ms"`` when given,
            otherwise from the space's prediction.
        latency_options: keyword arguments for measuring the latency table.
        skip_blocks: offer layer skipping, as in :meth:`SearchSpace.build` (a prepared
            ``space`` brings its own).

    Attributes:
        features: the names of the observation's features (:data:`FEATURES`, then
            :data:`SKIP_FEATURES` where the space offers layer skipping).
        blocks: the skippable blocks decided by the first steps (empty without skipping).
        episode_length: steps per episode: one per block, then one per unit.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        model: nn.Module | None = None,
        example_inputs: Any = None,
        target: str | Target | None = None,
        scorer: Scorer | None = None,
        *,
        lower_bound: float = 0.2,
        round_to: int = 1,
        nm: tuple[int, int] | None = None,
        criterion: str = "l1",
        device: str | None = "cpu",
        space: SearchSpace | None = None,
        reward: str = "err",
        latency_options: Mapping[str, Any] | None = None,
        render_mode: str | None = None,
        skip_blocks: bool = False,
    ) -> None:
        super().__init__()
        if reward not in REWARDS:
            raise ConfigError(
                f"Unknown reward {reward!r}.{did_you_mean(str(reward), REWARDS)} Expected one "
                f"of: {', '.join(REWARDS)}."
            )
        if scorer is None or not callable(scorer):
            raise ConfigError(
                f"PruningEnv needs scorer=, a callable taking a PruningPlan and returning the "
                f"reward (or a dict with 'error' or 'accuracy'); got {scorer!r}."
            )
        if render_mode is not None:
            raise ConfigError(f"PruningEnv has no render modes, got render_mode={render_mode!r}.")
        if space is None:
            if model is None or example_inputs is None or target is None:
                raise ConfigError(
                    "PruningEnv needs model=, example_inputs= and target= (e.g. 'flops=0.5'), "
                    "or a prepared space=."
                )
            space = SearchSpace.build(
                model, example_inputs, target, device=device, lower_bound=lower_bound,
                round_to=round_to, nm=nm, criterion=criterion, latency_options=latency_options,
                skip_blocks=skip_blocks,
            )  # fmt: skip
        elif target is not None and Target.parse(target) != space.target:
            raise ConfigError(
                f"target={Target.parse(target)} disagrees with the space's target "
                f"{space.target}; pass one of them."
            )
        self.space = space
        self.scorer = scorer
        self.reward_form = reward
        self.render_mode = render_mode
        self._unit_list = space.units
        self.blocks = space.skippable
        self.features = FEATURES + (SKIP_FEATURES if self.blocks else ())
        self.episode_length = len(self.blocks) + len(self._unit_list)
        self._static = self._static_features()
        self._block_unit, self._block_share = self._block_features()
        shape = (len(self.features),)
        self.observation_space = spaces.Box(0.0, 1.0, shape=shape, dtype=np.float32)
        width = 2 if space.nm is not None else 1
        self.action_space = spaces.Box(0.0, 1.0, shape=(width,), dtype=np.float32)
        self._step_index: int | None = None
        self._keep: dict[str, float] = {}
        self._nm: dict[str, bool] = {}
        self._skip: list[str] = []
        self._inside: set[str] = set()
        self._actions: list[np.ndarray] = []

    # ---------------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode at the first block to decide (without skipping: the first unit)."""
        super().reset(seed=seed)
        self._step_index = 0
        self._keep, self._nm, self._skip, self._inside, self._actions = {}, {}, [], set(), []
        if self.blocks:
            return self._observation(), {"block": self.blocks[0]}
        return self._observation(), {"unit": self._unit_list[0].name}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current block or unit; the last step returns the plan and its reward."""
        if self._step_index is None or self._step_index >= self.episode_length:
            raise ResetNeededError(
                "PruningEnv.step() was called before reset() or after the episode ended; "
                "call env.reset() to start an episode."
            )
        values = np.asarray(action, dtype=np.float64).reshape(-1)
        if values.shape != self.action_space.shape or not np.all(np.isfinite(values)):
            raise ConfigError(
                f"Expected an action of shape {self.action_space.shape} with finite values in "
                f"[0, 1], got {action!r}."
            )
        values = np.clip(values, 0.0, 1.0)
        if self._step_index < len(self.blocks):
            info = self._decide_block(values)
        else:
            info = self._decide_unit(values)
        self._step_index += 1
        if self._step_index < self.episode_length:
            return self._observation(), 0.0, False, False, info
        plan = self.space.make_plan(self._keep, self._nm, skip=self._skip, source="amc/Pruning-v0")
        result = self.scorer(plan)
        reward = self._reward(plan, result)
        info |= {
            "plan": plan,
            "keep": {name: self._keep[name] for name in self.space.names},
            "nm_choices": dict(self._nm),
            "skip": plan.skip,
            "actions": [a.copy() for a in self._actions],
            "cost_fraction": self.space.cost_fraction(self._keep, self._nm, skip=self._skip),
            "score": dict(result) if isinstance(result, Mapping) else float(result),
        }
        return self._observation(), reward, True, False, info

    def _decide_block(self, values: np.ndarray) -> dict[str, Any]:
        """A skip step (a skip never puts the budget out of reach: the space prices a skipped
        block at most as the block run at the lower bound)."""
        assert self._step_index is not None
        block = self.blocks[self._step_index]
        skipped = bool(values[0] >= 0.5)
        if skipped:
            self._skip.append(block)
        if self._step_index == len(self.blocks) - 1:
            # decided now, dense: the clip must not count them at the lower bound or with N:M
            self._inside = self.space.units_inside(self._skip)
            self._keep = dict.fromkeys(sorted(self._inside), 1.0)
        taken = np.zeros(values.size, dtype=np.float32)
        taken[0] = float(skipped)
        self._actions.append(taken)
        return {"block": block, "skip": skipped, "action": taken.copy()}

    def _decide_unit(self, values: np.ndarray) -> dict[str, Any]:
        """A unit step: AMC's clipped keep ratio (and N:M choice) for the current unit."""
        assert self._step_index is not None
        index = self._step_index - len(self.blocks)
        unit = self._unit_list[index]
        wants_nm = bool(values.size > 1 and values[1] > 0.5)
        if unit.name in self._inside:  # skipped with its block: nothing of it is left to cut
            use_nm, keep = False, 1.0
        else:
            use_nm = self.space.clip_nm(index, wants_nm, self._keep, self._nm, skip=self._skip)
            if use_nm:
                self._nm[unit.name] = True
            requested = self.space.action_to_keep(values[0])
            keep = self.space.clip(
                index, requested, self._keep, nm_choices=self._nm, skip=self._skip
            )
        self._keep[unit.name] = keep
        taken = [self.space.keep_to_action(keep) if unit.channel_prunable else 1.0]
        if values.size > 1:
            taken.append(float(values[1]) if use_nm == wants_nm else float(use_nm))
        taken_array = np.asarray(taken, dtype=np.float32)
        self._actions.append(taken_array)
        return {
            "unit": unit.name,
            "keep_ratio": keep,
            "nm": use_nm,
            "action": taken_array.copy(),
        }

    # ---------------------------------------------------------------------------------------

    def _reward(self, plan: PruningPlan, result: float | Mapping[str, float]) -> float:
        if not isinstance(result, Mapping):
            value = float(result)
        elif "reward" in result:
            value = float(result["reward"])
        else:
            if "error" in result:
                error = float(result["error"])
            elif "accuracy" in result:
                error = 1.0 - float(result["accuracy"])
            else:
                raise ConfigError(
                    f"The scorer returned {dict(result)!r}; a mapping needs 'reward', 'error' or "
                    f"'accuracy' (in [0, 1])."
                )
            value = -error * self._log_resource(result)
        if not math.isfinite(value):
            raise ConfigError(f"The scorer gave a non-finite reward ({value}) for the plan.")
        return value

    def _log_resource(self, result: Mapping[str, float]) -> float:
        """1 for R_err; log FLOPs or log latency (µs) for AMC's resource-aware forms."""
        if self.reward_form == "err":
            return 1.0
        predicted = self.space.predicted(self._keep, self._nm, skip=self._skip)
        if self.reward_form == "flops":
            amount = float(result.get("flops", predicted["flops"]))
        else:
            latency_ms = result.get("latency_ms", predicted.get("latency_ms"))
            if latency_ms is None:
                raise ConfigError(
                    "reward='latency' needs the scorer to report 'latency_ms' or a space with a "
                    "latency table (a latency target)."
                )
            amount = 1000.0 * float(latency_ms)
        return math.log(max(amount, math.e))

    def _static_features(self) -> np.ndarray:
        """Per-unit features that do not change during an episode, normalised by their max."""
        units = self._unit_list
        table = self.space.latency_table

        def normalised(values: list[float]) -> np.ndarray:
            array = np.asarray(values, dtype=np.float64)
            top = array.max() if array.size else 0.0
            return array / top if top > 0 else np.zeros_like(array)

        kinds = np.array([[float(u.kind == kind) for kind in UNIT_KINDS] for u in units])
        count = len(units)
        columns = [
            np.arange(count) / max(1, count - 1),
            *kinds.T,
            normalised([u.in_channels for u in units]),
            normalised([u.channels for u in units]),
            normalised([u.spatial[0] for u in units]),
            normalised([u.spatial[1] for u in units]),
            normalised([max(u.stride) for u in units]),
            normalised([max(u.kernel) for u in units]),
            normalised([u.flops for u in units]),
        ]
        self._nm_column = np.array([float(self.space.offers_nm(u)) for u in units])
        self._latency_column = np.array(
            [table.max_saving_share(u.name) if table else 0.0 for u in units]
        )
        total = float(self.space.graph.dense_flops) or 1.0
        later = np.cumsum([u.flops for u in units][::-1])[::-1]
        self._rest_column = np.clip((later - np.array([u.flops for u in units])) / total, 0, 1)
        return np.stack(columns, axis=1)

    def _block_features(self) -> tuple[list[int], list[float]]:
        """Per skippable block: the position of the unit describing it, and its resource share.

        The describing unit is the first one rooted in the block (else the first touching it);
        the share is what skipping the block alone saves of the dense model's resource.
        """
        names = [unit.name for unit in self._unit_list]
        positions, shares = [], []
        dense = self.space.cost_fraction({})
        for block in self.blocks:
            prefix = f"{block}."
            rooted = [i for i, name in enumerate(names) if name.startswith(prefix)]
            touching = [
                i
                for i, unit in enumerate(self._unit_list)
                if any(layer.startswith(prefix) for layer in unit.layers)
            ]
            positions.append((rooted or touching or [0])[0])
            saved = dense - self.space.cost_fraction({}, skip=(block,))
            shares.append(min(1.0, max(0.0, saved)))
        return positions, shares

    def _observation(self) -> np.ndarray:
        assert self._step_index is not None
        blocks = len(self.blocks)
        deciding_block = self._step_index < blocks
        unit_step = self._step_index - blocks
        if deciding_block:
            position = self._block_unit[self._step_index]
        else:
            position = min(unit_step, len(self._unit_list) - 1)
        dense = self.space.graph.dense_flops or 1
        flops_now = self.space.predicted(self._keep, skip=self._skip)["flops"]
        used = self.space.cost_fraction(self._keep, self._nm, skip=self._skip)
        previous = self._actions[-1] if self._actions else np.zeros(2, dtype=np.float32)
        dynamic = [
            min(1.0, max(0.0, 1.0 - flops_now / dense)),
            self._rest_column[position] if unit_step < len(self._unit_list) else 0.0,
            float(previous[0]),
            self._nm_column[position],
            self._latency_column[position],
            self.space.target.fraction,
            min(1.0, max(0.0, used)),
            float(previous[1]) if previous.size > 1 else 0.0,
        ]
        if blocks:
            if deciding_block:
                dynamic += [1.0, self._block_share[self._step_index], 0.0]
            else:
                inside = self._unit_list[position].name in self._inside
                dynamic += [0.0, 0.0, float(inside and unit_step < len(self._unit_list))]
        obs = np.concatenate([self._static[position], dynamic]).astype(np.float32)
        return np.clip(obs, 0.0, 1.0)
