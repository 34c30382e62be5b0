"""amc.experiment: a latency target's table, as the config asks for it and the study keeps it."""

from __future__ import annotations

from dataclasses import replace
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`choose.aim_repeats` reaches the meter that sizes the delivered plan, and
    `choose.aim_margin` the target it aims at; with progress on, a live line counts the
    aim's readings."""
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
        "choose.aim_margin": 0.05,
    }
    prepared = experiment.prepare(load_config(None, overrides, text=CONFIG), progress=False)
    space = prepared.space
    plan = space.make_plan({unit.name: 1.0 for unit in space.units})
    trial = SimpleNamespace(number=0, plan=plan, metrics={"accuracy": 0.5})
    _, aimed, metrics, chosen = experiment._choose(prepared, [trial], progress=True, dense_ms=10.0)
    assert repeats == [2]
    # the report's dense latency times the measured ratio: its ms and speed-up agree
    assert metrics["latency_ms"] == pytest.approx(metrics["latency_ratio"] * 10.0)
    aim = chosen["aim"]
    readings = len(aim["tried"]) + len(aim["grown_tried"]) + len(aim["rechecked"])
    shown = capsys.readouterr().err
    assert "choosing the plan" in shown and f"{readings} latency readings" in shown
    assert chosen["aim"]["target"] == pytest.approx(space.target.fraction * 0.95)
    assert chosen["aim"]["tried"] and metrics["latency_ratio"] == chosen["aim"]["ratio"]
    assert aimed.provenance["aim"]["measured"] == round(chosen["aim"]["ratio"], 4)


def test_the_uniform_plan_is_re_scored_beside_the_best_and_delivered_if_it_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`choose.rescore_uniform`: the study's uniform plan joins the k best in the re-score;
    where it re-scores best it is delivered as such (no trial), aimed like any pick. The
    uniform plan the report compares with is aimed too (re-scored or not)."""
    import amc.choose
    from amc.evaluate import EvalResult
    from amc.plan import PruningPlan

    overrides = {
        "runs_dir": str(tmp_path / "runs"),
        "storage": f"sqlite:///{tmp_path}/amc.db",
        "latency.table_kernels": False,
        "choose.rescore": 2,
        "choose.rescore_steps": 3,
        "choose.aim": True,
        "choose.aim_steps": 1,
        "choose.aim_confirm": 0,
    }
    prepared = experiment.prepare(load_config(None, overrides, text=CONFIG), progress=False)
    space = prepared.space
    low = space.make_plan({unit.name: space.lower_bound for unit in space.units}, agent="low")
    half = space.make_plan({unit.name: 0.5 for unit in space.units}, agent="half")
    uniform_plan = space.make_plan({unit.name: 0.75 for unit in space.units}, agent="uniform")
    trials = [
        SimpleNamespace(number=n, plan=plan, metrics={"accuracy": 0.9 - n / 10})
        for n, plan in enumerate((low, half))
    ]
    uniform = {"plan": uniform_plan.to_json(), "metrics": {"accuracy": 0.5}}
    scored: list[list[str]] = []

    def rescore(
        workload: Any, plans: Any, steps: int, held_out: Any = None, **_: Any
    ) -> list[Any]:
        agents = [plan.provenance["agent"] for plan in plans]  # kept through the aim
        scored.append(agents)
        score = {"uniform": 1.0, "half": 0.6, "low": 0.2}
        return [EvalResult(status="ok", accuracy=score[agent]) for agent in agents]

    def latency_meter(workload: Any, **_: Any) -> Any:
        # a plan's mean keep ratio: the aims' readings, steady however busy the machine is
        # (timed, a pruned LeNet can read over the dense one on a loaded machine)
        return lambda plan: sum(u.keep_ratio for u in plan.units.values()) / len(plan.units)

    monkeypatch.setattr(amc.choose, "rescore", rescore)
    monkeypatch.setattr(amc.choose, "latency_meter", latency_meter)
    trial, plan, metrics, chosen = experiment._choose(
        prepared, trials, progress=False, uniform=uniform
    )
    assert scored == [["low", "half", "uniform"]]  # the two best trials, then uniform
    assert trial is None and chosen["trial"] is None and chosen["uniform"] is True
    assert [entry["trial"] for entry in chosen["rescored"]] == [0, 1, None]
    assert all("aimed_ratio" in entry for entry in chosen["rescored"])  # aimed first
    assert plan.provenance["agent"] == "uniform" and "aim" in plan.provenance
    assert metrics["rescored_accuracy"] == 1.0 and metrics["accuracy"] == 0.5
    assert metrics["latency_ratio"] == chosen["aim"]["ratio"]
    # the uniform plan the report compares against is the aimed one (here: the delivered one)
    assert PruningPlan.from_json(chosen["uniform_aimed"]["plan"]) == plan
    assert chosen["uniform_aimed"]["metrics"]["latency_ratio"] == chosen["aim"]["ratio"]

    # off: only the trials are re-scored, and one of them is delivered
    choose = prepared.config.choose.model_copy(update={"rescore_uniform": False})
    off = replace(prepared, config=prepared.config.model_copy(update={"choose": choose}))
    scored.clear()
    trial, _, _, chosen = experiment._choose(off, trials, progress=False, uniform=uniform)
    assert scored == [["low", "half"]] and trial is trials[1] and chosen["trial"] == 1
    # ... and the uniform plan, not a candidate, is aimed on its own for the comparison
    compared = chosen["uniform_aimed"]
    assert compared["aim"]["tried"] and compared["aim"]["fits"]
    assert PruningPlan.from_json(compared["plan"]).provenance["agent"] == "uniform"
    assert compared["metrics"]["latency_ratio"] <= space.target.fraction
    assert compared["metrics"]["accuracy"] == 0.5  # the search's score of the uniform plan
    # a uniform plan already among the best is not re-scored twice
    scored.clear()
    same = {"plan": half.to_json(), "metrics": {}}
    experiment._choose(prepared, trials, progress=False, uniform=same)
    assert scored == [["low", "half"]]


def test_quick_ranking_aims_are_carried_on_for_the_winner_and_the_uniform_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`choose.aim_rank_steps`: the candidates are re-scored after quick aims; the delivered
    plan's aim and the uniform plan's (for the report) go on from their quick readings."""
    import amc.choose
    from amc.evaluate import EvalResult
    from amc.plan import PruningPlan

    overrides = {
        "runs_dir": str(tmp_path / "runs"),
        "storage": f"sqlite:///{tmp_path}/amc.db",
        "latency.table_kernels": False,
        "choose.rescore": 2,
        "choose.rescore_steps": 3,
        "choose.aim": True,
        "choose.aim_steps": 5,
        "choose.aim_rank_steps": 1,
        "choose.aim_confirm": 0,
    }
    prepared = experiment.prepare(load_config(None, overrides, text=CONFIG), progress=False)
    space = prepared.space
    half = space.make_plan({unit.name: 0.5 for unit in space.units}, agent="half")
    low = space.make_plan({unit.name: space.lower_bound for unit in space.units}, agent="low")
    uniform_plan = space.make_plan({unit.name: 0.75 for unit in space.units}, agent="uniform")
    trials = [
        SimpleNamespace(number=n, plan=plan, metrics={"accuracy": 0.9 - n / 10})
        for n, plan in enumerate((half, low))
    ]
    uniform = {"plan": uniform_plan.to_json(), "metrics": {"accuracy": 0.5}}
    readings: list[str] = []

    def rescore(workload: Any, plans: Any, steps: int, *_: Any, **__: Any) -> list[Any]:
        score = {"uniform": 0.4, "half": 0.6, "low": 0.2}
        return [EvalResult(status="ok", accuracy=score[p.provenance["agent"]]) for p in plans]

    def latency_meter(workload: Any, **_: Any) -> Any:
        def read(plan: PruningPlan) -> float:
            readings.append(plan.provenance["agent"])
            return sum(u.keep_ratio for u in plan.units.values()) / len(plan.units)

        return read

    monkeypatch.setattr(amc.choose, "rescore", rescore)
    monkeypatch.setattr(amc.choose, "latency_meter", latency_meter)
    trial, plan, _, chosen = experiment._choose(prepared, trials, progress=False, uniform=uniform)
    assert trial is trials[0] and plan.provenance["agent"] == "half"
    ranked = [entry["aimed_ratio"] for entry in chosen["rescored"]]
    assert len(ranked) == 3  # the two trials and the uniform plan, each aimed quickly
    pairs = ((chosen["aim"], ranked[0]), (chosen["uniform_aimed"]["aim"], ranked[2]))
    for found, quick_ratio in pairs:
        assert found["ratio"] >= quick_ratio and found["ratio"] <= space.target.fraction
    assert len(chosen["aim"]["tried"]) > 3  # 1.0 (and top) then one step: carried on
    # each factor read once: the carried-on aims did not read the quick ones' factors again
    for agent, found in (("half", chosen["aim"]), ("uniform", chosen["uniform_aimed"]["aim"])):
        extra = len(found["grown_tried"]) + len(found["rechecked"])
        assert readings.count(agent) == len(found["tried"]) + extra


def test_a_search_whose_uniform_plan_re_scores_best_delivers_and_exports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: the run folder's plan, the study's `chosen`, the final fine-tune's scores
    and `amc export` all name the uniform plan when it wins the re-score."""
    import amc.choose
    from amc.cli import app
    from amc.evaluate import EvalResult
    from amc.plan import PruningPlan

    def rescore(
        workload: Any, plans: Any, steps: int, held_out: Any = None, **_: Any
    ) -> list[Any]:
        return [
            EvalResult(
                status="ok", accuracy=1.0 if p.provenance.get("agent") == "uniform" else 0.1
            )
            for p in plans
        ]

    monkeypatch.setattr(amc.choose, "rescore", rescore)
    storage = f"sqlite:///{tmp_path}/amc.db"
    overrides = {
        "runs_dir": str(tmp_path / "runs"),
        "storage": storage,
        "target": "flops=0.6",
        "episodes": 2,
        "choose.rescore": 2,
        "finetune.final_steps": 1,
    }
    prepared = experiment.prepare(load_config(None, overrides, text=CONFIG), progress=False)
    record, _ = experiment.search(prepared, progress=False)
    finished = experiment.finish(prepared, record, plots=False)
    assert finished.best is not None and finished.best["uniform"] is True
    assert record.attrs["chosen"]["uniform"] is True and record.attrs["final"]["trial"] is None
    assert finished.plan_path is not None
    plan = PruningPlan.load(finished.plan_path)
    assert plan.provenance["agent"] == "uniform" and plan.provenance["uniform"] is True
    assert plan.key() == PruningPlan.from_json(record.attrs["uniform"]["plan"]).key()
    assert finished.rows[-1]["name"].startswith("best (the uniform plan, re-scored")
    assert "final_accuracy" in finished.rows[-1]
    with pytest.raises(SystemExit) as exit_:
        app(["export", prepared.study, "--storage", storage, "--out", str(tmp_path / "p.json")])
    assert exit_.value.code in (0, None)
    assert "(the uniform plan, as delivered)" in capsys.readouterr().out
    assert PruningPlan.load(tmp_path / "p.json").key() == plan.key()


def test_a_search_with_skip_blocks_records_and_exports_the_skips(tmp_path: Path) -> None:
    """skip_blocks in the config: the space offers the model's residual blocks, every trial
    records its skip decisions as params beside its plan, and the exported plan applies."""
    import torch

    from amc.cli import app
    from amc.plan import PruningPlan
    from amc.prune import apply_plan

    storage = f"sqlite:///{tmp_path}/amc.db"
    overrides = {
        "runs_dir": str(tmp_path / "runs"),
        "storage": storage,
        "model": "tests.tiny_models:ResidualNet",
        "target": "flops=0.6",
        "skip_blocks": True,
        "agent": {"name": "random"},
        "episodes": 4,
    }
    prepared = experiment.prepare(load_config(None, overrides, text=CONFIG), progress=False)
    assert prepared.space.skippable == ("layer1.0", "layer1.1")
    record, _ = experiment.search(prepared, progress=False)
    trials = record.trials()
    assert len(trials) == 4
    plans = [PruningPlan.from_json(trial.plan_json) for trial in trials]
    for trial, plan in zip(trials, plans, strict=True):
        assert {b for b in ("layer1.0", "layer1.1") if trial.params[f"skip:{b}"]} == set(plan.skip)
    assert any(plan.skip for plan in plans)
    out = tmp_path / "p.json"
    with pytest.raises(SystemExit) as exit_:
        app(["export", prepared.study, "--storage", storage, "--out", str(out)])
    assert exit_.value.code in (0, None)
    plan = PruningPlan.load(out)
    pruned = apply_plan(prepared.workload.model, plan, prepared.workload.example_inputs)
    for block in plan.skip:
        assert isinstance(pruned.get_submodule(block), torch.nn.Identity)


def test_finishing_again_from_the_same_trials_and_settings_keeps_the_earlier_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`amc resume` of a completed search finishes it again: the choice stored in the study
    stands (no re-score, no reading) while its best trials and `choose` settings are the same,
    and is made again when either changed."""
    import amc.choose
    from amc.evaluate import EvalResult
    from amc.plan import PruningPlan

    rescored: list[int] = []

    def rescore(
        workload: Any, plans: Any, steps: int, held_out: Any = None, **_: Any
    ) -> list[Any]:
        rescored.append(len(plans))
        return [EvalResult(status="ok", accuracy=0.1 * (i + 1)) for i in range(len(plans))]

    monkeypatch.setattr(amc.choose, "rescore", rescore)
    overrides = {
        "runs_dir": str(tmp_path / "runs"),
        "storage": f"sqlite:///{tmp_path}/amc.db",
        "target": "flops=0.6",
        "episodes": 3,
        "choose.rescore": 2,
    }
    prepared = experiment.prepare(load_config(None, overrides, text=CONFIG), progress=False)
    record, _ = experiment.search(prepared, progress=False)
    first = experiment.finish(prepared, record, plots=False)
    assert rescored == [3]  # the two best trials and the uniform plan
    chosen = record.attrs["chosen"]
    assert chosen["basis"]["trials"] == [trial.number for trial in record.best(2)]

    again = experiment.finish(prepared, record, plots=False)
    assert rescored == [3]  # nothing re-scored
    assert record.attrs["chosen"] == chosen and again.best == first.best
    assert again.plan_path is not None and first.plan_path is not None
    assert PruningPlan.load(again.plan_path).key() == PruningPlan.load(first.plan_path).key()

    choose = prepared.config.choose.model_copy(update={"rescore_steps": 7})
    changed = replace(prepared, config=prepared.config.model_copy(update={"choose": choose}))
    experiment.finish(changed, record, plots=False)
    assert rescored == [3, 3]  # other settings: chosen again
    assert record.attrs["chosen"]["basis"]["choose"]["rescore_steps"] == 7
