"""The errors amc raises on bad input: each says what it got, what it expected, how to fix it.

Every class subclasses :class:`AmcError` and the builtin that fits, so callers can catch either.
Only the CLI turns them into messages and exit codes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AmcError(Exception):
    """Base class of every error caused by bad input to amc."""


class PlanFormatError(AmcError, ValueError):
    """A plan file or plan value that is malformed, of an unknown version, or out of range."""


class PlanMismatchError(AmcError, ValueError):
    """A plan that does not fit the model it is applied to (names, fingerprint, shapes)."""


class UnknownNameError(AmcError, KeyError):
    """A name (unit, model, data set, agent, criterion) that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InfeasibleBudgetError(AmcError, ValueError):
    """A budget that no plan can meet."""


class UnsafeCheckpointError(AmcError, ValueError):
    """A weights file that would run code when loaded."""


class CheckpointError(AmcError, ValueError):
    """A weights file that is missing, unreadable or does not fit the model."""


class DataError(AmcError, ValueError):
    """A data set that is missing, malformed or does not fit the model."""


class ConfigError(AmcError, ValueError):
    """An experiment configuration with unknown keys or bad values."""


class ModelSpecError(AmcError, ValueError):
    """A model spec that cannot be resolved to a model."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the standard error for an unknown name, listing the valid ones."""
    choices = sorted(choices)
    return UnknownNameError(
        f"Unknown {kind} {name!r}.{did_you_mean(name, choices)} "
        f"Expected one of: {', '.join(choices)}."
    )
