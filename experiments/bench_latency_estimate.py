"""How well the search space's latency estimate predicts what plans measure: kernels vs blocks.

The latency table (``amc.latency_table``) estimates a plan's latency from a line fitted to
whole-model timings: on the plan's summed per-layer kernel timings (``amc.kernel_table``, the
table as measured), or on its FLOPs with channel counts padded to the block the table chose, or
on plain FLOPs (block 1). This script measures the table once per batch size, samples plans
the way searches do (the random agent on each estimator's space, and uniform plans), times
every plan interleaved with the dense model as a search does, and reports each estimator's
error: on every plan, uncalibrated ("table only"); and as a search uses it, calibrated online
on the plans its own space proposed, in the order they were measured. The measured ratios per
kind of plan show what each space lets through at the same target.

    python experiments/bench_latency_estimate.py --batches 1 32 --plans 40

With ``--skip-blocks`` the spaces may also skip residual blocks (the random agent skips each
with probability 1/2; uniform plans skip none): how the line prices a skip (its layers' kernel
timings and their share of the fixed time) against what plans with skips measure.

The model's weights do not change its latency: it is built untrained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from agents import get_agent  # noqa: E402
from amc.latency_table import LatencyTable  # noqa: E402
from amc.measure import measure_interleaved  # noqa: E402
from amc.plan import PruningPlan  # noqa: E402
from amc.prune import apply_plan  # noqa: E402
from amc.space import SearchSpace  # noqa: E402
from amc.units import analyze  # noqa: E402
from amc.zoo import get_model  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", help="zoo model (default resnet20)")
    parser.add_argument("--input", default="1,28,28", help="C,H,W of one sample")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--target", type=float, default=0.5, help="latency fraction to sample at")
    parser.add_argument("--plans", type=int, default=40, help="plans timed per batch size")
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write every measurement here (JSON)")
    parser.add_argument(
        "--skip-blocks", action="store_true", help="plans may skip residual blocks (see above)"
    )
    return parser.parse_args(argv)


def sample(spaces: dict[str, SearchSpace], count: int, seed: int) -> list[tuple[str, PruningPlan]]:
    """Plans as searches make them: random agents on each space, and uniform ones, interleaved."""
    agents = {name: get_agent("random", space, seed=seed) for name, space in spaces.items()}
    kinds = [f"random ({name})" for name in spaces] + [f"uniform ({name})" for name in spaces]
    generator = torch.Generator().manual_seed(seed)
    plans = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        name = kind[kind.index("(") + 1 : -1]
        space = spaces[name]
        if kind.startswith("random"):
            [proposal] = agents[name].ask(1)
            agents[name].tell([proposal], [None])
            plans.append((kind + (", skipping" if proposal.plan.skip else ""), proposal.plan))
        else:  # uniform: the widest one the space's estimate lets through, from a random start
            start = 0.2 + 0.8 * float(torch.rand(1, generator=generator))
            plans.append((kind, space.make_plan(space.repair(dict.fromkeys(space.names, start)))))
    return plans


def _keep(plan: PruningPlan) -> dict[str, float]:
    return {name: unit.keep_ratio for name, unit in plan.units.items()}


def errors(estimates: list[float], measured: list[float]) -> dict[str, float]:
    signed = [e / m - 1.0 for e, m in zip(estimates, measured, strict=True)]
    absolute = sorted(abs(x) for x in signed)
    return {
        "median_abs": statistics.median(absolute),
        "p90_abs": absolute[min(len(absolute) - 1, int(0.9 * len(absolute)))],
        "mean": statistics.fmean(signed),
    }


def run_batch(args: argparse.Namespace, batch: int) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    shape = tuple(int(x) for x in args.input.split(","))
    model = get_model(args.model, num_classes=10, in_channels=shape[0]).eval()
    x = torch.randn(batch, *shape)
    graph = analyze(model, x[:1])
    table = LatencyTable.measure(model, x, graph, "cpu", threads=1, progress=True)
    tables = {"kernels": table, f"block {table.block}": table.at_block(graph, table.block)}
    if table.block != 1:
        tables["block 1"] = table.at_block(graph, 1)
    target = f"latency={args.target}"

    def space(t: LatencyTable) -> SearchSpace:
        built = SearchSpace.build(
            model, x, target, latency_table=t, graph=graph, skip_blocks=args.skip_blocks
        )
        built.example_inputs = x
        return built

    plans = sample({name: space(t) for name, t in tables.items()}, args.plans, args.seed)
    measured = []
    for _, plan in tqdm(plans, desc=f"plans at batch {batch}", unit="plan"):
        pruned = apply_plan(model, plan, x[:1], graph=graph)
        cut, dense = measure_interleaved(
            [pruned, model], x, "cpu", threads=1, min_run_time=args.min_run_time,
            rounds=args.rounds,
        )  # fmt: skip
        measured.append(cut.median_ms / dense.median_ms)
    kinds = sorted({kind for kind, _ in plans})
    rows = []
    for name, t in tables.items():
        # on every plan, the table as measured; then as a search uses it: calibrated online on
        # the plans its own space proposed, in the order they were measured
        plain, calibrated = space(t), space(t)
        raw = [plain.cost_fraction(_keep(plan), skip=plan.skip) for _, plan in plans]
        own = [i for i, (kind, _) in enumerate(plans) if f"({name})" in kind]
        online = {}
        for i in own:
            online[i] = calibrated.cost_fraction(_keep(plans[i][1]), skip=plans[i][1].skip)
            calibrated.calibrate_latency(plans[i][1], measured[i])
        for label, estimates in (("table only", dict(enumerate(raw))), ("calibrated", online)):
            row: dict[str, Any] = {"estimator": f"{name}, {label}"}
            picked = sorted(estimates)
            row |= errors([estimates[i] for i in picked], [measured[i] for i in picked])
            for kind in kinds:
                chosen = [i for i in picked if plans[i][0] == kind]
                if chosen:
                    row[kind] = errors(
                        [estimates[i] for i in chosen], [measured[i] for i in chosen]
                    )
            rows.append(row)
    return {
        "batch": batch,
        "block": table.block,
        "block_rms": table.meta.get("block_rms"),
        "kernel_rms": table.meta.get("kernel_rms"),
        "table": table.to_json(),
        "plans": [
            {"kind": kind, "measured": m, "keep": _keep(plan), "skip": list(plan.skip)}
            for (kind, plan), m in zip(plans, measured, strict=True)
        ],
        "rows": rows,
    }


def report(result: dict[str, Any]) -> list[str]:
    kinds = sorted({plan["kind"] for plan in result["plans"]})
    by_kind = {k: [p["measured"] for p in result["plans"] if p["kind"] == k] for k in kinds}
    rms = ", ".join(f"{b}: {e:.3f}" for b, e in (result["block_rms"] or {}).items())
    lines = [
        f"### batch {result['batch']}: the table chose block {result['block']} (line error by "
        f"block, fraction of dense: {rms}; on the kernel timings: {result['kernel_rms']:.3f})",
        "",
        "measured ratio to dense: "
        + "; ".join(
            f"{kind} {min(v):.3f}-{max(v):.3f} (median {statistics.median(v):.3f}, n={len(v)})"
            for kind, v in by_kind.items()
        ),
        "",
        "| estimator | median abs error | 90% abs error | mean error | "
        + " | ".join(f"mean error, {kind}" for kind in kinds)
        + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    for row in result["rows"]:
        cells = [f"{row['median_abs']:.1%}", f"{row['p90_abs']:.1%}", f"{row['mean']:+.1%}"]
        cells += [f"{row[kind]['mean']:+.1%}" if kind in row else "-" for kind in kinds]
        lines.append(f"| {row['estimator']} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    results = [run_batch(args, batch) for batch in args.batches]
    print(f"\n{args.model} {args.input}, {args.plans} plans per batch, target {args.target}\n")
    for result in results:
        print("\n".join(report(result)))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
