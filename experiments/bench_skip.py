"""Does skipping residual blocks buy accuracy at a measured latency target?

    python experiments/bench_skip.py [--batch 1] [--target 0.4] [--seeds 2] [--out FILE]

Channel pruning thins every layer; layer skipping (``PruningPlan.skip``) removes whole residual
blocks. On a CPU at batch 1 a small CNN's latency is mostly per-layer overhead, which thinner
layers barely lower, so a latency target forces deep channel cuts; skipping a few blocks saves
that overhead outright and leaves the budget to wider layers. At batch 32 the arithmetic
dominates and the trade may go the other way.

For resnet20 on Fashion-MNIST (the benchmark's baseline, trained once and cached under
``runs/baselines``), this script takes fixed sets of skipped blocks (none; the last block of
every stage; every skippable block of the first stage; all but the first block of every stage),
sizes a uniform channel plan around each by measured latency (``amc.choose.aim``: the plan and
the dense model timed in alternation, the median ratio of three runs, one thread), fine-tunes
each plan ``--steps`` steps with ``--seeds`` data orders, and prints a markdown table of the
measured latency ratio, the uniform keep ratio and the test accuracy on held-out samples.
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
from torch.utils.data import Subset  # noqa: E402

from amc.choose import aim  # noqa: E402
from amc.latency_table import LatencyTable  # noqa: E402
from amc.measure import interleaved_ratio, steady_allocator  # noqa: E402
from amc.plan import PruningPlan  # noqa: E402
from amc.prune import apply_plan  # noqa: E402
from amc.space import SearchSpace  # noqa: E402
from amc.train import evaluate, finetune, pretrained  # noqa: E402
from amc.units import UnitGraph, analyze  # noqa: E402
from amc.zoo.data import get_data  # noqa: E402
from experiments.benchmark import machine  # noqa: E402

SHAPE = (1, 28, 28)


def skip_sets(graph: UnitGraph) -> dict[str, tuple[str, ...]]:
    """The skip sets compared, by name (blocks named ``layerS.B`` as the zoo's resnets)."""
    blocks = graph.skippable
    stages = sorted({block.split(".")[0] for block in blocks})
    last = tuple([b for b in blocks if b.startswith(f"{s}.")][-1] for s in stages)
    return {
        "none": (),
        "last block of each stage": last,
        f"every skippable block of {stages[0]}": tuple(
            b for b in blocks if b.startswith(f"{stages[0]}.")
        ),
        "all but the first block of each stage": tuple(b for b in blocks if not b.endswith(".0")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="latency batch size")
    parser.add_argument("--target", type=float, default=0.4, help="latency ratio to dense")
    parser.add_argument("--seeds", type=int, default=2, help="fine-tunes per plan")
    parser.add_argument("--steps", type=int, default=200, help="fine-tune steps per plan")
    parser.add_argument("--test", type=int, default=5000, help="held-out test samples")
    parser.add_argument("--runs", default="runs", help="folder of the cached baseline")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steady_allocator()
    model, _ = pretrained(
        "resnet20", "fashion-mnist", input_shape=SHAPE, epochs=2,
        cache_dir=Path(args.runs) / "baselines", progress=False,
    )  # fmt: skip
    model.eval()
    data = get_data("fashion-mnist", input_shape=SHAPE)
    n_test = len(data.test)  # type: ignore[arg-type]
    test = Subset(data.test, range(n_test - args.test, n_test))
    x = data.test[0][0].unsqueeze(0).clone()  # type: ignore[index]
    graph = analyze(model, x)
    space = SearchSpace.build(
        model, x, f"latency={args.target}", graph=graph, skip_blocks=True,
        latency_table=LatencyTable.synthetic(graph),  # sizes come from the measurements
    )  # fmt: skip
    batch = x.repeat(args.batch, 1, 1, 1)

    def measure(plan: PruningPlan) -> float:
        pruned = apply_plan(model, plan, x, graph=graph).eval()
        return interleaved_ratio(pruned, model, batch, repeats=3, threads=1, min_run_time=0.5)

    dense_accuracy = evaluate(model, test, batch_size=256).accuracy
    info = machine()
    rows = []
    for name, skip in skip_sets(graph).items():
        start = time.perf_counter()
        half = dict.fromkeys(space.names, 0.5)
        aimed = aim(space, space.make_plan(half, skip=skip, fit=False), measure, steps=7)
        accuracies = []
        for seed in range(args.seeds):
            pruned = apply_plan(model, aimed.plan, x, graph=graph)
            finetune(pruned, data, steps=args.steps, lr=0.01, seed=seed)
            accuracies.append(evaluate(pruned, test, batch_size=256).accuracy)
        keep = min(u.keep_ratio for n, u in aimed.plan.units.items() if n in space.names)
        rows.append((name, skip, aimed, keep, accuracies))
        print(
            f"{name}: ratio {aimed.ratio:.3f} keep {keep:.3f} accuracy "
            f"{statistics.fmean(accuracies):.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    lines = [
        f"# Layer skipping vs channels — resnet20, Fashion-MNIST, latency {args.target:g} "
        f"at batch {args.batch}",
        "",
        f"Command: `python experiments/bench_skip.py {' '.join(argv or sys.argv[1:])}`  ",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['os']}; 1 thread.  ",
        f"Versions: {info['versions']}.  ",
        f"Dense accuracy {dense_accuracy:.2%} on {len(test)} held-out samples; "
        f"{args.steps} fine-tune steps per plan, {args.seeds} seed(s).",
        "",
        "| skipped blocks | blocks | measured latency ratio | fits | channel keep ratio "
        "| accuracy % (mean) | per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, skip, aimed, keep, accuracies in rows:
        lines.append(
            f"| {name} | {', '.join(skip) or '-'} | {aimed.ratio:.3f} | "
            f"{'yes' if aimed.fits else 'no'} | {keep:.3f} | "
            f"{100 * statistics.fmean(accuracies):.2f} | "
            f"{', '.join(f'{100 * a:.2f}' for a in accuracies)} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
