"""Apply a PruningPlan: cut channels, mask N:M and unstructured weights, skip blocks.

One core for every granularity. The caller's model is never touched: :func:`apply_plan`
works on a deep copy and returns it. Channels are cut physically through Torch-Pruning's
dependency graph (so coupled layers stay consistent); N:M and unstructured sparsity are 0/1
masks registered with ``torch.nn.utils.parametrize``, so they survive fine-tuning; skipped
residual blocks become ``nn.Identity``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from amc.errors import AmcError
from amc.importance import (
    CRITERIA,
    channels_to_remove,
    gathered,
    magnitude_mask,
    make_importance,
    nm_mask,
)
from amc.plan import PruningPlan, validate_plan
from amc.units import UnitGraph, analyze, build_graph


class WeightMask(nn.Module):
    """A fixed 0/1 mask multiplied into a weight on every forward (a parametrization)."""

    def __init__(self, mask: torch.Tensor, pattern: str) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.pattern = pattern  # "2:4" or "unstructured"

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * cast(torch.Tensor, self.mask)


def apply_plan(
    model: nn.Module,
    plan: PruningPlan,
    example_inputs: Any,
    criterion: str | None = None,
    *,
    batches: Iterable[Any] | None = None,
    graph: UnitGraph | None = None,
    check_model: bool = True,
) -> nn.Module:
    """Return a new model with ``plan`` applied; ``model`` itself is left untouched.

    Args:
        model: the dense model.
        plan: the per-unit decisions (validated against ``model`` first).
        example_inputs: a tensor the model accepts (for tracing).
        criterion: channel criterion (``l1``, ``l2``, ``bn_scale``, ``taylor``,
            ``activation``); defaults to the plan's.
        batches: a few inputs or ``(inputs, labels)`` batches, for ``taylor``/``activation``
            (defaults to ``example_inputs``).
        graph: the model's :func:`amc.units.analyze` result, to skip recomputing it.
        check_model: refuse a plan whose model fingerprint differs.

    Example:
        >>> plan = uniform_plan(model, x, keep_ratio=0.5)
        >>> pruned = apply_plan(model, plan, x)
    """
    criterion = criterion or plan.criterion
    if criterion not in CRITERIA:
        make_importance(criterion)  # raises the did-you-mean error
    graph = graph or analyze(model, example_inputs)
    validate_plan(plan, graph, check_model=check_model)
    pruned = copy.deepcopy(model)
    was_training = pruned.training
    channels = plan.channels(graph)
    to_cut = {name: count for name, count in channels.items() if count < graph.unit(name).channels}

    if to_cut:
        dependency = build_graph(pruned, example_inputs)
        importance = make_importance(criterion)
        data = list(batches) if batches is not None else [example_inputs]
        with gathered(pruned, importance, criterion, data), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for unit in graph.units:  # execution order, as AMC walks the layers
                if unit.name not in to_cut:
                    continue
                root = pruned.get_submodule(unit.name)
                pruner = dependency.get_pruner_of_module(root)
                full = dependency.get_pruning_group(
                    root, pruner.prune_out_channels, list(range(unit.channels))
                )
                scores = importance(full)
                remove = channels_to_remove(scores, unit.channels, to_cut[unit.name])
                dependency.get_pruning_group(root, pruner.prune_out_channels, remove).prune()

    for block in plan.skip:
        parent_name, _, child = block.rpartition(".")
        parent = pruned.get_submodule(parent_name) if parent_name else pruned
        setattr(parent, child, nn.Identity())

    skipped = tuple(f"{block}." for block in plan.skip)
    for name, unit_plan in plan.units.items():
        if unit_plan.nm is None and not unit_plan.sparsity:
            continue
        for layer_name in graph.unit(name).nm_layers:
            if layer_name.startswith(skipped):
                continue
            layer = pruned.get_submodule(layer_name)
            if unit_plan.nm is not None:
                n, m = unit_plan.nm
                _register_mask(layer, nm_mask(_weight(layer), n, m), f"{n}:{m}")
            if unit_plan.sparsity:
                mask = magnitude_mask(_weight(layer), unit_plan.sparsity)
                _register_mask(layer, mask, "unstructured")
    pruned.train(was_training)
    return pruned


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)  # Conv/Linear layers of a unit
    return weight


def _register_mask(layer: nn.Module, mask: torch.Tensor, pattern: str) -> None:
    parametrize.register_parametrization(layer, "weight", WeightMask(mask, pattern))


def masked_layers(model: nn.Module) -> dict[str, list[str]]:
    """Layer name -> mask patterns registered on its weight."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            found[name] = [
                p.pattern
                for p in module.parametrizations["weight"]  # type: ignore[union-attr]
                if isinstance(p, WeightMask)
            ]
    return found


def bake_masks(model: nn.Module) -> nn.Module:
    """Return a copy whose masked weights are plain tensors with the zeros written in."""
    baked = copy.deepcopy(model)
    for name in masked_layers(baked):
        layer = baked.get_submodule(name)
        # A deep copy shares parametrize's generated class with the original, and removing a
        # parametrization deletes the property from that class: give the copy its own class.
        shared = type(layer)
        layer.__class__ = type(shared.__name__, shared.__bases__, dict(shared.__dict__))
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return baked


def restore_masks(model: nn.Module, plan: PruningPlan, graph: UnitGraph) -> nn.Module:
    """Re-register the plan's masks on a pruned model whose weights already hold the zeros."""
    skipped = tuple(f"{block}." for block in plan.skip)
    for name, unit_plan in plan.units.items():
        for layer_name in graph.unit(name).nm_layers:
            if layer_name.startswith(skipped):
                continue
            layer = model.get_submodule(layer_name)
            weight = _weight(layer)
            if unit_plan.nm is not None:
                n, m = unit_plan.nm
                _register_mask(layer, nm_mask(weight, n, m), f"{n}:{m}")
            if unit_plan.sparsity:
                _register_mask(layer, (weight != 0).to(weight.dtype), "unstructured")
    return model


class SparseKernelUnavailable(AmcError, RuntimeError):
    """2:4 weights cannot use semi-structured sparse kernels on this device or dtype."""


def accelerate_nm(model: nn.Module) -> list[str]:
    """Convert 2:4-masked Linear weights to PyTorch's semi-structured sparse format, in place.

    Needs CUDA with compute capability 8.0+ and an fp16/bf16 model on that device (PyTorch's
    ``to_sparse_semi_structured``). Elsewhere the masks stay masks and this raises
    :class:`SparseKernelUnavailable` saying why. Returns the names of converted layers.
    """
    layers = {
        name: patterns
        for name, patterns in masked_layers(model).items()
        if patterns == ["2:4"] and isinstance(model.get_submodule(name), nn.Linear)
    }
    if not layers:
        return []
    weight = _weight(model.get_submodule(next(iter(layers))))
    if weight.device.type != "cuda":
        raise SparseKernelUnavailable(
            "2:4 sparse kernels need the model on a CUDA device; on "
            f"{weight.device.type} the N:M pattern stays a mask (smaller size, no speedup). "
            "Move the model to CUDA in fp16/bf16 first."
        )
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < (8, 0) or weight.dtype not in (torch.float16, torch.bfloat16):
        raise SparseKernelUnavailable(
            f"2:4 sparse kernels need compute capability 8.0+ and fp16/bf16 weights; this is "
            f"{capability[0]}.{capability[1]} with {weight.dtype}. The pattern stays a mask."
        )
    from torch.sparse import to_sparse_semi_structured

    converted = []
    for name in layers:
        layer = model.get_submodule(name)
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        layer.weight = nn.Parameter(to_sparse_semi_structured(_weight(layer).detach()))
        converted.append(name)
    return converted
