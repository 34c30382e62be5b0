"""How much faster is benchmark.py's final phase with its fine-tunes side by side in threads?

    python experiments/bench_final_workers.py [--model resnet20] [--models 5] [--seeds 3]
                                              [--steps 200] [--repeats 3]

``experiments/benchmark.py`` ends every seed by fine-tuning each strategy's chosen model
``--final-seeds`` times (15 fine-tunes of 200 steps for five strategies and three seeds;
about 10 of a MobileNetV2 seed's 36 minutes on the project's 2-core VM). Nothing is timed in
that phase, so ``--final-workers`` runs the fine-tunes in threads, each with one torch
thread. This script runs that phase (``benchmark.final_accuracies``) on ``--models`` copies of
a zoo model pruned to half its channels (1x28x28 inputs, 10 classes, generated data: the
speed does not depend on the pixels), once with one worker and once with two, alternating
which goes first over ``--repeats`` pairs, and prints both wall times and their ratio
(median over the pairs). The accuracies of the two must agree exactly; it says if not.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import amc  # noqa: E402
from amc import zoo  # noqa: E402
from experiments.benchmark import final_accuracies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--models", type=int, default=5, help="models (strategies) to tune")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tunes per model")
    parser.add_argument("--steps", type=int, default=200, help="steps of each fine-tune")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of (1 worker, 2 workers)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = zoo.get_model(args.model, num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28)
    pruned = amc.apply_plan(dense, amc.uniform_plan(dense, x, keep_ratio=0.5), x).eval()
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(4096, 1, 28, 28, generator=generator),
        torch.randint(0, 10, (4096,), generator=generator),
    )
    test = TensorDataset(data.tensors[0][:1000], data.tensors[1][:1000])
    walls: dict[int, list[float]] = {1: [], 2: []}
    accuracies: dict[int, dict[str, list[float]]] = {}
    for pair in range(args.repeats):
        for workers in (1, 2) if pair % 2 == 0 else (2, 1):
            models = {f"m{i}": copy.deepcopy(pruned) for i in range(args.models)}
            run = argparse.Namespace(
                final_seeds=args.seeds, final_steps=args.steps, lr=0.01, batch_size=64,
                final_workers=workers,
            )  # fmt: skip
            start = time.perf_counter()
            found = final_accuracies(models, data, test, seed=0, args=run)
            walls[workers].append(time.perf_counter() - start)
            accuracies[workers] = {name: acc for name, (acc, _) in found.items()}
            print(f"pair {pair}: {workers} worker(s) {walls[workers][-1]:.1f} s", flush=True)
    one, two = statistics.median(walls[1]), statistics.median(walls[2])
    ratios = [a / b for a, b in zip(walls[1], walls[2], strict=True)]
    print(f"\n{args.models} models x {args.seeds} fine-tunes x {args.steps} steps ({args.model})")
    print("| workers | wall s (median) |\n|---|---|")
    print(f"| 1 | {one:.1f} |\n| 2 | {two:.1f} |")
    print(f"speed-up (median of per-pair ratios): {statistics.median(ratios):.2f}x")
    print("accuracies agree" if accuracies[1] == accuracies[2] else "ACCURACIES DIFFER")


if __name__ == "__main__":
    main()
