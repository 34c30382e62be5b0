"""Same channel counts, different channels: amc's core against Torch-Pruning's MetaPruner.

    python experiments/bench_scoring.py [--ratios 0.4,0.57,0.7] [--seeds 3] [--steps 200]

The benchmark compares plans of different shapes; this isolates which channels each side
keeps. For each Torch-Pruning ``pruning_ratio`` (uniform ``MetaPruner``,
``GroupMagnitudeImportance(p=1)``, classifier ignored, as ``benchmark.py`` runs it) the
script reads the channel count TP left in every unit and gives amc's core
(:func:`amc.apply_plan`, criterion ``l1``, the same Torch-Pruning importance) exactly those
counts. The two differ in when they score: TP scores every group on the dense model and then
prunes; amc prunes unit by unit in execution order, each scored on the model as pruned so far
(a consumer's input columns are scored over the rows its own unit kept). The script checks the
shapes are equal, says whether the weights are too, fine-tunes both ``--steps`` steps (SGD lr
0.01, batch 64) from ``--seeds`` seeds and scores them on 5000 held-out Fashion-MNIST samples
(those after the benchmark's validation split), with the resnet20 baseline the benchmark
trains (2 epochs, cached under ``--runs``/baselines). Needs Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from amc.prune import apply_plan  # noqa: E402
from amc.space import SearchSpace  # noqa: E402
from amc.train import evaluate, finetune, pretrained  # noqa: E402
from amc.units import analyze  # noqa: E402
from amc.zoo import get_data  # noqa: E402
from experiments import benchmark  # noqa: E402


def out_channels(layer: torch.nn.Module) -> int:
    assert isinstance(layer, torch.nn.Conv2d | torch.nn.Linear)
    return layer.weight.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", default="0.4,0.57,0.7", help="TP pruning_ratio values")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tunes per model")
    parser.add_argument("--steps", type=int, default=200, help="fine-tune steps")
    parser.add_argument("--runs", default="runs", help="folder of the cached baseline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = (1, 28, 28)
    model, _ = pretrained(
        "resnet20", "fashion-mnist", input_shape=shape, epochs=2,
        cache_dir=Path(args.runs) / "baselines", progress=False,
    )  # fmt: skip
    model.eval()
    data = get_data("fashion-mnist", input_shape=shape)
    test = Subset(data.test, range(1000, 6000))
    x = data.test[0][0].unsqueeze(0).clone()
    graph = analyze(model, x)
    space = SearchSpace.build(model, x, "flops=1.0", graph=graph)
    print(f"resnet20 on Fashion-MNIST, {args.steps} fine-tune steps, {args.seeds} seeds, "
          f"test accuracy on {len(test)} held-out samples\n")  # fmt: skip
    print("| TP pruning_ratio | channels per stage | same weights | TP uniform acc % | "
          "amc core acc % | amc - TP | per seed (TP / amc) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for ratio in (float(r) for r in args.ratios.split(",")):
        tp_model = benchmark.tp_prune(model, x, ratio, False, 0.8)
        counts = {u.name: out_channels(tp_model.get_submodule(u.name)) for u in graph.units}
        plan = space.make_plan(
            {n: c / graph.unit(n).channels for n, c in counts.items()}, fit=False
        )
        if plan.channels(graph) != counts:
            raise SystemExit(f"could not give amc TP's counts: {plan.channels(graph)} vs {counts}")
        ours = apply_plan(model, plan, x, criterion="l1", graph=graph)
        same = all(
            torch.equal(a, b)
            for a, b in zip(
                tp_model.state_dict().values(), ours.state_dict().values(), strict=True
            )
        )
        accuracies: dict[str, list[float]] = {"tp": [], "amc": []}
        for name, pruned in (("tp", tp_model), ("amc", ours)):
            for seed in range(args.seeds):
                tuned = copy.deepcopy(pruned)
                finetune(tuned, data, args.steps, lr=0.01, batch_size=64, seed=seed)
                accuracies[name].append(100 * evaluate(tuned, test, batch_size=256).accuracy)
        tp_mean, amc_mean = (statistics.fmean(accuracies[k]) for k in ("tp", "amc"))
        stages = "/".join(str(c) for c in sorted(set(counts.values())))
        per_seed = "; ".join(
            f"{a:.2f} / {b:.2f}" for a, b in zip(*accuracies.values(), strict=True)
        )
        spread = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in accuracies.items()}
        print(
            f"| {ratio:g} | {stages} | {'yes' if same else 'no'} "
            f"| {tp_mean:.2f} ± {spread['tp']:.2f} | {amc_mean:.2f} ± {spread['amc']:.2f} "
            f"| {amc_mean - tp_mean:+.2f} | {per_seed} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
