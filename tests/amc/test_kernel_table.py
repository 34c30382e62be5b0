"""KernelTable: per-layer timings on a grid of channel counts, lookup, JSON, and the estimate."""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from amc.errors import PlanFormatError
from amc.kernel_table import Kernel, KernelTable, _grid
from amc.latency_table import LatencyTable
from amc.plan import channels_for
from amc.space import FLOOR_WARN_PLANS, SearchSpace
from amc.units import analyze
from tests.tiny_models import DepthwiseNet, LeNet, ResidualNet

X = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
QUICK = {"grid": 4, "block_s": 0.0002, "passes": 1}


def test_grid_takes_every_count_when_few_else_alignment_edges_and_spread() -> None:
    assert _grid(16, 0.2, 1, 16) == tuple(range(3, 17))  # 3..16: fourteen counts, all
    wide = _grid(64, 0.2, 1, 16)
    assert len(wide) == 16 and wide[0] == 13 and wide[-1] == 64
    # the counts where libraries switch kernels, and the one below each, are on the grid
    assert {15, 16, 31, 32, 47, 48, 63} <= set(wide)
    huge = _grid(2048, 0.2, 1, 16)
    assert len(huge) <= 16 and {1023, 1024, 2047, 2048} <= set(huge)
    assert _grid(64, 0.2, 8, 16) == (16, 24, 32, 40, 48, 56, 64)  # round_to: multiples only
    spread = _grid(100, 0.5, 1, 4)  # no room for edges: the range spread evenly
    assert spread[0] == 50 and spread[-1] == 100 and len(spread) == 4


def test_kernel_lookup_rounds_up_to_the_grid_and_caps_at_its_top() -> None:
    kernel = Kernel(in_counts=(4, 8), out_counts=(2, 6), ms=((1.0, 2.0), (3.0, 4.0)))
    assert kernel.at(4, 2) == 1.0
    assert kernel.at(5, 2) == 3.0  # 5 inputs cost what 8 cost: never less than measured
    assert kernel.at(1, 3) == 2.0  # below the grid: its first point
    assert kernel.at(9, 7) == 4.0  # above: its last
    depthwise = Kernel(in_counts=(0,), out_counts=(2, 6), ms=((1.0, 2.0),), depthwise=True)
    assert depthwise.at(0, 5) == 2.0


def test_measure_times_every_conv_and_linear_at_the_grid_counts() -> None:
    model = LeNet().eval()
    graph = analyze(model, X)
    table = KernelTable.measure(model, X, graph, "cpu", threads=1, progress=False, **QUICK)
    assert set(table.layers) == {"conv1", "conv2", "fc1", "fc2"}
    assert table.layers["conv2"].in_unit == "conv1" and table.layers["conv2"].out_unit == "conv2"
    conv2 = table.kernels[table.layers["conv2"].kernel]
    assert conv2.in_counts == _grid(8, 0.2, 1, 4) and conv2.out_counts == _grid(16, 0.2, 1, 4)
    fc2 = table.kernels[table.layers["fc2"].kernel]
    assert fc2.out_counts == (10,)  # the output layer keeps its classes
    assert all(v > 0 for k in table.kernels.values() for row in k.ms for v in row)
    assert table.fraction({}) == pytest.approx(1.0)
    assert table.total_ms({"conv2": 3}) == pytest.approx(
        table.dense_ms
        - sum(table.kernels[table.layers[n].kernel].at(8, 16) for n in ("conv2",))
        - table.kernels[table.layers["fc1"].kernel].at(16, 32)
        + conv2.at(8, 3)
        + table.kernels[table.layers["fc1"].kernel].at(3, 32)
    )  # conv2's own layer and the one it feeds are read at 3 channels, the rest dense
    assert KernelTable.from_json(json.loads(json.dumps(table.to_json()))) == table


def test_a_linear_after_a_flatten_is_timed_with_all_its_features() -> None:
    seen: list[tuple[int, int]] = []

    def record(layer: nn.Module, args: tuple[Any, ...], device: Any, **kwargs: Any) -> float:
        if isinstance(layer, nn.Linear):
            seen.append((layer.in_features, args[0].shape[-1]))
        return 1e-3

    model = LeNet().eval()
    graph = analyze(model, X)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("amc.kernel_table.time_call", record)
        KernelTable.measure(model, X, graph, "cpu", progress=False, **QUICK)
    # fc1 reads 16 channels x 4 x 4: each kept conv2 channel stands for 16 features
    assert {(c * 16, c * 16) for c in _grid(16, 0.2, 1, 4)} <= set(seen)


def test_layers_of_one_geometry_share_a_kernel_and_depthwise_follows_its_output() -> None:
    model = DepthwiseNet().eval()
    graph = analyze(model, X)
    table = KernelTable.measure(model, X, graph, "cpu", progress=False, **QUICK)
    dw = table.layers["dw"]
    assert dw.in_unit is None and table.kernels[dw.kernel].depthwise
    assert dw.out_unit == table.layers["expand"].out_unit  # cut by the expansion's unit

    twins = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    twins.extend([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)])
    twins_graph = analyze(twins, X)
    shared = KernelTable.measure(twins, X, twins_graph, "cpu", progress=False, **QUICK)
    # layers 1 and 2: same geometry, same grids (8 channels in, 8 out): timed once
    assert shared.layers["1"].kernel == shared.layers["2"].kernel
    assert len(shared.kernels) == 3  # the first (1 input) and the last (4 outputs) differ


def test_a_layer_that_cannot_run_alone_is_left_to_the_fixed_part() -> None:
    def no_linear(layer: nn.Module, args: tuple[Any, ...], device: Any, **kwargs: Any) -> float:
        if isinstance(layer, nn.Linear):
            raise RuntimeError("needs its neighbours")
        return 1e-3

    model = LeNet().eval()
    graph = analyze(model, X)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("amc.kernel_table.time_call", no_linear)
        with pytest.warns(
            UserWarning,
            match=re.escape("Layer(s) fc1 (RuntimeError: needs its neighbours); fc2 ("),
        ):
            table = KernelTable.measure(model, X, graph, "cpu", progress=False, **QUICK)
    assert set(table.layers) == {"conv1", "conv2"}
    assert {ref.kernel for ref in table.layers.values()} == set(table.kernels)


def switching_law(layer: nn.Module, args: tuple[Any, ...], device: Any, **kwargs: Any) -> float:
    """A fake ``time_call``: multiply-adds, except that 8 or more output channels switch to
    a kernel that costs twice as much (as the 14x14 convolutions of the module docstring do)."""
    x = args[0]
    if isinstance(layer, nn.Conv2d):
        k = layer.kernel_size[0] * layer.kernel_size[1]
        work = layer.in_channels // layer.groups * layer.out_channels * k * x.shape[-1] ** 2
        return work * (2.0 if layer.out_channels >= 8 else 1.0) * 1e-9
    return layer.in_features * layer.out_features * 1e-9


def law_table(
    model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, KernelTable, LatencyTable]:
    """``model``'s kernels timed by :func:`switching_law`, and a latency table whose line is
    exact: anchors (every unit cut together) timed as the same law runs, the layers plus
    0.5 ms of fixed time."""
    graph = analyze(model, X)
    monkeypatch.setattr("amc.kernel_table.time_call", switching_law)
    law = KernelTable.measure(model, X, graph, "cpu", progress=False, grid=16, passes=1)
    kept = [
        {u.name: channels_for(w, u.channels) for u in graph.units if u.channel_prunable}
        for w in (0.25, 0.5, 0.75)
    ]
    meta = {"anchor_channels": kept, "anchors": [[0.0, 0.5 + law.total_ms(k)] for k in kept]}
    table = LatencyTable(dense_ms=0.5 + law.dense_ms, units={}, meta=meta).with_kernels(law)
    return graph, law, table


def test_the_space_sees_a_kernel_switch_that_flops_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    model = LeNet().eval()
    graph, law, table = law_table(model, monkeypatch)
    assert table.meta["kernel_rms"] == pytest.approx(0.0, abs=1e-9)  # the line is exact
    assert LatencyTable.from_json(json.loads(json.dumps(table.to_json()))) == table
    space = SearchSpace.build(model, X, "latency=0.99", latency_table=table, graph=graph)
    seven, eight = (space.cost_fraction({"conv2": c / 16}) for c in (7, 8))
    assert eight / seven == pytest.approx(
        (0.5 + law.total_ms({"conv2": 8})) / (0.5 + law.total_ms({"conv2": 7}))
    )
    flops = graph.predict({"conv2": 8}).flops / graph.predict({"conv2": 7}).flops
    assert eight / seven > flops + 0.1  # the switch costs more than the FLOPs say
    by_flops = SearchSpace.build(model, X, "latency=0.99", latency_table=table.at_block(graph, 1))
    assert by_flops.latency_table is not None and by_flops.latency_table.kernels is None


def test_a_skipped_block_leaves_the_sum_and_its_share_of_the_fixed_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A skip removes its layers' kernel timings, and the line's fixed time (the per-layer
    overhead the kernels do not time) shrinks with the share of layers it leaves."""
    model = ResidualNet().eval()
    graph, law, table = law_table(model, monkeypatch)
    block = graph.skippable[-1]
    dense_of = law.dense.get
    own = sum(
        law.kernels[ref.kernel].at(dense_of(ref.in_unit or "", 0), dense_of(ref.out_unit or "", 0))
        for name, ref in law.layers.items()
        if name.startswith(f"{block}.")
    )
    assert own > 0 and law.total_ms({}, [block]) == pytest.approx(law.dense_ms - own)
    space = SearchSpace.build(
        model, X, "latency=0.99", latency_table=table, graph=graph, skip_blocks=True
    )
    share = sum(not layer.name.startswith(f"{block}.") for layer in graph.layers) / len(
        graph.layers
    )
    expected = (0.5 * share + law.total_ms({}, [block])) / table.dense_ms
    assert space.cost_fraction({}, skip=[block]) == pytest.approx(expected)
    assert space.cost_fraction({}, skip=[block]) < space.cost_fraction({}) == pytest.approx(1)


def test_malformed_kernel_timings_say_what_is_expected() -> None:
    good = {
        "dense": {"a": 4},
        "layers": {"conv": {"kernel": "k", "in_unit": None, "out_unit": "a"}},
        "kernels": {"k": {"in_counts": [3], "out_counts": [2, 4], "ms": [[1.0, 2.0]]}},
    }
    assert KernelTable.from_json(good).total_ms({"a": 2}) == 1.0
    with pytest.raises(PlanFormatError, match=re.escape("expected 'layers', 'kernels'")):
        KernelTable.from_json({"layers": {}})
    bad_unit = json.loads(json.dumps(good))
    bad_unit["layers"]["conv"]["out_unit"] = "b"
    with pytest.raises(PlanFormatError, match="layer 'conv' names kernel 'k' or units"):
        KernelTable.from_json(bad_unit)
    bad_rows = json.loads(json.dumps(good))
    bad_rows["kernels"]["k"]["ms"] = [[1.0]]
    with pytest.raises(PlanFormatError, match=re.escape("kernel 'k' needs 1 row(s) of 2")):
        KernelTable.from_json(bad_rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_are_timed_on_cuda_and_the_model_stays_put() -> None:
    model = LeNet().eval()
    graph = analyze(model, X)
    table = KernelTable.measure(model, X, graph, "cuda", progress=False, **QUICK)
    assert table.device == "cuda" and table.dense_ms > 0
    assert next(model.parameters()).device.type == "cpu"


def test_a_target_only_plans_with_skips_reach_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor warning, where the device is slower than the table: plans that skip no block
    no longer fit, those that skip blocks still do, and the warning says which."""
    model = ResidualNet().eval()
    graph, _, table = law_table(model, monkeypatch)
    space = SearchSpace.build(
        model, X, "latency=0.2", latency_table=table, graph=graph, skip_blocks=True
    )
    plan = space.make_plan(space.repair({}))
    keep = {name: unit.keep_ratio for name, unit in plan.units.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(FLOOR_WARN_PLANS):  # read at 2.5 times the table's estimate
            estimate = space.cost_fraction(keep) / space.latency_table.scale  # type: ignore[union-attr]
            space.calibrate_latency(plan, 2.5 * estimate)
    [warning] = [str(w.message) for w in caught]
    assert warning.startswith("Target latency=0.2 is below what plans that skip no block reach")
    assert (
        "estimated at 0.279 of the dense latency (with every skippable block skipped, 0.125)"
        in warning
    )
    assert warning.endswith("Plans that skip no block will keep measuring over the target "
                            "(recorded as over budget).")  # fmt: skip
    lowest = dict.fromkeys(space.names, space.lower_bound)
    assert space.fits(lowest, skip=space.skippable) and space.smallest_fraction() <= 0.2
