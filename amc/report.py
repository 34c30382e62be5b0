"""Tables and plots of a search: what ``amc show`` prints and ``amc show --plots DIR`` writes.

Plots are PNG files drawn with matplotlib's Agg canvas (no display, no global backend change):
per-unit keep ratios of the best plan next to the uniform plan, reward per evaluation with the
best so far, and accuracy against measured latency with the Pareto front. Tables are rich
tables for the terminal and markdown for ``summary.md``.

Example:
    >>> from amc.study import SearchRecord
    >>> paths = write_report(SearchRecord.open("sqlite:///runs/amc.db", "demo"), "runs/plots")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from amc.plan import PruningPlan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from amc.study import SearchRecord, TrialRecord

DPI = 100
#: plot sizes in inches (x DPI = pixels); the keep-ratio chart widens beyond 20 units
CURVE_SIZE = (8.0, 5.0)
PARETO_SIZE = (8.0, 6.0)
KEEP_SIZE = (8.0, 5.0)
Point = tuple[float, float, str]


def keep_ratio_size(n_units: int) -> tuple[float, float]:
    """The keep-ratio chart's size in inches: 8 x 5, plus 0.35 in per unit beyond 20."""
    return (KEEP_SIZE[0] + 0.35 * max(0, n_units - 20), KEEP_SIZE[1])


def keep_ratio_plot(
    best_plan: PruningPlan | Mapping[str, float] | None,
    uniform_plan: PruningPlan | Mapping[str, float] | None,
    units: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "Channels kept per unit: best plan vs uniform",
) -> Path:
    """Grouped bars of the per-unit keep ratios of the best plan and of the uniform plan.

    Plans are :class:`PruningPlan` objects or ``{unit: keep_ratio}`` mappings; units missing
    from a plan are drawn at 1.0 (kept whole). N:M patterns are written above their bars;
    units whose root layer lies in a block the plan skips are drawn at 0, marked "skipped".
    """
    from matplotlib.figure import Figure  # here: listing studies needs no matplotlib

    best = _ratios(best_plan, units)
    uniform = _ratios(uniform_plan, units)
    fig = Figure(figsize=keep_ratio_size(len(units)), dpi=DPI)
    ax = fig.add_subplot()
    positions = list(range(len(units)))
    width = 0.4 if uniform is not None else 0.8
    if best is not None:
        offset = [x - width / 2 for x in positions] if uniform is not None else positions
        ax.bar(offset, best, width, label="best plan", color="tab:blue")
        for x, name in zip(offset, units, strict=True):
            mark = "skipped" if _skipped(best_plan, name) else _nm(best_plan, name)
            if mark:
                ax.text(x, 1.02, mark, ha="center", va="bottom", fontsize=7, rotation=90)
    if uniform is not None:
        offset = [x + width / 2 for x in positions] if best is not None else positions
        ax.bar(offset, uniform, width, label="uniform plan", color="tab:gray")
    if best is None and uniform is None:
        _notice(ax, "no completed trials yet")
    ax.set_xticks(positions, list(units), rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("prunable unit (root layer)")
    ax.set_ylabel("channel keep ratio (fraction of dense)")
    ax.set_title(title)
    ax.axhline(1.0, color="black", linewidth=0.5)
    if best is not None or uniform is not None:
        ax.legend(loc="upper center", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def search_curve_plot(
    rewards_in_order: Sequence[float],
    path: str | os.PathLike[str],
    *,
    direction: str = "maximize",
    ylabel: str = "reward",
    title: str = "Search progress",
) -> Path:
    """The objective of each completed evaluation (dots) and the best so far (line)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=CURVE_SIZE, dpi=DPI)
    ax = fig.add_subplot()
    episodes = list(range(1, len(rewards_in_order) + 1))
    if rewards_in_order:
        pick = max if direction == "maximize" else min
        best_so_far: list[float] = []
        for reward in rewards_in_order:
            best_so_far.append(pick(best_so_far[-1], reward) if best_so_far else reward)
        ax.scatter(episodes, rewards_in_order, s=14, alpha=0.6, label=f"{ylabel} per evaluation")
        ax.step(episodes, best_so_far, where="post", color="tab:red", label="best so far")
        ax.legend(loc="lower right" if direction == "maximize" else "upper right")
    else:
        _notice(ax, "no completed trials yet")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluation (completed trials, in order)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pareto_plot(
    points: Sequence[Point],
    front: Sequence[Point],
    dense: Point | None,
    path: str | os.PathLike[str],
    *,
    ylabel: str = "accuracy (%)",
    title: str = "Accuracy vs measured latency",
) -> Path:
    """Every evaluated plan as (latency ms, accuracy), the Pareto front highlighted.

    Points are ``(latency_ms, accuracy, label)``; front points are labelled with theirs.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=PARETO_SIZE, dpi=DPI)
    ax = fig.add_subplot()
    if points:
        ax.scatter(
            [p[0] for p in points],
            [p[1] for p in points],
            s=14,
            color="tab:gray",
            alpha=0.6,
            label="evaluated plans",
        )
    if front:
        ordered = sorted(front)
        ax.plot(
            [p[0] for p in ordered],
            [p[1] for p in ordered],
            "o-",
            color="tab:red",
            label="Pareto front",
        )
        for latency, accuracy, label in ordered:
            ax.annotate(
                label, (latency, accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    if dense is not None:
        ax.scatter([dense[0]], [dense[1]], marker="*", s=160, color="tab:blue", label=dense[2])
    if not points and dense is None:
        _notice(ax, "no measured latency yet")
    else:
        ax.legend(loc="lower right")
    ax.set_xlabel("measured latency (ms per batch, median)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def latency_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both lower latency and higher accuracy."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or point[1] > front[-1][1]:
            front.append(point)
    return front


# --------------------------------------------------------------------------- tables


def comparison_rows(record: SearchRecord) -> list[dict[str, Any]]:
    """Dense, uniform (where recorded) and best plan: accuracy, latency_ms, flops, params.

    Where the delivered plan was sized by measurement (``choose.aim``), the uniform row is the
    uniform plan sized the same way (``chosen["uniform_aimed"]``), so the two are compared at
    the same measured latency."""
    attrs = record.attrs
    rows = []
    if isinstance(attrs.get("dense"), Mapping):
        rows.append({"name": "dense", **_metrics(attrs["dense"])})
    uniform = attrs.get("uniform")
    chosen = attrs.get("chosen")
    aimed = chosen.get("uniform_aimed") if isinstance(chosen, Mapping) else None
    if isinstance(aimed, Mapping):  # sized by measurement, as the delivered plan was
        rows.append({"name": "uniform (aimed)", **_metrics(aimed["metrics"])})
    elif isinstance(uniform, Mapping):
        rows.append({"name": "uniform", **_metrics(uniform.get("metrics", uniform))})
    best = record.best(1)
    number = best[0].number if best else None
    if isinstance(chosen, Mapping) and isinstance(chosen.get("metrics"), Mapping):
        # the plan `amc search` delivered: re-scored among the best and/or aimed (amc.choose)
        number = chosen.get("trial")
        how = [
            word for key, word in (("rescored", "re-scored"), ("aim", "aimed")) if key in chosen
        ]
        which = "the uniform plan" if chosen.get("uniform") else f"trial {number}"
        name = f"best ({which}, {' and '.join(how)})" if how else f"best ({which})"
        rows.append({"name": name, **_metrics(chosen["metrics"])})
    elif best:
        rows.append({"name": f"best (trial {number})", **_metrics(best[0].metrics)})
    final = attrs.get("final")
    delivered = number is not None or (isinstance(chosen, Mapping) and chosen.get("uniform"))
    if isinstance(final, Mapping) and delivered and final.get("trial") == number:
        for row in rows:  # the same fine-tune for best and uniform, scored on the test split
            key = row["name"].split(" ")[0]  # best (...), uniform (aimed), dense
            row["final_accuracy"] = final.get(key)
            row["final_steps"] = final.get("steps")
    return rows


def comparison_table(rows: Sequence[Mapping[str, Any]], title: str = "Dense vs pruned") -> Table:
    """A rich table: accuracy, latency (and speed-up), FLOPs and params per row."""
    table = Table(title=title)
    for column in _comparison_header(rows):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in _comparison_cells(rows):
        table.add_row(*row)
    return table


def best_table(
    trials: Sequence[TrialRecord], objectives: Sequence[str], title: str = "Best trials"
) -> Table:
    """A rich table of trials: number, objective values, metrics, agent and episode."""
    table = Table(title=title)
    for row in _trial_cells(trials, objectives, header=True):
        if not table.columns:
            for name in row:
                table.add_column(name, justify="right" if name != "agent" else "left")
            continue
        table.add_row(*row)
    return table


def studies_table(rows: Sequence[Mapping[str, Any]], title: str = "Studies") -> Table:
    """A rich table of :func:`amc.study.list_studies` rows."""
    table = Table(title=title)
    for column in (
        "study",
        "agent",
        "objectives",
        "complete",
        "failed",
        "over budget",
        "running",
        "best",
        "created",
    ):
        table.add_column(
            column,
            justify="left" if column in ("study", "agent", "objectives", "created") else "right",
        )
    for row in rows:
        table.add_row(*_study_cells(row))
    return table


def summary_markdown(record: SearchRecord, plots: Sequence[Path] = (), n_best: int = 5) -> str:
    """The markdown summary of a study: set-up, comparison, best trials, Pareto front, plots."""
    attrs = record.attrs
    trials = record.trials()
    counts = {state: sum(t.state == state for t in trials) for state in ("COMPLETE", "FAIL")}
    over = sum(t.state == "FAIL" and t.metrics.get("status") == "over_budget" for t in trials)
    objectives = record.objectives
    lines = [f"# Study `{record.name}`", ""]
    lines += [
        f"- storage: `{record.storage_url}`",
        f"- agent: {attrs.get('agent') or 'unknown'}",
        f"- target: {_target_text(attrs.get('target'))}",
        "- objectives: "
        + ", ".join(
            f"{name} ({direction})"
            for name, direction in zip(objectives, record.directions, strict=True)
        ),
        f"- trials: {counts['COMPLETE']} complete, {counts['FAIL'] - over} failed, "
        f"{over} over budget (measured over the target), "
        f"{len(trials) - counts['COMPLETE'] - counts['FAIL']} other",
        f"- model fingerprint: `{attrs.get('fingerprint', 'unknown')}`",
        f"- created: {attrs.get('created', 'unknown')}",
        "",
    ]
    rows = comparison_rows(record)
    if rows:
        lines += ["## Dense vs pruned", ""]
        lines += _markdown(_comparison_header(rows), _comparison_cells(rows))
    best = record.best(n_best)
    lines += [f"## Best {len(best)} trials", ""]
    if best:
        cells = _trial_cells(best, objectives, header=True)
        lines += _markdown(cells[0], cells[1:])
    else:
        lines += ["No completed trials yet.", ""]
    plan = best[0].plan if best else None
    if plan is not None:
        lines += [f"## Best plan (trial {best[0].number})", ""]
        lines += _markdown(
            ["unit", "keep ratio", "channels", "N:M", "sparsity"],
            [
                [
                    name,
                    f"{unit.keep_ratio:.3f}",
                    str(unit.channels or "-"),
                    f"{unit.nm[0]}:{unit.nm[1]}" if unit.nm else "-",
                    f"{unit.sparsity:.2f}",
                ]
                for name, unit in plan.units.items()
            ],
        )
        if plan.skip:
            lines += ["Skipped blocks: " + ", ".join(f"`{b}`" for b in plan.skip), ""]
    if best and len(record.directions) > 1:
        front = record.pareto_front()
        cells = _trial_cells(front, objectives, header=True)
        lines += [f"## Pareto front ({len(front)} trials)", "", *_markdown(cells[0], cells[1:])]
    failed = [t for t in trials if t.state == "FAIL"]
    if failed:
        reasons: dict[str, int] = {}
        for trial in failed:
            reasons[str(trial.reason)] = reasons.get(str(trial.reason), 0) + 1
        lines += ["## Failed trials", ""]
        lines += _markdown(["reason", "trials"], [[k, str(v)] for k, v in sorted(reasons.items())])
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{Path(p).stem.replace('_', ' ')}]({Path(p).name})" for p in plots] + [""]
    lines += [
        "## Next",
        "",
        f"- export the best plan: `amc export {record.name} --trial best --out plan.json`",
        "- prune and fine-tune: `amc apply plan.json --model MODEL --out pruned/`",
        f"- continue the search: `amc resume {record.name}`",
        "",
    ]
    versions = attrs.get("versions")
    if isinstance(versions, Mapping):
        lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def write_report(record: SearchRecord, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write keep_ratios.png, search_curve.png, pareto.png and summary.md; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attrs = record.attrs
    units = _unit_names(attrs.get("units"))
    best = record.best(1)
    best_plan = best[0].plan if best else None
    uniform = attrs.get("uniform")
    uniform_plan = None
    if isinstance(uniform, Mapping) and isinstance(uniform.get("plan"), Mapping):
        uniform_plan = PruningPlan.from_json(uniform["plan"])
    if not units:
        units = list(best_plan.units) if best_plan else []
    plots = [
        keep_ratio_plot(
            best_plan,
            uniform_plan,
            units,
            out / "keep_ratios.png",
            title=f"{record.name}\nchannels kept per unit, best plan vs uniform",
        ),
    ]
    completed = record.completed()
    objective = record.objectives[0]
    plots.append(
        search_curve_plot(
            [t.value for t in completed if t.value is not None],
            out / "search_curve.png",
            direction=record.directions[0],
            ylabel=objective,
            title=f"{record.name}\n{objective} per evaluation and best so far",
        )
    )
    points, ylabel = _latency_points(completed)
    dense = attrs.get("dense")
    dense_point = None
    if isinstance(dense, Mapping):
        dense_metrics = _metrics(dense)
        if dense_metrics["latency_ms"] is not None and dense_metrics["accuracy"] is not None:
            scale = 100.0 if ylabel.endswith("(%)") else 1.0
            dense_point = (dense_metrics["latency_ms"], dense_metrics["accuracy"] * scale, "dense")
    plots.append(
        pareto_plot(
            points,
            latency_front(points),
            dense_point,
            out / "pareto.png",
            ylabel=ylabel,
            title=f"{record.name}\naccuracy vs measured latency",
        )
    )
    summary = out / "summary.md"
    summary.write_text(summary_markdown(record, plots), encoding="utf-8")
    return [*plots, summary]


# --------------------------------------------------------------------------- helpers


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)  # no bbox_inches: the size stays as stated
    return path


def _notice(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _ratios(
    plan: PruningPlan | Mapping[str, float] | None, units: Sequence[str]
) -> list[float] | None:
    if plan is None:
        return None
    if isinstance(plan, PruningPlan):
        return [
            0.0 if _skipped(plan, u) else plan.units[u].keep_ratio if u in plan.units else 1.0
            for u in units
        ]
    return [float(plan.get(u, 1.0)) for u in units]


def _skipped(plan: PruningPlan | Mapping[str, float] | None, unit: str) -> bool:
    """Whether ``unit``'s root layer lies in a block ``plan`` replaces by identity."""
    if not isinstance(plan, PruningPlan) or not plan.skip:
        return False
    return unit.startswith(tuple(f"{block}." for block in plan.skip))


def _nm(plan: PruningPlan | Mapping[str, float] | None, unit: str) -> str:
    if isinstance(plan, PruningPlan) and unit in plan.units and plan.units[unit].nm:
        n, m = plan.units[unit].nm or (0, 0)
        return f"{n}:{m}"
    return ""


def _unit_names(units: Any) -> list[str]:
    if not isinstance(units, list):
        return []
    return [str(u.get("name")) if isinstance(u, Mapping) else str(u) for u in units]


def _metrics(source: Mapping[str, Any]) -> dict[str, Any]:
    accuracy = source.get("accuracy")
    if accuracy is None:
        accuracy = source.get("fidelity")
    return {
        "accuracy": accuracy,
        "latency_ms": source.get("latency_ms"),
        "latency_ratio": source.get("latency_ratio"),
        "flops": source.get("flops"),
        "params": source.get("params"),
    }


def _latency_points(trials: Sequence[TrialRecord]) -> tuple[list[Point], str]:
    raw = []
    fidelity = False
    for trial in trials:
        metrics = _metrics(trial.metrics)
        if metrics["latency_ms"] is None or metrics["accuracy"] is None:
            continue
        fidelity = fidelity or trial.metrics.get("accuracy") is None
        raw.append((float(metrics["latency_ms"]), float(metrics["accuracy"]), f"#{trial.number}"))
    name = "fidelity to dense" if fidelity else "accuracy"
    if raw and all(0.0 <= p[1] <= 1.0 for p in raw):
        return [(lat, acc * 100.0, label) for lat, acc, label in raw], f"{name} (%)"
    return raw, name


def _si(value: Any) -> str:
    if value is None:
        return "-"
    number = float(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return f"{number / scale:.2f} {suffix}"
    return f"{number:g}"


def _percent(value: Any) -> str:
    if value is None:
        return "-"
    number = float(value)
    return f"{number * 100:.2f}%" if 0.0 <= number <= 1.0 else f"{number:.4g}"


def _comparison_header(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    header = ["model", "accuracy", "latency", "speed-up", "FLOPs", "params"]
    steps = next((row["final_steps"] for row in rows if row.get("final_steps")), None)
    if steps:  # accuracy after the search's short fine-tune, then after the final one
        header[1] = "accuracy (search)"
        header.insert(2, f"accuracy after {steps} steps")
    return header


def _comparison_cells(rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    dense_latency = next(
        (r.get("latency_ms") for r in rows if r.get("name") == "dense" and r.get("latency_ms")),
        None,
    )
    cells = []
    for row in rows:
        latency, ratio = row.get("latency_ms"), row.get("latency_ratio")
        if ratio:  # measured against the dense model in the same run: drift cancels
            speedup = f"{1 / ratio:.2f}x"
        else:
            speedup = f"{dense_latency / latency:.2f}x" if dense_latency and latency else "-"
        final = [_percent(row.get("final_accuracy"))] if row.get("final_steps") else []
        cells.append(
            [
                str(row.get("name", "")),
                _percent(row.get("accuracy")),
                *final,
                f"{latency:.3f} ms" if latency is not None else "-",
                speedup,
                _si(row.get("flops")),
                _si(row.get("params")),
            ]
        )
    return cells


def _trial_cells(
    trials: Sequence[TrialRecord], objectives: Sequence[str], header: bool
) -> list[list[str]]:
    head = [
        "trial",
        *objectives,
        "accuracy",
        "latency (ms)",
        "FLOPs",
        "params",
        "agent",
        "episode",
    ]
    rows = [head] if header else []
    for trial in trials:
        values = list(trial.values or [])
        metrics = _metrics(trial.metrics)
        latency = metrics["latency_ms"]
        rows.append(
            [
                str(trial.number),
                *[f"{v:.4g}" for v in values] + ["-"] * (len(objectives) - len(values)),
                _percent(metrics["accuracy"]),
                f"{latency:.3f}" if latency is not None else "-",
                _si(metrics["flops"]),
                _si(metrics["params"]),
                trial.agent or "-",
                str(trial.episode) if trial.episode is not None else "-",
            ]
        )
    return rows


def _study_cells(row: Mapping[str, Any]) -> list[str]:
    best = row.get("best")
    if isinstance(best, list):
        best_text = ", ".join(f"{v:.4g}" for v in best)
    else:
        best_text = f"{best:.4g}" if best is not None else "-"
    objectives = row.get("objectives") or ["value"] * len(row.get("directions", []))
    directions = row.get("directions", [])
    created = row.get("created")
    return [
        str(row.get("name")),
        str(row.get("agent") or "-"),
        ", ".join(
            f"{o} ({'max' if d == 'maximize' else 'min'})"
            for o, d in zip(objectives, directions, strict=False)
        ),
        str(row.get("complete", 0)),
        str(row.get("fail", 0)),
        str(row.get("over_budget", 0)),
        str(row.get("running", 0)),
        best_text,
        created.strftime("%Y-%m-%d %H:%M UTC") if created else "-",
    ]


def _target_text(target: Any) -> str:
    if isinstance(target, Mapping) and "metric" in target:
        return f"{target['metric']} = {float(target.get('fraction', 0)):.0%} of the dense model"
    return str(target) if target else "unknown"


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*lines, ""]
