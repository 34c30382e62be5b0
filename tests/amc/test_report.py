"""amc.report: the plots, tables and summary that `amc show --plots DIR` writes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from rich.console import Console

from amc.plan import PruningPlan, UnitPlan
from amc.report import (
    best_table,
    comparison_rows,
    comparison_table,
    keep_ratio_plot,
    latency_front,
    pareto_plot,
    search_curve_plot,
    studies_table,
    summary_markdown,
    write_report,
)
from amc.study import SearchRecord, list_studies
from tests.amc.test_study import ATTRS, UNITS, proposal, result


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and check it is a PNG)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def render(table: object) -> str:
    console = Console(record=True, width=160)
    console.print(table)
    return console.export_text()


@pytest.fixture
def record(tmp_path: Path) -> SearchRecord:
    """A study with dense and uniform baselines, four completed trials, one failure and one
    plan measured over the target."""
    uniform = PruningPlan(units={name: UnitPlan(keep_ratio=0.5) for name in UNITS})
    attrs = {
        **ATTRS,
        "target": {"metric": "latency", "fraction": 0.5},
        "uniform": {"plan": uniform.to_json(), "metrics": result(0.70, 1.1)},
    }
    record = SearchRecord.create(f"sqlite:///{tmp_path}/amc.db", "demo", ["maximize"], attrs)
    for episode, (reward, accuracy, latency) in enumerate(
        [(-0.3, 0.70, 1.2), (-0.2, 0.80, 1.0), (-0.25, 0.75, 0.9), (-0.15, 0.85, 1.1)]
    ):
        number = record.start(proposal(episode, 0.25 + 0.2 * episode), agent="ddpg")
        record.finish(number, result(accuracy, latency), [reward])
    record.fail(record.start(proposal(4)), "nan_loss")
    over = {**result(0.9, 1.5), "status": "over_budget", "reason": "over_budget"}
    record.finish(record.start(proposal(5)), over, None)
    return record


def test_write_report_writes_three_pngs_and_a_summary(
    record: SearchRecord, tmp_path: Path
) -> None:
    paths = write_report(record, tmp_path / "plots")
    assert [p.name for p in paths] == [
        "keep_ratios.png", "search_curve.png", "pareto.png", "summary.md"
    ]  # fmt: skip
    assert png_size(paths[0]) == (800, 500)
    assert png_size(paths[1]) == (800, 500)
    assert png_size(paths[2]) == (800, 600)
    assert all(p.stat().st_size > 10_000 for p in paths[:3])  # drawn, not blank

    summary = paths[3].read_text()
    assert summary.startswith("# Study `demo`\n")
    assert "- target: latency = 50% of the dense model" in summary
    trials = "- trials: 4 complete, 1 failed, 1 over budget (measured over the target), 0 other"
    assert trials in summary
    assert "| dense | 90.00% | 2.000 ms | 1.00x | 1.00 M | 10.00 k |" in summary
    assert "| uniform | 70.00% | 1.100 ms | 1.82x | 500.00 k | 5.00 k |" in summary
    assert "| best (trial 3) | 85.00% | 1.100 ms | 1.82x | 500.00 k | 5.00 k |" in summary
    assert (
        "| trial | reward | accuracy | latency (ms) | FLOPs | params | agent | episode |"
        in summary
    )
    best_rows = [line for line in summary.splitlines() if line.startswith("| 3 |")]
    assert best_rows == ["| 3 | -0.15 | 85.00% | 1.100 | 500.00 k | 5.00 k | ddpg | 3 |"]
    assert "| nan_loss | 1 |" in summary and "| over_budget | 1 |" in summary
    assert "![keep ratios](keep_ratios.png)" in summary and "![pareto](pareto.png)" in summary
    assert "`amc export demo --trial best --out plan.json`" in summary


def test_write_report_on_a_study_without_trials(tmp_path: Path) -> None:
    record = SearchRecord.create(f"sqlite:///{tmp_path}/amc.db", "empty", ["maximize"], ATTRS)
    paths = write_report(record, tmp_path / "plots")
    assert [png_size(p) for p in paths[:3]] == [(800, 500), (800, 500), (800, 600)]
    assert "No completed trials yet." in paths[3].read_text()


def test_keep_ratio_plot_widens_with_many_units(tmp_path: Path) -> None:
    units = [f"features.{i}.conv" for i in range(30)]
    best = {name: 0.3 + 0.02 * i for i, name in enumerate(units)}
    path = keep_ratio_plot(best, {name: 0.5 for name in units}, units, tmp_path / "k.png")
    assert png_size(path) == (1150, 500)  # 8 in + 0.35 in per unit beyond 20, at 100 dpi


def test_keep_ratio_plot_draws_the_units_of_skipped_blocks_at_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import amc.report

    drawn: list[list[float]] = []
    marks: list[str] = []
    monkeypatch.setattr(amc.report, "_save", lambda fig, path: Path(path))
    units = ["conv1", "layer1.0.conv1", "layer1.1.conv1"]
    plan = PruningPlan(
        units={u: UnitPlan(keep_ratio=0.5, channels=8) for u in units}, skip=("layer1.0",)
    )
    from matplotlib.axes import Axes

    bar, text = Axes.bar, Axes.text
    monkeypatch.setattr(
        Axes, "bar", lambda ax, x, h, *a, **k: drawn.append(list(h)) or bar(ax, x, h, *a, **k)
    )
    monkeypatch.setattr(
        Axes, "text", lambda ax, x, y, s, *a, **k: marks.append(s) or text(ax, x, y, s, *a, **k)
    )
    keep_ratio_plot(plan, None, units, tmp_path / "k.png")
    assert drawn == [[0.5, 0.0, 0.5]] and marks == ["skipped"]


def test_curve_and_pareto_plots_have_their_stated_sizes(tmp_path: Path) -> None:
    curve = search_curve_plot([0.1, 0.3, 0.2, 0.5], tmp_path / "curve.png", ylabel="reward")
    points = [(1.0, 80.0, "#0"), (2.0, 90.0, "#1"), (1.5, 70.0, "#2")]
    front = latency_front(points)
    assert front == [(1.0, 80.0, "#0"), (2.0, 90.0, "#1")]
    pareto = pareto_plot(points, front, (3.0, 92.0, "dense"), tmp_path / "pareto.png")
    assert (png_size(curve), png_size(pareto)) == ((800, 500), (800, 600))


def test_rich_tables(record: SearchRecord) -> None:
    text = render(comparison_table(comparison_rows(record)))
    assert "dense" in text and "best (trial 3)" in text and "1.82x" in text
    text = render(best_table(record.best(2), record.objectives))
    assert text.index("-0.15") < text.index("-0.2 ")
    text = render(studies_table(list_studies(record.storage_url)))
    assert "demo" in text and "reward (max)" in text and "-0.15" in text
    row = next(line for line in text.splitlines() if line.startswith("│ demo"))
    assert "over budget" in text
    assert [cell.strip() for cell in row.split("│")[4:8]] == ["4", "1", "1", "0"]
    assert summary_markdown(record, n_best=1).count("\n| 3 |") == 1


def test_final_finetune_scores_get_their_own_column(record: SearchRecord) -> None:
    """With `finetune.final_steps`, best and uniform after the same fine-tune sit side by side."""
    record.set_attr(
        "final", {"steps": 150, "trial": 3, "dense": 0.9, "best": 0.88, "uniform": 0.8}
    )
    rows = comparison_rows(record)
    assert [row["final_accuracy"] for row in rows] == [0.9, 0.8, 0.88]
    summary = summary_markdown(record)
    assert "| model | accuracy (search) | accuracy after 150 steps | latency |" in summary
    assert "| best (trial 3) | 85.00% | 88.00% | 1.100 ms | 1.82x |" in summary
    assert "accuracy after 150 steps" in render(comparison_table(rows))
    record.set_attr("final", {"steps": 150, "trial": 1, "best": 0.5})  # another trial's: unused
    assert all("final_accuracy" not in row for row in comparison_rows(record))


def test_the_delivered_plan_s_row_says_how_it_was_chosen(record: SearchRecord) -> None:
    """With `choose:` the row is the delivered plan (re-scored, aimed), not the best trial."""
    metrics = {"accuracy": 0.84, "latency_ms": 1.0, "latency_ratio": 0.5, "flops": 10, "params": 5}
    record.set_attr(
        "chosen", {"trial": 1, "rescored": [], "aim": {"ratio": 0.5}, "metrics": metrics}
    )
    record.set_attr("final", {"steps": 150, "trial": 1, "dense": 0.9, "best": 0.87})
    rows = comparison_rows(record)
    assert rows[-1]["name"] == "best (trial 1, re-scored and aimed)"
    assert rows[-1]["latency_ratio"] == 0.5 and rows[-1]["final_accuracy"] == 0.87
    record.set_attr("chosen", {"trial": 3, "aim": {}, "metrics": metrics})
    assert comparison_rows(record)[-1]["name"] == "best (trial 3, aimed)"
    # the uniform plan re-scored best: no trial, and the final scores are still its
    uniform = {"trial": None, "uniform": True, "rescored": [], "aim": {}, "metrics": metrics}
    record.set_attr("chosen", uniform)
    record.set_attr("final", {"steps": 150, "trial": None, "dense": 0.9, "best": 0.86})
    rows = comparison_rows(record)
    assert rows[-1]["name"] == "best (the uniform plan, re-scored and aimed)"
    assert rows[-1]["final_accuracy"] == 0.86
    best = record.best(1)[0]
    record.set_attr("chosen", {"trial": best.number})  # nothing done: the best trial as searched
    assert comparison_rows(record)[-1]["name"] == f"best (trial {best.number})"
    assert comparison_rows(record)[-1]["accuracy"] == best.metrics["accuracy"]


def test_the_uniform_row_is_the_aimed_uniform_plan_where_the_best_was_aimed(
    record: SearchRecord,
) -> None:
    """Compared at the same measured latency: the uniform plan aimed like the delivered one
    replaces the study's (estimate-sized) uniform plan in the table, final score included."""
    metrics = {"accuracy": 0.84, "latency_ms": 1.0, "latency_ratio": 0.5, "flops": 10, "params": 5}
    aimed = {"accuracy": 0.7, "latency_ms": 0.98, "latency_ratio": 0.49, "flops": 9, "params": 4}
    record.set_attr(
        "chosen",
        {"trial": 1, "aim": {"ratio": 0.5}, "metrics": metrics,
         "uniform_aimed": {"plan": {}, "metrics": aimed, "aim": {"ratio": 0.49}}},
    )  # fmt: skip
    record.set_attr(
        "final", {"steps": 150, "trial": 1, "dense": 0.9, "best": 0.87, "uniform": 0.83}
    )
    rows = comparison_rows(record)
    assert [row["name"] for row in rows] == ["dense", "uniform (aimed)", "best (trial 1, aimed)"]
    assert (rows[1]["latency_ms"], rows[1]["flops"], rows[1]["final_accuracy"]) == (0.98, 9, 0.83)
    assert "| uniform (aimed) | 70.00% | 83.00% | 0.980 ms |" in summary_markdown(record)
