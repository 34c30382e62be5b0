"""Resolve ``package.module:callable`` specs and call them with the keywords they accept."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from amc.errors import AmcError


def is_callable_spec(spec: str) -> bool:
    """True for ``package.module:callable``-shaped strings (a colon and no path separator)."""
    module, sep, attr = spec.partition(":")
    return bool(sep) and bool(module) and bool(attr) and "/" not in spec and "\\" not in spec


def import_callable(spec: str, kind: str, error: type[AmcError]) -> Callable[..., Any]:
    """Import the callable named by ``package.module:callable`` or raise ``error``."""
    module_name, _, attr_path = spec.partition(":")
    expected = f"Expected a {kind} spec of the form 'package.module:callable'"
    if not module_name or not attr_path:
        raise error(f"Cannot resolve {kind} spec {spec!r}. {expected}.")
    try:
        target: Any = _import(module_name)
    except ImportError as exc:
        raise error(
            f"Cannot import module {module_name!r} of {kind} spec {spec!r}: {exc}. {expected}, "
            "with the module importable from the current environment."
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise error(
                f"Module {module_name!r} has no attribute {attr_path!r} ({kind} spec {spec!r}). "
                f"{expected}."
            )
        target = getattr(target, part)
    if not callable(target):
        raise error(f"{spec!r} is not callable. {expected}.")
    return target


def _import(module_name: str) -> Any:
    """Import a module; like ``python -m``, also look in the current folder (appended last)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def call_with_accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Call ``fn`` with the subset of ``kwargs`` its signature accepts (all of them on **kw)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass nothing we can't check
        return fn()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return fn(**kwargs)
    accepted = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return fn(**{key: value for key, value in kwargs.items() if key in accepted})
