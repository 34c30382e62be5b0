"""PruningPlan: the per-unit pruning decisions, as versioned JSON (the search/pruning contract).

A plan names the model it was made for (a fingerprint of parameter names and shapes), the
target, the channel criterion and, per unit (keyed by the root layer's qualified name), the
channel keep ratio and resulting channel count, an N:M pattern or none, and unstructured
sparsity. It may also skip whole residual blocks. It carries the metrics measured for it and
its provenance. Loading validates the format; :func:`validate_plan` checks it against a model
and reports every problem at once.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amc.errors import PlanFormatError, PlanMismatchError, did_you_mean

# amc.units (torch, torch-pruning) is imported where a model is analysed, so reading and
# writing plans, and the CLI commands that only do that, start without torch
if TYPE_CHECKING:
    from amc.units import Cost, UnitGraph

PLAN_FORMAT = "amc.plan/1"
CRITERIA = ("l1", "l2", "bn_scale", "taylor", "activation")
TARGET_METRICS = ("flops", "params", "latency")


@dataclass(frozen=True)
class UnitPlan:
    """What happens to one unit.

    Attributes:
        keep_ratio: fraction of channels kept, in (0, 1].
        channels: channels kept (derived from keep_ratio and rounding when None).
        nm: an N:M pattern ``(n, m)`` for the unit's Conv/Linear weights, or None.
        sparsity: fraction of the unit's weights zeroed by magnitude, in [0, 1).
    """

    keep_ratio: float = 1.0
    channels: int | None = None
    nm: tuple[int, int] | None = None
    sparsity: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``nm`` is written as ``"n:m"``."""
        return {
            "keep_ratio": self.keep_ratio,
            "channels": self.channels,
            "nm": f"{self.nm[0]}:{self.nm[1]}" if self.nm else None,
            "sparsity": self.sparsity,
        }


@dataclass(frozen=True)
class PruningPlan:
    """A per-unit pruning plan for one model.

    Example:
        >>> plan = PruningPlan(units={"conv1": UnitPlan(keep_ratio=0.5)}, model="sha256:...")
        >>> PruningPlan.from_json(plan.to_json()) == plan
        True
    """

    units: Mapping[str, UnitPlan]
    model: str = ""
    skip: tuple[str, ...] = ()
    target: Mapping[str, Any] | None = None
    criterion: str = "l1"
    round_to: int = 1
    metrics: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        """What makes two plans the same pruned model: each unit's kept channels, N:M pattern
        and sparsity, and the skipped blocks (not the keep ratios asked, nor provenance)."""
        units = sorted((n, u.channels, u.nm, u.sparsity) for n, u in self.units.items())
        return tuple(units), tuple(self.skip)

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict in format ``amc.plan/1``."""
        return {
            "format": PLAN_FORMAT,
            "model": {"fingerprint": self.model},
            "target": dict(self.target) if self.target else None,
            "criterion": self.criterion,
            "round_to": self.round_to,
            "units": {name: unit.to_json() for name, unit in self.units.items()},
            "skip": list(self.skip),
            "metrics": dict(self.metrics),
            "provenance": dict(self.provenance),
        }

    def dumps(self) -> str:
        """The plan as indented JSON text."""
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PruningPlan:
        """Build a plan from its JSON dict, reporting every format problem at once."""
        if not isinstance(data, Mapping):
            raise PlanFormatError(
                f"A plan must be a JSON object, got {type(data).__name__}. "
                f"Write plans with PruningPlan.save or `amc export`."
            )
        version = data.get("format")
        if version != PLAN_FORMAT:
            raise PlanFormatError(
                f"Unknown plan format {version!r}: this amc reads {PLAN_FORMAT!r}. "
                f"Re-export the plan with this version of amc (`amc export`)."
            )
        problems: list[str] = []
        known = {
            "format", "model", "target", "criterion", "round_to", "units", "skip", "metrics",
            "provenance",
        }  # fmt: skip
        for key in data:
            if key not in known:
                problems.append(f"unknown key {key!r}.{did_you_mean(key, known)}")
        units_json = data.get("units")
        units: dict[str, UnitPlan] = {}
        if not isinstance(units_json, Mapping):
            problems.append("'units' must be an object mapping unit names to decisions")
        else:
            for name, entry in units_json.items():
                try:
                    units[name] = _unit_from_json(entry)
                except PlanFormatError as error:
                    problems.append(f"unit {name!r}: {error}")
        criterion = data.get("criterion", "l1")
        if criterion not in CRITERIA:
            problems.append(
                f"criterion {criterion!r} is unknown.{did_you_mean(str(criterion), CRITERIA)} "
                f"Expected one of: {', '.join(CRITERIA)}"
            )
        round_to = data.get("round_to", 1)
        if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
            problems.append(f"'round_to' must be a positive integer, got {round_to!r}")
        skip = data.get("skip", [])
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            problems.append(f"'skip' must be a list of block names, got {skip!r}")
        target = data.get("target")
        if target is not None:
            problems.extend(_target_problems(target))
        model = data.get("model") or {}
        if problems:
            message = "Invalid plan: " + "; ".join(problems)
            raise PlanFormatError(message if message.endswith("?") else message + ".")
        return cls(
            units=units,
            model=str(model.get("fingerprint", "")) if isinstance(model, Mapping) else "",
            skip=tuple(skip),
            target=dict(target) if target else None,
            criterion=criterion,
            round_to=round_to,
            metrics=dict(data.get("metrics") or {}),
            provenance=dict(data.get("provenance") or {}),
        )

    @classmethod
    def loads(cls, text: str, source: str = "<string>") -> PruningPlan:
        """Parse plan JSON text; malformed JSON names the line and column."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PlanFormatError(
                f"{source} is not valid JSON: {error.msg} at line {error.lineno} column "
                f"{error.colno}. A plan file is the JSON written by `amc export`."
            ) from error
        try:
            return cls.from_json(data)
        except PlanFormatError as error:
            if source == "<string>":
                raise
            raise PlanFormatError(f"{source}: {error}") from error

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        """Read a plan file."""
        path = Path(path)
        if not path.is_file():
            raise PlanFormatError(
                f"Plan file {str(path)!r} does not exist. Write one with `amc export` "
                f"or PruningPlan.save."
            )
        return cls.loads(path.read_text(encoding="utf-8"), source=str(path))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(self.dumps())
        os.replace(tmp, path)
        return path

    def with_metrics(self, **metrics: Any) -> PruningPlan:
        """A copy with ``metrics`` merged in."""
        return replace(self, metrics={**self.metrics, **metrics})

    def with_provenance(self, **provenance: Any) -> PruningPlan:
        """A copy with ``provenance`` merged in."""
        return replace(self, provenance={**self.provenance, **provenance})

    def channels(self, graph: UnitGraph) -> dict[str, int]:
        """Channels kept per unit for ``graph`` (rounding applied)."""
        result = {}
        for name, unit_plan in self.units.items():
            unit = graph.unit(name)
            if unit_plan.channels is not None:
                result[name] = unit_plan.channels
            else:
                result[name] = channels_for(unit_plan.keep_ratio, unit.channels, self.round_to)
        return result

    def predict(self, graph: UnitGraph) -> Cost:
        """Predicted FLOPs and params of the pruned model."""
        return graph.predict(self.channels(graph), self.skip)


def channels_for(keep_ratio: float, channels: int, round_to: int = 1) -> int:
    """Channels kept for ``keep_ratio`` of ``channels``, rounded to a multiple of ``round_to``.

    Rounds to the nearest multiple, never below one multiple (or one channel when the layer has
    fewer channels than ``round_to``) and never above ``channels``.
    """
    exact = keep_ratio * channels
    if round_to > 1 and channels >= round_to:
        return min(channels, max(round_to, round(exact / round_to) * round_to))
    return min(channels, max(1, round(exact)))


def validate_plan(plan: PruningPlan, graph: UnitGraph, check_model: bool = True) -> None:
    """Check ``plan`` against a model's units; raise one error listing every problem."""
    problems: list[str] = []
    if check_model and plan.model and plan.model != graph.fingerprint:
        raise PlanMismatchError(
            f"This plan was made for model {plan.model}, but the model given is "
            f"{graph.fingerprint}: their layer names or shapes differ. Apply a plan to the model "
            f"it was searched for, or search a new plan for this one."
        )
    names = [unit.name for unit in graph.units]
    by_name = {unit.name: unit for unit in graph.units}
    kept = {}
    for name, unit_plan in plan.units.items():
        unit = by_name.get(name)
        if unit is None:
            problems.append(f"unknown unit {name!r}.{did_you_mean(name, names)}")
            continue
        if not 0.0 < unit_plan.keep_ratio <= 1.0:
            problems.append(f"unit {name!r}: keep_ratio {unit_plan.keep_ratio} is outside (0, 1]")
            continue
        if unit_plan.keep_ratio * unit.channels < 0.5 and unit_plan.channels is None:
            problems.append(
                f"unit {name!r}: keep_ratio {unit_plan.keep_ratio} leaves zero of its "
                f"{unit.channels} channels; the smallest ratio is {1 / unit.channels:.4g}"
            )
            continue
        count = unit_plan.channels or channels_for(
            unit_plan.keep_ratio, unit.channels, plan.round_to
        )
        if not 1 <= count <= unit.channels:
            problems.append(f"unit {name!r}: {count} channels is outside 1..{unit.channels}")
            continue
        if count < unit.channels and not unit.channel_prunable:
            problems.append(
                f"unit {name!r} ({unit.kind}) cannot lose channels (its channels are split "
                f"into heads); keep_ratio must be 1, use nm or sparsity instead"
            )
        kept[name] = count
    for name, unit_plan in plan.units.items():
        unit = by_name.get(name)
        if unit is None or unit_plan.nm is None:
            continue
        n, m = unit_plan.nm
        if not unit.nm_layers:
            problems.append(f"unit {name!r} ({unit.kind}) has no Conv/Linear weights for N:M")
        for layer in _layers_named(graph, unit.nm_layers):
            features = layer.in_features
            if layer.in_unit is not None:
                source = by_name[layer.in_unit]
                features = features * kept.get(source.name, source.channels) // source.channels
            if features % m:
                problems.append(
                    f"unit {name!r}: N:M {n}:{m} needs the input size of {layer.name!r} to be a "
                    f"multiple of {m}, but it is {features}; round channels (round_to) to a "
                    f"multiple of {m} or leave this unit dense"
                )
    blocks = list(graph.skippable)
    for block in plan.skip:
        if block not in blocks:
            hint = did_you_mean(block, blocks)
            problems.append(
                f"block {block!r} cannot be skipped.{hint} Skippable residual blocks: "
                f"{', '.join(blocks) or 'none'}"
            )
    if problems:
        message = "The plan does not fit this model: " + "; ".join(problems)
        message += "" if message.endswith("?") else "."
        if any(name not in by_name for name in plan.units):
            shown = ", ".join(names[:20]) + (
                f" and {len(names) - 20} more" if len(names) > 20 else ""
            )
            message += f" Units of this model: {shown} (`amc units MODEL` lists them)."
        raise PlanMismatchError(message)


def uniform_plan(
    model: Any,
    example_inputs: Any,
    keep_ratio: float,
    nm: tuple[int, int] | None = None,
    *,
    round_to: int = 1,
    criterion: str = "l1",
    graph: UnitGraph | None = None,
) -> PruningPlan:
    """The same keep ratio (and N:M pattern, where it fits) for every prunable unit.

    Example:
        >>> plan = uniform_plan(model, torch.randn(1, 3, 32, 32), 0.5, nm=(2, 4))
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise PlanFormatError(f"keep_ratio {keep_ratio} is outside (0, 1]; use e.g. 0.5.")
    from amc.units import analyze

    graph = graph or analyze(model, example_inputs)
    units = {}
    for unit in graph.units:
        ratio = keep_ratio if unit.channel_prunable else 1.0
        units[unit.name] = UnitPlan(
            keep_ratio=ratio, channels=channels_for(ratio, unit.channels, round_to)
        )
    if nm is not None:
        channels = {name: plan.channels or 0 for name, plan in units.items()}
        for unit in graph.units:
            if unit.nm_layers and _nm_fits(graph, unit.nm_layers, channels, nm[1]):
                units[unit.name] = replace(units[unit.name], nm=nm)
    return PruningPlan(
        units=units, model=graph.fingerprint, criterion=criterion, round_to=round_to
    )


def _nm_fits(
    graph: UnitGraph, layer_names: Sequence[str], channels: dict[str, int], m: int
) -> bool:
    for layer in _layers_named(graph, layer_names):
        features = layer.in_features
        if layer.in_unit is not None:
            dense = graph.unit(layer.in_unit).channels
            features = features * channels.get(layer.in_unit, dense) // dense
        if features % m:
            return False
    return True


def _layers_named(graph: UnitGraph, names: Sequence[str]) -> list[Any]:
    wanted = set(names)
    return [layer for layer in graph.layers if layer.name in wanted]


def _unit_from_json(entry: Any) -> UnitPlan:
    if isinstance(entry, int | float) and not isinstance(entry, bool):
        entry = {"keep_ratio": entry}
    if not isinstance(entry, Mapping):
        raise PlanFormatError(f"expected an object with keep_ratio, got {entry!r}")
    problems = []
    fields = ("keep_ratio", "channels", "nm", "sparsity")
    for key in sorted(set(entry) - set(fields)):
        problems.append(f"unknown key {key!r}.{did_you_mean(key, fields)}")
    keep = entry.get("keep_ratio", 1.0)
    if not isinstance(keep, int | float) or isinstance(keep, bool) or math.isnan(keep):
        problems.append(f"keep_ratio must be a number in (0, 1], got {keep!r}")
    elif not 0.0 < keep <= 1.0:
        problems.append(f"keep_ratio {keep} is outside (0, 1]")
    channels = entry.get("channels")
    if channels is not None and (not isinstance(channels, int) or channels < 1):
        problems.append(f"channels must be a positive integer, got {channels!r}")
    sparsity = entry.get("sparsity", 0.0) or 0.0
    if not isinstance(sparsity, int | float) or not 0.0 <= sparsity < 1.0:
        problems.append(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    nm = entry.get("nm")
    try:
        pattern = parse_nm(nm) if nm is not None else None
    except PlanFormatError as error:
        problems.append(str(error))
        pattern = None
    if problems:
        raise PlanFormatError("; ".join(problems))
    return UnitPlan(
        keep_ratio=float(keep), channels=channels, nm=pattern, sparsity=float(sparsity)
    )


def parse_nm(value: Any) -> tuple[int, int]:
    """Parse ``"2:4"`` or ``[2, 4]`` into ``(2, 4)``, checking 0 < N < M."""
    try:
        if isinstance(value, str):
            n_text, m_text = value.split(":")
            n, m = int(n_text), int(m_text)
        else:
            n, m = (int(v) for v in value)
    except (ValueError, TypeError) as error:
        raise PlanFormatError(
            f'nm must look like "2:4" (N:M with N < M), got {value!r}'
        ) from error
    if not 0 < n < m:
        raise PlanFormatError(f'nm {n}:{m} needs 0 < N < M, e.g. "2:4"')
    return (n, m)


def _target_problems(target: Any) -> list[str]:
    if not isinstance(target, Mapping):
        return ["'target' must be an object like {'metric': 'flops', 'fraction': 0.5}"]
    problems = []
    metric = target.get("metric")
    if metric not in TARGET_METRICS:
        problems.append(
            f"target metric {metric!r} is unknown.{did_you_mean(str(metric), TARGET_METRICS)} "
            f"Expected one of: {', '.join(TARGET_METRICS)}"
        )
    fraction = target.get("fraction")
    if not isinstance(fraction, int | float) or not 0.0 < fraction <= 1.0:
        problems.append(f"target fraction must be in (0, 1], got {fraction!r}")
    return problems
