"""LatencyTable: measured per-unit curves, interpolation, additive estimates, blocks, JSON."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch

from amc.errors import PlanFormatError
from amc.latency_table import LatencyTable, UnitLatency, padded
from amc.space import SearchSpace
from amc.units import analyze
from tests.tiny_models import LeNet, TransformerNet

X = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
KERNELS = {"grid": 3, "block_s": 0.0002, "passes": 1}
FAST = {"warmup": 1, "min_run_time": 0.001, "repeats": 2, "threads": 1, "kernel_options": KERNELS}


def small_table() -> LatencyTable:
    return LatencyTable(
        dense_ms=10.0,
        units={
            "a": UnitLatency(widths=(0.25, 0.5, 1.0), ms=(6.0, 8.0, 10.0)),
            "b": UnitLatency(widths=(0.5, 1.0), ms=(9.0, 10.0), nm_ms=9.5),
        },
    )


def test_estimate_subtracts_interpolated_savings() -> None:
    table = small_table()
    assert table.estimate({}) == 10.0
    assert table.estimate({"a": 0.5}) == 8.0
    assert table.estimate({"a": 0.75}) == pytest.approx(9.0)  # halfway between 8 and 10
    assert table.estimate({"a": 0.1}) == 6.0  # flat below the narrowest width
    assert table.estimate({"a": 0.5, "b": 0.5}) == pytest.approx(7.0)
    assert table.estimate({"b": 1.0}, {"b": True}) == pytest.approx(9.5)
    assert table.estimate({"b": 0.5}, {"b": True}) == pytest.approx(9.0 - 0.25)  # N:M scales
    assert table.estimate({"unknown": 0.5}) == 10.0
    assert table.max_saving_share("a") == pytest.approx(0.4)
    assert table.max_saving_share("unknown") == 0.0


def test_json_round_trip_and_version_check() -> None:
    table = small_table()
    assert LatencyTable.from_json(json.loads(json.dumps(table.to_json()))) == table
    message = (
        "Unknown latency table format 'amc.latency_table/0': this amc reads "
        "'amc.latency_table/1'. Measure the table again with LatencyTable.measure."
    )
    with pytest.raises(PlanFormatError, match="^" + re.escape(message) + "$"):
        LatencyTable.from_json(table.to_json() | {"format": "amc.latency_table/0"})
    with pytest.raises(PlanFormatError, match=re.escape("Malformed latency table")):
        LatencyTable.from_json({"format": "amc.latency_table/1", "units": {}})


def test_measure_times_each_unit_alone_and_keeps_curves_monotone() -> None:
    model = LeNet().eval()
    graph = analyze(model, X)
    table = LatencyTable.measure(model, X, graph, "cpu", widths=(0.5,), progress=False, **FAST)
    assert set(table.units) == {"conv1", "conv2", "fc1"}
    assert table.dense_ms > 0 and table.device == "cpu"
    assert table.meta["batch_size"] == 2
    for name, curve in table.units.items():
        assert curve.widths == (0.5, 1.0), name
        assert curve.ms[-1] == table.dense_ms
        assert curve.ms[0] <= curve.ms[1]
        assert curve.nm_ms is None
    assert LatencyTable.from_json(json.loads(json.dumps(table.to_json()))) == table


def test_measure_with_nm_times_only_units_the_pattern_fits() -> None:
    model = TransformerNet().eval()
    graph = analyze(model, X)
    table = LatencyTable.measure(
        model, X, graph, "cpu", widths=(0.5,), nm=(2, 4), progress=False, **FAST
    )
    # patch's input has 1 channel (no 2:4); attn.qkv cannot lose channels but can take 2:4
    assert table.units["patch"].nm_ms is None
    assert table.units["attn.qkv"].widths == (1.0,)
    assert table.units["attn.qkv"].nm_ms is not None
    assert table.units["fc1"].nm_ms is not None


def test_space_build_measures_a_table_for_latency_targets() -> None:
    model = LeNet().eval()
    space = SearchSpace.build(
        model, X, "latency=1.0", latency_options={"progress": False, "widths": (0.5,), **FAST}
    )
    assert space.latency_table is not None
    assert set(space.latency_table.units) == set(space.names)
    assert space.cost_fraction({}) == 1.0
    assert 0.0 <= space.smallest_fraction() <= 1.0


def test_synthetic_table_follows_flops() -> None:
    graph = analyze(LeNet().eval(), X)
    table = LatencyTable.synthetic(graph, dense_ms=2.0, overhead=0.0)
    conv2 = graph.unit("conv2")
    expected = 2.0 * graph.predict({"conv2": conv2.channels // 2}).flops / graph.dense_flops
    assert table.estimate({"conv2": 0.5}) == pytest.approx(expected)


def blocked_law(block: int) -> object:
    """A fake ``measure_interleaved``: latency = 0.2 + multiply-adds with channels padded to
    ``block`` (as a device that computes channels in blocks of ``block`` runs)."""

    def pad(count: int) -> int:
        return -(-count // block) * block

    def cost(model: torch.nn.Module, x: torch.Tensor) -> float:
        total = []

        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, torch.nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                spatial = output.shape[-1] * output.shape[-2]
                total.append(pad(module.out_channels) * pad(module.in_channels) * k * spatial)
            elif isinstance(module, torch.nn.Linear):
                total.append(pad(module.out_features) * module.in_features)

        handles = [m.register_forward_hook(hook) for m in model.modules()]
        with torch.no_grad():
            model(x)
        for handle in handles:
            handle.remove()
        return 0.2 + sum(total) / 1e5

    def measure(models: list, x: torch.Tensor, *args: object, **kwargs: object) -> list:
        return [SimpleNamespace(median_ms=cost(model, x)) for model in models]

    return measure


@pytest.mark.parametrize("block", [1, 4, 8])
def test_measure_finds_the_channel_block_the_device_computes_in(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("amc.latency_table.measure_interleaved", blocked_law(block))
    model = LeNet().eval()
    graph = analyze(model, X)
    table = LatencyTable.measure(model, X, graph, "cpu", progress=False, kernels=False, **FAST)
    assert table.block == block
    assert str(block) in table.meta["block_rms"]  # the error of each block with a line
    assert LatencyTable.from_json(json.loads(json.dumps(table.to_json()))) == table
    space = SearchSpace.build(model, X, "latency=0.9", latency_table=table, graph=graph)
    # conv2 has 16 channels: in blocks of 4, 5 of them cost what 8 cost; in blocks of 8, 4 do
    four, five, eight = (space.cost_fraction({"conv2": c / 16}) for c in (4, 5, 8))
    assert (five == eight) == (block >= 4)
    assert (four == eight) == (block == 8)
    assert four <= five <= eight


def test_the_kernel_line_is_used_only_where_it_fits_better(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("amc.latency_table.measure_interleaved", blocked_law(1))
    model = LeNet().eval()
    graph = analyze(model, X)

    def same_law(layer: torch.nn.Module, args: tuple, device: object, **_: object) -> float:
        # each layer alone costs what it adds to the blocked law's whole-model time, in seconds
        x = args[0]
        if isinstance(layer, torch.nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            out = (x.shape[-1] // layer.stride[0]) ** 2
            return layer.out_channels * layer.in_channels * k * out / 1e8
        return layer.out_features * layer.in_features / 1e8

    monkeypatch.setattr("amc.kernel_table.time_call", same_law)
    fine = {**FAST, "kernel_options": {"grid": 16, "passes": 1}}  # every anchor count timed
    exact = LatencyTable.measure(model, X, graph, "cpu", progress=False, **fine)
    assert exact.kernels is not None and exact.meta["kernel_rms"] == pytest.approx(0, abs=1e-9)
    monkeypatch.setattr("amc.kernel_table.time_call", lambda *args, **kwargs: 1e-3)
    flat = LatencyTable.measure(model, X, graph, "cpu", progress=False, **FAST)
    assert flat.kernels is None  # every plan sums alike: no line, so FLOPs in blocks
    assert (
        flat.fit
        == LatencyTable.measure(model, X, graph, "cpu", progress=False, kernels=False, **FAST).fit
    )


def test_tables_without_a_block_read_as_proportional() -> None:
    data = small_table().to_json()
    del data["block"]
    assert LatencyTable.from_json(data).block == 1
    assert padded(5, 16, 8) == 8 and padded(13, 12, 8) == 12 and padded(5, 16, 1) == 5
