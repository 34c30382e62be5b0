"""A per-unit latency look-up table, measured on the target device (NetAdapt-style).

For each unit the model is pruned at a few widths with *only that unit* cut (through the same
:func:`amc.prune.apply_plan` every plan goes through) and timed against the dense model in one
interleaved run (:func:`amc.measure.measure_interleaved`), as plans are timed in a search; so
are a few anchors with every unit cut together. A plan's latency is then estimated from a line
fitted through the anchors and the dense point against the FLOPs fraction (or, without a fit,
as the dense latency minus the per-unit savings, each interpolated between the measured widths:
NetAdapt, Yang et al. 2018). The table is what lets AMC's clipping and a search agent reason
about latency without timing every candidate.

Devices compute channels in blocks: on a 2-core AVX-512 VM at batch 32, resnet20 cut to
9/17/33 channels ran at 0.54-0.58 of dense and cut to 8/16/32 at 0.37-0.39, so a count just past
a multiple of 8 costs about what the next multiple costs, which FLOPs cannot see. The FLOPs in
the fit are counted with every kept channel count padded up to a multiple of
:attr:`LatencyTable.block`, and the block is chosen when the table is measured: the candidate
(1, 2, 4, 8, 16, 32) whose line fits the table's own timings best. (Within a block the padding
is only an approximation: 7/14/28 ran at 0.28-0.30 in the same sweep.)

What the device really does is in its kernels, so by default the table also times every
Conv/Linear layer alone at the channel counts the search can give it
(:class:`amc.kernel_table.KernelTable`), and the line then runs from a plan's summed layer
times instead of its FLOPs (:attr:`LatencyTable.kernels`); the block stays for the record and
for tables measured without kernels.

Example:
    >>> table = LatencyTable.measure(model, x, analyze(model, x), "cpu", progress=False)
    >>> table.estimate({"conv1": 0.5}) < table.dense_ms
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from amc.errors import PlanFormatError, PlanMismatchError
from amc.kernel_table import KernelTable
from amc.measure import measure_interleaved
from amc.plan import PruningPlan, UnitPlan, channels_for
from amc.units import UnitGraph

LATENCY_TABLE_FORMAT = "amc.latency_table/1"
DEFAULT_WIDTHS = (0.25, 0.5, 0.75)
BLOCKS = (1, 2, 4, 8, 16, 32)  # channel blocks a measured table chooses from


def padded(count: int, channels: int, block: int) -> int:
    """``count`` of ``channels`` rounded up to a multiple of ``block`` (at most ``channels``).

    Example:
        >>> padded(5, 16, 8), padded(9, 12, 8), padded(3, 16, 1)
        (8, 12, 3)
    """
    if block <= 1:
        return count
    return min(channels, -(-count // block) * block)


@dataclass(frozen=True)
class UnitLatency:
    """Measured latency of the model with one unit cut to each width (others dense).

    Attributes:
        widths: kept channel fractions, ascending, ending with 1.0 (the dense model).
        ms: latency at each width; made non-decreasing in width and at most the dense latency.
        nm_ms: latency with the unit dense but under the space's N:M pattern, or None.
    """

    widths: tuple[float, ...]
    ms: tuple[float, ...]
    nm_ms: float | None = None
    flops: tuple[float, ...] = ()  # the model's FLOPs fraction at each width (for the fit)

    def at(self, keep_ratio: float) -> float:
        """Latency with this unit at ``keep_ratio``, interpolated (flat below the first width)."""
        return float(np.interp(keep_ratio, self.widths, self.ms))


@dataclass(frozen=True)
class LatencyTable:
    """Dense latency and per-unit latency curves of one model on one device.

    Attributes:
        dense_ms: median latency of the dense model.
        units: unit name -> its measured curve.
        device: where it was measured ('cpu', 'cuda:0').
        meta: how it was measured (batch size, threads, repeats), for the record.
    """

    dense_ms: float
    units: Mapping[str, UnitLatency]
    device: str = "cpu"
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: latency ~ fixed_ms + ms_per_flops * (FLOPs fraction), fitted by least squares on every
    #: measured point; None when the curves carry no FLOPs (then savings are simply added)
    fit: tuple[float, float] | None = None
    #: measured / estimated latency of the plans evaluated so far (online calibration)
    scale: float = 1.0
    #: the FLOPs of the fit count each kept channel count padded up to a multiple of this
    block: int = 1
    #: per-layer kernel timings; when present the line is fitted on their summed fraction
    #: (:meth:`KernelTable.fraction`) instead of on FLOPs, and ``block`` only records the choice
    kernels: KernelTable | None = None

    def saving(self, name: str, keep_ratio: float, nm: bool = False) -> float:
        """Milliseconds saved by cutting unit ``name`` to ``keep_ratio`` (and N:M if ``nm``)."""
        curve = self.units.get(name)
        if curve is None:
            return 0.0
        saved = self.dense_ms - curve.at(keep_ratio)
        if nm and curve.nm_ms is not None:
            # N:M acts on the weights left after cutting, so its effect scales with the width.
            saved += (self.dense_ms - curve.nm_ms) * keep_ratio
        return saved

    def estimate(
        self,
        keep: Mapping[str, float],
        nm_choices: Mapping[str, bool] | None = None,
        flops_fraction: float | None = None,
        channels: Mapping[str, int] | None = None,
        skipped: Sequence[str] = (),
        kept_layers: float = 1.0,
    ) -> float:
        """Estimated latency (ms) of a plan.

        With a fit and the plan's FLOPs fraction: the fitted line ``fixed + slope * FLOPs``
        through the measured dense latency, times the online calibration ``scale``. Cutting two
        coupled units shrinks a layer by the product of their ratios, which the FLOPs term
        captures and a plain sum of per-unit savings (the fallback) over-counts. With
        :attr:`kernels` and the plan's channel counts, the line runs on the plan's summed
        kernel timings (as a fraction of the dense sum) instead of its FLOPs.

        Args:
            keep: unit name -> kept channel fraction; units not named stay dense.
            nm_choices: unit name -> whether the unit uses the N:M pattern.
            flops_fraction: the plan's predicted FLOPs as a fraction of dense, counted with
                its channel counts padded to :attr:`block` (as the fit was).
            channels: unit name -> channels kept (units not named stay dense); with
                :attr:`kernels`, what the estimate is read from.
            skipped: residual blocks the plan replaces by identity: their layers' kernel
                timings leave the sum (without kernels, ``flops_fraction`` leaves their FLOPs
                out).
            kept_layers: the share of the model's layers a skip leaves; the line's fixed time
                (per-layer overhead the kernels do not time: norms, activations, the
                framework's dispatch) shrinks in proportion (without a fit, the whole
                estimate: no timing of a block alone is at hand).
        """
        nm_choices = nm_choices or {}
        if self.kernels is not None and channels is not None:
            # never above dense: a cut layer timed slower than the dense one is noise on layers
            # too small to time, or a kernel switch that measuring the plan will catch
            flops_fraction = min(1.0, self.kernels.fraction(channels, skipped))
        names = set(keep) | {name for name, used in nm_choices.items() if used}
        if self.fit is None or flops_fraction is None:
            saved = sum(
                self.saving(name, keep.get(name, 1.0), bool(nm_choices.get(name, False)))
                for name in names
            )
            # no timing of a skipped block alone: it takes its share of the layers' time
            return self.scale * max(0.0, self.dense_ms - saved) * kept_layers
        fixed, slope = self.fit
        total = fixed * kept_layers + slope * flops_fraction
        for name in names:
            curve = self.units.get(name)
            if nm_choices.get(name) and curve is not None and curve.nm_ms is not None:
                total -= (self.dense_ms - curve.nm_ms) * keep.get(name, 1.0)
        # Single-unit timings are kept in the table (and shape the fitted line) but do not enter
        # the estimate one by one: on a shared machine each is a single noisy median, and summed
        # over dozens of units their errors swamp the signal. The anchors (every unit cut
        # together) fix the line where searches end up; the online scale corrects the rest.
        # the line through the measured dense latency (divided first: x = 1 gives it exactly)
        total = self.dense_ms * (total / (fixed + slope))
        return self.scale * max(total, 0.05 * self.dense_ms)

    def max_saving_share(self, name: str) -> float:
        """The unit's largest measured saving as a fraction of the dense latency, in [0, 1]."""
        curve = self.units.get(name)
        if curve is None or self.dense_ms <= 0:
            return 0.0
        return float(min(1.0, max(0.0, (self.dense_ms - curve.ms[0]) / self.dense_ms)))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict in format ``amc.latency_table/1``."""
        return {
            "format": LATENCY_TABLE_FORMAT,
            "dense_ms": self.dense_ms,
            "device": self.device,
            "meta": dict(self.meta),
            "units": {
                name: {
                    "widths": list(c.widths),
                    "ms": list(c.ms),
                    "nm_ms": c.nm_ms,
                    "flops": list(c.flops),
                }
                for name, c in self.units.items()
            },
            "fit": list(self.fit) if self.fit else None,
            "scale": self.scale,
            "block": self.block,
            "kernels": self.kernels.to_json() if self.kernels is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyTable:
        """Inverse of :meth:`to_json`; a different format version names both versions."""
        version = data.get("format") if isinstance(data, Mapping) else None
        if version != LATENCY_TABLE_FORMAT:
            raise PlanFormatError(
                f"Unknown latency table format {version!r}: this amc reads "
                f"{LATENCY_TABLE_FORMAT!r}. Measure the table again with LatencyTable.measure."
            )
        try:
            units = {
                str(name): UnitLatency(
                    widths=tuple(float(w) for w in entry["widths"]),
                    ms=tuple(float(v) for v in entry["ms"]),
                    nm_ms=None if entry.get("nm_ms") is None else float(entry["nm_ms"]),
                    flops=tuple(float(f) for f in entry.get("flops") or ()),
                )
                for name, entry in data["units"].items()
            }
            return cls(
                dense_ms=float(data["dense_ms"]),
                units=units,
                device=str(data.get("device", "cpu")),
                meta=dict(data.get("meta") or {}),
                fit=tuple(float(v) for v in data["fit"]) if data.get("fit") else None,  # type: ignore[arg-type]
                scale=float(data.get("scale", 1.0)),
                block=int(data.get("block", 1)),  # tables measured before blocks: proportional
                kernels=KernelTable.from_json(data["kernels"]) if data.get("kernels") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PlanFormatError(
                f"Malformed latency table ({error!r}): expected 'dense_ms' and 'units' mapping "
                f"unit names to {{'widths': [...], 'ms': [...], 'nm_ms': number or null}}."
            ) from error

    @classmethod
    def synthetic(
        cls,
        graph: UnitGraph,
        dense_ms: float = 1.0,
        widths: Sequence[float] = DEFAULT_WIDTHS,
        *,
        overhead: float = 0.1,
        nm: tuple[int, int] | None = None,
    ) -> LatencyTable:
        """A table derived from the FLOPs cost model instead of timings (tests, dry runs).

        Latency is taken as ``overhead`` of ``dense_ms`` fixed plus the rest proportional to
        FLOPs; with ``nm`` an eligible unit's own FLOPs shrink by N/M under the pattern.
        """
        dense_flops = graph.dense_flops or 1

        def ms(flops: float) -> float:
            return dense_ms * (overhead + (1.0 - overhead) * flops / dense_flops)

        curves = {}
        for unit in graph.units:
            if not (unit.channel_prunable or (nm and unit.nm_eligible)):
                continue
            points = [(1.0, dense_ms)]
            if unit.channel_prunable:
                counts = {channels_for(w, unit.channels) for w in widths if 0.0 < w < 1.0}
                points = [
                    (c / unit.channels, ms(graph.predict({unit.name: c}).flops))
                    for c in sorted(counts)
                    if c < unit.channels
                ] + points
            nm_ms = None
            if nm is not None and unit.nm_eligible:
                nm_ms = ms(dense_flops - unit.flops * (1.0 - nm[0] / nm[1]))
            curves[unit.name] = UnitLatency(
                widths=tuple(w for w, _ in points), ms=tuple(v for _, v in points), nm_ms=nm_ms
            )
        return cls(dense_ms=dense_ms, units=curves, device="synthetic", meta={"synthetic": True})

    @classmethod
    def measure(
        cls,
        model: nn.Module,
        example_inputs: Any,
        graph: UnitGraph,
        device: str = "cpu",
        widths: Sequence[float] = DEFAULT_WIDTHS,
        *,
        units: Iterable[str] | None = None,
        nm: tuple[int, int] | None = None,
        round_to: int = 1,
        progress: bool = True,
        warmup: int = 5,
        min_run_time: float = 0.2,
        repeats: int = 10,
        threads: int | None = None,
        kernels: bool = True,
        lower_bound: float = 0.2,
        kernel_options: Mapping[str, Any] | None = None,
    ) -> LatencyTable:
        """Time the model with each unit alone cut to each of ``widths``, and its layers.

        Args:
            model: the dense model (not modified).
            example_inputs: the input the latency is measured on (its batch size counts).
            graph: the model's :func:`amc.units.analyze` result.
            device: where to time ('cpu', 'cuda', 'cuda:N').
            widths: kept fractions to measure below 1.0 (1.0 is the dense measurement).
            units: unit names to measure; default every channel-prunable unit, plus every
                N:M-eligible unit when ``nm`` is given.
            nm: also time each N:M-eligible unit dense under this pattern.
            round_to: channel rounding, as the plans will use it.
            progress: show a progress bar.
            warmup, min_run_time, repeats, threads: passed to
                :func:`amc.measure.measure_interleaved` (``repeats`` rounds of the cut and the
                dense model, about ``min_run_time`` seconds for both), once per entry.
            kernels: also time every Conv/Linear layer alone on a grid of channel counts
                (:class:`amc.kernel_table.KernelTable`) and estimate from their sum, unless that
                line fits the table's own timings worse than FLOPs in blocks do
                (``meta["kernel_rms"]`` against ``meta["block_rms"]``; then no kernels).
            lower_bound: the kernel grid covers the counts from this (the space's) up.
            kernel_options: more keyword arguments for :meth:`KernelTable.measure` (``grid``,
                ``block_s``, ``passes``, ``seed``).
        """
        from amc.prune import apply_plan  # prune imports plan, which imports units: no cycle

        if units is None:
            chosen = [u for u in graph.units if u.channel_prunable or (nm and u.nm_eligible)]
        else:
            wanted = set(units)
            chosen = [u for u in graph.units if u.name in wanted]
        fractions = sorted({float(w) for w in widths if 0.0 < float(w) < 1.0})

        dense_samples: list[float] = []

        def time(plan_units: Mapping[str, UnitPlan]) -> float:
            """The cut model's latency as a fraction of the dense model's, timed together."""
            plan = PruningPlan(units=plan_units, model=graph.fingerprint, round_to=round_to)
            candidate = apply_plan(model, plan, example_inputs, graph=graph)
            cut, dense = measure_interleaved(
                [candidate, model], example_inputs, device, warmup=warmup,
                min_run_time=min_run_time, rounds=repeats, threads=threads,
            )  # fmt: skip
            dense_samples.append(dense.median_ms)
            return cut.median_ms / dense.median_ms

        jobs: list[tuple[str, float | None]] = []
        for unit in chosen:
            if unit.channel_prunable:
                counts = sorted({channels_for(w, unit.channels, round_to) for w in fractions})
                jobs.extend((unit.name, c / unit.channels) for c in counts if c < unit.channels)
            if nm is not None and unit.nm_eligible:
                jobs.append((unit.name, None))
        # Every unit cut together at each width: points far from dense that anchor the fitted
        # line where searches end up (single-unit cuts alone all sit near 100% FLOPs).
        anchor_plans = {
            width: {
                u.name: UnitPlan(width, channels_for(width, u.channels, round_to))
                for u in chosen
                if u.channel_prunable
            }
            for width in fractions
        }
        bar = _progress(len(jobs) + len(anchor_plans), progress, f"latency table on {device}")
        try:
            measured: dict[str, dict[float, float]] = {u.name: {} for u in chosen}
            nm_ms: dict[str, float] = {}
            for name, width in jobs:
                count = graph.unit(name).channels
                if width is None:
                    assert nm is not None
                    try:
                        nm_ms[name] = time({name: UnitPlan(1.0, count, nm)})
                    except PlanMismatchError:  # input size not a multiple of M: never offered
                        pass
                else:
                    kept = round(width * count)
                    measured[name][width] = time({name: UnitPlan(width, kept)})
                bar.update(1)
            anchor_ratios: list[tuple[dict[str, int], float]] = []
            for plan_units in anchor_plans.values():
                if plan_units:
                    kept_counts = {name: int(p.channels or 0) for name, p in plan_units.items()}
                    anchor_ratios.append((kept_counts, time(plan_units)))
                bar.update(1)
        finally:
            bar.close()
        # Every entry was timed against the dense model in the same run, so a neighbour's load
        # or a clock change between entries cancels out of its ratio; the dense latency is the
        # median over all of those runs. (A machine busier or quieter when the plans are timed
        # moves every entry alike: the online calibration corrects that.)
        if not dense_samples:  # nothing to cut: the dense model alone
            (stats,) = measure_interleaved(
                [model], example_inputs, device, warmup=warmup, min_run_time=min_run_time,
                rounds=repeats, threads=threads,
            )  # fmt: skip
            dense_samples.append(stats.median_ms)
        dense_ms = float(np.median(dense_samples))
        for name, by_width in measured.items():
            measured[name] = {width: ratio * dense_ms for width, ratio in by_width.items()}
        nm_ms = {name: ratio * dense_ms for name, ratio in nm_ms.items()}
        singles = [
            ({name: round(width * graph.unit(name).channels)}, ms)
            for name, by_width in measured.items()
            for width, ms in by_width.items()
        ]
        anchors = [(kept, ratio * dense_ms) for kept, ratio in anchor_ratios]
        block, block_rms = _choose_block(graph, singles, anchors, dense_ms)
        curves = {}
        for unit in chosen:
            points = sorted(measured[unit.name].items()) + [(1.0, dense_ms)]
            # Timing noise can make a narrower model look slower: keep each curve monotone.
            ms = np.minimum(np.maximum.accumulate([v for _, v in points]), dense_ms)
            curves[unit.name] = UnitLatency(
                widths=tuple(w for w, _ in points),
                ms=tuple(float(v) for v in ms),
                nm_ms=nm_ms.get(unit.name),
            )
        meta: dict[str, Any] = {"warmup": warmup, "min_run_time": min_run_time}
        meta |= {"repeats": repeats, "threads": threads, "batch_size": _batch_size(example_inputs)}
        meta |= {"round_to": round_to, "nm": f"{nm[0]}:{nm[1]}" if nm else None}
        meta |= {"block_rms": {str(b): rms for b, rms in block_rms.items()}}
        meta |= {"anchor_channels": [dict(kept) for kept, _ in anchors]}
        meta |= {"anchors": [[0.0, ms] for _, ms in anchors]}  # FLOPs filled in by at_block
        table = cls(dense_ms=dense_ms, units=curves, device=str(device), meta=meta)
        table = table.at_block(graph, block)
        if not kernels:
            return table
        timed = KernelTable.measure(
            model, example_inputs, graph, device, lower_bound=lower_bound, round_to=round_to,
            threads=threads, progress=progress, **dict(kernel_options or {}),
        )  # fmt: skip
        by_kernels = table.with_kernels(timed)
        kernel_rms = by_kernels.meta.get("kernel_rms")
        block_error = block_rms.get(block)
        if kernel_rms is None or (block_error is not None and kernel_rms > block_error):
            # On a model whose layers are too small to time apart from overheads (or a noisy
            # run), the kernel line fits the table's own timings worse than FLOPs in blocks:
            # estimate from the better line, as the block is chosen.
            return replace(table, meta={**table.meta, "kernel_rms": kernel_rms})
        return by_kernels

    def with_kernels(self, kernels: KernelTable) -> LatencyTable:
        """The same timings estimated from ``kernels``: the line refitted on their sum.

        The anchors' kernel fractions become the line's x; ``meta["kernel_rms"]`` records the
        line's error over every measured point (single-unit cuts and anchors), relative to the
        dense latency, as ``meta["block_rms"]`` does for the FLOPs lines.
        """
        kept = [dict(k) for k in self.meta.get("anchor_channels", [])]
        anchor_ms = [float(ms) for _, ms in self.meta.get("anchors", [])]
        anchors = [(kernels.fraction(k), ms) for k, ms in zip(kept, anchor_ms, strict=False)]
        line = _fit({}, anchors, self.dense_ms)
        meta = dict(self.meta)
        if line is not None:
            singles = [
                (kernels.fraction({name: round(w * kernels.dense[name])}), ms)
                for name, curve in self.units.items()
                for w, ms in zip(curve.widths[:-1], curve.ms[:-1], strict=True)
            ]
            meta["kernel_rms"] = _rms([*singles, *anchors], self.dense_ms, line)
        return replace(self, kernels=kernels, fit=line, meta=meta)

    def at_block(self, graph: UnitGraph, block: int) -> LatencyTable:
        """The same timings with FLOPs counted in channel blocks of ``block``, the line refitted.

        :meth:`measure` returns the table at the block that fits its timings best (estimating
        from its kernel timings when it has them); this gives it at another one, without the
        kernel timings (to compare estimates, or to override the choice). The FLOPs of every
        curve point and anchor are recounted with each kept channel count padded up to a
        multiple of ``block`` (see :func:`padded`).

        Args:
            graph: the model's :func:`amc.units.analyze` result (the one the table was timed on).
            block: channel block, 1 for FLOPs as they are.
        """
        if block < 1:
            raise ValueError(f"block must be a positive integer, got {block!r}.")
        curves = {}
        for name, curve in self.units.items():
            channels = graph.unit(name).channels
            flops = [
                _flops_fraction(graph, {name: round(w * channels)}, block) for w in curve.widths
            ]
            curves[name] = replace(curve, flops=tuple(flops))
        anchors = [
            [_flops_fraction(graph, kept, block), float(ms)]
            for kept, (_, ms) in zip(
                self.meta.get("anchor_channels", []), self.meta.get("anchors", []), strict=False
            )
        ]
        return replace(
            self,
            units=curves,
            meta={**self.meta, "anchors": anchors},
            fit=_fit(curves, [(f, ms) for f, ms in anchors], self.dense_ms),
            block=int(block),
            kernels=None,
        )


def _flops_fraction(graph: UnitGraph, kept: Mapping[str, int], block: int) -> float:
    """The FLOPs fraction of per-unit channel counts, each padded up to a multiple of ``block``."""
    counts = {
        name: padded(count, graph.unit(name).channels, block) for name, count in kept.items()
    }
    return graph.predict(counts).flops / graph.dense_flops  # type: ignore[operator]


def _choose_block(
    graph: UnitGraph,
    singles: Sequence[tuple[Mapping[str, int], float]],
    anchors: Sequence[tuple[Mapping[str, int], float]],
    dense_ms: float,
) -> tuple[int, dict[int, float]]:
    """The channel block whose FLOPs line fits the measured table best, and each one's error.

    For each candidate in :data:`BLOCKS` the line is fitted as :func:`_fit` fits it (anchors and
    the dense point) on FLOPs counted with that block; its error is the root mean square of
    the line's misses over every measured point, relative to the dense latency. The smallest
    block within 2% of the best error wins (blocks the table's widths cannot tell apart, such
    as 1, 2 and 4 when every measured count is a multiple of 4, fit alike). A line with a
    negative fixed cost or slope is not a latency model and never wins.
    """
    errors: dict[int, float] = {}
    points = [*singles, *anchors]
    ms = np.asarray([m for _, m in points] + [dense_ms])
    for block in BLOCKS:
        xs = [_flops_fraction(graph, kept, block) for kept, _ in points]
        anchor_points = list(zip(xs[len(singles) :], ms[len(singles) : -1], strict=True))
        line = _fit({}, anchor_points, dense_ms)
        if line is None or line[0] < 0:  # nothing to fit (a block wider than every unit), or
            continue  # a line that is no latency model
        errors[block] = _rms(list(zip(xs, ms[:-1], strict=True)), dense_ms, line)
    if not errors:
        return 1, {}
    best = min(errors.values())
    return min(b for b, e in errors.items() if e <= best * 1.02 + 1e-12), errors


def _rms(
    points: Sequence[tuple[float, float]], dense_ms: float, line: tuple[float, float]
) -> float:
    """Root mean square miss of ``line`` over ``points`` (x, ms) and the dense point, / dense."""
    xs = np.asarray([x for x, _ in points] + [1.0])
    ms = np.asarray([m for _, m in points] + [dense_ms])
    return float(np.sqrt(np.mean((ms - (line[0] + line[1] * xs)) ** 2))) / dense_ms


def _fit(
    curves: Mapping[str, UnitLatency],
    anchors: Sequence[tuple[float, float]] = (),
    dense_ms: float | None = None,
) -> tuple[float, float] | None:
    """Least-squares line latency = fixed + slope * FLOPs fraction.

    On the anchors (every unit cut together) and the dense point when there are anchors: they
    span the FLOPs range and each moves latency well beyond timing noise. Without anchors, on
    every single-unit point.
    """
    if anchors and dense_ms is not None:
        xs = [f for f, _ in anchors] + [1.0]
        ys = [m for _, m in anchors] + [dense_ms]
    else:
        xs = [f for c in curves.values() for f in c.flops]
        ys = [m for c in curves.values() for m in c.ms[: len(c.flops)]]
    if len(set(xs)) < 2:
        return None
    slope, fixed = np.polyfit(xs, ys, 1)
    if slope <= 0:  # noise swamped the signal: fall back to adding savings
        return None
    return (float(fixed), float(slope))


def _batch_size(example_inputs: Any) -> int:
    first = example_inputs if not isinstance(example_inputs, tuple | list) else example_inputs[0]
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else 1


def _progress(total: int, enabled: bool, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, unit="model")
