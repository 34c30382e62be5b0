"""The prunable units of a model: coupled channel groups, their descriptors and a cost model.

A *unit* is one set of channels that must be cut together (layers joined by a residual add, a
concat, a depthwise conv, a norm layer or a Linear chain). Torch-Pruning's ``DependencyGraph``
finds the coupling; this module orders the groups by execution, names each one after its root
layer (the first layer, in execution order, whose output channels it cuts), describes it with
AMC's layer embedding features, and builds a cost model that predicts FLOPs and params of any
per-unit channel count without pruning anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from amc.measure import count_flops

CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
UNIT_KINDS = ("conv", "linear", "depthwise", "attention")


@dataclass(frozen=True)
class Unit:
    """One coupled channel group: the thing one keep ratio decides.

    Attributes:
        name: qualified module name of the root layer (the key used in plans).
        index: position in execution order.
        kind: "conv", "linear", "depthwise" or "attention".
        layers: qualified names of every module the unit touches (output or input side).
        out_layers: the layers whose output channels (or features) the unit cuts.
        channels: dense channel count.
        in_channels: input channels of the root layer.
        spatial: input (height, width) of the root layer, (1, 1) for Linear.
        kernel: kernel size of the root layer, (1, 1) for Linear.
        stride: stride of the root layer, (1, 1) for Linear.
        flops: dense FLOPs of the layers whose output the unit cuts.
        params: dense params of the layers whose output the unit cuts.
        nm_layers: Conv/Linear layers whose weights an N:M pattern of this unit applies to.
        channel_prunable: False where cutting channels would break the model (attention heads).
    """

    name: str
    index: int
    kind: str
    layers: tuple[str, ...]
    out_layers: tuple[str, ...]
    channels: int
    in_channels: int
    spatial: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    flops: int
    params: int
    nm_layers: tuple[str, ...]
    channel_prunable: bool = True

    @property
    def nm_eligible(self) -> bool:
        """Whether an N:M pattern can apply to this unit (it owns Conv/Linear weights)."""
        return bool(self.nm_layers)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self) | {"nm_eligible": self.nm_eligible}


@dataclass(frozen=True)
class LayerCost:
    """The dense cost of one layer and which units cut its output and input channels."""

    name: str
    flops: int
    weight_params: int  # scales with output and input keep ratios
    other_params: int  # biases, norm affine, per-channel params: scale with the output only
    out_unit: str | None
    in_unit: str | None
    in_features: int  # size of the dimension N:M groups run along (Conv: in/groups, Linear: in)


@dataclass(frozen=True)
class Cost:
    """Predicted FLOPs and params of a model."""

    flops: int
    params: int


@dataclass
class UnitGraph:
    """Everything the search needs to know about a model's prunable structure."""

    units: list[Unit]
    layers: list[LayerCost]
    skippable: tuple[str, ...]
    dense_flops: int
    dense_params: int
    fixed_flops: int  # FLOPs no unit scales (attention matmuls, pooling in forward code)
    fingerprint: str
    output_layers: tuple[str, ...] = field(default_factory=tuple)

    def unit(self, name: str) -> Unit:
        """The unit called ``name`` (KeyError if none)."""
        return self._by_name()[name]

    def _by_name(self) -> dict[str, Unit]:
        return {unit.name: unit for unit in self.units}

    def predict(
        self, channels: Mapping[str, int] | None = None, skipped: Sequence[str] = ()
    ) -> Cost:
        """Predict FLOPs and params for per-unit channel counts and skipped blocks.

        Args:
            channels: unit name -> channels kept; units not named stay dense.
            skipped: qualified names of residual blocks replaced by identity.
        """
        channels = channels or {}
        by_name = self._by_name()
        keep = {
            name: channels.get(name, unit.channels) / unit.channels
            for name, unit in by_name.items()
        }
        prefixes = tuple(f"{block}." for block in skipped)
        blocks = set(skipped)
        flops = float(self.fixed_flops)
        params = 0.0
        for layer in self.layers:
            if layer.name in blocks or layer.name.startswith(prefixes):
                continue
            out_keep = keep[layer.out_unit] if layer.out_unit else 1.0
            in_keep = keep[layer.in_unit] if layer.in_unit else 1.0
            flops += layer.flops * out_keep * in_keep
            params += layer.weight_params * out_keep * in_keep + layer.other_params * out_keep
        return Cost(flops=round(flops), params=round(params))


def discover_units(model: nn.Module, example_inputs: Any) -> list[Unit]:
    """List the prunable units of ``model`` in execution order.

    Args:
        model: any ``nn.Module``; it is not modified.
        example_inputs: a tensor (or tuple of tensors) the model accepts.

    Example:
        >>> from amc.zoo import get_model
        >>> units = discover_units(get_model("resnet20"), torch.randn(1, 3, 32, 32))
        >>> units[0].name, units[0].kind
        ('conv1', 'conv')
    """
    return analyze(model, example_inputs).units


def analyze(model: nn.Module, example_inputs: Any) -> UnitGraph:
    """Discover units, per-layer costs and skippable residual blocks of ``model``."""
    work = copy.deepcopy(model).eval()
    names = {module: name for name, module in work.named_modules()}
    trace = _trace_execution(work, example_inputs)
    output_layers = _output_layers(work, trace)
    graph = build_graph(work, example_inputs)
    groups = list(
        graph.get_all_groups(ignored_layers=[work.get_submodule(n) for n in output_layers])
    )

    raw = []
    for group in groups:
        out_mods, in_mods = _group_members(graph, group)
        roots = [m for m in out_mods if isinstance(m, CONV_LINEAR) and m in trace.order]
        if not roots:
            continue
        root = min(roots, key=lambda m: trace.order[m])
        raw.append((trace.order[root], root, out_mods, in_mods))
    raw.sort(key=lambda item: item[0])

    unprunable = _probe_channel_pruning(work, example_inputs, [names[r[1]] for r in raw])
    flops_by_module = count_flops(work, example_inputs, by_module=True)
    assert isinstance(flops_by_module, dict)

    out_unit: dict[nn.Module | nn.Parameter, str] = {}
    in_unit: dict[nn.Module | nn.Parameter, str] = {}
    for _, root, out_mods, in_mods in raw:
        for module in out_mods:
            out_unit[module] = names[root]
        for module in in_mods:
            in_unit[module] = names[root]

    layers = _layer_costs(work, names, flops_by_module, out_unit, in_unit, graph)
    leaf_flops = sum(layer.flops for layer in layers)
    dense_flops = int(flops_by_module.get("", 0))
    dense_params = sum(p.numel() for p in work.parameters())

    units = []
    for index, (_, root, out_mods, in_mods) in enumerate(raw):
        name = names[root]
        owned = [layer for layer in layers if layer.out_unit == name]
        weight_layers = [
            names[m] for m in out_mods if isinstance(m, nn.Module) and isinstance(m, CONV_LINEAR)
        ]
        depthwise = any(_is_depthwise(m) for m in out_mods if isinstance(m, nn.Module))
        attention = names[root] in unprunable and _inside_attention(work, names[root])
        kind = (
            "attention"
            if attention
            else "depthwise"
            if depthwise
            else "linear"
            if isinstance(root, nn.Linear)
            else "conv"
        )
        shape = trace.input_shapes.get(root, ())
        units.append(
            Unit(
                name=name,
                index=index,
                kind=kind,
                layers=tuple(
                    sorted(
                        {names[m] for m in (*out_mods, *in_mods) if isinstance(m, nn.Module)},
                        key=lambda n: trace.order.get(work.get_submodule(n), 1 << 30),
                    )
                ),
                out_layers=tuple(names[m] for m in out_mods if isinstance(m, nn.Module)),
                channels=_out_channels(root),
                in_channels=_in_channels(root),
                spatial=_spatial(root, shape),
                kernel=_pair(getattr(root, "kernel_size", 1)),
                stride=_pair(getattr(root, "stride", 1)),
                flops=sum(layer.flops for layer in owned),
                params=sum(layer.weight_params + layer.other_params for layer in owned),
                nm_layers=tuple(
                    sorted(
                        (n for n in weight_layers if not _is_depthwise(work.get_submodule(n))),
                        key=lambda n: trace.order.get(work.get_submodule(n), 1 << 30),
                    )
                ),
                channel_prunable=name not in unprunable,
            )
        )
    return UnitGraph(
        units=units,
        layers=layers,
        skippable=_skippable_blocks(work, trace, example_inputs),
        dense_flops=dense_flops,
        dense_params=dense_params,
        fixed_flops=dense_flops - leaf_flops,
        fingerprint=fingerprint(model),
        output_layers=output_layers,
    )


def fingerprint(model: nn.Module) -> str:
    """A short hash of the model's layer names and parameter shapes (what a plan must match)."""
    shapes = [[name, list(p.shape)] for name, p in model.state_dict().items()]
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (traced with autograd)."""
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, verbose=False
        )


def output_layer_names(model: nn.Module, example_inputs: Any) -> tuple[str, ...]:
    """Names of the layers that produce the model's output (never channel-pruned)."""
    work = copy.deepcopy(model).eval()
    return _output_layers(work, _trace_execution(work, example_inputs))


def _group_members(graph: tp.DependencyGraph, group: Any) -> tuple[list[Any], list[Any]]:
    """Modules (and bare parameters) whose output / input channels the group cuts."""
    out_mods: list[Any] = []
    in_mods: list[Any] = []
    for dep, _ in group:
        target = dep.target.module
        if not isinstance(target, nn.Module | nn.Parameter):
            continue
        if isinstance(target, nn.Module) and not any(True for _ in target.parameters(False)):
            continue
        side = out_mods if graph.is_out_channel_pruning_fn(dep.handler) else in_mods
        if not any(target is seen for seen in side):
            side.append(target)
    return out_mods, in_mods


@dataclass
class _Trace:
    order: dict[nn.Module, int]
    input_shapes: dict[nn.Module, tuple[int, ...]]
    output_shapes: dict[nn.Module, tuple[int, ...]]
    output_modules: list[nn.Module]


def _trace_execution(model: nn.Module, example_inputs: Any) -> _Trace:
    """Run one forward pass recording call order and shapes of every module."""
    trace = _Trace({}, {}, {}, [])
    outputs: dict[nn.Module, Any] = {}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if module in trace.order:
            return
        trace.order[module] = len(trace.order)
        if inputs and isinstance(inputs[0], torch.Tensor):
            trace.input_shapes[module] = tuple(inputs[0].shape)
        if isinstance(output, torch.Tensor):
            trace.output_shapes[module] = tuple(output.shape)
            outputs[module] = output

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            result = model(*_as_tuple(example_inputs))
    finally:
        for handle in handles:
            handle.remove()
    finals = [t for t in _flatten(result) if isinstance(t, torch.Tensor)]
    trace.output_modules = [
        m
        for m, out in outputs.items()
        if isinstance(m, CONV_LINEAR) and any(out is f for f in finals)
    ]
    return trace


def _output_layers(model: nn.Module, trace: _Trace) -> tuple[str, ...]:
    names = {module: name for name, module in model.named_modules()}
    found = list(trace.output_modules)
    executed = [m for m in trace.order if isinstance(m, CONV_LINEAR)]
    if executed and executed[-1] not in found:
        found.append(executed[-1])
    return tuple(names[m] for m in found)


def _probe_channel_pruning(
    model: nn.Module, example_inputs: Any, root_names: list[str]
) -> set[str]:
    """Names of roots whose channels cannot be cut without breaking the forward pass.

    Cuts one channel of every group on a copy and runs it; where that fails, probes each
    group alone. Roots inside an attention block (a module with ``num_heads``) are refused
    outright: their channels are split into heads by a reshape the graph cannot follow.
    """
    refused = {n for n in root_names if _inside_attention(model, n)}
    candidates = [n for n in root_names if n not in refused]
    with torch.no_grad():
        expected = _shapes(model(*_as_tuple(example_inputs)))

    def works(subset: list[str]) -> bool:
        work = copy.deepcopy(model).eval()
        try:
            graph = build_graph(work, example_inputs)
            for name in subset:
                layer = work.get_submodule(name)
                if _out_channels(layer) < 2:
                    return False
                pruner = graph.get_pruner_of_module(layer)
                graph.get_pruning_group(layer, pruner.prune_out_channels, [0]).prune()
            with torch.no_grad():
                return _shapes(work(*_as_tuple(example_inputs))) == expected
        except Exception:  # any failure means "not safely prunable"
            return False

    if candidates and not works(candidates):
        refused |= {n for n in candidates if not works([n])}
    return refused


def _shapes(output: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _flatten(output) if isinstance(t, torch.Tensor)]


def _layer_costs(
    model: nn.Module,
    names: dict[nn.Module, str],
    flops_by_module: dict[str, int],
    out_unit: dict[Any, str],
    in_unit: dict[Any, str],
    graph: tp.DependencyGraph,
) -> list[LayerCost]:
    costs = []
    for module, name in names.items():
        if name == "":
            continue
        params = list(module.named_parameters(recurse=False))
        children = [f"{name}.{child}" for child, _ in module.named_children()]
        # FLOPs of ops in this module's own forward (attention matmuls, pooling), not children's
        flops = int(flops_by_module.get(name, 0)) - sum(
            int(flops_by_module.get(child, 0)) for child in children
        )
        if not params and flops <= 0:
            continue
        weight = dict(params).get("weight")
        weight_scales_in = isinstance(module, CONV_LINEAR) and not _is_depthwise(module)
        weight_params = weight.numel() if weight is not None and weight_scales_in else 0
        other = sum(p.numel() for _, p in params) - weight_params
        costs.append(
            LayerCost(
                name=name,
                flops=max(flops, 0),
                weight_params=weight_params,
                other_params=other,
                out_unit=out_unit.get(module) if params else None,
                in_unit=in_unit.get(module) if weight_scales_in else None,
                in_features=_nm_features(module),
            )
        )
    # Bare parameters (cls tokens, position embeddings) cut along a unit's channels.
    param_names = {id(p): n for n, p in model.named_parameters()}
    for target, unit_name in out_unit.items():
        if isinstance(target, nn.Parameter) and id(target) in param_names:
            pname = param_names[id(target)]
            if any(c.name == pname.rpartition(".")[0] for c in costs):
                continue
            costs.append(LayerCost(pname, 0, 0, target.numel(), unit_name, None, 0))
    return costs


def _skippable_blocks(model: nn.Module, trace: _Trace, example_inputs: Any) -> tuple[str, ...]:
    """Residual blocks that can be replaced by identity: same shape in and out, and with every
    parameter zeroed the output still depends on the input (an identity path exists)."""
    found = []
    for name, module in model.named_modules():
        if not name or module not in trace.order or not any(True for _ in module.children()):
            continue
        shape_in, shape_out = trace.input_shapes.get(module), trace.output_shapes.get(module)
        if shape_in is None or shape_in != shape_out:
            continue
        if not any(isinstance(m, CONV_LINEAR) for m in module.modules()):
            continue
        if _has_identity_path(module, shape_in):
            found.append(name)
    # the innermost residual modules are the blocks (a stage of blocks has an identity path too)
    return tuple(n for n in found if not any(o.startswith(f"{n}.") for o in found))


def _has_identity_path(module: nn.Module, shape: tuple[int, ...]) -> bool:
    zeros: dict[str, torch.Tensor] = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
    for name, buffer in module.named_buffers():
        zeros[name] = torch.ones_like(buffer) if name.endswith("running_var") else buffer
        if name.endswith("running_mean"):
            zeros[name] = torch.zeros_like(buffer)
    generator = torch.Generator().manual_seed(0)
    first = torch.rand(shape, generator=generator) + 0.5
    second = torch.rand(shape, generator=generator) + 0.5
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            diff = torch.func.functional_call(
                module, zeros, (first,)
            ) - torch.func.functional_call(module, zeros, (second,))
    except Exception:  # a block that cannot run on its own is not skippable
        return False
    finally:
        module.train(was_training)
    return bool(diff.abs().max() > 1e-6)


def _inside_attention(model: nn.Module, name: str) -> bool:
    parent = name.rpartition(".")[0]
    module = model.get_submodule(parent) if parent else model
    return hasattr(module, "num_heads") or isinstance(module, nn.MultiheadAttention)


def _is_depthwise(module: Any) -> bool:
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        and module.groups > 1
        and module.groups == module.in_channels
        and module.out_channels % module.in_channels == 0
    )


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(getattr(module, "out_channels"))  # noqa: B009 - any conv-like layer


def _in_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    return int(getattr(module, "in_channels"))  # noqa: B009 - any conv-like layer


def _nm_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return module.in_channels // module.groups
    return 0


def _spatial(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d) and len(shape) == 4:
        return (int(shape[2]), int(shape[3]))
    if isinstance(module, nn.Linear) and len(shape) == 3:
        return (int(shape[1]), 1)  # tokens
    return (1, 1)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, tuple | list):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    return tuple(example_inputs) if isinstance(example_inputs, tuple | list) else (example_inputs,)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, tuple | list):
        return [item for sub in value for item in _flatten(sub)]
    if isinstance(value, dict):
        return [item for sub in value.values() for item in _flatten(sub)]
    return [value]
