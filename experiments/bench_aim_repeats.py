"""How precisely does one aim measurement read a plan's latency ratio? (amc.choose.latency_meter)

    python experiments/bench_aim_repeats.py [--model mobilenetv2] [--batch 32] [--keep 0.62]
                                            [--triples 12]

``amc.choose.aim`` bisects a plan's size on measured latency ratios to the dense model, and
keeps the largest plan measured at or under the target: a ratio read 4% low lets a plan 4%
over the target through, one read 4% high pushes the pick 4% under it. This script times the
dense model (1x28x28, 10 classes) against a uniform plan at ``--keep``, in one process. Each
of ``--triples`` steps takes three 15-round interleaved runs back to back (about 1 s of
blocks each, as the aim of ``amc search`` measured before: ``latency_meter(workload)``) and
then one 45-round run (as many blocks as those three, in one run); the steps alternate which
comes first, so drift hits both alike. It prints, per meter:

- ``1 run``: every single 15-round run's ratio (3 per step);
- ``median of 3 runs``: the median of each step's three (``latency_meter(workload,
  repeats=3)``, the default of ``choose.aim_repeats`` now);
- ``1 run, 3x rounds``: the 45-round run, the same blocks in one run.

The reference is the median of every single run's ratio (all read the same two models).
``p90 |error|`` is the 90th percentile of a reading's distance from it, in percent: a meter
whose p90 is under 5% lands an aim within 5% of its target nine times in ten (before the
channel lattice's step and the re-measurement's own error).
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

import amc  # noqa: E402
from amc import zoo  # noqa: E402
from amc.measure import measure_interleaved  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.62, help="uniform keep ratio of the plan")
    parser.add_argument("--triples", type=int, default=12, help="steps of 3 runs + 1 long run")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = zoo.get_model(args.model, num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28)
    pruned = amc.apply_plan(dense, amc.uniform_plan(dense, x, keep_ratio=args.keep), x).eval()

    def ratio(rounds: int) -> tuple[float, float]:
        start = time.perf_counter()
        cut, full = measure_interleaved(
            [pruned, dense], x, batch_size=args.batch, threads=1, warmup=5,
            min_run_time=rounds / 15, rounds=rounds,
        )  # fmt: skip
        return cut.median_ms / full.median_ms, time.perf_counter() - start

    readings: dict[str, list[float]] = {"1 run": [], "median of 3 runs": [],
                                        "1 run, 3x rounds": []}  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in readings}
    for step in range(args.triples):
        for which in ("three", "long") if step % 2 == 0 else ("long", "three"):
            if which == "three":
                runs = [ratio(15) for _ in range(3)]
                readings["1 run"] += [r for r, _ in runs]
                seconds["1 run"] += [t for _, t in runs]
                readings["median of 3 runs"].append(statistics.median(r for r, _ in runs))
                seconds["median of 3 runs"].append(sum(t for _, t in runs))
            else:
                value, took = ratio(45)
                readings["1 run, 3x rounds"].append(value)
                seconds["1 run, 3x rounds"].append(took)
        last = ", ".join(f"{name} {values[-1]:.3f}" for name, values in readings.items())
        print(f"step {step + 1}/{args.triples}: {last}", flush=True)
    reference = statistics.median(readings["1 run"])
    print(f"\n{args.model}, batch {args.batch}, uniform keep {args.keep}, {args.triples} steps, "
          f"reference ratio {reference:.3f} (median of all single runs)\n")  # fmt: skip
    print("| meter | readings | median ratio | min - max | std | p90 abs error % "
          "| max abs error % | s each |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, values in readings.items():
        errors = sorted(abs(v / reference - 1) * 100 for v in values)
        p90 = errors[min(len(errors) - 1, round(0.9 * (len(errors) - 1)))]
        print(
            f"| {name} | {len(values)} | {statistics.median(values):.3f} "
            f"| {min(values):.3f} - {max(values):.3f} | {statistics.stdev(values):.3f} "
            f"| {p90:.1f} | {errors[-1]:.1f} | {statistics.median(seconds[name]):.1f} |"
        )


if __name__ == "__main__":
    main()
