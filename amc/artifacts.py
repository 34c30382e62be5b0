"""A pruned model on disk: weights (safetensors), the plan (JSON), a torch.export program.

:func:`save_pruned` writes a folder; :func:`load_pruned` rebuilds the pruned model from the
model spec, the plan and the weights, without unpickling anything: the dense model is built
from its spec, the plan is applied to get the pruned architecture, then the saved weights are
loaded into it and the N:M / unstructured masks are registered again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.checkpoint import load_state_dict_file, save_weights
from amc.errors import CheckpointError
from amc.plan import PruningPlan
from amc.prune import apply_plan, bake_masks, restore_masks
from amc.units import analyze

MANIFEST_FORMAT = "amc.pruned/1"
WEIGHTS = "weights.safetensors"
PLAN = "plan.json"
PROGRAM = "program.pt2"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PrunedArtifacts:
    """Paths written by :func:`save_pruned`."""

    folder: Path
    weights: Path
    plan: Path
    program: Path | None
    manifest: Path


def save_pruned(
    model: nn.Module,
    plan: PruningPlan,
    folder: str | os.PathLike[str],
    example_inputs: torch.Tensor,
    *,
    model_spec: str = "",
    model_kwargs: Mapping[str, Any] | None = None,
    export: bool = True,
) -> PrunedArtifacts:
    """Write a pruned model to ``folder`` (built in a temp folder, then moved into place).

    Args:
        model: the pruned model (masks may still be registered).
        plan: the plan that produced it.
        folder: destination; replaced if it exists.
        example_inputs: an input batch, for ``torch.export``.
        model_spec: how to rebuild the dense model (zoo name or ``package.module:callable``).
        model_kwargs: keyword arguments of the model factory (num_classes, in_channels, ...).
        export: also write a ``torch.export`` program, for any batch size where the model
            allows it (the manifest's ``program_batch`` says "dynamic" or the fixed size).
    """
    folder = check_output_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        baked = bake_masks(model).eval()
        save_weights(baked, staging / WEIGHTS)
        plan.save(staging / PLAN)
        program = None
        program_batch: str | int | None = None
        if export:
            exported, program_batch = _export(baked, example_inputs)
            torch.export.save(exported, staging / PROGRAM)
            program = folder / PROGRAM
        manifest = {
            "format": MANIFEST_FORMAT,
            "model_spec": model_spec,
            "model_kwargs": dict(model_kwargs or {}),
            "input_shape": list(example_inputs.shape[1:]),
            "torch": torch.__version__,
            "program_batch": program_batch,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        # Move an older pruned-model folder aside first, so a failure leaves it in place.
        previous = staging.with_name(staging.name + ".old") if folder.exists() else None
        if previous is not None:
            os.replace(folder, previous)
        try:
            os.replace(staging, folder)
        except BaseException:
            if previous is not None:
                os.replace(previous, folder)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrunedArtifacts(folder, folder / WEIGHTS, folder / PLAN, program, folder / MANIFEST)


def _export(
    model: nn.Module, example_inputs: torch.Tensor
) -> tuple[torch.export.ExportedProgram, str | int]:
    """Export with a dynamic batch size where the model allows it, else with the example's."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    # Batch 2, not 1: torch.export specialises sizes 0 and 1.
    pair = example_inputs[:1].expand(2, *example_inputs.shape[1:]).clone()
    with torch.no_grad():
        try:
            return torch.export.export(model, (pair,), dynamic_shapes=({0: batch},)), "dynamic"
        except Exception:  # noqa: BLE001 - a model whose code fixes the batch size
            exported = torch.export.export(model, (example_inputs,))
    return exported, int(example_inputs.shape[0])


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Refuse a destination that :func:`save_pruned` must not replace; return it as a Path.

    A missing folder, an empty one, or a pruned-model folder (with a manifest) may be replaced;
    anything else (a file, a folder of other files) is the user's and is left alone.
    """
    folder = Path(folder)
    if not folder.exists() or (folder / MANIFEST).is_file():
        return folder
    if folder.is_dir() and not any(folder.iterdir()):
        return folder
    what = "a folder of other files" if folder.is_dir() else "a file"
    raise CheckpointError(
        f"Output folder {str(folder)!r} is {what}, not a pruned-model folder (no {MANIFEST}); "
        "amc would replace it. Choose a new folder for --out, or remove that one first."
    )


def load_pruned(
    folder_or_model: str | os.PathLike[str] | nn.Module,
    plan: PruningPlan | None = None,
    weights: str | os.PathLike[str] | None = None,
    example_inputs: torch.Tensor | None = None,
) -> nn.Module:
    """Rebuild a pruned model, from a folder of :func:`save_pruned` or from its parts.

    Either ``load_pruned("runs/pruned")`` (the manifest names the model spec), or
    ``load_pruned(dense_model, plan, "weights.safetensors", example_inputs)``.
    """
    if isinstance(folder_or_model, nn.Module):
        if plan is None or weights is None or example_inputs is None:
            raise CheckpointError(
                "load_pruned(model, plan, weights, example_inputs) needs all four; "
                "or pass the folder written by `amc apply`."
            )
        dense = folder_or_model
    else:
        folder = Path(folder_or_model)
        manifest = _read_manifest(folder)
        from amc.zoo import resolve_model

        dense = resolve_model(manifest["model_spec"], **manifest["model_kwargs"])
        plan = plan or PruningPlan.load(folder / PLAN)
        weights = weights or folder / WEIGHTS
        example_inputs = torch.zeros(1, *manifest["input_shape"])
    graph = analyze(dense, example_inputs)
    pruned = apply_plan(dense, plan, example_inputs, criterion="l1", graph=graph)
    pruned = bake_masks(pruned)  # architecture only; the saved weights hold the zeros
    state = load_state_dict_file(weights)
    expected = pruned.state_dict()
    bad = [
        f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
        for key, value in state.items()
        if key in expected and value.shape != expected[key].shape
    ]
    missing = sorted(set(expected) - set(state))
    if bad or missing:
        raise CheckpointError(
            f"Weights {str(weights)!r} do not fit the plan's pruned model: "
            + "; ".join(bad + [f"missing {key}" for key in missing])
            + ". Use the weights written together with this plan."
        )
    pruned.load_state_dict(state)
    return restore_masks(pruned, plan, graph)


def load_program(folder: str | os.PathLike[str]) -> torch.export.ExportedProgram:
    """Load the ``torch.export`` program of a pruned-model folder."""
    path = Path(folder) / PROGRAM
    if not path.is_file():
        raise CheckpointError(f"No exported program at {str(path)!r}; run `amc apply` again.")
    return torch.export.load(path)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{str(folder)!r} is not a pruned-model folder (no {MANIFEST}); "
            "write one with `amc apply` or amc.save_pruned."
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} has format {manifest.get('format')!r}; this amc reads "
            f"{MANIFEST_FORMAT!r}. Re-run `amc apply` with this version."
        )
    if not manifest.get("model_spec"):
        raise CheckpointError(
            f"{str(path)!r} does not name the model spec; use "
            "load_pruned(model, plan, weights, example_inputs) instead."
        )
    return dict(manifest)
