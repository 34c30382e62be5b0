"""Benchmark of the pruning core (issue: foundation), printed as a markdown table.

For each zoo model: wall time of ``analyze``/``discover_units`` and of ``apply_plan``; dense vs a
50%-keep uniform plan: FLOPs ratio and measured CPU latency ratio at batch 1 and 32, with the
IQR/median of each measurement. Dense and pruned are timed interleaved (A B A B) and the
medians of the rounds are reported, so machine drift cancels.

Goals: apply_plan under 100 ms for resnet56; IQR/median under 5%; latency speedup at batch 32
at least 60% of the FLOPs reduction, i.e. (1 - latency ratio) >= 0.6 * (1 - FLOPs ratio).

Run: ``.venv/bin/python experiments/bench_core.py [--models resnet20,resnet56] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from amc import zoo
from amc.measure import count_flops, measure_latency
from amc.plan import uniform_plan
from amc.prune import apply_plan
from amc.units import analyze


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, rounds: int, threads: int) -> dict[str, float | str]:
    torch.manual_seed(0)
    model = zoo.get_model(name).eval()
    example = torch.randn(1, 3, 32, 32)
    analyze_s = median_time(lambda: analyze(model, example), 1)
    graph = analyze(model, example)
    plan = uniform_plan(model, example, 0.5, graph=graph)
    apply_s = median_time(lambda: apply_plan(model, plan, example, graph=graph), 5)
    pruned = apply_plan(model, plan, example, graph=graph)
    row: dict[str, float | str] = {
        "model": name,
        "units": str(len(graph.units)),
        "analyze_s": analyze_s,
        "apply_ms": apply_s * 1e3,
        "flops_ratio": count_flops(pruned, example) / count_flops(model, example),
    }
    for batch in (1, 32):
        dense_runs: list[float] = []
        pruned_runs: list[float] = []
        spreads: list[float] = []
        for _ in range(rounds):  # interleaved A B A B
            for runs, net in ((dense_runs, model), (pruned_runs, pruned)):
                stats = measure_latency(net, example, batch_size=batch, threads=threads)
                runs.append(stats.median_ms)
                spreads.append(stats.iqr_over_median)
        dense_ms, pruned_ms = statistics.median(dense_runs), statistics.median(pruned_runs)
        row[f"dense_ms@{batch}"] = dense_ms
        row[f"latency_ratio@{batch}"] = pruned_ms / dense_ms
        row[f"iqr/median@{batch}"] = statistics.median(spreads)
    flops_cut = 1 - float(row["flops_ratio"])
    row["speedup_share@32"] = (1 - float(row["latency_ratio@32"])) / flops_cut
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warm = zoo.get_model("resnet20").eval()  # one-time costs (lazy imports, first trace)
    apply_plan(warm, uniform_plan(warm, torch.zeros(1, 3, 32, 32), 0.5), torch.zeros(1, 3, 32, 32))
    rows = [bench_model(name, args.rounds, args.threads) for name in args.models.split(",")]
    print(
        f"# amc core benchmark ({platform.node()}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds)\n"
    )
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    resnet56 = next((r for r in rows if r["model"] == "resnet56"), None)
    if resnet56:
        print(f"\napply_plan resnet56: {resnet56['apply_ms']:.1f} ms (goal < 100 ms)")
    worst = max(max(float(r["iqr/median@1"]), float(r["iqr/median@32"])) for r in rows)
    print(f"worst IQR/median: {worst:.1%} (goal < 5%)")
    shares = ", ".join(f"{r['model']} {float(r['speedup_share@32']):.2f}" for r in rows)
    print(f"latency speedup / FLOPs reduction at batch 32: {shares} (goal >= 0.60)")


if __name__ == "__main__":
    main()
