"""Per-layer kernel timings: what each Conv/Linear layer costs at each pair of channel counts.

A device does not run a layer in time proportional to its FLOPs. On a 2-core AVX-512 VM at batch
32 (torch 2.13, one thread) a 3x3 convolution at 28x28 took 0.94 ms with 14 input and output
channels and 2.36 ms with 16; at 14x14 it took 0.34 ms with 16 and 0.90 ms with 18, and 1.55
ms with 32 against 0.95 ms with 31: the library switches algorithms at channel counts, and
those switches decide which plans are fast. A FLOPs line cannot see them. This table times
every Conv/Linear layer of the model *alone*, rebuilt at each pair of (input, output) channel
counts the search can give it, on the target device, once (layers of the same geometry share
their timings). A plan's cost is then the sum of its layers' timings, looked up exactly: the
estimate NetAdapt (Yang et al. 2018) builds from per-layer look-up tables.

The counts timed per unit are its grid: every count from the lower bound to the dense width
when there are at most ``grid`` of them, else ``grid`` counts spread evenly over that range.
A count between two grid points costs what the next grid point above it costs (never less
than measured, so an estimate errs toward over-budget, never under).

The sum of lone layers leaves out what runs between them (norms, activations, additions) and
how layers share caches; :class:`amc.latency_table.LatencyTable` fits a line from this sum to
whole-model timings, as it fits one from FLOPs without it.

Example:
    >>> kernels = KernelTable.measure(model, x, analyze(model, x), "cpu", progress=False)
    >>> kernels.fraction({"conv1": 8}) < 1.0
    True
"""

from __future__ import annotations

import functools
import math
import random
import warnings
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from amc.errors import PlanFormatError
from amc.measure import resolve_device, time_call, torch_threads
from amc.plan import channels_for
from amc.units import CONV_LINEAR, UnitGraph, _in_channels, _is_depthwise, _out_channels

DEFAULT_GRID = 16  # counts timed per unit at most


@dataclass(frozen=True)
class Kernel:
    """Timings of one layer geometry on a grid of (input, output) channel counts.

    Attributes:
        in_counts: input channel counts timed, ascending (one entry when the input is fixed;
            depthwise layers use their output count for both).
        out_counts: output channel counts timed, ascending.
        ms: ``ms[i][j]`` is the layer's time with ``in_counts[i]`` and ``out_counts[j]``.
        depthwise: the input count follows the output count (groups = channels).
    """

    in_counts: tuple[int, ...]
    out_counts: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]
    depthwise: bool = False

    def at(self, cin: int, cout: int) -> float:
        """The time at (``cin``, ``cout``), each rounded up to the grid (capped at its top)."""
        i = min(bisect_left(self.in_counts, cin), len(self.in_counts) - 1)
        j = min(bisect_left(self.out_counts, cout), len(self.out_counts) - 1)
        if self.depthwise:
            i = 0
        return self.ms[i][j]


@dataclass(frozen=True)
class LayerRef:
    """Which kernel times a layer and which units cut its input and output channels."""

    kernel: str
    in_unit: str | None
    out_unit: str | None


@dataclass(frozen=True)
class KernelTable:
    """Per-layer kernel timings of one model on one device (see the module docstring).

    Attributes:
        layers: layer name -> its kernel and units, for every Conv/Linear layer timed.
        kernels: kernel key -> timings; layers of the same geometry and grids share one.
        dense: unit name -> dense channel count (a unit missing from a plan stays dense).
        device: where it was timed.
    """

    layers: Mapping[str, LayerRef]
    kernels: Mapping[str, Kernel]
    dense: Mapping[str, int]
    device: str = "cpu"

    def total_ms(self, channels: Mapping[str, int], skipped: Sequence[str] = ()) -> float:
        """The sum of every timed layer's time at per-unit channel counts (others dense),
        leaving out the layers of ``skipped`` blocks (replaced by identity)."""
        total = 0.0
        dense = self.dense
        prefixes = tuple(f"{block}." for block in skipped)
        for name, ref in self.layers.items():
            if prefixes and name.startswith(prefixes):
                continue
            kernel = self.kernels[ref.kernel]
            cin = channels.get(ref.in_unit, dense[ref.in_unit]) if ref.in_unit else 0
            cout = channels.get(ref.out_unit, dense[ref.out_unit]) if ref.out_unit else 0
            total += kernel.at(cin, cout)
        return total

    @functools.cached_property
    def dense_ms(self) -> float:
        """The sum at the dense widths (computed once: every estimate divides by it)."""
        return self.total_ms({})

    def fraction(self, channels: Mapping[str, int], skipped: Sequence[str] = ()) -> float:
        """:meth:`total_ms` as a fraction of the dense sum (1.0 for an empty table)."""
        dense = self.dense_ms
        return self.total_ms(channels, skipped) / dense if dense > 0 else 1.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (stored inside a latency table)."""
        return {
            "device": self.device,
            "dense": dict(self.dense),
            "layers": {
                name: {"kernel": r.kernel, "in_unit": r.in_unit, "out_unit": r.out_unit}
                for name, r in self.layers.items()
            },
            "kernels": {
                key: {
                    "in_counts": list(k.in_counts),
                    "out_counts": list(k.out_counts),
                    "ms": [list(row) for row in k.ms],
                    "depthwise": k.depthwise,
                }
                for key, k in self.kernels.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KernelTable:
        """Inverse of :meth:`to_json`; a malformed entry raises :class:`PlanFormatError`."""
        try:
            kernels = {
                str(key): Kernel(
                    in_counts=tuple(int(c) for c in entry["in_counts"]),
                    out_counts=tuple(int(c) for c in entry["out_counts"]),
                    ms=tuple(tuple(float(v) for v in row) for row in entry["ms"]),
                    depthwise=bool(entry.get("depthwise", False)),
                )
                for key, entry in data["kernels"].items()
            }
            layers = {
                str(name): LayerRef(str(r["kernel"]), r.get("in_unit"), r.get("out_unit"))
                for name, r in data["layers"].items()
            }
            dense = {str(name): int(count) for name, count in data["dense"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PlanFormatError(
                f"Malformed kernel timings in a latency table ({error!r}): expected 'layers', "
                f"'kernels' (each with 'in_counts', 'out_counts', 'ms') and 'dense'."
            ) from error
        for name, ref in layers.items():
            kernel = kernels.get(ref.kernel)
            if kernel is None or any(
                u is not None and u not in dense for u in (ref.in_unit, ref.out_unit)
            ):
                raise PlanFormatError(
                    f"Malformed kernel timings in a latency table: layer {name!r} names kernel "
                    f"{ref.kernel!r} or units the table does not hold."
                )
            if len(kernel.ms) != len(kernel.in_counts) or any(
                len(row) != len(kernel.out_counts) for row in kernel.ms
            ):
                raise PlanFormatError(
                    f"Malformed kernel timings in a latency table: kernel {ref.kernel!r} needs "
                    f"{len(kernel.in_counts)} row(s) of {len(kernel.out_counts)} timings (one per "
                    f"input count, one per output count in each)."
                )
        return cls(
            layers=layers, kernels=kernels, dense=dense, device=str(data.get("device", "cpu"))
        )

    @classmethod
    def measure(
        cls,
        model: nn.Module,
        example_inputs: Any,
        graph: UnitGraph,
        device: str = "cpu",
        *,
        lower_bound: float = 0.2,
        round_to: int = 1,
        grid: int = DEFAULT_GRID,
        threads: int | None = None,
        block_s: float = 0.002,
        passes: int = 2,
        seed: int = 0,
        progress: bool = True,
    ) -> KernelTable:
        """Time every Conv/Linear layer of ``model`` alone at each pair of grid counts.

        Each layer is rebuilt at the counts (same kernel size, stride, padding, dilation, bias;
        depthwise layers keep groups = channels) and run on a random input of the shape the
        layer sees in the model at ``example_inputs``. Grouped (not depthwise) layers are left
        out: their cost stays in the line's fixed part. The entries are timed in a shuffled
        order, ``passes`` times each, and the fastest pass is kept: a neighbour's load only
        ever slows a timing, and shuffling spreads what remains over the table.

        Args:
            model: the dense model (not modified; its layers are rebuilt, not cut).
            example_inputs: the input the latency is measured on (its batch size counts).
            graph: the model's :func:`amc.units.analyze` result.
            device: where to time ('cpu', 'cuda', 'cuda:N').
            lower_bound, round_to: the space's smallest keep ratio and channel rounding: the
                grid covers the counts it can produce.
            grid: counts timed per unit at most.
            threads: torch intra-op threads while timing (CPU).
            block_s: seconds per timed block (each entry takes three blocks per pass).
            passes: timings per entry; the fastest is kept.
            seed: the shuffle of the timing order.
            progress: show a progress bar.
        """
        if grid < 2:
            raise ValueError(f"grid must be at least 2 counts per unit, got {grid!r}.")
        target = resolve_device(device)
        by_unit = {unit.name: unit for unit in graph.units}
        grids = {
            unit.name: _grid(unit.channels, lower_bound, round_to, grid) if unit.channel_prunable
            else (unit.channels,)
            for unit in graph.units
        }  # fmt: skip
        shapes = _input_shapes(model, example_inputs)
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        costs = {layer.name: layer for layer in graph.layers}
        layers: dict[str, LayerRef] = {}
        # kernel key -> (a layer of that geometry, its input shape, grids in and out, features
        # per channel in and out)
        specs: dict[
            str,
            tuple[nn.Module, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, int]],
        ] = {}
        for name, shape in shapes.items():
            module = model.get_submodule(name)
            cost = costs.get(name)
            # one output per input channel; a channel multiplier is left out, as grouped layers are
            depthwise = _is_depthwise(module) and _in_channels(module) == _out_channels(module)
            if cost is None or (not depthwise and getattr(module, "groups", 1) != 1):
                continue
            out_unit = cost.out_unit if cost.out_unit in by_unit else None
            in_unit = cost.in_unit if cost.in_unit in by_unit else None
            outs = grids[out_unit] if out_unit else (_out_channels(module),)
            ins = (0,) if depthwise else grids[in_unit] if in_unit else (_in_channels(module),)
            # a unit's channel can stand for several features (a Linear after a flatten)
            scale = (
                max(1, _in_channels(module) // by_unit[in_unit].channels) if in_unit else 1,
                max(1, _out_channels(module) // by_unit[out_unit].channels) if out_unit else 1,
            )
            key = _kernel_key(module, shape, ins, outs) + f" per-channel={list(scale)}"
            layers[name] = LayerRef(key, None if depthwise else in_unit, out_unit)
            specs.setdefault(key, (module, shape, ins, outs, scale))

        entries = [
            (key, i, j) for key, (_, _, ins, outs, _) in specs.items()
            for i in range(len(ins)) for j in range(len(outs))
        ]  # fmt: skip
        order = [entry for _ in range(passes) for entry in entries]
        random.Random(seed).shuffle(order)
        best: dict[tuple[str, int, int], float] = {}
        failed: dict[str, str] = {}
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), disable=not progress, desc=f"kernel table on {device}")
        try:
            with torch.inference_mode(), torch_threads(threads if target.type == "cpu" else None):
                for key, i, j in order:
                    bar.update(1)
                    if key in failed:
                        continue
                    module, shape, ins, outs, (per_in, per_out) = specs[key]
                    cin, cout = ins[i] * per_in, outs[j] * per_out
                    try:
                        layer, x = _rebuild(module, shape, cin, cout, target, dtype)  # cheap
                        seconds = time_call(layer, (x,), target, block_s=block_s)
                    except Exception as error:  # a layer that cannot run alone
                        failed[key] = f"{type(error).__name__}: {error}"
                        continue
                    best[(key, i, j)] = min(best.get((key, i, j), math.inf), seconds * 1e3)
        finally:
            bar.close()
        if failed:
            which = [
                ", ".join(sorted(name for name, ref in layers.items() if ref.kernel == key))
                + f" ({why})"
                for key, why in failed.items()
            ]
            warnings.warn(
                f"Layer(s) {'; '.join(which)} could not be timed alone; the latency estimate "
                f"counts them in its fixed part.",
                stacklevel=2,
            )
            layers = {name: ref for name, ref in layers.items() if ref.kernel not in failed}
            specs = {key: spec for key, spec in specs.items() if key not in failed}
        kernels = {
            key: Kernel(
                in_counts=ins,
                out_counts=outs,
                ms=tuple(
                    tuple(best[(key, i, j)] for j in range(len(outs))) for i in range(len(ins))
                ),
                depthwise=ins == (0,),
            )
            for key, (_, _, ins, outs, _) in specs.items()
        }
        dense = {unit.name: unit.channels for unit in graph.units}
        return cls(layers=layers, kernels=kernels, dense=dense, device=str(device))


def _grid(channels: int, lower_bound: float, round_to: int, size: int) -> tuple[int, ...]:
    """The counts timed for a unit of ``channels``: every reachable one, or ``size`` of them.

    When there are more than ``size`` reachable counts, the ones at alignment edges come first
    (multiples of a power of two ``a`` >= 8 and the count just below each, for the smallest ``a``
    that leaves room): libraries switch kernels at such counts (the module docstring), and a
    count rounded up to the next grid point must not cross one. The rest of the room is
    spread evenly over the range.
    """
    low = channels_for(lower_bound, channels, round_to)
    step = round_to if channels >= round_to else 1
    reachable = sorted({c for c in range(low, channels + 1, step)} | {low, channels})
    if len(reachable) <= size:
        return tuple(reachable)
    chosen = {low, channels}
    align = 8
    while True:
        edges = {c for c in reachable if c % align in (0, align - 1)}
        if len(chosen | edges) <= size or align >= channels:
            break
        align *= 2
    if len(chosen | edges) <= size:
        chosen |= edges
    rest = [c for c in reachable if c not in chosen]
    room = size - len(chosen)
    if room > 0 and rest:
        picks = np.linspace(0, len(rest) - 1, min(room, len(rest))).round().astype(int)
        chosen |= {rest[int(i)] for i in picks}
    return tuple(sorted(chosen))


def _input_shapes(model: nn.Module, example_inputs: Any) -> dict[str, tuple[int, ...]]:
    """The input shape of every Conv/Linear layer in one forward pass, by qualified name."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, CONV_LINEAR):

            def hook(_: nn.Module, inputs: tuple[Any, ...], __: Any, name: str = name) -> None:
                if inputs and isinstance(inputs[0], torch.Tensor):
                    shapes.setdefault(name, tuple(inputs[0].shape))

            hooks.append(module.register_forward_hook(hook))
    args = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(*args)
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return shapes


def _kernel_key(
    module: nn.Module, shape: Sequence[int], ins: Sequence[int], outs: Sequence[int]
) -> str:
    """A layer geometry as text: type, input shape without channels, options and grids."""
    if isinstance(module, nn.Linear):
        where = list(shape[:-1])
        options = f"bias={module.bias is not None}"
    else:
        where = [shape[0], *shape[2:]]
        conv: Any = module
        options = (
            f"k={list(conv.kernel_size)} s={list(conv.stride)} p={conv.padding} "
            f"d={list(conv.dilation)} bias={conv.bias is not None} mode={conv.padding_mode}"
        )
    kind = type(module).__name__ + ("/depthwise" if tuple(ins) == (0,) else "")
    return f"{kind} x={where} {options} in={list(ins)} out={list(outs)}"


def _rebuild(
    module: nn.Module, shape: Sequence[int], cin: int, cout: int, device: torch.device, dtype: Any
) -> tuple[nn.Module, torch.Tensor]:
    """A fresh layer like ``module`` with ``cin`` inputs and ``cout`` outputs, and its input."""
    layer: nn.Module
    if isinstance(module, nn.Linear):
        layer = nn.Linear(cin, cout, bias=module.bias is not None)
        x = torch.randn(*shape[:-1], cin)
    else:
        conv: Any = module
        depthwise = cin == 0  # the grid's marker: the input follows the output
        cin = cout if depthwise else cin
        layer = type(module)(
            cin, cout, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=cout if depthwise else 1,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
        )  # fmt: skip
        x = torch.randn(shape[0], cin, *shape[2:])
    return layer.to(device=device, dtype=dtype).eval(), x.to(device=device, dtype=dtype)


__all__ = ["DEFAULT_GRID", "Kernel", "KernelTable", "LayerRef"]
