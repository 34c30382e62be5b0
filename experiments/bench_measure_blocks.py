"""Does an interleaved latency ratio depend on how long its blocks are? (amc.measure)

    python experiments/bench_measure_blocks.py [--batch 32] [--keep 0.35] [--reps 5]

``measure_interleaved`` times a plan against the dense model in alternating blocks, so drift
cancels. At batch 32 a small CNN's block is one or two passes long, and the first pass after a
switch refills the caches the other model evicted: timed, that refill reads as the plan's
latency and biases the plan/dense ratio upward, so a latency search aims too low. This script
times resnet20 (1x28x28, 10 classes) dense against a uniform plan at ``--keep``, in one
process, with the protocols below alternated ``--reps`` times (so drift hits each alike), and
prints the median ratio of each with its range and its seconds per measurement:

- ``cold``: the search's settings (about 0.5 s, 20 blocks per model), every block timed from
  the switch (``warm=False``: amc before this script);
- ``warm``: the same with one untimed pass of the model before a block that follows the
  other model's (amc's default now);
- ``long cold`` and ``long warm``: the same two with blocks 4x longer (about 2 s in all),
  closest to a model running back to back.

The ``vs long warm`` column is each protocol's bias against that reference.
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

PROTOCOLS = {  # name: (min_run_time, warm)
    "cold": (0.5, False),
    "warm": (0.5, True),
    "long cold": (2.0, False),
    "long warm": (2.0, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.35, help="uniform keep ratio of the plan")
    parser.add_argument("--reps", type=int, default=5, help="measurements per protocol")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = zoo.get_model("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28)
    plan = amc.apply_plan(dense, amc.uniform_plan(dense, x, keep_ratio=args.keep), x).eval()
    ratios: dict[str, list[float]] = {name: [] for name in PROTOCOLS}
    seconds: dict[str, list[float]] = {name: [] for name in PROTOCOLS}
    for _ in range(args.reps):
        for name, (min_run_time, warm) in PROTOCOLS.items():
            start = time.perf_counter()
            cut, full = measure_interleaved(
                [plan, dense], x, batch_size=args.batch, threads=1, warmup=5,
                min_run_time=min_run_time, rounds=20, warm=warm,
            )  # fmt: skip
            seconds[name].append(time.perf_counter() - start)
            ratios[name].append(cut.median_ms / full.median_ms)
    print(
        f"\nresnet20 1x28x28, uniform keep {args.keep} vs dense, batch {args.batch}, 1 thread, "
        f"{args.reps} measurements per protocol, alternated\n"
    )
    print("| protocol | ratio plan/dense (median) | range | vs long warm | s per measurement |")
    print("|---|---|---|---|---|")
    reference = statistics.median(ratios["long warm"])
    for name in PROTOCOLS:
        median = statistics.median(ratios[name])
        print(
            f"| {name} | {median:.3f} | {min(ratios[name]):.3f}-{max(ratios[name]):.3f} | "
            f"{median / reference - 1:+.1%} | {statistics.median(seconds[name]):.2f} |"
        )


if __name__ == "__main__":
    main()
