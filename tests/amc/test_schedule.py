"""Iterative pruning: the round schedule, the step split, and a result shaped like one shot."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import amc
from amc import zoo
from amc.errors import ConfigError, PlanMismatchError
from amc.measure import count_params
from amc.plan import PruningPlan, UnitPlan, uniform_plan
from amc.prune import WeightMask, apply_plan, masked_layers
from amc.schedule import _match_units, iterative_prune, round_schedule, split_steps
from amc.units import analyze
from tests.tiny_models import DepthwiseNet, LeNet, ResidualNet, TransformerNet

X = torch.randn(4, 1, 16, 16)


def residual_plan() -> PruningPlan:
    return PruningPlan(
        units={
            "conv1": UnitPlan(0.25, 4, sparsity=0.5),
            "layer1.0.conv1": UnitPlan(0.5, 8, nm=(2, 4)),
            "layer1.1.conv1": UnitPlan(0.5, 8, sparsity=0.5),
        },
        skip=("layer1.1",),
    )


def resnet20_plan(model: nn.Module) -> PruningPlan:
    plan = uniform_plan(model, X, 0.5, nm=(2, 4), round_to=4)
    units = dict(plan.units)
    units["layer3.1.conv1"] = replace(units["layer3.1.conv1"], sparsity=0.3)
    return replace(plan, units=units, skip=("layer2.1",))


CASES = {
    "lenet": (
        LeNet,
        lambda _: PruningPlan(
            units={
                "conv1": UnitPlan(0.5, 4),
                "conv2": UnitPlan(0.5, 8, nm=(2, 4)),
                "fc1": UnitPlan(0.25, 8, nm=(1, 4), sparsity=0.5),
            }
        ),
    ),
    "residual": (ResidualNet, lambda _: residual_plan()),
    "depthwise": (
        DepthwiseNet,
        lambda _: PruningPlan(
            units={"stem": UnitPlan(0.5, 8), "expand": UnitPlan(0.25, 8, sparsity=0.3)}
        ),
    ),
    "transformer": (
        TransformerNet,
        lambda _: PruningPlan(
            units={
                "patch": UnitPlan(0.5, 8),
                "attn.qkv": UnitPlan(1.0, 48, nm=(2, 4)),
                "fc1": UnitPlan(0.5, 16, nm=(2, 4), sparsity=0.5),
            }
        ),
    ),
    "resnet20": (lambda: zoo.get_model("resnet20", in_channels=1), resnet20_plan),
}


class Recorder:
    """A fine-tune that moves every weight (SGD on random labels) and records what it got."""

    def __init__(self, graph: amc.units.UnitGraph) -> None:
        self.graph = graph
        self.calls: list[tuple[int, int, dict[str, int], dict[str, list[str]]]] = []
        self.zeros: list[dict[str, int]] = []

    def __call__(self, model: nn.Module, steps: int, number: int) -> None:
        modules = dict(model.named_modules())
        widths = {  # units inside a skipped block are gone after the last round
            unit.name: _out_width(modules[unit.name])
            for unit in self.graph.units
            if unit.name in modules
        }
        self.calls.append((steps, number, widths, masked_layers(model)))
        self.zeros.append(_mask_zeros(model))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        model.train()
        for step in range(steps):
            optimizer.zero_grad()
            labels = torch.arange(len(X)) + step
            nn.functional.cross_entropy(model(X), labels % 10).backward()
            optimizer.step()
        model.eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_rounds_end_in_the_structure_of_one_shot_apply(name: str) -> None:
    factory, make_plan = CASES[name]
    torch.manual_seed(0)
    model = factory().eval()
    graph = analyze(model, X)
    plan = make_plan(model)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    tune = Recorder(graph)

    iterative = iterative_prune(model, plan, X, 3, tune, steps=6, graph=graph)
    one_shot = apply_plan(model, plan, X, graph=graph)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    shapes = {key: tuple(value.shape) for key, value in iterative.state_dict().items()}
    assert shapes == {key: tuple(value.shape) for key, value in one_shot.state_dict().items()}
    assert masked_layers(iterative) == masked_layers(one_shot)
    assert _mask_zeros(iterative) == _mask_zeros(one_shot)
    assert count_params(iterative) == count_params(one_shot)
    for block in plan.skip:
        assert isinstance(iterative.get_submodule(block), nn.Identity)
    for layer_name, patterns in masked_layers(iterative).items():
        weight = iterative.get_submodule(layer_name).weight
        for pattern in patterns:
            if pattern != "unstructured":
                n, m = map(int, pattern.split(":"))
                assert (_nonzeros_per_group(weight, m) <= n).all(), layer_name
    assert iterative(X).shape == model(X).shape
    # every round fine-tuned its share, on a model at that round's widths
    rounds = round_schedule(plan, graph, 3, steps=6)
    assert [(steps, number) for steps, number, _, _ in tune.calls] == [(2, 1), (2, 2), (2, 3)]
    gone = tuple(f"{block}." for block in plan.skip)
    for (_, _, widths, _), target in zip(tune.calls, rounds, strict=True):
        expected = {n: c for n, c in target.channels.items() if not n.startswith(gone)}
        assert {n: widths[n] for n in expected} == expected


def test_schedule_is_linear_in_the_removed_fraction() -> None:
    graph = analyze(ResidualNet().eval(), X)
    rounds = round_schedule(residual_plan(), graph, 3, steps=7)
    assert [r.number for r in rounds] == [1, 2, 3]
    assert [r.channels["conv1"] for r in rounds] == [12, 8, 4]  # 16 -> 4: 4 per round
    assert [r.channels["layer1.0.conv1"] for r in rounds] == [13, 11, 8]  # 16 - 8r/3, rounded
    assert [r.sparsity["conv1"] for r in rounds] == pytest.approx([1 / 6, 1 / 3, 0.5])
    assert [r.sparsity["layer1.0.conv1"] for r in rounds] == [0.0, 0.0, 0.0]
    assert [r.nm for r in rounds] == [False, False, True]
    assert [r.skip for r in rounds] == [(), (), ("layer1.1",)]
    assert [r.steps for r in rounds] == [2, 2, 3]
    # intermediate counts follow round_to, the last one is the plan's exactly
    plan = replace(residual_plan(), round_to=4)
    rounded = round_schedule(plan, graph, 3)
    assert [r.channels["layer1.0.conv1"] for r in rounded] == [12, 12, 8]
    assert [r.channels["conv1"] for r in round_schedule(plan, graph, 1)] == [4]


def test_steps_split_evenly_with_the_remainder_last() -> None:
    assert split_steps(6, 3) == [2, 2, 2]
    assert split_steps(7, 3) == [2, 2, 3]
    assert split_steps(8, 3) == [2, 3, 3]
    assert split_steps(5, 1) == [5]
    assert split_steps(0, 2) == [0, 0]


def test_intermediate_rounds_ramp_sparsity_and_leave_nm_and_skips_to_the_last() -> None:
    torch.manual_seed(0)
    model = ResidualNet().eval()
    graph = analyze(model, X)
    tune = Recorder(graph)
    iterative_prune(model, residual_plan(), X, 2, tune, steps=2, graph=graph)
    first, last = tune.calls
    assert first[2] == {"conv1": 10, "layer1.0.conv1": 12, "layer1.1.conv1": 12}
    assert first[3] == {
        "conv1": ["unstructured"],
        "layer1.0.conv2": ["unstructured"],
        "layer1.1.conv2": ["unstructured"],
        "layer1.1.conv1": ["unstructured"],
    }  # sparsity ramps everywhere; no N:M yet
    # a quarter of each weight after round 1 of 2 (half the target sparsity of 0.5)
    assert tune.zeros[0]["conv1"] == round(0.25 * 10 * 1 * 9)
    assert tune.zeros[0]["layer1.1.conv1"] == round(0.25 * 12 * 10 * 9)
    assert last[2] == {"conv1": 4, "layer1.0.conv1": 8}  # layer1.1 is skipped
    assert last[3] == {
        "conv1": ["unstructured"],
        "layer1.0.conv1": ["2:4"],
        "layer1.0.conv2": ["unstructured"],
    }  # N:M and the skipped block arrive together in the last round
    assert tune.zeros[1]["conv1"] == round(0.5 * 4 * 9)


def test_one_round_is_exactly_apply_plan() -> None:
    torch.manual_seed(0)
    model = ResidualNet().eval()
    plan = residual_plan()
    single = iterative_prune(model, plan, X, 1)
    one_shot = apply_plan(model, plan, X)
    expected = one_shot.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in single.state_dict().items())
    calls: list[tuple[int, int]] = []
    iterative_prune(model, plan, X, 1, lambda _, steps, n: calls.append((steps, n)), steps=5)
    assert calls == [(5, 1)]


def test_rounds_without_fine_tuning_reach_the_same_widths() -> None:
    torch.manual_seed(0)
    model = LeNet().eval()
    plan = uniform_plan(model, X, 0.25)
    pruned = iterative_prune(model, plan, X, 4)
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels, pruned.fc1.out_features) == (
        2, 4, 8
    )  # fmt: skip


def test_data_driven_criteria_score_every_round() -> None:
    torch.manual_seed(0)
    model = ResidualNet().eval()
    batches = [(X, torch.arange(len(X)))]
    plan = replace(residual_plan(), criterion="taylor")
    pruned = iterative_prune(model, plan, X, 2, batches=batches)
    assert pruned.conv1.out_channels == 4 and pruned.layer1[0].conv1.out_channels == 8


def test_the_result_saves_and_loads_back_like_one_shot(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ResidualNet().eval()
    graph = analyze(model, X)
    plan = residual_plan()
    pruned = iterative_prune(model, plan, X, 3, Recorder(graph), steps=3, graph=graph)
    amc.save_pruned(
        pruned,
        plan,
        tmp_path / "pruned",
        X[:1],
        model_spec="tests.tiny_models:ResidualNet",
        model_kwargs={"in_channels": 1},
        export=False,
    )
    loaded = amc.load_pruned(tmp_path / "pruned").eval()
    assert masked_layers(loaded) == masked_layers(pruned)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), pruned(X))


def test_bad_rounds_and_steps_are_refused_before_any_work() -> None:
    model = LeNet().eval()
    plan = uniform_plan(model, X, 0.5)
    for rounds in (0, -1, 1.5):
        with pytest.raises(
            ConfigError,
            match=re.escape(
                f"rounds must be a whole number of at least 1 (1 prunes in one shot), got "
                f"{rounds!r}."
            ),
        ):
            iterative_prune(model, plan, X, rounds)  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "2 fine-tune steps cannot be split over 3 rounds: every round needs at least one "
            "step; give steps >= 3."
        ),
    ):
        iterative_prune(model, plan, X, 3, lambda *_: None, steps=2)
    with pytest.raises(ConfigError, match=re.escape("steps=4 needs a finetune_fn")):
        iterative_prune(model, plan, X, 2, steps=4)
    calls: list[int] = []
    bad = PruningPlan(units={"conv9": UnitPlan(0.5)})
    with pytest.raises(PlanMismatchError, match="unknown unit 'conv9'. Did you mean 'conv2'?"):
        iterative_prune(model, bad, X, 3, lambda *args: calls.append(1), steps=3)
    assert calls == []


def test_units_are_matched_by_name_else_by_their_layers() -> None:
    graph = analyze(ResidualNet().eval(), X)
    renamed = replace(graph, units=[replace(graph.units[0], name="stem"), *graph.units[1:]])
    matched = _match_units(graph, renamed, ["conv1", "layer1.0.conv1"])
    assert {name: unit.name for name, unit in matched.items()} == {
        "conv1": "stem",
        "layer1.0.conv1": "layer1.0.conv1",
    }
    lost = replace(graph, units=graph.units[1:])
    with pytest.raises(
        PlanMismatchError,
        match=re.escape(
            "After a pruning round the model's units no longer match the dense model's: conv1 "
            "not found among layer1.0.conv1, layer1.1.conv1. Prune this model in one round "
            "(rounds=1, CLI --rounds 1)."
        ),
    ):
        _match_units(graph, lost, ["conv1"])


def _out_width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.out_channels)  # type: ignore[arg-type]


def _mask_zeros(model: nn.Module) -> dict[str, int]:
    """Layer -> zeros of its unstructured mask."""
    zeros = {}
    for name in masked_layers(model):
        for parametrization in model.get_submodule(name).parametrizations["weight"]:
            if isinstance(parametrization, WeightMask) and parametrization.pattern == (
                "unstructured"
            ):
                zeros[name] = int((parametrization.mask == 0).sum())
    return zeros


def _nonzeros_per_group(weight: torch.Tensor, m: int) -> torch.Tensor:
    moved = weight.movedim(1, -1) if weight.dim() == 4 else weight
    return (moved.reshape(-1, m) != 0).sum(1)
