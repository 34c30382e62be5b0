"""amc.experiment: a latency target's table, as the config asks for it and the study keeps it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from amc import experiment
from amc.config import load_config
from amc.kernel_table import KernelTable
from amc.latency_table import LatencyTable

CONFIG = """
model: tests.tiny_models:LeNet
data: digits
input_shape: [1, 16, 16]
data_limit: 64
baseline: {epochs: 1}
target: latency=1.0
latency:
  warmup: 1
  min_run_time: 0.01
  repeats: 2
  table_widths: [0.5]
  table_min_run_time: 0.01
  table_repeats: 2
  table_kernel_grid: 3
finetune: {steps: 0, bn_batches: 1, eval_batches: 1}
agent: {name: random}
episodes: 1
threads: 1
ray: {workers: 0}
"""


def test_a_latency_target_times_kernels_on_the_configured_grid_and_the_study_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grids: list[int] = []
    measure = KernelTable.measure.__func__  # type: ignore[attr-defined]

    def spy(cls: type, *args: Any, **kwargs: Any) -> KernelTable:
        grids.append(kwargs["grid"])
        return measure(cls, *args, **kwargs)

    monkeypatch.setattr(KernelTable, "measure", classmethod(spy))
    overrides = {"runs_dir": str(tmp_path / "runs"), "storage": f"sqlite:///{tmp_path}/amc.db"}
    prepared = experiment.prepare(load_config(None, overrides, text=CONFIG), progress=False)
    assert grids == [3]
    table = prepared.space.latency_table
    assert table is not None and "kernel_rms" in table.meta  # timed, and its line judged
    if table.kernels is not None:  # used: its line fitted the table at least as well as FLOPs
        assert set(table.kernels.layers) == {"conv1", "conv2", "fc1", "fc2"}
        for kernel in table.kernels.kernels.values():
            assert len(kernel.in_counts) <= 3 and len(kernel.out_counts) <= 3
    record = experiment.open_record(prepared, experiment.make_agent(prepared))
    stored = LatencyTable.from_json(record.attrs["latency_table"])
    assert stored.kernels == table.kernels and stored.fit == table.fit

    without = load_config(None, {**overrides, "latency.table_kernels": False}, text=CONFIG)
    plain = experiment.prepare(without, progress=False)
    assert grids == [3]  # not timed again
    assert plain.space.latency_table is not None and plain.space.latency_table.kernels is None


def test_the_aim_reads_the_median_of_the_configured_repeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`choose.aim_repeats` reaches the meter that sizes the delivered plan."""
    import amc.choose

    repeats: list[int] = []
    meter = amc.choose.latency_meter

    def spy(*args: Any, **kwargs: Any) -> Any:
        repeats.append(kwargs["repeats"])
        return meter(*args, **kwargs)

    monkeypatch.setattr(amc.choose, "latency_meter", spy)
    overrides = {
        "runs_dir": str(tmp_path / "runs"),
        "storage": f"sqlite:///{tmp_path}/amc.db",
        "latency.table_kernels": False,
        "choose.aim": True,
        "choose.aim_steps": 1,
        "choose.aim_repeats": 2,
    }
    prepared = experiment.prepare(load_config(None, overrides, text=CONFIG), progress=False)
    space = prepared.space
    plan = space.make_plan({unit.name: 1.0 for unit in space.units})
    trial = SimpleNamespace(number=0, plan=plan, metrics={"accuracy": 0.5})
    _, aimed, metrics, chosen = experiment._choose(prepared, [trial], progress=False)
    assert repeats == [2]
    assert chosen["aim"]["tried"] and metrics["latency_ratio"] == chosen["aim"]["ratio"]
    assert aimed.provenance["aim"]["measured"] == round(chosen["aim"]["ratio"], 4)
