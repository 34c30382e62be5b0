"""Does a plan's latency ratio read the same in the aim and in the benchmark's final run?

    python experiments/bench_final_vs_aim.py [--keeps 0.3,0.35,0.4,0.45,0.5] [--reps 4]

``benchmark.py`` sizes a plan by the aim's reading (``amc.choose.latency_meter``: the plan and
the dense model alone, interleaved, the median ratio of three runs) and judges it by the final
run's (``interleaved_latency``: every final model and the dense one interleaved, batch 1 and
batch 32 in turn each round, the median of the per-round ratios). When the final run reads
every plan a few percent higher than the aim did, plans aimed at the target land over it,
Torch-Pruning's too. This script times resnet20 (1x28x28, 10 classes) dense against uniform
plans at ``--keeps``, in one process, with these protocols alternated ``--reps`` times (so
drift hits each alike), and prints each plan's median ratio per protocol and per batch size:

- ``aim``: as the aim and Torch-Pruning's bisection read it (two models, blocks twice the
  final run's length per model, median of 3 runs);
- ``final``: as the final run reads it (all models, both batch sizes each round; 3 rounds);
- ``final, one batch``: the final run's interleave at one batch size only.

Each model's blocks last as long in all three (about 33 ms), so what differs is which models
run between them and the batch-size switch.

The ``vs aim`` columns are each protocol's ratio over the aim's, per plan.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import amc  # noqa: E402
from amc import zoo  # noqa: E402
from amc.measure import interleaved_ratio  # noqa: E402
from experiments.benchmark import interleaved_latency  # noqa: E402

LAT = {"warmup": 5, "min_run_time": 0.5, "repeats": 15}  # benchmark.py's final settings
BATCHES = (1, 32)
PROTOCOLS = ("aim", "final", "final, one batch")


def aim_reading(plan: nn.Module, dense: nn.Module, x: torch.Tensor, batch: int) -> float:
    return interleaved_ratio(
        plan, dense, x, repeats=3, batch_size=batch, threads=1, warmup=LAT["warmup"],
        min_run_time=2 * LAT["min_run_time"], rounds=LAT["repeats"],
    )  # fmt: skip


def final_readings(models: dict[str, nn.Module], x: torch.Tensor, batches: tuple[int, ...],
                   rounds: int) -> dict[int, dict[str, float]]:  # fmt: skip
    args = argparse.Namespace(rounds=rounds, batches=list(batches), threads=1, lat_final=LAT)
    run = interleaved_latency(models, x, args)
    return {int(batch): dict(row["ratio"]) for batch, row in run.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keeps", default="0.3,0.35,0.4,0.45,0.5",
                        help="uniform keep ratios of the plans (comma-separated)")  # fmt: skip
    parser.add_argument("--reps", type=int, default=4, help="measurements per protocol")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each final-run reading")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = zoo.get_model("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28)
    keeps = [float(k) for k in args.keeps.split(",")]
    plans = {
        f"keep {k:g}": amc.apply_plan(dense, amc.uniform_plan(dense, x, keep_ratio=k), x).eval()
        for k in keeps
    }
    models = {"dense": dense, **plans}
    ratios: dict[tuple[str, str, int], list[float]] = {
        (p, n, b): [] for p in PROTOCOLS for n in plans for b in BATCHES
    }
    seconds: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    for rep in range(args.reps):
        start = time.perf_counter()
        for name, plan in plans.items():
            for batch in BATCHES:
                ratios["aim", name, batch].append(aim_reading(plan, dense, x, batch))
        seconds["aim"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for batch, row in final_readings(models, x, BATCHES, args.rounds).items():
            for name in plans:
                ratios["final", name, batch].append(row[name])
        seconds["final"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for batch in BATCHES:
            row = final_readings(models, x, (batch,), args.rounds)[batch]
            for name in plans:
                ratios["final, one batch", name, batch].append(row[name])
        seconds["final, one batch"].append(time.perf_counter() - start)
        print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)

    print(
        f"\nresnet20 1x28x28, uniform plans vs dense, 1 thread, {args.reps} readings per protocol "
        f"and plan, protocols alternated; median ratio to dense (range)\n"
    )
    for batch in BATCHES:
        print(f"batch {batch}\n")
        print("| plan | " + " | ".join(PROTOCOLS) + " | " +
              " | ".join(f"{p} vs aim" for p in PROTOCOLS[1:]) + " |")  # fmt: skip
        print("|---" * (2 * len(PROTOCOLS)) + "|")
        for name in plans:
            med = {p: statistics.median(ratios[p, name, batch]) for p in PROTOCOLS}
            cells = [
                f"{med[p]:.3f} ({min(ratios[p, name, batch]):.3f}-"
                f"{max(ratios[p, name, batch]):.3f})"
                for p in PROTOCOLS
            ]
            versus = [f"{med[p] / med['aim'] - 1:+.1%}" for p in PROTOCOLS[1:]]
            print(f"| {name} | " + " | ".join(cells + versus) + " |")
        print()
    print("| protocol | s per reading of every plan at both batch sizes (median) |")
    print("|---|---|")
    for p in PROTOCOLS:
        print(f"| {p} | {statistics.median(seconds[p]):.1f} |")


if __name__ == "__main__":
    main()
