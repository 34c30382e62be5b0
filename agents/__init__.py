"""Search strategies behind one ask/tell protocol, found by name through entry points.

Agents register in the ``amc.agents`` entry-point group (see ``pyproject.toml``), so a third
party adds a strategy by shipping a package with such an entry point; ``amc`` itself never
imports this package statically.

Example:
    >>> from agents import get_agent, list_agents
    >>> list_agents()
    ['cmaes', 'ddpg', 'global_magnitude', 'nsga2', 'random', 'tpe', 'uniform']
    >>> agent = get_agent("tpe", space, seed=0, n_startup_trials=5)
    >>> proposals = agent.ask(4)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from amc.errors import ConfigError, did_you_mean, unknown_name

if TYPE_CHECKING:
    from agents.base import Agent

ENTRY_POINT_GROUP = "amc.agents"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Setting",
    "check_settings",
    "check_state_format",
    "generator_state",
    "get_agent",
    "list_agents",
    "restore_generator",
]


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_agents() -> list[str]:
    """Names of every agent registered in the ``amc.agents`` entry-point group, sorted."""
    return sorted(_entry_points())


def get_agent(name: str, space: Any, seed: int = 0, **settings: Any) -> Agent:
    """Build the agent registered as ``name`` for ``space``.

    Args:
        name: an entry-point name of group ``amc.agents`` (see :func:`list_agents`).
        space: the :class:`amc.space.SearchSpace` to search.
        seed: seed of every random choice the agent makes.
        **settings: agent-specific settings (each agent class lists them in ``SETTINGS``).

    Raises:
        UnknownNameError: no agent of that name (with a did-you-mean and the known names).
        ConfigError: an unknown setting or one of the wrong type or range.
    """
    points = _entry_points()
    if name not in points:
        raise unknown_name("agent", name, points)
    cls = points[name].load()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"Agent {name!r}: seed must be an integer >= 0, got {seed!r}.")
    return cls(space, seed=seed, **settings)


@dataclass(frozen=True)
class Setting:
    """One agent setting: its default and what values it accepts.

    Attributes:
        default: the value used when the setting is not given.
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"str"`` or ``"int_list"``.
        low, high: inclusive bounds for numbers (None: unbounded).
        low_open: whether ``low`` itself is excluded.
        choices: the allowed values of a ``"str"`` setting (or None: any, plus None).
        nullable: whether None is accepted.
        help: one line on what the setting does.
    """

    default: Any
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    help: str = ""

    def expected(self) -> str:
        """The expected form, for error messages (e.g. ``a float in (0, 1]``)."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "int_list":
            text = "a list of positive integers, e.g. [300, 300]"
        else:
            noun = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(
                self.kind, "a string"
            )
            if self.low is not None and self.high is not None:
                left = "(" if self.low_open else "["
                text = f"{noun} in {left}{self.low:g}, {self.high:g}]"
            elif self.low is not None:
                text = f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
            else:
                text = noun
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has the right type and range."""
        if value is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str) and (self.choices is None or value in self.choices)
        if self.kind == "int_list":
            return (
                isinstance(value, list | tuple)
                and len(value) > 0
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
            )
        if isinstance(value, bool):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if self.kind == "float" and (not isinstance(value, int | float) or math.isnan(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def check_settings(
    agent: str, settings: Mapping[str, Any], spec: Mapping[str, Setting]
) -> dict[str, Any]:
    """Validate ``settings`` against ``spec`` and fill in the defaults.

    Raises:
        ConfigError: naming every unknown key (with a did-you-mean) and every bad value (with
            the expected form), all at once.

    Example:
        >>> check_settings("x", {"warmup": 5}, {"warmup": Setting(100, "int", low=0)})
        {'warmup': 5}
    """
    problems = []
    for key in settings:
        if key not in spec:
            problems.append(
                f"unknown setting {key!r}.{did_you_mean(key, spec)} "
                f"Known settings: {', '.join(sorted(spec)) or 'none'}"
            )
    for key, setting in spec.items():
        if key in settings and not setting.accepts(settings[key]):
            value = settings[key]
            problems.append(
                f"setting {key!r} must be {setting.expected()}, "
                f"got {value!r} ({type(value).__name__})"
            )
    if problems:
        raise ConfigError(f"Agent {agent!r}: " + "; ".join(problems) + ".")
    values = {key: settings.get(key, setting.default) for key, setting in spec.items()}
    for key, setting in spec.items():
        if setting.kind == "float" and values[key] is not None:
            values[key] = float(values[key])
        if setting.kind == "int_list":
            values[key] = [int(v) for v in values[key]]
    return values


def generator_state(rng: Any) -> dict[str, Any]:
    """A numpy ``Generator``'s state as JSON (128-bit integers written as decimal strings)."""
    state = rng.bit_generator.state

    def encode(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: encode(item) for key, item in value.items()}
        if isinstance(value, int) and not -(2**53) < value < 2**53:
            return {"int": str(value)}
        return value

    return encode(state)


def restore_generator(rng: Any, state: Mapping[str, Any]) -> None:
    """Set a numpy ``Generator`` to a state written by :func:`generator_state`."""

    def decode(value: Any) -> Any:
        if isinstance(value, Mapping):
            if set(value) == {"int"}:
                return int(value["int"])
            return {key: decode(item) for key, item in value.items()}
        return value

    rng.bit_generator.state = decode(state)


def check_state_format(state: Mapping[str, Any], expected: str) -> None:
    """Refuse an agent state of another format or version, naming both and the fix."""
    found = state.get("format") if isinstance(state, Mapping) else None
    if found != expected:
        raise ConfigError(
            f"Agent state format {found!r} does not match {expected!r} (the agent and version "
            f"loading it). Resume with the agent and amc version that wrote the state, or start "
            f"the search afresh."
        )
