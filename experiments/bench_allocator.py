"""Does a latency reading depend on what the process freed before? (amc.measure.steady_allocator)

    python experiments/bench_allocator.py [--models resnet20,mobilenetv2] [--batch 32]
                                          [--keep 0.43] [--processes 3]

glibc serves a buffer above its mmap threshold (128 KiB at start) with ``mmap`` and returns
it with ``munmap``; the threshold (and the heap-trim one) rise only when the process frees a
larger mmapped block, e.g. a data set it loaded. So the same model in two processes can
page-fault its activations in on every pass in one and not at all in the other. This script
starts fresh Python processes, each timing one zoo model (1x28x28, 10 classes, untrained:
latency does not depend on the weights' values) against a uniform plan at ``--keep``, in the
four states of two switches:

- ``history``: before timing, the process allocates and frees 24 MB blocks (as loading a data
  set does: glibc raises its thresholds after freeing a block of up to 32 MB), or not;
- ``allocator``: ``steady`` (amc's default, :func:`amc.measure.steady_allocator` fixes both
  thresholds) or ``glibc`` (``AMC_STEADY_ALLOCATOR=0``: glibc's own heuristics).

Each process reports the dense model's ms per pass and minor page faults per pass (outside
the timer, 20 passes after the measurement) and the plan's ratio to dense (median of 3
interleaved runs, as the aim reads a plan). The table gives medians over ``--processes``
processes per state, run in rotation so drift hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import torch
import amc
from amc import zoo
from amc.measure import interleaved_ratio, steady_allocator

model_name, batch, keep, history = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
torch.set_num_threads(1)
if history == "freed":
    for _ in range(8):  # 24 MB blocks freed, as loading a data set frees its pieces
        block = torch.empty(6_000_000)
        block.fill_(1.0)
        del block
dense = zoo.get_model(model_name, num_classes=10, in_channels=1).eval()
x = torch.randn(1, 1, 28, 28)
pruned = amc.apply_plan(dense, amc.uniform_plan(dense, x, keep_ratio=keep), x).eval()
ratio = interleaved_ratio(pruned, dense, x, repeats=3, batch_size=batch, threads=1, warmup=5,
                          min_run_time=1.0, rounds=15)
xb = x.repeat(batch, 1, 1, 1)
with torch.inference_mode():
    dense(xb)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(20):
        dense(xb)
    ms = (time.perf_counter() - start) / 20 * 1e3
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 20
print(json.dumps({"ratio": ratio, "dense_ms": ms, "faults": faults, "steady": steady_allocator()}))
"""


def run_child(model: str, batch: int, keep: float, history: str, allocator: str) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        AMC_STEADY_ALLOCATOR="1" if allocator == "steady" else "0",
    )
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model, str(batch), str(keep), history],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.43, help="uniform keep ratio of the plan")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per state")
    args = parser.parse_args()
    states = [(h, a) for h in ("fresh", "freed") for a in ("glibc", "steady")]
    print(f"batch {args.batch}, uniform plan keep {args.keep}, 1 thread, "
          f"{args.processes} process(es) per state\n")  # fmt: skip
    print("| model | history | allocator | dense ms/pass | faults/pass | plan/dense ratio "
          "(median) | ratios (each process) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        results: dict[tuple[str, str], list[dict]] = {state: [] for state in states}
        for _ in range(args.processes):
            for state in states:
                results[state].append(run_child(model, args.batch, args.keep, *state))
                print(f"  {model} {state}: {results[state][-1]}", file=sys.stderr, flush=True)
        for (history, allocator), rows in results.items():
            ratios = [r["ratio"] for r in rows]
            print(
                f"| {model} | {history} | {allocator} "
                f"| {statistics.median(r['dense_ms'] for r in rows):.1f} "
                f"| {statistics.median(r['faults'] for r in rows):.0f} "
                f"| {statistics.median(ratios):.3f} | {', '.join(f'{r:.3f}' for r in ratios)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
