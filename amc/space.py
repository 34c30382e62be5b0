"""The search space every agent shares: which units to decide, the budget, and how to meet it.

A :class:`SearchSpace` fixes the model's units, the resource target (a fraction of the dense
model's FLOPs, params or latency), AMC's lower bound on keep ratios, channel rounding and the
N:M pattern on offer. It predicts the resource of any per-unit keep map *after* channel rounding
(the cost model of :mod:`amc.units`, or a measured :class:`~amc.latency_table.LatencyTable`),
and offers two ways to stay within budget:

* :meth:`SearchSpace.clip`: AMC's resource-constrained action clipping, for agents that decide
  one unit at a time (the largest keep ratio that still leaves the budget reachable if every
  undecided unit takes the lower bound);
* :meth:`SearchSpace.repair`: for agents that propose whole plans, a bisection on one shared
  scale of the removed fractions that maps any proposal onto the budget, keeping its shape.

N:M patterns do not change FLOPs or params as :mod:`amc.measure` counts them (a masked layer
costs its dense shape), so they only move latency targets, through the table's N:M timings.

With ``skip_blocks`` the space also offers layer skipping: any residual block the model can
run without (:attr:`amc.units.UnitGraph.skippable`) may be replaced by identity. A plan's
skipped blocks are a set chosen with it (``skip=`` of :meth:`SearchSpace.repair` and
:meth:`SearchSpace.make_plan`): their layers leave the cost, and the channel decisions fill
the budget the skip frees. Where per-layer overhead dominates latency (a small CNN at batch 1
on a CPU) a skipped block saves more time per accuracy point than thinner layers do.

Example:
    >>> space = SearchSpace.build(model, torch.randn(1, 3, 32, 32), "flops=0.5")
    >>> keep = space.repair({unit.name: 0.3 for unit in space.units})
    >>> plan = space.make_plan(keep, agent="example")
    >>> space.cost_fraction(keep) <= 0.5
    True
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from amc.errors import ConfigError, InfeasibleBudgetError, did_you_mean
from amc.latency_table import LatencyTable, padded
from amc.plan import CRITERIA, TARGET_METRICS, PruningPlan, UnitPlan, channels_for
from amc.units import LayerCost, Unit, UnitGraph, analyze

_BISECTION_STEPS = 60
_SCAN_SAMPLES = 65  # points a repair scans before bisecting (every 1/64 of the range)
# measured plans the calibration rests on before it may warn that the target is out of reach:
# one noisy first reading (a busy machine, a cold start) must not raise a false alarm
FLOOR_WARN_PLANS = 3


@dataclass(frozen=True)
class Target:
    """A resource budget: keep at most ``fraction`` of the dense model's ``metric``.

    Example:
        >>> Target.parse("flops=0.5")
        Target(metric='flops', fraction=0.5)
    """

    metric: str
    fraction: float

    def __post_init__(self) -> None:
        if self.metric not in TARGET_METRICS:
            raise ConfigError(
                f"Unknown target metric {self.metric!r}."
                f"{did_you_mean(self.metric, TARGET_METRICS)} Expected one of: "
                f"{', '.join(TARGET_METRICS)} (as METRIC=FRACTION, e.g. 'flops=0.5')."
            )
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ConfigError(f"Target fraction must be a number in (0, 1], got {fraction!r}.")
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(
                f"Target fraction must be in (0, 1] (the share of the dense {self.metric} to "
                f"keep), got {fraction!r}; e.g. '{self.metric}=0.5'."
            )

    @classmethod
    def parse(cls, value: str | Target | Mapping[str, Any]) -> Target:
        """Parse ``"flops=0.5"`` (also a Target, or ``{"metric": ..., "fraction": ...}``)."""
        if isinstance(value, Target):
            return value
        if isinstance(value, Mapping):
            return cls(str(value.get("metric")), value.get("fraction"))  # type: ignore[arg-type]
        if not isinstance(value, str) or value.count("=") != 1:
            raise ConfigError(
                f"Cannot read target {value!r}: expected METRIC=FRACTION with METRIC one of "
                f"{', '.join(TARGET_METRICS)}, e.g. 'flops=0.5' or 'latency=0.7'."
            )
        metric, _, text = (part.strip() for part in value.partition("="))
        metric = metric.lower()
        try:
            fraction = float(text)
        except ValueError:
            raise ConfigError(
                f"Cannot read target {value!r}: the fraction {text!r} is not a number. Expected "
                f"METRIC=FRACTION with FRACTION in (0, 1], e.g. '{metric or 'flops'}=0.5'."
            ) from None
        if math.isnan(fraction):
            raise ConfigError(f"Target fraction must be in (0, 1], got {text!r}.")
        return cls(metric, fraction)

    def to_json(self) -> dict[str, Any]:
        """``{"metric": ..., "fraction": ...}``, the form plans store."""
        return {"metric": self.metric, "fraction": self.fraction}

    def __str__(self) -> str:
        return f"{self.metric}={self.fraction:g}"


@dataclass(eq=False)
class SearchSpace:
    """The decisions a search makes for one model and budget (see the module docstring).

    Build it with :meth:`build`; constructing it directly needs the unit graph. Keep maps are
    ``{unit name: keep ratio}``; units left out of a keep map stay dense, except in :meth:`clip`
    where undecided units count at ``lower_bound``.

    Raises:
        InfeasibleBudgetError: the target is below what every unit at ``lower_bound`` reaches.
    """

    model: nn.Module
    example_inputs: Any
    graph: UnitGraph
    target: Target
    lower_bound: float = 0.2
    round_to: int = 1
    nm: tuple[int, int] | None = None
    criterion: str = "l1"
    latency_table: LatencyTable | None = None
    skip_blocks: bool = False
    _units: list[Unit] = field(init=False, repr=False)
    _skippable: tuple[str, ...] = field(init=False, repr=False, default=())
    _cost: _CostModel = field(init=False, repr=False)
    _dense_channels: dict[str, int] = field(init=False, repr=False)
    _nm_offered: set[str] = field(init=False, repr=False)
    _layers_by_name: dict[str, LayerCost] = field(init=False, repr=False)
    _latency_ratios: list[float] = field(init=False, repr=False, default_factory=list)
    _floor_warned: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        self.target = Target.parse(self.target)
        if not 0.0 < self.lower_bound <= 1.0:
            raise ConfigError(f"lower_bound must be in (0, 1], got {self.lower_bound!r}.")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int):
            raise ConfigError(f"round_to must be a positive integer, got {self.round_to!r}.")
        if self.round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {self.round_to!r}.")
        if self.criterion not in CRITERIA:
            raise ConfigError(
                f"Unknown criterion {self.criterion!r}.{did_you_mean(self.criterion, CRITERIA)} "
                f"Expected one of: {', '.join(CRITERIA)}."
            )
        if self.nm is not None:
            n, m = self.nm
            if not 0 < n < m:
                raise ConfigError(f"nm must be (N, M) with 0 < N < M, e.g. (2, 4); got {self.nm}.")
            self.nm = (int(n), int(m))
        if self.target.metric == "latency" and self.latency_table is None:
            raise ConfigError(
                "A latency target needs a latency table measured on the device: build the space "
                "with SearchSpace.build(..., device='cpu' or 'cuda'), or pass latency_table=."
            )
        self._units = [
            unit
            for unit in self.graph.units
            if unit.channel_prunable or (self.nm is not None and unit.nm_eligible)
        ]
        if not self._units:
            raise ConfigError(
                "The model has no prunable units (no Conv/Linear layer whose output channels can "
                "be cut, other than the output layer); there is nothing to search."
            )
        self._skippable = tuple(self.graph.skippable) if self.skip_blocks else ()
        if self.skip_blocks and not self._skippable:
            raise ConfigError(
                "skip_blocks is on, but the model has no residual block that can be replaced by "
                "identity (a block whose output has its input's shape and that runs on its "
                "own); turn skip_blocks off for this model."
            )
        self._cost = _CostModel(self.graph)
        self._dense_channels = {unit.name: unit.channels for unit in self.graph.units}
        self._layers_by_name = {layer.name: layer for layer in self.graph.layers}
        eligible = {u.name for u in self._units if self.nm is not None and u.nm_eligible}
        # offered only where the dense input sizes are multiples of M
        self._nm_offered = self._fitting_nm(self._dense_channels, eligible)
        smallest = self.smallest_fraction()
        if smallest > self.target.fraction:
            raise InfeasibleBudgetError(
                f"Target {self.target} cannot be met: with every unit at the lower bound "
                f"{self.lower_bound:g} the model keeps {smallest:.4f} of its dense "
                f"{self.target.metric}. Use a target fraction of at least {smallest:.4f}, or "
                f"lower lower_bound."
            )

    @classmethod
    def build(
        cls,
        model: nn.Module,
        example_inputs: Any,
        target: str | Target,
        *,
        device: str | None = "cpu",
        lower_bound: float = 0.2,
        round_to: int = 1,
        nm: tuple[int, int] | None = None,
        criterion: str = "l1",
        graph: UnitGraph | None = None,
        latency_table: LatencyTable | None = None,
        latency_options: Mapping[str, Any] | None = None,
        skip_blocks: bool = False,
    ) -> SearchSpace:
        """Analyse ``model`` and build its space; a latency target measures the table first.

        Args:
            model: the dense model (never modified).
            example_inputs: a tensor (or tuple) the model accepts; latency is timed on it.
            target: ``"flops=0.5"``, ``"params=0.5"``, ``"latency=0.5"`` or a :class:`Target`.
            device: where a latency table is measured; required for latency targets.
            lower_bound: the smallest keep ratio a unit may take (AMC uses 0.2).
            round_to: channel counts are rounded to multiples of this.
            nm: an ``(n, m)`` pattern offered to N:M-eligible units, or None.
            criterion: channel criterion recorded in plans.
            graph: the :func:`amc.units.analyze` result, to skip recomputing it.
            latency_table: a table measured before (e.g. loaded from a study).
            latency_options: extra keyword arguments for :meth:`LatencyTable.measure`.
            skip_blocks: offer to skip the model's skippable residual blocks (see the module
                docstring).
        """
        parsed = Target.parse(target)
        graph = graph or analyze(model, example_inputs)
        if parsed.metric == "latency" and latency_table is None:
            if device is None:
                raise ConfigError(
                    f"Target {parsed} needs a device to measure latency on, but device=None. "
                    f"Pass device='cpu' or 'cuda', or a measured latency_table."
                )
            options = {"lower_bound": lower_bound, **dict(latency_options or {})}
            latency_table = LatencyTable.measure(
                model, example_inputs, graph, device, nm=nm, round_to=round_to, **options
            )
        return cls(
            model=model,
            example_inputs=example_inputs,
            graph=graph,
            target=parsed,
            lower_bound=lower_bound,
            round_to=round_to,
            nm=nm,
            criterion=criterion,
            latency_table=latency_table,
            skip_blocks=skip_blocks,
        )

    # ---------------------------------------------------------------------------------------
    # what is decided
    # ---------------------------------------------------------------------------------------

    @property
    def units(self) -> list[Unit]:
        """The units the search decides, in execution order."""
        return list(self._units)

    @property
    def names(self) -> list[str]:
        """Names of :attr:`units`, in order."""
        return [unit.name for unit in self._units]

    @property
    def skippable(self) -> tuple[str, ...]:
        """The residual blocks the search may skip, in model order (empty without
        ``skip_blocks``)."""
        return self._skippable

    def skip_set(self, skip: Iterable[str]) -> tuple[str, ...]:
        """``skip`` checked against the model's skippable blocks, in model order.

        Raises:
            ConfigError: a name that is not a skippable block of the model.
        """
        asked = set(skip)
        known = self.graph.skippable
        for name in sorted(asked - set(known)):
            raise ConfigError(
                f"Block {name!r} cannot be skipped.{did_you_mean(name, known)} Skippable "
                f"residual blocks (identity can stand in for them: the output has the input's "
                f"shape): {', '.join(known) or 'none'}."
            )
        return tuple(block for block in known if block in asked)

    def units_inside(self, skip: Iterable[str]) -> set[str]:
        """The units every layer of which lies in a block of ``skip``: a plan that skips those
        blocks has nothing of them left to cut (:meth:`make_plan` records them dense)."""
        skipped = self.skip_set(skip)
        if not skipped:
            return set()
        prefixes = tuple(f"{block}." for block in skipped)
        return {
            unit.name
            for unit in self.graph.units
            if unit.layers and all(layer.startswith(prefixes) for layer in unit.layers)
        }

    def offers_nm(self, unit: Unit | str) -> bool:
        """Whether the N:M pattern is on offer for ``unit``."""
        name = unit if isinstance(unit, str) else unit.name
        return name in self._nm_offered

    def action_to_keep(self, action: float) -> float:
        """Map an action in [0, 1] to a keep ratio in [lower_bound, 1]."""
        action = min(1.0, max(0.0, float(action)))
        return self.lower_bound + action * (1.0 - self.lower_bound)

    def keep_to_action(self, keep_ratio: float) -> float:
        """Inverse of :meth:`action_to_keep`, clamped to [0, 1]."""
        if self.lower_bound >= 1.0:
            return 1.0
        action = (keep_ratio - self.lower_bound) / (1.0 - self.lower_bound)
        return min(1.0, max(0.0, action))

    # ---------------------------------------------------------------------------------------
    # cost
    # ---------------------------------------------------------------------------------------

    def channels(self, keep: Mapping[str, float]) -> dict[str, int]:
        """Channels kept per searched unit after rounding (units not in ``keep`` stay dense)."""
        result = {}
        for unit in self._units:
            ratio = self._bounded(unit, keep.get(unit.name, 1.0))
            result[unit.name] = channels_for(ratio, unit.channels, self.round_to)
        return result

    def cost_fraction(
        self,
        keep: Mapping[str, float],
        nm_choices: Mapping[str, bool] | None = None,
        *,
        skip: Iterable[str] = (),
    ) -> float:
        """The target resource of a plan as a fraction of the dense model's, after rounding
        (``skip``: the blocks it replaces by identity)."""
        return self._fraction(
            self.channels(keep), self._nm_used(nm_choices or {}), self.skip_set(skip)
        )

    def predicted(
        self,
        keep: Mapping[str, float],
        nm_choices: Mapping[str, bool] | None = None,
        *,
        skip: Iterable[str] = (),
    ) -> dict[str, float]:
        """Predicted ``flops``, ``params`` (and ``latency_ms`` with a table) of a plan."""
        channels = self.channels(keep)
        skipped = self.skip_set(skip)
        flops, params = self._cost.cost(self._ratios(channels), skipped)
        result = {"flops": flops, "params": params}
        if self.latency_table is not None:
            nm_used = self._nm_used(nm_choices or {})
            result["latency_ms"] = self._latency(channels, nm_used, skipped)
        return result

    def calibrate_latency(self, plan: PruningPlan, measured_fraction: float) -> float:
        """Scale the latency estimate by the median measured/estimated ratio of plans so far.

        The table is timed once, one unit at a time; plans that cut many units together can run
        slower (or faster) than it predicts on a given device. Each measured plan is evidence:
        with the estimate scaled by the running median of measured/estimated, later clips and
        repairs aim at what the device really does. Returns the scale now in force.

        A scale that would put even the smallest plan over the target is capped so every ask
        still fits, and warned about once it rests on ``FLOOR_WARN_PLANS`` measured plans.
        """
        if self.latency_table is None or not math.isfinite(measured_fraction):
            return 1.0
        keep = {name: unit.keep_ratio for name, unit in plan.units.items()}
        nm_choices = {name: unit.nm is not None for name, unit in plan.units.items()}
        table = self.latency_table
        estimated = self.cost_fraction(keep, nm_choices, skip=plan.skip) / table.scale
        if estimated > 0:
            self._latency_ratios.append(measured_fraction / estimated)
        scale = float(np.median(self._latency_ratios)) if self._latency_ratios else 1.0
        self.latency_table = replace(table, scale=max(scale, 0.5))
        smallest = self.smallest_fraction()
        if smallest > self.target.fraction:
            # Noisy measurements must not make the budget unreachable (asks would fail): keep
            # the smallest plan just inside it; plans measured over it are recorded as such.
            capped = self.latency_table.scale * self.target.fraction / smallest * (1 - 1e-6)
            self.latency_table = replace(table, scale=capped)
            if not self._floor_warned and len(self._latency_ratios) >= FLOOR_WARN_PLANS:
                self._floor_warned = True
                lowest = dict.fromkeys(self.names, self.lower_bound)
                uncapped = max(scale, 0.5)
                skipping = self.cost_fraction(lowest, skip=self._skippable) * uncapped / capped
                if self._skippable and skipping <= self.target.fraction:
                    # plans that skip blocks still fit: only those that skip none are out
                    message = (
                        f"Target {self.target} is below what plans that skip no block reach "
                        f"on the device: calibrated on {len(self._latency_ratios)} measured "
                        f"plan(s), every unit at the lower bound {self.lower_bound:g} without "
                        f"a skip is estimated at {smallest:.3f} of the dense latency (with "
                        f"every skippable block skipped, {skipping:.3f}). Plans that skip no "
                        f"block will keep measuring over the target (recorded as over budget)."
                    )
                else:
                    message = (
                        f"Target {self.target} is below what this search space reaches on the "
                        f"device: calibrated on {len(self._latency_ratios)} measured plan(s), "
                        f"even every unit at the lower bound {self.lower_bound:g} is estimated "
                        f"at {smallest:.3f} of the dense latency. Plans will keep measuring "
                        f"over the target (recorded as over budget). Raise the target to at "
                        f"least {smallest:.3f}, or lower lower_bound."
                    )
                warnings.warn(message, stacklevel=2)
        return self.latency_table.scale

    def smallest_fraction(self) -> float:
        """The resource fraction with every unit at ``lower_bound`` (the least reachable)."""
        keep = {unit.name: self.lower_bound for unit in self._units}
        return self._fraction(self.channels(keep), self._cheapest_nm(set(self.names)))

    def fits(
        self,
        keep: Mapping[str, float],
        nm_choices: Mapping[str, bool] | None = None,
        *,
        skip: Iterable[str] = (),
    ) -> bool:
        """Whether a plan meets the target after channel rounding."""
        return self.cost_fraction(keep, nm_choices, skip=skip) <= self.target.fraction

    # ---------------------------------------------------------------------------------------
    # meeting the budget
    # ---------------------------------------------------------------------------------------

    def clip(
        self,
        index: int,
        keep_ratio: float,
        decided: Mapping[str, float],
        *,
        nm_choices: Mapping[str, bool] | None = None,
        skip: Iterable[str] = (),
    ) -> float:
        """AMC's resource-constrained clipping of the keep ratio of ``units[index]``.

        Returns the largest keep ratio <= ``keep_ratio`` (and >= ``lower_bound``) such that the
        target is still met when every unit not in ``decided`` takes ``lower_bound`` (and its
        cheapest N:M option). Ratios that pass are returned unchanged; ones that do not are
        lowered to the largest channel count that fits.

        Args:
            index: position of the unit in :attr:`units`.
            keep_ratio: the ratio asked for.
            decided: keep ratios of the units decided so far.
            nm_choices: N:M choices made so far, the current unit's included.
            skip: the residual blocks the plan skips (decided before any unit), whose layers
                leave the cost.
        """
        unit = self._units[index]
        if not unit.channel_prunable:
            return 1.0
        skipped = self.skip_set(skip)
        requested = self._bounded(unit, keep_ratio)
        nm_choices = dict(nm_choices or {})
        rest = {u.name for u in self._units if u.name not in decided and u is not unit}
        nm_used = self._nm_used(nm_choices) | self._cheapest_nm(rest - set(nm_choices))
        keep = {u.name: self.lower_bound for u in self._units} | dict(decided)

        def fits(ratio: float) -> bool:
            keep[unit.name] = ratio
            fraction = self._fraction(self.channels(keep), nm_used, skipped)
            return fraction <= self.target.fraction

        if fits(requested):
            return requested
        step = self.round_to if unit.channels >= self.round_to else 1
        counts = [
            count
            for count in range(step, unit.channels + 1, step)
            if self.lower_bound < count / unit.channels < requested
        ]
        # From the top down in strides (a measured estimate need not be monotone in channels:
        # see _least_fitting), then a bisection between the first stride that fits and the
        # one above it that did not.
        stride = max(1, math.ceil(len(counts) / (_SCAN_SAMPLES - 1)))
        failed = len(counts)
        for index in range(len(counts) - 1, -1, -stride):
            if fits(counts[index] / unit.channels):
                low, high = index + 1, failed  # counts[index] fits, counts[failed] does not
                while low < high:
                    middle = (low + high) // 2
                    if fits(counts[middle] / unit.channels):
                        low = middle + 1
                    else:
                        high = middle
                return counts[low - 1] / unit.channels
            failed = index
        return self.lower_bound

    def clip_nm(
        self,
        index: int,
        use_nm: bool,
        decided: Mapping[str, float],
        nm_choices: Mapping[str, bool] | None = None,
        *,
        skip: Iterable[str] = (),
    ) -> bool:
        """Clip the N:M choice of ``units[index]`` as :meth:`clip` clips its keep ratio.

        Returns ``use_nm`` (False where N:M is not offered, or where the input sizes decided so
        far are not multiples of M) unless that choice would make the target unreachable with
        this and every undecided unit at ``lower_bound``; then the other choice.
        Only latency targets can force it (N:M does not change FLOPs or params). ``skip``: the
        residual blocks the plan skips, as in :meth:`clip`.
        """
        unit = self._units[index]
        if not self.offers_nm(unit):
            return False
        if use_nm and not self._fitting_nm(self.channels(decided), {unit.name}):
            use_nm = False  # the input sizes decided so far cannot hold the pattern
        choices = {name: used for name, used in (nm_choices or {}).items() if name != unit.name}
        rest = {u.name for u in self._units if u.name not in decided and u is not unit}
        nm_used = self._nm_used(choices) | self._cheapest_nm(rest - set(choices))
        keep = {u.name: self.lower_bound for u in self._units} | dict(decided)
        keep[unit.name] = self.lower_bound
        if use_nm:
            nm_used.add(unit.name)
        fraction = self._fraction(self.channels(keep), nm_used, self.skip_set(skip))
        if fraction <= self.target.fraction:
            return use_nm
        return not use_nm and bool(self._fitting_nm(self.channels(decided), {unit.name}))

    def repair(
        self,
        keep: Mapping[str, float],
        nm_choices: Mapping[str, bool] | None = None,
        *,
        fill: bool = True,
        skip: Iterable[str] = (),
    ) -> dict[str, float]:
        """Map a whole proposal onto the budget, keeping its shape.

        The removed fraction of every unit is scaled by one shared factor ``s``:
        ``keep_i(s) = clamp(1 - s * (1 - keep_i), lower_bound, 1)``, and ``s`` is found by
        bisection: the smallest ``s`` that meets the target (so an over-budget proposal is cut
        proportionally, and with ``fill`` an under-budget one grows until it uses the budget).
        If even all scaled units at ``lower_bound`` miss the target, the units the proposal
        left dense are blended toward ``lower_bound`` the same way. Units not named in ``keep``
        count as dense proposals. Returns a keep map over :attr:`names` that fits, unless
        ``nm_choices`` make the target unreachable (then every unit is at ``lower_bound``).
        With ``skip``, the cost leaves those blocks out, so the channels fill what they free.
        """
        nm_used = self._nm_used(nm_choices or {})
        skipped = self.skip_set(skip)

        def shaped(scale: float, blend: float = 0.0) -> dict[str, float]:
            return self.scaled(keep, scale, blend)

        def fits(candidate: dict[str, float]) -> bool:
            fraction = self._fraction(self.channels(candidate), nm_used, skipped)
            return fraction <= self.target.fraction

        proposal = shaped(1.0)
        if fits(proposal):
            if not fill:
                return proposal
            return shaped(_least_fitting(lambda scale: fits(shaped(scale)), 0.0, 1.0))
        top = self.max_scale(keep)
        if fits(shaped(top)):
            return shaped(_least_fitting(lambda scale: fits(shaped(scale)), 1.0, top))
        return shaped(top, _bisect(lambda blend: fits(shaped(top, blend)), 0.0, 1.0))

    def scaled(
        self, keep: Mapping[str, float], scale: float, blend: float = 0.0
    ) -> dict[str, float]:
        """The keep map with every unit's removed fraction scaled by ``scale``.

        ``keep_i(s) = clamp(1 - s * (1 - keep_i), lower_bound, 1)``: ``s = 1`` is ``keep``
        itself (bounded), ``s = 0`` the dense model, larger ``s`` prune more in the same shape.
        ``blend`` then moves every ratio that fraction of the way to ``lower_bound``. Units not
        named in ``keep`` are dense; units that cannot be channel-pruned stay at 1.
        """
        result = {}
        for unit in self._units:
            ratio = self._bounded(unit, keep.get(unit.name, 1.0))
            if unit.channel_prunable:
                if scale != 1.0:
                    ratio = min(1.0, max(self.lower_bound, 1.0 - scale * (1.0 - ratio)))
                ratio -= blend * (ratio - self.lower_bound)
            result[unit.name] = float(ratio)
        return result

    def max_scale(self, keep: Mapping[str, float]) -> float:
        """The :meth:`scaled` factor (at least 1) past which no unit of ``keep`` prunes more:
        every unit ``keep`` prunes is then at ``lower_bound``."""
        removed = [
            1.0 - self._bounded(u, keep.get(u.name, 1.0))
            for u in self._units
            if u.channel_prunable
        ]
        positive = [r for r in removed if r > 0]
        return max(1.0, (1.0 - self.lower_bound) / min(positive)) if positive else 1.0

    def make_plan(
        self,
        keep: Mapping[str, float],
        nm_choices: Mapping[str, bool] | None = None,
        *,
        fit: bool = True,
        skip: Iterable[str] = (),
        **provenance: Any,
    ) -> PruningPlan:
        """The plan for a keep map (and N:M choices), checked against the budget after rounding.

        Every unit of the model appears; units that are not searched stay dense. An N:M choice is
        dropped where the unit's (pruned) input size is not a multiple of M. If rounding or a
        dropped N:M choice pushed the plan over budget, the keep map is tightened with
        :meth:`repair` (``fill=False``) before the plan is made.

        Args:
            keep: unit name -> keep ratio.
            nm_choices: unit name -> use the space's N:M pattern.
            fit: hold the plan to the budget as estimated (False: take ``keep`` as it is, for
                a plan sized by measurement, see :func:`amc.choose.aim`).
            skip: residual blocks the plan replaces by identity (any of the model's
                skippable blocks); units wholly inside them are recorded dense (nothing of
                them is left to cut).
            **provenance: recorded in the plan's provenance (agent, episode, ...).
        """
        skipped = self.skip_set(skip)
        nm_used = self._fitting_nm(self.channels(keep), self._nm_used(nm_choices or {}))
        if fit and not self.fits(keep, dict.fromkeys(nm_used, True), skip=skipped):
            keep = self.repair(keep, dict.fromkeys(nm_used, True), fill=False, skip=skipped)
            nm_used = self._fitting_nm(self.channels(keep), nm_used)
        if fit and not self.fits(keep, dict.fromkeys(nm_used, True), skip=skipped):
            # the N:M choices make the target unreachable: use N:M exactly where it saves time
            nm_used = self._cheapest_nm(set(self.names))
            keep = self.repair(keep, dict.fromkeys(nm_used, True), fill=False, skip=skipped)
            nm_used = self._fitting_nm(self.channels(keep), nm_used)
        choices = dict.fromkeys(nm_used, True)
        if fit and not self.fits(keep, choices, skip=skipped):  # repair returns a fitting map
            raise InfeasibleBudgetError(
                f"Could not fit a plan into target {self.target}; the smallest reachable "
                f"fraction is {self.smallest_fraction():.4f}."
            )
        channels = self.channels(keep)
        inside = self.units_inside(skipped)
        units = {}
        for unit in self.graph.units:
            if unit.name in channels and unit.name not in inside:
                ratio = self._bounded(unit, keep.get(unit.name, 1.0))
                count = channels[unit.name]
            else:
                ratio, count = 1.0, unit.channels
            pattern = self.nm if unit.name in nm_used else None
            units[unit.name] = UnitPlan(keep_ratio=ratio, channels=count, nm=pattern)
        return PruningPlan(
            units=units,
            model=self.graph.fingerprint,
            target=self.target.to_json(),
            criterion=self.criterion,
            round_to=self.round_to,
            skip=skipped,
            provenance=dict(provenance),
        )

    # ---------------------------------------------------------------------------------------
    # internals
    # ---------------------------------------------------------------------------------------

    def _bounded(self, unit: Unit, keep_ratio: float) -> float:
        if not unit.channel_prunable:
            return 1.0
        return min(1.0, max(self.lower_bound, float(keep_ratio)))

    def _ratios(self, channels: Mapping[str, int]) -> dict[str, float]:
        return {name: count / self._dense_channels[name] for name, count in channels.items()}

    def _fraction(
        self, channels: Mapping[str, int], nm_used: set[str], skipped: tuple[str, ...] = ()
    ) -> float:
        if self.target.metric == "latency":
            assert self.latency_table is not None  # checked in __post_init__
            # a pattern the pruned input size cannot hold is dropped from the plan: no saving
            fitting = self._fitting_nm(channels, nm_used) if nm_used else nm_used
            return self._latency(channels, fitting, skipped) / self.latency_table.dense_ms
        flops, params = self._cost.cost(self._ratios(channels), skipped)
        if self.target.metric == "flops":
            return flops / self.graph.dense_flops
        return params / self._cost.dense_params

    def _latency(
        self, channels: Mapping[str, int], nm_used: set[str], skipped: tuple[str, ...] = ()
    ) -> float:
        if not skipped:
            return self._estimate(channels, nm_used)
        # units inside skipped blocks cost nothing: no saving of theirs (channels, N:M) counts
        inside = self.units_inside(skipped)
        dense = self._dense_channels
        gone = {**channels, **{name: dense[name] for name in inside}}
        estimate = self._estimate(gone, nm_used - inside, skipped)
        # and a skipped block is never slower than the block run at any width: the plan with
        # them run thinnest bounds it (an estimate without a fit prices a skip only roughly)
        floor = self.lower_bound
        thinnest = {
            **channels,
            **{n: channels_for(floor, dense[n], self.round_to) for n in inside if n in channels},
        }
        return min(estimate, self._estimate(thinnest, nm_used))

    def _estimate(
        self, channels: Mapping[str, int], nm_used: set[str], skipped: tuple[str, ...] = ()
    ) -> float:
        table = self.latency_table
        assert table is not None
        kept_layers = self._cost.kept_layers(skipped)
        if table.kernels is not None:  # the line runs on the plan's summed kernel timings
            return table.estimate(
                self._ratios(channels), dict.fromkeys(nm_used, True), channels=channels,
                skipped=skipped, kept_layers=kept_layers,
            )  # fmt: skip
        # FLOPs as the table's fit counts them: each channel count padded to the table's block
        dense = self._dense_channels
        blocked = {name: padded(c, dense[name], table.block) for name, c in channels.items()}
        flops = self._cost.cost(self._ratios(blocked), skipped)[0]
        return table.estimate(
            self._ratios(channels), dict.fromkeys(nm_used, True), flops / self.graph.dense_flops,
            skipped=skipped, kept_layers=kept_layers,
        )  # fmt: skip

    def _nm_used(self, nm_choices: Mapping[str, bool]) -> set[str]:
        return {name for name, used in nm_choices.items() if used and self.offers_nm(name)}

    def _cheapest_nm(self, names: set[str]) -> set[str]:
        """Of ``names``, those where N:M lowers the target resource (latency tables only)."""
        table = self.latency_table
        if self.nm is None or self.target.metric != "latency" or table is None:
            return set()
        return {
            name
            for name in names
            if self.offers_nm(name)
            and (curve := table.units.get(name)) is not None
            and curve.nm_ms is not None
            and curve.nm_ms < table.dense_ms
        }

    def _fitting_nm(self, channels: Mapping[str, int], nm_used: set[str]) -> set[str]:
        """Of ``nm_used``, the units whose N:M layers' input sizes are multiples of M."""
        if self.nm is None:
            return set()
        m = self.nm[1]
        by_layer = self._layers_by_name
        fitting = set()
        for name in nm_used:
            ok = True
            for layer_name in self.graph.unit(name).nm_layers:
                layer = by_layer.get(layer_name)
                if layer is None:
                    continue
                features = layer.in_features
                if layer.in_unit is not None:
                    dense = self.graph.unit(layer.in_unit).channels
                    features = features * channels.get(layer.in_unit, dense) // dense
                ok = ok and features % m == 0
            if ok:
                fitting.add(name)
        return fitting


class _CostModel:
    """:meth:`UnitGraph.predict` vectorised: FLOPs and params of per-unit channel fractions."""

    def __init__(self, graph: UnitGraph) -> None:
        self.names = [unit.name for unit in graph.units]
        slot = {name: i for i, name in enumerate(self.names)}
        dense_slot = len(self.names)  # a constant 1.0 for layers no unit scales
        layers = graph.layers
        self.out_slot = np.array([slot.get(x.out_unit or "", dense_slot) for x in layers], int)
        self.in_slot = np.array([slot.get(x.in_unit or "", dense_slot) for x in layers], int)
        self.layer_names = [x.name for x in layers]
        self.flops = np.array([x.flops for x in layers], float)
        self.weight_params = np.array([x.weight_params for x in layers], float)
        self.other_params = np.array([x.other_params for x in layers], float)
        self.fixed_flops = float(graph.fixed_flops)
        self.dense_params = float(graph.dense_params)
        # parameters no layer entry covers (bare tensors no unit cuts) never change
        self.fixed_params = self.dense_params - float(
            self.weight_params.sum() + self.other_params.sum()
        )

    @functools.lru_cache(maxsize=256)  # noqa: B019 (one model per space, few skip sets)
    def _present(self, skipped: tuple[str, ...]) -> np.ndarray:
        """1 for each layer outside the ``skipped`` blocks, 0 for those inside."""
        prefixes = tuple(f"{block}." for block in skipped)
        return np.array(
            [0.0 if name.startswith(prefixes) else 1.0 for name in self.layer_names], float
        )

    def kept_layers(self, skipped: tuple[str, ...]) -> float:
        """The share of the layers outside the ``skipped`` blocks (1.0 without skips)."""
        if not skipped or not self.layer_names:
            return 1.0
        return float(self._present(skipped).mean())

    def cost(
        self, ratios: Mapping[str, float], skipped: tuple[str, ...] = ()
    ) -> tuple[float, float]:
        vector = np.ones(len(self.names) + 1)
        for i, name in enumerate(self.names):
            vector[i] = ratios.get(name, 1.0)
        out_keep, in_keep = vector[self.out_slot], vector[self.in_slot]
        if skipped:
            present = self._present(skipped)
            out_keep = out_keep * present
        flops = self.fixed_flops + float(np.dot(self.flops, out_keep * in_keep))
        params = self.fixed_params + float(
            np.dot(self.weight_params, out_keep * in_keep) + np.dot(self.other_params, out_keep)
        )
        return flops, params


def _least_fitting(fits: Any, low: float, high: float, samples: int = _SCAN_SAMPLES) -> float:
    """The smallest value in [low, high] where ``fits`` holds (``high`` must), scanning first.

    A measured latency estimate need not be monotone in the channels kept (a kernel switch can
    make one more channel cheaper, :mod:`amc.kernel_table`), so a plain bisection could stop
    at a boundary well above the smallest fitting value and waste budget. The interval is
    scanned at ``samples`` evenly spaced points; the bisection then runs between the last
    point that does not fit and the first that does.
    """
    previous = low
    for point in np.linspace(low, high, samples)[1:]:
        if fits(float(point)):
            return _bisect(fits, previous, float(point))
        previous = float(point)
    return high


def _bisect(fits: Any, low: float, high: float) -> float:
    """The smallest value in [low, high] where the monotone ``fits`` holds (``high`` must)."""
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if fits(middle):
            high = middle
        else:
            low = middle
        if high - low < 1e-9:
            break
    return high


__all__ = ["SearchSpace", "Target"]
