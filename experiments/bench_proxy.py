"""How well does a search's per-evaluation protocol rank plans by what they reach after the
final fine-tune? (Adaptive BN alone, or k fine-tune steps, against the final accuracy.)

A search scores every plan with a cheap protocol (``finetune.bn_batches`` batches of adaptive
BN, as EagleEye does, then ``finetune.steps`` steps) and keeps the best; what counts is the
plan's accuracy after the final fine-tune. This script prunes one trained baseline with plans
of equal cost (the uniform plan and random plans repaired onto the same FLOPs target, as the
random agent draws them), scores each plan with every protocol asked, fine-tunes it
``--final-steps`` steps and tests it on held-out samples, and reports per protocol the rank
correlation with the final accuracy (Spearman, Kendall), the final rank of the plan the
protocol picks, and its seconds per plan.

    python experiments/bench_proxy.py --case resnet20-fmnist --target flops=0.12 \\
        --plans 12 --protocols 4:10 16:0 16:10 16:40 16:100

Uses the benchmark's cases and cached baselines (``runs/baselines``; trained on first use).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from agents import get_agent  # noqa: E402
from amc.prune import apply_plan  # noqa: E402
from amc.space import SearchSpace, Target  # noqa: E402
from amc.train import evaluate, finetune, recalibrate_bn  # noqa: E402
from amc.zoo import DataSplits  # noqa: E402
from experiments import benchmark  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--case", default="resnet20-fmnist", choices=sorted(benchmark.CASES))
    add("--target", default="flops=0.12", help="the plans' common budget (FLOPs or params)")
    add("--plans", type=int, default=12, help="plans: the uniform one and random ones")
    add("--protocols", nargs="+", default=["4:10", "16:0", "16:10", "16:40", "16:100"],
        help="BN_BATCHES:STEPS per protocol")  # fmt: skip
    add("--final-steps", type=int, default=200, help="fine-tune steps of the final accuracy")
    add("--lr", type=float, default=0.01)
    add("--batch-size", type=int, default=64)
    add("--val", type=int, default=1000, help="validation samples the protocols score on")
    add("--test", type=int, default=5000, help="held-out samples of the final accuracy")
    add("--seed", type=int, default=0)
    add("--baseline-epochs", type=int, default=2, help="epochs of the dense baseline")
    add("--runs", default=str(benchmark.ROOT / "runs"), help="cache folder (baselines)")
    args = parser.parse_args(argv)
    target = Target.parse(args.target)
    if target.metric == "latency":
        parser.error("use a FLOPs or params target: plans of equal cost need no timing here")
    try:
        args.protocol_list = [tuple(int(x) for x in p.split(":")) for p in args.protocols]
    except ValueError:
        parser.error(f"--protocols takes BN_BATCHES:STEPS pairs, e.g. 16:40; got {args.protocols}")
    if any(len(p) != 2 or min(p) < 0 for p in args.protocol_list):
        parser.error(f"--protocols takes BN_BATCHES:STEPS pairs >= 0; got {args.protocols}")
    if args.plans < 3:
        parser.error(f"--plans must be at least 3 to rank anything, got {args.plans}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    loader = argparse.Namespace(
        cifar10=None, baseline_epochs=args.baseline_epochs, runs=args.runs, val=args.val,
        test=args.test, rescore_val=args.val,  # no re-score here: no samples beyond validation
    )  # fmt: skip
    task = benchmark.load_task(benchmark.CASES[args.case], loader)
    splits = DataSplits(
        task.data.train, task.val, task.data.num_classes, task.data.input_shape, task.data.name
    )
    space = SearchSpace.build(task.model, task.example, args.target, device="cpu")
    [uniform] = get_agent("uniform", space).ask(1)
    plans = [uniform.plan] + [
        p.plan for p in get_agent("random", space, seed=args.seed).ask(args.plans - 1)
    ]
    names = [f"{a}:{b}" for a, b in args.protocol_list]
    scores: dict[str, list[float]] = {name: [] for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    final: list[float] = []
    for plan in tqdm(plans, desc="plans", unit="plan"):
        pruned = apply_plan(task.model, plan, task.example).eval()
        for name, (bn, steps) in zip(names, args.protocol_list, strict=True):
            model = copy.deepcopy(pruned)
            start = time.perf_counter()
            if bn:
                recalibrate_bn(model, splits, bn, args.batch_size, "cpu", args.seed)
            if steps:
                finetune(model, splits, steps, lr=args.lr, batch_size=args.batch_size,
                         device="cpu", seed=args.seed)  # fmt: skip
            scores[name].append(evaluate(model, task.val, batch_size=256).accuracy)
            seconds[name].append(time.perf_counter() - start)
        model = copy.deepcopy(pruned)
        finetune(model, task.data, args.final_steps, lr=args.lr, batch_size=args.batch_size,
                 seed=args.seed)  # fmt: skip
        final.append(evaluate(model, task.test, batch_size=256).accuracy)
    order = sorted(range(len(final)), key=lambda i: -final[i])
    rank = {index: position + 1 for position, index in enumerate(order)}
    print(f"## Proxy ranking: {args.case}, {len(plans)} plans at {args.target}\n")
    print(
        f"Final: {args.final_steps} fine-tune steps (lr {args.lr}, batch {args.batch_size}), "
        f"test accuracy on {len(task.test)} held-out samples; protocols score on "  # type: ignore[arg-type]
        f"{len(task.val)} validation samples. Plan 0 is uniform (final rank {rank[0]}).\n"  # type: ignore[arg-type]
    )
    print("| protocol (BN batches : steps) | Spearman | Kendall | final rank of its pick "
          "| s / plan |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name in names:
        pick = int(np.argmax(scores[name]))
        print(
            f"| {name} | {spearmanr(scores[name], final).statistic:.2f} | "
            f"{kendalltau(scores[name], final).statistic:.2f} | {rank[pick]} of {len(plans)} | "
            f"{statistics.median(seconds[name]):.2f} |"
        )
    print("\n| plan | final acc % | " + " | ".join(f"{n} %" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for index in range(len(plans)):
        cells = " | ".join(f"{100 * scores[n][index]:.1f}" for n in names)
        label = "uniform" if index == 0 else f"random {index}"
        print(f"| {label} | {100 * final[index]:.2f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
