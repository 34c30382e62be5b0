"""Choosing the delivered plan: re-scoring with a longer fine-tune, aiming by measurement."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from amc.choose import CONFIRM_ROUNDS, _confirm, aim, best_rescored, choose, latency_meter, rescore
from amc.evaluate import EvalResult, TaskSpec, Workload
from amc.latency_table import LatencyTable
from amc.measure import count_flops
from amc.plan import PruningPlan
from amc.prune import apply_plan
from amc.space import SearchSpace
from amc.units import analyze
from tests.tiny_models import ResidualNet

X = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return ResidualNet().eval()


def flops_space(model: torch.nn.Module, fraction: float) -> SearchSpace:
    return SearchSpace.build(model, X, f"flops={fraction}", graph=analyze(model, X))


def measured_flops(model: torch.nn.Module, factor: float = 1.0):  # type: ignore[no-untyped-def]
    """A measurement: the applied plan's counted FLOPs over the dense model's, times
    ``factor`` (a device that runs plans faster, < 1, or slower, > 1, than estimated)."""
    dense = count_flops(model, X)

    def measure(plan: PruningPlan) -> float:
        return factor * count_flops(apply_plan(model, plan, X), X) / dense

    return measure


def shaped_plan(space: SearchSpace) -> PruningPlan:
    """A non-uniform plan (units pruned unequally) that spends the budget as estimated."""
    keep = {
        unit.name: 0.3 + 0.5 * index / len(space.units) for index, unit in enumerate(space.units)
    }
    return space.make_plan(space.repair(keep), agent="test")


def test_scaled_spans_dense_to_the_plan_to_the_lower_bound(model: torch.nn.Module) -> None:
    space = flops_space(model, 0.5)
    keep = {unit.name: 0.6 for unit in space.units}
    assert space.scaled(keep, 1.0) == pytest.approx(keep)
    assert set(space.scaled(keep, 0.0).values()) == {1.0}
    top = space.max_scale(keep)
    assert top == pytest.approx((1 - space.lower_bound) / 0.4)
    assert list(space.scaled(keep, top).values()) == pytest.approx([space.lower_bound] * len(keep))
    assert list(space.scaled(keep, 0.5).values()) == pytest.approx([0.8] * len(keep))


def test_make_plan_without_fit_keeps_an_over_budget_map(model: torch.nn.Module) -> None:
    space = flops_space(model, 0.5)
    keep = {unit.name: 0.95 for unit in space.units}
    assert not space.fits(keep)
    held = space.make_plan(keep)
    loose = space.make_plan(keep, fit=False)
    held_keep = {name: unit.keep_ratio for name, unit in held.units.items()}
    assert space.fits(held_keep)
    assert {n: u.keep_ratio for n, u in loose.units.items() if n in keep} == pytest.approx(keep)


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_aim_sizes_the_plan_to_the_measured_target_keeping_its_shape(
    model: torch.nn.Module, factor: float
) -> None:
    space = flops_space(model, 0.5)
    plan = shaped_plan(space)
    measure = measured_flops(model, factor)
    aimed = aim(space, plan, measure, steps=12)
    assert aimed.fits and aimed.ratio <= 0.5
    assert aimed.ratio == pytest.approx(measure(aimed.plan))
    assert aimed.plan.provenance["agent"] == "test"
    assert aimed.plan.provenance["aim"]["scale"] == pytest.approx(aimed.scale, abs=1e-4)
    before, after = (
        {name: unit.channels for name, unit in p.units.items()} for p in (plan, aimed.plan)
    )
    if factor < 1:  # the device is faster than estimated: the plan grows into the budget
        assert aimed.scale < 1 and all(after[n] >= before[n] for n in before)
        assert sum(after.values()) > sum(before.values())
    else:  # slower: the plan shrinks until it measures within the target
        assert aimed.scale > 1 and all(after[n] <= before[n] for n in before)
        assert measure(plan) > 0.5
    # the shape is kept: a unit pruned harder than another before stays so
    keeps = [(plan.units[n].keep_ratio, aimed.plan.units[n].keep_ratio) for n in before]
    for (a0, a1), (b0, b1) in zip(keeps, keeps[1:], strict=False):
        if a0 < b0:
            assert a1 <= b1 + 1e-9
    # the smallest factor measured within the target won: no factor tried below it fitted
    assert all(ratio > 0.5 for scale, ratio in aimed.tried if scale < aimed.scale)


def test_aim_keeps_the_blocks_a_plan_skips(model: torch.nn.Module) -> None:
    graph = analyze(model, X)
    space = SearchSpace.build(model, X, "flops=0.5", graph=graph, skip_blocks=True)
    skip = graph.skippable[:1]
    plan = space.make_plan(space.repair({}, skip=skip), skip=skip, agent="test")
    measure = measured_flops(model, 0.7)  # the device runs plans faster than estimated
    aimed = aim(space, plan, measure, steps=12)
    assert aimed.plan.skip == plan.skip and aimed.fits and aimed.ratio <= 0.5
    assert aimed.ratio == pytest.approx(measure(aimed.plan))
    grown = [
        name
        for name, unit in aimed.plan.units.items()
        if unit.channels > plan.units[name].channels
    ]
    assert grown  # the channels grew into the budget; the skip stayed


class FirstUnitScores:
    """A stand-in workload whose re-score reads a plan's first unit's keep ratio as its
    accuracy, and records the plans it scored and the steps it was asked for."""

    def __init__(self) -> None:
        self.scored: list[PruningPlan] = []
        self.steps: list[int] = []

    def with_finetune(self, steps: int) -> FirstUnitScores:
        self.steps.append(steps)
        return self

    def evaluate(self, plan: PruningPlan) -> EvalResult:
        self.scored.append(plan)
        return EvalResult(status="ok", accuracy=next(iter(plan.units.values())).keep_ratio)


def test_choose_ranks_the_candidates_at_the_size_each_is_aimed_to(
    model: torch.nn.Module,
) -> None:
    """A keeps 0.9 everywhere and measures over the target; B is shaped (its first unit
    keeps 0.8) and spends the budget as measured. Re-scored as searched A wins on its first
    unit's 0.9 and is then shrunk to fit; aimed first, A's first unit is left with less than
    B's and B wins."""
    space = flops_space(model, 0.5)
    plan_a = space.make_plan({unit.name: 0.9 for unit in space.units}, fit=False)
    keep_b = {u.name: 0.8 - 0.5 * i / len(space.units) for i, u in enumerate(space.units)}
    plan_b = space.make_plan(space.repair(keep_b))
    measure = measured_flops(model)
    assert measure(plan_a) > 0.5 >= measure(plan_b)

    late = FirstUnitScores()
    picked = choose(late, space, [plan_a, plan_b], rescore_steps=7, meter=measure,  # type: ignore[arg-type]
                    aim_steps=6, aim_first=False)  # fmt: skip
    assert picked.index == 0 and set(picked.aimed) == {0}  # only the winner aimed
    assert late.scored == [plan_a, plan_b] and late.steps == [7]
    assert [r.accuracy for r in picked.rescored] == [
        0.9,
        plan_b.units[space.units[0].name].keep_ratio,
    ]
    assert picked.plan == picked.aimed[0].plan and measure(picked.plan) <= 0.5

    first = FirstUnitScores()
    picked = choose(first, space, [plan_a, plan_b], rescore_steps=7, meter=measure,  # type: ignore[arg-type]
                    aim_steps=6)  # fmt: skip
    assert set(picked.aimed) == {0, 1}
    assert first.scored == [picked.aimed[0].plan, picked.aimed[1].plan]  # scored as aimed
    assert picked.index == 1 and picked.plan == picked.aimed[1].plan
    assert all(aimed.ratio <= 0.5 for aimed in picked.aimed.values())

    # a plan the aim cannot fit under the target (here: any plan of A's, measured over it
    # whatever its size) is delivered only if none fits, however well it re-scores
    tagged = plan_a.with_provenance(agent="never fits")

    def stubborn(plan: PruningPlan) -> float:
        return 0.9 if plan.provenance.get("agent") == "never fits" else measure(plan)

    scores = FirstUnitScores()
    scores.evaluate = lambda plan: EvalResult(  # type: ignore[method-assign]
        status="ok", accuracy=0.9 if plan.provenance.get("agent") == "never fits" else 0.5
    )
    picked = choose(scores, space, [tagged, plan_b], rescore_steps=7, meter=stubborn,  # type: ignore[arg-type]
                    aim_steps=6)  # fmt: skip
    assert not picked.aimed[0].fits and picked.aimed[1].fits
    assert [r.accuracy for r in picked.rescored] == [0.9, 0.5]
    assert picked.index == 1
    alone = choose(scores, space, [tagged, tagged], rescore_steps=7, meter=stubborn)  # type: ignore[arg-type]
    assert alone.index == 0 and not alone.aimed[0].fits  # none fits: the best re-scored

    # no re-score: the first plan, aimed; no meter: the plan as given
    alone = choose(first, space, [plan_a, plan_b], meter=measure, aim_steps=6)  # type: ignore[arg-type]
    assert (alone.index, set(alone.aimed), alone.rescored) == (0, {0}, [])
    plain = choose(FirstUnitScores(), space, [plan_a, plan_b], rescore_steps=3)  # type: ignore[arg-type]
    assert (plain.index, plain.plan, plain.aimed) == (0, plan_a, {})
    with pytest.raises(ValueError, match="at least one plan"):
        choose(first, space, [])  # type: ignore[arg-type]


def counting(measure):  # type: ignore[no-untyped-def]
    """``measure``, and the list of plans it was asked to read."""
    taken: list[PruningPlan] = []

    def counted(plan: PruningPlan) -> float:
        taken.append(plan)
        return float(measure(plan))

    return counted, taken


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_an_aim_carried_on_from_a_quick_one_reads_only_what_is_new(
    model: torch.nn.Module, factor: float
) -> None:
    """``known``: an aim given a shorter one's readings retraces them without measuring and
    ends where the full aim would; ``fill=False`` grows no units."""
    space = flops_space(model, 0.5)
    plan = shaped_plan(space)
    full_meter, full_taken = counting(measured_flops(model, factor))
    full = aim(space, plan, full_meter, steps=6, confirm=1)
    quick_meter, quick_taken = counting(measured_flops(model, factor))
    quick = aim(space, plan, quick_meter, steps=2, fill=False)
    assert quick.grown == 0 and quick.grown_tried == [] and quick.rechecked == []
    assert len(quick_taken) == len(quick.tried) < len(full_taken)
    assert quick.tried == full.tried[: len(quick.tried)]  # the same path, shorter
    on_meter, on_taken = counting(measured_flops(model, factor))
    carried = aim(space, plan, on_meter, steps=6, confirm=1, known=quick.tried)
    assert carried.plan.key() == full.plan.key() and carried.ratio == full.ratio
    assert carried.tried == full.tried and carried.grown == full.grown
    assert len(on_taken) == len(full_taken) - len(quick_taken)  # nothing read twice


def test_choose_ranks_on_quick_aims_and_aims_only_the_winner_in_full(
    model: torch.nn.Module,
) -> None:
    """``rank_steps``: the candidates are re-scored at the size a quick aim gives them, and
    only the winner's aim goes on, to the plan a full aim of it delivers, for fewer readings
    than a full aim of every candidate."""
    space = flops_space(model, 0.5)
    plans = [space.make_plan({unit.name: keep for unit in space.units}, fit=False)
             for keep in (0.9, 0.6, 0.45)]  # fmt: skip
    plans.append(shaped_plan(space))
    meter, taken = counting(measured_flops(model, 0.8))
    scores = FirstUnitScores()
    picked = choose(scores, space, plans, rescore_steps=7, meter=meter, aim_steps=6,  # type: ignore[arg-type]
                    aim_confirm=1, rank_steps=2)  # fmt: skip
    quick = len(taken)
    assert set(picked.aimed) == set(range(len(plans)))
    assert scores.scored == [picked.aimed[i].plan for i in range(len(plans))]  # at quick size
    assert all(found.grown == 0 and found.rechecked == [] for found in picked.aimed.values())
    assert all(len(found.tried) <= 4 for found in picked.aimed.values())  # 1.0, top, 2 steps
    delivered = picked.delivered
    assert delivered is not None and picked.plan == delivered.plan
    alone = aim(space, plans[picked.index], measured_flops(model, 0.8), steps=6, confirm=1)
    assert delivered.plan.key() == alone.plan.key() and delivered.tried == alone.tried
    assert delivered.tried[: len(picked.aimed[picked.index].tried)] == (
        picked.aimed[picked.index].tried
    )
    meter, taken = counting(measured_flops(model, 0.8))
    full = choose(FirstUnitScores(), space, plans, rescore_steps=7, meter=meter, aim_steps=6,  # type: ignore[arg-type]
                  aim_confirm=1)  # fmt: skip
    assert full.delivered is full.aimed[full.index]
    assert quick < len(taken)
    with pytest.raises(ValueError, match="rank_steps must be between 0 and aim_steps"):
        choose(scores, space, plans, rescore_steps=7, meter=meter, aim_steps=3, rank_steps=4)  # type: ignore[arg-type]


def test_choose_reports_each_reading_and_each_re_score(model: torch.nn.Module) -> None:
    """``on_step`` (a progress display's hook) hears of every measurement the aims take and
    every plan re-scored, as they happen."""
    space = flops_space(model, 0.5)
    plans = [space.make_plan({unit.name: keep for unit in space.units}, fit=False)
             for keep in (0.9, 0.6)]  # fmt: skip
    measure, taken = measured_flops(model), []

    def counted(plan: PruningPlan) -> float:
        taken.append(plan)
        return measure(plan)

    steps: list[str] = []

    class Logged(FirstUnitScores):
        def evaluate(self, plan: PruningPlan) -> EvalResult:
            steps.append("evaluated")
            return super().evaluate(plan)

    choose(Logged(), space, plans, rescore_steps=7, meter=counted, aim_steps=6,  # type: ignore[arg-type]
           on_step=steps.append)  # fmt: skip
    assert len(taken) > len(plans)  # the aims measured more than one plan each
    assert steps.count("reading") == len(taken)
    assert steps[-4:] == ["evaluated", "rescore", "evaluated", "rescore"]  # after each plan
    assert "reading" not in steps[steps.index("evaluated") :]  # aimed first, then re-scored


def test_aim_grows_units_one_by_one_where_a_factor_step_moves_many(
    model: torch.nn.Module,
) -> None:
    """One bisection step leaves a coarse bracket: the units between its two plans grow one at
    a time (their count bisected on the measurement) into the budget the factor left."""
    space = flops_space(model, 0.5)
    plan = shaped_plan(space)
    measure = measured_flops(model, 0.7)
    aimed = aim(space, plan, measure, steps=1)
    keep = {name: unit.keep_ratio for name, unit in plan.units.items()}
    by_factor = space.make_plan(space.scaled(keep, aimed.scale), fit=False)
    over = max((scale for scale, ratio in aimed.tried if ratio > 0.5), default=0.0)
    larger = space.make_plan(space.scaled(keep, over), fit=False)  # the next factor: over
    assert aimed.fits and aimed.grown >= 1 and aimed.grown_tried
    assert aimed.ratio <= 0.5 and aimed.ratio == pytest.approx(measure(aimed.plan))
    assert aimed.ratio > measure(by_factor)  # closer to the target than the factor alone got
    assert aimed.plan.provenance["aim"]["grown_units"] == aimed.grown
    for name, unit in aimed.plan.units.items():  # each unit as one of the two plans has it
        assert unit.channels in (by_factor.units[name].channels, larger.units[name].channels)
    grown = [n for n, u in aimed.plan.units.items() if u.channels != by_factor.units[n].channels]
    assert len(grown) == aimed.grown
    assert [count for count, _ in aimed.grown_tried][0] >= 1
    # no fill without bisection steps: steps=0 measures the plan (and its top) only
    assert aim(space, plan, measure, steps=0).grown == 0


def lucky_first(model: torch.nn.Module, luck: float):  # type: ignore[no-untyped-def]
    """A meter whose first reading of each plan comes out ``luck`` times its FLOPs ratio
    (a reading that happened to run fast), and every later one true."""
    true, seen = measured_flops(model), set()

    def measure(plan: PruningPlan) -> float:
        first = plan.key() not in seen
        seen.add(plan.key())
        return (luck if first else 1.0) * true(plan)

    return measure


def test_aim_confirms_its_pick_with_a_fresh_reading(model: torch.nn.Module) -> None:
    """The largest plan read under the target is the one whose reading came out low (the
    winner's curse): without a fresh reading it lands over the target in truth."""
    space, true = flops_space(model, 0.5), measured_flops(model)
    plan = shaped_plan(space)
    blind = aim(space, plan, lucky_first(model, 0.92))
    assert not blind.rechecked and 0.5 < true(blind.plan) <= 0.5 / 0.92

    sure = aim(space, plan, lucky_first(model, 0.92), confirm=20)
    assert true(sure.plan) <= 0.5 and sure.ratio == pytest.approx(true(sure.plan))
    assert sure.rechecked[0][0] == pytest.approx(blind.ratio)  # the blind pick, re-read first
    assert all(first <= 0.5 for first, _ in sure.rechecked)
    assert sure.rechecked[-1][1] <= 0.5  # the last one re-read is taken
    assert sure.plan.provenance["aim"]["rechecked"] == len(sure.rechecked)
    # an honest meter confirms the pick at once: one extra reading, the same plan
    honest = aim(space, plan, measured_flops(model), confirm=2)
    assert len(honest.rechecked) == 1
    assert honest.plan.key() == aim(space, plan, measured_flops(model)).plan.key()


def test_aim_re_reads_the_next_plan_down_when_the_pick_does_not_confirm(
    model: torch.nn.Module,
) -> None:
    space, true = flops_space(model, 0.5), measured_flops(model)
    once = aim(space, shaped_plan(space), lucky_first(model, 0.92), confirm=1)
    assert len(once.rechecked) >= 2 and once.rechecked[0][1] > 0.5  # the pick refused
    assert all(fresh > 0.5 for _, fresh in once.rechecked[:-1])
    assert once.ratio == once.rechecked[-1][1] <= 0.5  # taken on its fresh reading
    assert once.fits and true(once.plan) <= 0.5

    read: set[tuple[object, ...]] = set()

    def under_then_over(plan: PruningPlan) -> float:  # every plan re-reads over the target
        if plan.key() in read:
            return 0.6
        read.add(plan.key())
        return 0.45

    none = aim(space, shaped_plan(space), under_then_over, confirm=100)
    assert [fresh for _, fresh in none.rechecked] == [0.6] * len(read)  # every plan re-read
    assert not none.fits and none.ratio == 0.6


def even_plans(
    space: SearchSpace, ratios: dict[float, float]
) -> tuple[dict[float, PruningPlan], dict[tuple[object, ...], float]]:
    """Plans keeping the same fraction of every unit, by fraction, and a meter's true ratio
    for each (``ratios``: fraction kept -> ratio), by plan key."""
    plans = {
        keep: space.make_plan({unit.name: keep for unit in space.units}, fit=False)
        for keep in ratios
    }
    return plans, {plans[keep].key(): ratio for keep, ratio in ratios.items()}


def test_confirm_measures_the_plans_between_before_dropping_a_step(
    model: torch.nn.Module,
) -> None:
    """When the pick and the next plan re-read over the target and the next plan read under
    it is far below, the plans between are measured and one of them, confirmed by a fresh
    reading, is taken; a plan between read under the target only once never is."""
    space = flops_space(model, 0.5)
    plans, true = even_plans(space, {0.5: 0.30, 0.6: 0.40, 0.7: 0.48, 0.8: 0.52, 0.9: 0.53})
    readings = [(plans[0.9], 0.49), (plans[0.8], 0.495), (plans[0.5], 0.30)]  # two read low

    def measure(plan: PruningPlan) -> float:
        return true[plan.key()]

    refills: list[tuple[PruningPlan, float, PruningPlan]] = []

    def refill(under: PruningPlan, under_ratio: float, over: PruningPlan) -> None:
        refills.append((under, under_ratio, over))
        if over == plans[0.8]:  # as a fill would read between 0.5 and 0.8
            readings.extend([(plans[0.7], 0.48), (plans[0.6], 0.40)])

    rechecked: list[tuple[float, float]] = []
    plan, ratio = _confirm(
        plans[0.9], 0.49, readings, 0.5, measure, 2, rechecked, refill=refill
    )  # fmt: skip
    assert (plan, ratio) == (plans[0.7], 0.48)  # not the 0.30 plan a step below
    assert rechecked == [(0.49, 0.53), (0.495, 0.52), (0.48, 0.48)]
    assert refills == [(plans[0.5], 0.30, plans[0.8])]  # between the next one and the refused

    # the largest plan between re-reads over: the next one between is re-read, then taken
    readings[3:] = []
    true[plans[0.7].key()] = 0.51
    rechecked.clear()
    plan, ratio = _confirm(plans[0.9], 0.49, readings, 0.5, measure, 2, rechecked, refill=refill)
    assert (plan, ratio) == (plans[0.6], 0.40)
    # every plan between re-reads over too: the next plan, once its fresh reading confirms it
    readings[3:] = []
    true[plans[0.6].key()] = 0.505
    rechecked.clear()
    refills.clear()
    plan, ratio = _confirm(plans[0.9], 0.49, readings, 0.5, measure, 2, rechecked, refill=refill)
    assert (plan, ratio) == (plans[0.5], 0.30)
    assert [first for first, _ in rechecked] == [0.49, 0.495, 0.48, 0.40, 0.30]
    assert refills[-1] == (plans[0.5], 0.30, plans[0.6])  # below the smallest refused
    # without one, the next plan is re-read at once
    readings[3:] = []
    rechecked.clear()
    assert _confirm(plans[0.9], 0.49, readings, 0.5, measure, 2, rechecked)[0] == plans[0.5]
    assert [first for first, _ in rechecked] == [0.49, 0.495, 0.30]


def test_confirm_never_takes_a_plan_on_one_reading_while_rounds_are_left(
    model: torch.nn.Module,
) -> None:
    """The next plan down read under the target once, by luck like the two refused above it:
    it is re-read and refused too, and the walk goes on down (refilling below it) to a plan
    whose fresh reading confirms it. Only when the re-reads are spent is a plan taken unread."""
    space = flops_space(model, 0.5)
    plans, true = even_plans(space, {0.4: 0.35, 0.5: 0.46, 0.6: 0.53, 0.7: 0.55, 0.8: 0.56})
    readings = [(plans[0.8], 0.49), (plans[0.7], 0.495), (plans[0.6], 0.48), (plans[0.4], 0.35)]

    def measure(plan: PruningPlan) -> float:
        return true[plan.key()]

    def refill(under: PruningPlan, under_ratio: float, over: PruningPlan) -> None:
        if (under, over) == (plans[0.4], plans[0.6]):
            readings.append((plans[0.5], 0.46))

    rechecked: list[tuple[float, float]] = []
    plan, ratio = _confirm(plans[0.8], 0.49, readings, 0.5, measure, 2, rechecked, refill=refill)
    assert (plan, ratio) == (plans[0.5], 0.46)  # the 0.6 plan's one reading was not trusted
    assert [first for first, _ in rechecked] == [0.49, 0.495, 0.48, 0.46]

    # confirm=1: three re-reads in all, spent on the pick, 0.7 and 0.6; the next plan unread
    readings[4:] = []
    rechecked.clear()
    plan, ratio = _confirm(plans[0.8], 0.49, readings, 0.5, measure, 1, rechecked)
    assert len(rechecked) == CONFIRM_ROUNDS == 3
    assert (plan, ratio) == (plans[0.4], 0.35)


@pytest.mark.parametrize("confirm", [1, 2])
def test_aim_measures_smaller_plans_when_its_starting_plan_is_the_only_one_under(
    model: torch.nn.Module, confirm: int
) -> None:
    """The starting plan read just under the target, so the bisection measured only larger
    plans (all over); its fresh reading comes out over too. The walk then measures a plan
    smaller than it, instead of returning it as not fitting, and since that one is far down
    (halfway to the lower bound) grows units toward the refused plan before taking one, after
    the first refusal as after ``confirm`` of them."""
    space, true = flops_space(model, 0.5), measured_flops(model)
    plan = shaped_plan(space)
    start = aim(space, plan, true, steps=0).plan.key()  # the plan at factor 1
    assert true(plan) <= 0.5
    seen: set[tuple[object, ...]] = set()

    def unlucky_start(candidate: PruningPlan) -> float:  # its second reading comes out over
        again = candidate.key() in seen
        seen.add(candidate.key())
        return 0.51 if again and candidate.key() == start else true(candidate)

    aimed = aim(space, plan, unlucky_start, confirm=confirm)
    assert aimed.rechecked[0] == (pytest.approx(true(plan)), 0.51)  # the start, refused
    assert aimed.fits and aimed.plan.key() != start and aimed.scale > 1.0
    assert aimed.ratio == aimed.rechecked[-1][1] == pytest.approx(true(aimed.plan))
    assert aimed.ratio <= 0.5
    [far] = [ratio for scale, ratio in aimed.tried if scale > 1.0]  # a smaller plan measured
    assert aimed.grown_tried and aimed.ratio > far  # units grown back from it


def test_aim_says_when_even_the_lower_bound_measures_over(model: torch.nn.Module) -> None:
    space = flops_space(model, 0.5)
    aimed = aim(space, shaped_plan(space), measured_flops(model, 50.0))
    assert not aimed.fits and aimed.ratio > 0.5
    assert aimed.scale == pytest.approx(space.max_scale(
        {name: unit.keep_ratio for name, unit in shaped_plan(space).units.items()}
    ))  # fmt: skip
    assert len(aimed.tried) == 2


def test_aim_refuses_negative_steps(model: torch.nn.Module) -> None:
    space = flops_space(model, 0.5)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        aim(space, shaped_plan(space), measured_flops(model), steps=-1)
    with pytest.raises(ValueError, match="confirm >= 0"):
        aim(space, shaped_plan(space), measured_flops(model), confirm=-1)
    with pytest.raises(ValueError, match=r"margin must be in \[0, 1\)"):
        aim(space, shaped_plan(space), measured_flops(model), margin=1.0)


def test_aim_with_a_margin_lands_that_much_under_the_target(model: torch.nn.Module) -> None:
    space, measure = flops_space(model, 0.5), measured_flops(model)
    plan = shaped_plan(space)
    plain, under = aim(space, plan, measure), aim(space, plan, measure, margin=0.1)
    assert plain.target == 0.5 and under.target == pytest.approx(0.45)
    assert under.fits and under.ratio <= 0.45 < plain.ratio <= 0.5
    assert under.to_json()["target"] == pytest.approx(0.45)


SPEC = TaskSpec(
    model="tests.tiny_models:LeNet", data="digits", input_shape=(1, 16, 16), data_limit=256,
    batch_size=32, eval_batches=2, finetune_steps=1, latency_warmup=1,
    latency_min_run_time=0.01, latency_repeats=3, threads=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload.from_spec(SPEC).prepare()


def test_rescore_fine_tunes_longer_and_the_best_rescored_plan_wins(workload: Workload) -> None:
    space = SearchSpace.build(
        workload.model, workload.example_inputs, "flops=0.6", graph=workload.graph
    )
    plans = [space.make_plan(space.repair({u.name: k for u in space.units})) for k in (0.3, 0.9)]
    results = rescore(workload, plans, steps=6)
    assert [r.finetune_steps for r in results] == [6, 6]
    assert workload.spec.finetune_steps == 1  # the search's workload is unchanged
    again = rescore(workload, plans[:1], steps=6)[0]
    assert again.accuracy == results[0].accuracy  # the same data order: reproducible
    best = 0 if results[0].accuracy >= results[1].accuracy else 1  # type: ignore[operator]
    assert best_rescored(plans, results) is plans[best]
    failed = replace(results[best], status="failed", accuracy=None, error="boom")
    swapped = [failed if i == best else r for i, r in enumerate(results)]
    assert best_rescored(plans, swapped) is plans[1 - best]
    tie = [results[0], results[0]]
    assert best_rescored(plans, tie) is plans[0]
    with pytest.raises(ValueError, match="as many results as plans"):
        best_rescored(plans, results[:1])
    with pytest.raises(ValueError, match="steps must be >= 0"):
        rescore(workload, plans, steps=-2)


def test_rescore_scores_on_the_held_out_samples_given(workload: Workload) -> None:
    space = SearchSpace.build(
        workload.model, workload.example_inputs, "flops=0.6", graph=workload.graph
    )
    plan = space.make_plan(space.repair({u.name: 0.5 for u in space.units}))
    first = workload.data.test[0][0]  # type: ignore[index]
    inputs = first.unsqueeze(0).repeat(40, 1, 1, 1)
    accuracies = []
    for label in (0, 1):  # one input 40 times, every label the same: all right or all wrong
        held_out = TensorDataset(inputs, torch.full((40,), label))
        (result,) = rescore(workload, [plan], steps=2, held_out=held_out)
        assert result.ok
        accuracies.append(result.accuracy)
    assert set(accuracies) <= {0.0, 1.0} and accuracies != [1.0, 1.0]
    # the search's workload still scores on its own held-out batches
    assert len(workload.eval_loader) == SPEC.eval_batches
    assert workload.dense_metrics()["n"] == SPEC.eval_batches * SPEC.batch_size


def test_latency_meter_times_the_plan_against_the_dense_model(workload: Workload) -> None:
    space = SearchSpace.build(
        workload.model, workload.example_inputs, "latency=0.9", graph=workload.graph,
        latency_table=LatencyTable.synthetic(workload.graph),
    )  # fmt: skip
    small = space.make_plan({u.name: space.lower_bound for u in space.units})
    ratio = latency_meter(workload, min_run_time=0.02, rounds=2)(small)
    assert math.isfinite(ratio) and 0 < ratio < 5


def test_latency_meter_reads_the_median_of_its_repeats(
    workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One run's ratio thrown off by a burst (here 2.0) does not move the median of three."""
    readings = iter([(0.5, 1.0), (2.0, 1.0), (0.45, 0.9)])  # ratios 0.5, 2.0, 0.5
    calls = []

    def interleaved(models, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(models))
        cut, dense = next(readings)
        return SimpleNamespace(median_ms=cut), SimpleNamespace(median_ms=dense)

    monkeypatch.setattr("amc.measure.measure_interleaved", interleaved)
    space = SearchSpace.build(
        workload.model, workload.example_inputs, "latency=0.9", graph=workload.graph,
        latency_table=LatencyTable.synthetic(workload.graph),
    )  # fmt: skip
    plan = space.make_plan({u.name: space.lower_bound for u in space.units})
    assert latency_meter(workload, repeats=3)(plan) == pytest.approx(0.5)
    assert calls == [2, 2, 2]  # three runs, each the plan against the dense model
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        latency_meter(workload, repeats=0)
