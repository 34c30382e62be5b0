"""Safe weights I/O: safetensors out; safetensors or ``torch.load(weights_only=True)`` in.

Nothing that runs code on load is accepted unless the caller passes ``trust_pickle=True``
(the CLI's ``--trust-checkpoint``).
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from amc.errors import CheckpointError, UnsafeCheckpointError

_WRAPPER_KEYS = ("state_dict", "model")


def save_weights(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write weights as safetensors atomically (a temp file, then ``os.replace``).

    Tensors that share memory (tied weights) are stored as independent copies.

    Args:
        model_or_state_dict: a module (its ``state_dict()`` is saved) or a name->tensor mapping.
        path: destination file; parent folders are created.
        metadata: optional string key/values stored in the safetensors header.

    Returns:
        The path written.

    Example:
        >>> save_weights(torch.nn.Linear(2, 3), "runs/linear.safetensors")  # doctest: +SKIP
        PosixPath('runs/linear.safetensors')
    """
    path = Path(path)
    state = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"Cannot save {', '.join(not_tensors)} to {str(path)!r}: safetensors stores only "
            "tensors."
        )
    # Clone so that tied or sliced tensors become separate contiguous buffers on the CPU.
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temp_name, metadata=dict(metadata) if metadata else None)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header ({} when there is none)."""
    from safetensors import safe_open

    _require_file(Path(path))
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {exc}") from exc


def load_state_dict_file(
    path: str | os.PathLike[str], trust_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, on the CPU.

    Files holding ``{"state_dict": ...}`` or ``{"model": ...}`` are unwrapped, and a
    ``module.`` prefix on every key (DataParallel) is removed.

    Args:
        path: the weights file.
        trust_pickle: allow ``torch.load(weights_only=False)``, which can run arbitrary code.
            Only for files from a source you trust.

    Raises:
        CheckpointError: the file is missing, unreadable or holds no state dict.
        UnsafeCheckpointError: the file needs pickle to run code and ``trust_pickle`` is False.

    Example:
        >>> state = load_state_dict_file("runs/linear.safetensors")  # doctest: +SKIP
        >>> sorted(state)
        ['bias', 'weight']
    """
    path = Path(path)
    _require_file(path)
    loaded: Any
    if path.suffix == ".safetensors":
        try:
            loaded = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(
                f"{str(path)!r} is not a readable safetensors file: {exc}"
            ) from exc
    else:
        loaded = _torch_load(path, trust_pickle)
    return _as_state_dict(loaded, path)


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    trust_pickle: bool = False,
    strict: bool = True,
) -> nn.Module:
    """Load a weights file into ``model`` (in place) after checking every key and shape.

    Args:
        model: the module to fill.
        path: ``.safetensors`` or a ``torch.save`` file.
        trust_pickle: see :func:`load_state_dict_file`.
        strict: also fail on keys missing from the file or unknown to the model (shape
            mismatches always fail).

    Returns:
        ``model``.

    Raises:
        CheckpointError: listing every missing, unexpected and mis-shaped key at once.

    Example:
        >>> load_weights(torch.nn.Linear(2, 3), "runs/linear.safetensors")  # doctest: +SKIP
        Linear(in_features=2, out_features=3, bias=True)
    """
    state = load_state_dict_file(path, trust_pickle=trust_pickle)
    expected = model.state_dict()
    problems = [
        f"shape mismatch: {key} is {tuple(state[key].shape)} in the file, "
        f"{tuple(expected[key].shape)} in the model"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if strict:
        problems += [f"missing from the file: {key}" for key in expected if key not in state]
        problems += [f"not in the model: {key}" for key in state if key not in expected]
    if problems:
        raise CheckpointError(
            f"Weights file {str(path)!r} does not fit the {type(model).__name__} model "
            f"({len(problems)} mismatched keys):\n  "
            + "\n  ".join(problems)
            + "\nCheck that the model spec and its options (num_classes, in_channels, ...) "
            "match the weights."
        )
    model.load_state_dict(state, strict=strict)
    return model


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(
            f"Weights file {str(path)!r} does not exist or is not a file. Check the path; "
            "weights are a .safetensors file or a torch.save state dict."
        )


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """torch.load with weights_only unless trusted; code-running files become an error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals (code); an unknown opcode is a corrupt file instead.
        match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
        detail = match.group(1) if match else str(exc).strip().splitlines()[0]
        if match is None or detail.startswith("Unsupported operand"):
            raise CheckpointError(
                f"Cannot read weights file {str(path)!r}: not a valid torch.save file ({detail})."
            ) from exc
        raise UnsafeCheckpointError(
            f"Weights file {str(path)!r} needs pickle to run code when loaded "
            f"({detail.split('. ')[0]}). Convert it to safetensors, or, only if you "
            "trust its source, load it with trust_pickle=True (CLI: --trust-checkpoint)."
        ) from exc
    except Exception as exc:  # torch raises many types (RuntimeError, KeyError, ...) on bad files
        raise CheckpointError(
            f"Cannot read weights file {str(path)!r} with torch.load: {type(exc).__name__}: {exc}"
        ) from exc


def _as_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap {"state_dict": ...}, {"model": ...}, whole modules and DataParallel prefixes."""
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(
            f"Weights file {str(path)!r} holds {type(loaded).__name__}, expected a non-empty "
            "state dict (name -> tensor), optionally under a 'state_dict' or 'model' key."
        )
    not_tensors = sorted(str(key) for key, value in loaded.items() if not torch.is_tensor(value))
    if not_tensors:
        raise CheckpointError(
            f"Weights file {str(path)!r} has entries that are not tensors: "
            f"{', '.join(not_tensors)}. Expected a state dict (name -> tensor)."
        )
    state = {str(key): value for key, value in loaded.items()}
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state
