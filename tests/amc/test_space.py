"""SearchSpace: targets, the cost model after rounding, AMC's clipping, repair and plans."""

from __future__ import annotations

import json
import random
import re
import warnings
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from amc.errors import ConfigError, InfeasibleBudgetError
from amc.latency_table import LatencyTable
from amc.measure import count_flops
from amc.plan import PruningPlan, channels_for, validate_plan
from amc.prune import apply_plan
from amc.space import FLOOR_WARN_PLANS, SearchSpace, Target, _CostModel
from amc.units import UnitGraph, analyze
from tests.tiny_models import TINY_MODELS

TINY_INPUT = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
ZOO_INPUT = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
ZOO_NAMES = ("resnet20", "mobilenetv2", "vit_tiny")


@cache
def model_and_graph(name: str) -> tuple[nn.Module, torch.Tensor, UnitGraph]:
    """A model, its input and its unit graph, built once per test session."""
    torch.manual_seed(0)
    if name in TINY_MODELS:
        model, x = TINY_MODELS[name]().eval(), TINY_INPUT
    else:
        zoo = pytest.importorskip("amc.zoo")
        model, x = zoo.get_model(name, num_classes=10, in_channels=3).eval(), ZOO_INPUT
    return model, x, analyze(model, x)


def space_for(name: str, target: str, **options: object) -> SearchSpace:
    """A space whose latency targets use a FLOPs-derived table (no timing in unit tests)."""
    model, x, graph = model_and_graph(name)
    if target.startswith("latency") and "latency_table" not in options:
        nm = options.get("nm")
        options["latency_table"] = LatencyTable.synthetic(graph, nm=nm)  # type: ignore[arg-type]
    return SearchSpace.build(model, x, target, graph=graph, **options)  # type: ignore[arg-type]


def feasible_target(name: str, metric: str, position: float, **options: object) -> str:
    """A target ``position`` of the way from the smallest reachable fraction to 1."""
    smallest = space_for(name, f"{metric}=1.0", **options).smallest_fraction()
    return f"{metric}={max(0.01, smallest + position * (1.0 - smallest))!r}"


def random_episode(space: SearchSpace, rng: random.Random) -> dict[str, float]:
    """Walk the units as the environment does: ask a random ratio, keep what clip allows."""
    decided: dict[str, float] = {}
    for index, unit in enumerate(space.units):
        decided[unit.name] = space.clip(index, rng.random(), decided)
    return decided


def random_nm_episode(space: SearchSpace, rng: random.Random) -> tuple[dict, dict]:
    """As :func:`random_episode`, with random N:M choices clipped by ``clip_nm``."""
    decided: dict[str, float] = {}
    nm: dict[str, bool] = {}
    for index, unit in enumerate(space.units):
        nm[unit.name] = space.clip_nm(index, rng.random() < 0.5, decided, nm)
        decided[unit.name] = space.clip(index, rng.random(), decided, nm_choices=nm)
    return decided, nm


def plan_resource(space: SearchSpace, plan: PruningPlan) -> float:
    """The plan's resource, from its own channel counts (graph.predict or the latency table)."""
    channels = plan.channels(space.graph)
    if space.target.metric == "latency":
        assert space.latency_table is not None
        ratios = {
            name: count / space.graph.unit(name).channels for name, count in channels.items()
        }
        used = {name: unit.nm is not None for name, unit in plan.units.items()}
        return space.latency_table.estimate(ratios, used) / space.latency_table.dense_ms
    cost = space.graph.predict(channels)
    if space.target.metric == "flops":
        return cost.flops / space.graph.dense_flops
    fixed = space.graph.dense_params - space.graph.predict({}).params
    return (cost.params + fixed) / space.graph.dense_params


# ---------------------------------------------------------------------------------------------
# Target
# ---------------------------------------------------------------------------------------------


def test_target_parse_reads_metric_and_fraction() -> None:
    assert Target.parse("flops=0.5") == Target("flops", 0.5)
    assert Target.parse(" Latency = 0.25 ") == Target("latency", 0.25)
    assert Target.parse({"metric": "params", "fraction": 1}) == Target("params", 1)
    assert str(Target.parse("params=0.75")) == "params=0.75"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "flop=0.5",
            "Unknown target metric 'flop'. Did you mean 'flops'? Expected one of: flops, params, "
            "latency (as METRIC=FRACTION, e.g. 'flops=0.5').",
        ),
        (
            "flops",
            "Cannot read target 'flops': expected METRIC=FRACTION with METRIC one of flops, "
            "params, latency, e.g. 'flops=0.5' or 'latency=0.7'.",
        ),
        (
            "flops=half",
            "Cannot read target 'flops=half': the fraction 'half' is not a number. Expected "
            "METRIC=FRACTION with FRACTION in (0, 1], e.g. 'flops=0.5'.",
        ),
        (
            "latency=1.5",
            "Target fraction must be in (0, 1] (the share of the dense latency to keep), got "
            "1.5; e.g. 'latency=0.5'.",
        ),
        ("params=0", "Target fraction must be in (0, 1] (the share of the dense params"),
    ],
)
def test_target_parse_rejects_bad_strings(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        Target.parse(text)


# ---------------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------------


def test_infeasible_target_names_the_smallest_reachable_fraction() -> None:
    smallest = space_for("lenet", "flops=1.0").smallest_fraction()
    message = (
        f"Target flops=0.01 cannot be met: with every unit at the lower bound 0.2 the model keeps "
        f"{smallest:.4f} of its dense flops. Use a target fraction of at least {smallest:.4f}, "
        f"or lower lower_bound."
    )
    with pytest.raises(InfeasibleBudgetError, match="^" + re.escape(message) + "$"):
        space_for("lenet", "flops=0.01")
    assert space_for("lenet", f"flops={smallest + 1e-9}").smallest_fraction() == smallest


def test_latency_target_without_device_is_refused() -> None:
    model, x, graph = model_and_graph("lenet")
    message = (
        "Target latency=0.5 needs a device to measure latency on, but device=None. Pass "
        "device='cpu' or 'cuda', or a measured latency_table."
    )
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        SearchSpace.build(model, x, "latency=0.5", device=None, graph=graph)
    with pytest.raises(ConfigError, match=re.escape("A latency target needs a latency table")):
        SearchSpace(model, x, graph, Target("latency", 0.5))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lower_bound": 0.0}, "lower_bound must be in (0, 1], got 0.0."),
        ({"round_to": 0}, "round_to must be a positive integer, got 0."),
        (
            {"criterion": "l11"},
            "Unknown criterion 'l11'. Did you mean 'l1'? Expected one of: l1, l2,",
        ),
        ({"nm": (4, 2)}, "nm must be (N, M) with 0 < N < M, e.g. (2, 4); got (4, 2)."),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        space_for("lenet", "flops=0.9", **options)


def test_units_are_prunable_ones_plus_nm_eligible_when_nm_is_set() -> None:
    plain = space_for("transformer", "flops=0.9")
    assert plain.names == ["patch", "fc1"]  # attn.qkv cannot lose channels
    with_nm = space_for("transformer", "flops=0.9", nm=(2, 4))
    assert with_nm.names == ["patch", "attn.qkv", "fc1"]
    # patch's input has one channel: 2:4 cannot fit it, so it is not offered
    assert [with_nm.offers_nm(name) for name in with_nm.names] == [False, True, True]


@pytest.mark.parametrize("name", ["lenet", "residual", "transformer", "resnet20"])
def test_cost_model_matches_graph_predict(name: str) -> None:
    _, _, graph = model_and_graph(name)
    cost = _CostModel(graph)
    rng = random.Random(0)
    for _ in range(20):
        channels = {u.name: rng.randint(1, u.channels) for u in graph.units}
        flops, params = cost.cost({n: c / graph.unit(n).channels for n, c in channels.items()})
        expected = graph.predict(channels)
        assert abs(flops - expected.flops) <= 1
        assert abs(params - cost.fixed_params - expected.params) <= 1
    assert cost.cost({}) == (graph.dense_flops, graph.dense_params)


# ---------------------------------------------------------------------------------------------
# clipping, repair, plans: the budget holds after rounding
# ---------------------------------------------------------------------------------------------

SETTINGS = [
    ("lenet", {}),
    ("residual", {"round_to": 4}),
    ("depthwise", {"lower_bound": 0.3}),
    ("transformer", {"nm": (2, 4)}),
    ("residual", {"nm": (2, 4)}),
    ("lenet", {"round_to": 8}),
]


@settings(max_examples=60, deadline=None)
@given(
    setting=st.sampled_from(SETTINGS),
    metric=st.sampled_from(["flops", "params", "latency"]),
    position=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_clipped_episodes_meet_the_budget_after_rounding(
    setting: tuple[str, dict[str, object]], metric: str, position: float, seed: int
) -> None:
    name, options = setting
    space = space_for(name, feasible_target(name, metric, position, **options), **options)
    rng = random.Random(seed)
    for _ in range(5):
        keep, nm = random_nm_episode(space, rng)
        assert all(space.lower_bound <= ratio <= 1.0 for ratio in keep.values())
        assert space.fits(keep, nm)
        plan = space.make_plan(keep, nm)
        assert plan_resource(space, plan) <= space.target.fraction + 1e-9
        validate_plan(plan, space.graph)
        # an arbitrary proposal with arbitrary N:M choices still becomes a plan within budget
        wild = {unit.name: rng.random() for unit in space.units}
        plan = space.make_plan(wild, {unit.name: rng.random() < 0.5 for unit in space.units})
        assert plan_resource(space, plan) <= space.target.fraction + 1e-9


@pytest.mark.parametrize("name", ZOO_NAMES)
@pytest.mark.parametrize("metric", ["flops", "params", "latency"])
def test_zoo_episodes_meet_the_budget(name: str, metric: str) -> None:
    space = space_for(name, feasible_target(name, metric, 0.3, round_to=4), round_to=4)
    rng = random.Random(1)
    for _ in range(30):
        plan = space.make_plan(random_episode(space, rng))
        assert plan_resource(space, plan) <= space.target.fraction + 1e-9


def test_clip_keeps_a_feasible_request_and_lowers_an_infeasible_one() -> None:
    space = space_for("lenet", "flops=0.5")
    first = space.units[0].name
    assert space.clip(0, 0.7, {}) == 0.7
    assert space.clip(0, 0.05, {}) == space.lower_bound
    # greedy: every unit asks for full width; the later ones must make up the difference
    decided: dict[str, float] = {}
    for index, unit in enumerate(space.units[:-1]):
        decided[unit.name] = space.clip(index, 1.0, decided)
    last = len(space.units) - 1
    clipped = space.clip(last, 1.0, decided)
    assert clipped < 1.0
    assert space.fits(decided | {space.units[last].name: clipped})
    unit = space.units[last]
    one_more = (channels_for(clipped, unit.channels) + 1) / unit.channels
    assert clipped == space.lower_bound or not space.fits(decided | {unit.name: one_more})
    assert first in space.names


def test_clip_counts_undecided_units_at_the_lower_bound() -> None:
    space = space_for("residual", "flops=0.3")
    keep = space.clip(0, 1.0, {})
    rest = {unit.name: space.lower_bound for unit in space.units[1:]}
    assert space.fits(rest | {space.units[0].name: keep})


@settings(max_examples=40, deadline=None)
@given(
    setting=st.sampled_from(SETTINGS),
    metric=st.sampled_from(["flops", "params", "latency"]),
    position=st.floats(0.0, 1.0),
    proposal=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
)
def test_repair_fits_and_keeps_the_shape(
    setting: tuple[str, dict[str, object]],
    metric: str,
    position: float,
    proposal: list[float],
) -> None:
    name, options = setting
    space = space_for(name, feasible_target(name, metric, position, **options), **options)
    keep = {unit.name: proposal[i % 4] for i, unit in enumerate(space.units)}
    repaired = space.repair(keep)
    assert set(repaired) == set(space.names)
    assert space.fits(repaired)
    prunable = [u.name for u in space.units if u.channel_prunable]
    bounded = {n: min(1.0, max(space.lower_bound, keep[n])) for n in prunable}
    for a in prunable:  # the order of keep ratios is preserved
        for b in prunable:
            if bounded[a] < bounded[b]:
                assert repaired[a] <= repaired[b] + 1e-12
    tight = space.repair(keep, fill=False)
    assert space.fits(tight)
    assert space.cost_fraction(tight) <= space.cost_fraction(repaired) + 1e-12
    if space.fits(keep):
        assert tight == {n: bounded.get(n, 1.0) for n in space.names}


def test_repair_fills_the_budget() -> None:
    space = space_for("resnet20", "flops=0.5")
    repaired = space.repair({unit.name: space.lower_bound for unit in space.units})
    assert 0.45 <= space.cost_fraction(repaired) <= 0.5
    uniform = space.repair({unit.name: 1.0 for unit in space.units})  # nothing to scale: blend
    assert 0.45 <= space.cost_fraction(uniform) <= 0.5


def kernel_switch_space(target: str = "latency=0.75") -> SearchSpace:
    """LeNet priced by a kernel table alone: 10 ms fixed plus conv2's kernel, which switches
    algorithms so that 12-14 channels cost more than 15 (and 16 most): 30 ms dense."""
    from amc.kernel_table import Kernel, KernelTable, LayerRef
    from tests.tiny_models import LeNet

    model = LeNet().eval()
    x = torch.randn(2, 1, 16, 16)
    graph = analyze(model, x)
    counts = tuple(range(3, 17))
    ms = {c: float(c) for c in counts} | {12: 14.0, 13: 14.0, 14: 14.0, 15: 11.5, 16: 20.0}
    kernels = KernelTable(
        layers={"conv2": LayerRef("k", None, "conv2"), "rest": LayerRef("fixed", None, None)},
        kernels={
            "k": Kernel(in_counts=(8,), out_counts=counts, ms=(tuple(ms[c] for c in counts),)),
            "fixed": Kernel(in_counts=(1,), out_counts=(1,), ms=((10.0,),)),
        },
        dense={unit.name: unit.channels for unit in graph.units},
    )
    table = LatencyTable(dense_ms=30.0, units={}, fit=(0.0, 30.0), kernels=kernels)
    return SearchSpace.build(model, x, target, latency_table=table, graph=graph)


def test_repair_finds_the_widest_fit_when_latency_is_not_monotone_in_channels() -> None:
    """Filling the budget (or clipping) must reach 15 channels of conv2, where a bisection alone
    stops at 11 (12-14 cost more than 15)."""
    space = kernel_switch_space()
    keep = space.repair({"conv1": 1.0, "conv2": 0.5, "fc1": 1.0})
    assert space.channels(keep)["conv2"] == 15  # 21.5 of 30 ms; 11 channels would be 21
    assert space.cost_fraction(keep) <= 0.75
    # AMC's clipping, one unit at a time, the same
    index = space.names.index("conv2")
    assert space.clip(index, 1.0, {"conv1": 1.0}) == 15 / 16


def test_a_target_below_the_measured_floor_is_said_once_with_the_fix() -> None:
    space = kernel_switch_space()  # the smallest plan is estimated at 13 of 30 ms
    plan = space.make_plan(space.repair({name: 0.2 for name in space.names}))
    keep = {name: unit.keep_ratio for name, unit in plan.units.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(FLOOR_WARN_PLANS):  # the device reads it at twice the table's estimate
            estimate = space.cost_fraction(keep) / space.latency_table.scale
            space.calibrate_latency(plan, 2 * estimate)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert message.startswith("Target latency=0.75 is below what this search space reaches")
    assert "estimated at 0.867 of the dense latency" in message
    assert message.endswith("Raise the target to at least 0.867, or lower lower_bound.")
    assert space.smallest_fraction() <= 0.75  # capped: every ask still fits


def test_one_wild_reading_caps_the_scale_but_raises_no_alarm() -> None:
    """The floor warning waits for FLOOR_WARN_PLANS readings: a first plan read far too slow
    (a cold start, a burst of other work) is capped quietly, and readings that agree with the
    table afterwards never warn."""
    space = kernel_switch_space()
    plan = space.make_plan(space.repair({name: 0.2 for name in space.names}))
    keep = {name: unit.keep_ratio for name, unit in plan.units.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space.calibrate_latency(plan, 2 * space.cost_fraction(keep))
        assert space.smallest_fraction() <= 0.75  # capped at once
        for _ in range(FLOOR_WARN_PLANS):  # then read as the table estimates
            space.calibrate_latency(plan, space.cost_fraction(keep) / space.latency_table.scale)
    assert not caught, [str(w.message) for w in caught]
    assert space.smallest_fraction() <= 0.75


def test_make_plan_fills_every_field_and_round_trips() -> None:
    space = space_for("residual", "params=0.6", round_to=4, nm=(2, 4))
    keep = space.repair({unit.name: 0.5 for unit in space.units})
    plan = space.make_plan(keep, {"layer1.0.conv1": True}, agent="test", episode=3)
    assert plan.model == space.graph.fingerprint
    assert plan.target == {"metric": "params", "fraction": 0.6}
    assert (plan.criterion, plan.round_to) == ("l1", 4)
    assert plan.provenance == {"agent": "test", "episode": 3}
    assert set(plan.units) == {unit.name for unit in space.graph.units}
    for name, unit_plan in plan.units.items():
        unit = space.graph.unit(name)
        assert unit_plan.channels == channels_for(unit_plan.keep_ratio, unit.channels, 4)
        assert unit_plan.nm == ((2, 4) if name == "layer1.0.conv1" else None)
    assert PruningPlan.from_json(json.loads(plan.dumps())) == plan
    validate_plan(plan, space.graph)


def test_make_plan_tightens_a_plan_that_rounding_pushes_over_budget() -> None:
    model, x, graph = model_and_graph("lenet")
    keep = {"conv1": 0.4, "conv2": 0.4, "fc1": 0.4}
    exact_flops, _ = _CostModel(graph).cost(keep)  # before rounding to multiples of 4
    exact = exact_flops / graph.dense_flops
    space = SearchSpace.build(model, x, f"flops={exact:.6f}", graph=graph, round_to=4)
    assert space.cost_fraction(keep) > space.target.fraction  # rounding goes over
    plan = space.make_plan(keep)
    assert plan_resource(space, plan) <= space.target.fraction
    assert all(plan.units[name].keep_ratio <= keep[name] for name in keep)


def test_real_flops_of_applied_plans_meet_the_budget() -> None:
    """apply_plan + fvcore agree with the prediction (fvcore's pooling counts are unscaled)."""
    rng = random.Random(2)
    for name in ("lenet", "residual", "depthwise", "transformer", "resnet20"):
        model, x, graph = model_and_graph(name)
        space = space_for(name, feasible_target(name, "flops", 0.3))
        plan = space.make_plan(random_episode(space, rng))
        pruned = apply_plan(model, plan, x, graph=graph)
        assert count_flops(pruned, x) <= space.target.fraction * graph.dense_flops * 1.02


def test_nm_choices_only_change_latency() -> None:
    space = space_for("residual", "flops=0.8", nm=(2, 4))
    keep = {unit.name: 0.6 for unit in space.units}
    every = dict.fromkeys(space.names, True)
    assert space.cost_fraction(keep, every) == space.cost_fraction(keep)
    latency = space_for("residual", "latency=0.9", nm=(2, 4), round_to=4)
    assert latency.cost_fraction(keep, every) < latency.cost_fraction(keep)
    # 0.6 of 16 channels is 10 without rounding: 2:4 cannot hold the next layers' inputs
    unrounded = space_for("residual", "latency=0.9", nm=(2, 4))
    assert unrounded.cost_fraction(keep, every) == unrounded.cost_fraction(keep)
    assert all(unit.nm is None for unit in unrounded.make_plan(keep, every).units.values())


def test_action_keep_mapping_round_trips() -> None:
    space = space_for("lenet", "flops=0.5")
    for action in np.linspace(0, 1, 11):
        assert space.keep_to_action(space.action_to_keep(action)) == pytest.approx(action)
    assert space.action_to_keep(-1.0) == space.lower_bound
    assert space.action_to_keep(2.0) == 1.0


def test_latency_calibration_follows_the_median_measured_over_estimated() -> None:
    space = space_for("resnet20", feasible_target("resnet20", "latency", 0.5))
    plan = space.make_plan(space.repair({name: 0.8 for name in space.names}))
    keep = {name: unit.keep_ratio for name, unit in plan.units.items()}
    estimated = space.cost_fraction(keep)
    for measured in (1.1, 1.3, 1.2):  # the device runs such plans 10-30% slower than estimated
        scale = space.calibrate_latency(plan, measured * estimated)
    assert scale == pytest.approx(1.2)
    assert space.cost_fraction(keep) == pytest.approx(1.2 * estimated)
    again = space.make_plan(space.repair({name: 0.8 for name in space.names}))
    assert space.fits({n: u.keep_ratio for n, u in again.units.items()})  # re-aimed, in budget


def test_latency_calibration_never_makes_the_budget_unreachable() -> None:
    """Wild measurements (a loaded machine) cap the scale: every later ask still fits."""
    space = space_for("resnet20", feasible_target("resnet20", "latency", 0.2))
    plan = space.make_plan(space.repair({name: 0.5 for name in space.names}))
    for _ in range(3):
        space.calibrate_latency(plan, 5.0)  # measured at 5x the dense latency
    assert space.smallest_fraction() <= space.target.fraction
    fitted = space.make_plan(space.repair({name: 1.0 for name in space.names}))
    assert space.fits({n: u.keep_ratio for n, u in fitted.units.items()})


@pytest.mark.parametrize("block", [1, 8])
def test_a_blocked_table_prices_channels_by_the_block_and_plans_keep_what_was_asked(
    block: int,
) -> None:
    """With blocks of 8, 9 kept channels of 16 are estimated like 16; plans keep the counts
    asked (measured, growing 6/13/27 to 8/16/32 costs latency)."""
    _, _, graph = model_and_graph("resnet20")
    table = replace(LatencyTable.synthetic(graph), fit=(0.2, 0.8), block=block)
    space = space_for("resnet20", "latency=0.9", latency_table=table)
    conv1 = graph.unit("conv1").channels  # 16, the stem's unit
    nine, sixteen = (space.cost_fraction({"conv1": c / conv1}) for c in (9, 16))
    assert (nine == sixteen) == (block == 8)
    keep = {name: 0.3 for name in space.names}  # 16 -> 5, 32 -> 10, 64 -> 19 channels
    plan = space.make_plan(keep)
    asked = space.channels(keep)
    assert {name: unit.channels for name, unit in plan.units.items()} == asked
    validate_plan(plan, graph)  # raises on a plan the model cannot take


# ---------------------------------------------------------------------------------------------
# layer skipping
# ---------------------------------------------------------------------------------------------


def test_skipped_blocks_leave_the_cost_and_the_channels_fill_what_they_free() -> None:
    """FLOPs of a plan with skips, predicted and counted by fvcore on the applied model, meet
    the budget; and the channels kept are more than without the skips."""
    model, x, graph = model_and_graph("resnet20")
    space = space_for("resnet20", "flops=0.4", skip_blocks=True)
    assert space.skippable == graph.skippable
    skip = ["layer3.2", "layer1.1"]  # out of order: plans list them in model order
    plain = space.make_plan(space.repair({}))
    plan = space.make_plan(space.repair({}, skip=skip), skip=skip)
    assert plan.skip == ("layer1.1", "layer3.2")
    validate_plan(plan, graph)
    assert space.predicted({}, skip=skip)["flops"] == graph.predict({}, skip).flops
    counted = count_flops(apply_plan(model, plan, x, graph=graph), x)
    assert counted <= space.target.fraction * graph.dense_flops * 1.02
    assert counted >= 0.95 * space.target.fraction * graph.dense_flops  # the budget is used
    searched = [name for name in space.names if name not in ("layer1.1.conv1", "layer3.2.conv1")]
    assert all(plan.units[n].channels >= plain.units[n].channels for n in searched)
    assert sum(plan.units[n].channels for n in searched) > sum(
        plain.units[n].channels for n in searched
    )


def test_units_inside_a_skipped_block_are_recorded_dense() -> None:
    space = space_for("resnet20", "flops=0.5", skip_blocks=True)
    plan = space.make_plan(dict.fromkeys(space.names, 0.3), skip=["layer2.1"], fit=False)
    assert plan.units["layer2.1.conv1"].keep_ratio == 1.0  # nothing of it is left to cut
    assert plan.units["layer2.2.conv1"].keep_ratio == pytest.approx(0.3, abs=0.05)


def test_a_skip_lowers_a_latency_estimate_without_kernels() -> None:
    space = space_for("resnet20", "latency=0.6", skip_blocks=True)
    assert space.cost_fraction({}, skip=["layer1.0"]) < space.cost_fraction({}) == 1.0
    plan = space.make_plan(space.repair({}, skip=["layer1.0"]), skip=["layer1.0"])
    assert space.fits({n: u.keep_ratio for n, u in plan.units.items()}, skip=plan.skip)


def test_bad_skips_are_refused_with_the_blocks_on_offer() -> None:
    with pytest.raises(ConfigError, match="no residual block that can be replaced"):
        space_for("lenet", "flops=0.5", skip_blocks=True)
    space = space_for("resnet20", "flops=0.5", skip_blocks=True)
    with pytest.raises(ConfigError, match=r"'layer1\.3' cannot be skipped\. Did you mean"):
        space.make_plan({}, skip=["layer1.3"])
    with pytest.raises(ConfigError, match="'layer2.0' cannot .* the output has the input's"):
        space.repair({}, skip=["layer2.0"])
    assert space_for("resnet20", "flops=0.5").skippable == ()


@pytest.mark.parametrize("target", ["flops=0.9", "params=0.9", "latency=0.9"])
def test_a_skip_never_raises_the_cost(target: str) -> None:
    """Whatever the widths, a plan that also skips a block is estimated no dearer (a table
    without a fit prices a skip only roughly: the block run at the lower bound bounds it)."""
    space = space_for("resnet20", target, skip_blocks=True)
    rng = random.Random(0)
    for _ in range(30):
        keep = {name: rng.uniform(space.lower_bound, 1.0) for name in space.names}
        skip = [block for block in space.skippable if rng.random() < 0.4]
        extra = rng.choice(space.skippable)
        with_extra = space.cost_fraction(keep, skip=[*skip, extra])
        assert with_extra <= space.cost_fraction(keep, skip=skip) + 1e-12
    lowest = dict.fromkeys(space.names, space.lower_bound)
    assert space.cost_fraction(lowest, skip=space.skippable) <= space.smallest_fraction()
