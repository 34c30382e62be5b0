"""Choosing the plan a search delivers: re-score its best plans, aim the pick by measurement.

A search scores every plan with a short proxy (adaptive BN and a few fine-tune steps) and holds
it to the budget through an estimate (a cost model, or a latency table calibrated on the plans
measured so far). Both are noisy where the search decides: among many plans at the edge of the
budget, the one that looks most accurate is often the one the proxy favoured by luck, and the
estimate's error leaves plans measured a few percent under (or over) the target. Two steps
after the search answer these:

* :func:`rescore` evaluates the ``k`` best plans again with a longer fine-tune (the ranking of
  resnet20 plans on Fashion-MNIST against their 200-step accuracy went from Spearman 0.69 at
  10 steps to 0.92 at 100, ``experiments/results/2026-12-02-vm-proxy-ranking.md``), and
  :func:`best_rescored` picks by that score;
* :func:`aim` sizes the chosen plan by measurement, as Torch-Pruning's users bisect a global
  pruning ratio on measured latency: its removed fractions are scaled by one factor
  (:meth:`~amc.space.SearchSpace.scaled`, the plan's shape kept) and the factor is bisected on
  the measured latency ratio, so the plan uses the budget the estimate left unspent, or
  returns what it overspent.

Example:
    >>> results = rescore(workload, plans[:4], steps=100)
    >>> plan = best_rescored(plans[:4], results)
    >>> aimed = aim(space, plan, latency_meter(workload))
    >>> aimed.ratio <= space.target.fraction
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from amc.evaluate import EvalResult, Workload
from amc.measure import interleaved_ratio, torch_threads
from amc.plan import PruningPlan
from amc.prune import apply_plan
from amc.space import SearchSpace

CONFIRM_ROUNDS = 3  # an aim re-reads at most this many times ``confirm`` plans
AIM_STEPS = 8  # bisection steps: the factor's interval shrinks 256-fold (Torch-Pruning users: ~10)


def rescore(
    workload: Workload,
    plans: Sequence[PruningPlan],
    steps: int,
    held_out: Dataset | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[EvalResult]:
    """Evaluate ``plans`` again, each fine-tuned ``steps`` steps (otherwise as the search did:
    the same adaptive BN, learning rate, batch size, data order and held-out batches).
    ``on_step("rescore")`` is called after each plan (a progress display's hook).

    ``held_out``: score them on these samples instead of the search's held-out ones. The
    plans re-scored are the few the search ranked best, often a point or less apart, and on
    1000 samples one accuracy's standard error is about a point: a larger set ranks them
    with less luck (the search's own samples may be among them)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    longer = workload.with_finetune(steps)
    if held_out is not None:
        longer = longer.with_held_out(held_out)
    results = []
    for plan in plans:
        results.append(longer.evaluate(plan))
        if on_step is not None:
            on_step("rescore")
    return results


def best_rescored(plans: Sequence[PruningPlan], results: Sequence[EvalResult]) -> PruningPlan:
    """The plan whose re-scored accuracy is highest (failed evaluations rank last; ties go to
    the earlier plan, the one the search ranked higher)."""
    if not plans or len(plans) != len(results):
        raise ValueError(f"Expected as many results as plans (>= 1), got {len(plans)} plans "
                         f"and {len(results)} results.")  # fmt: skip
    return plans[_best_index(results)]


def _best_index(results: Sequence[EvalResult]) -> int:
    def score(index: int) -> float:
        accuracy = results[index].accuracy
        return float("-inf") if results[index].status == "failed" or accuracy is None else accuracy

    return max(range(len(results)), key=lambda index: (score(index), -index))


@dataclass
class Choice:
    """What :func:`choose` picked: the candidate's index, the plan to deliver (aimed where a
    meter was given), the re-scores (one per candidate, empty if not re-scored), the aims
    (candidate index -> :class:`Aimed`: with ``rank_steps`` the quick ones the candidates
    were re-scored at) and the aim of the plan delivered (``delivered``: the winner's entry
    of ``aimed``, or with ``rank_steps`` that aim carried on in full; None without a meter)."""

    index: int
    plan: PruningPlan
    rescored: list[EvalResult] = field(default_factory=list)
    aimed: dict[int, Aimed] = field(default_factory=dict)
    delivered: Aimed | None = None


def choose(
    workload: Workload,
    space: SearchSpace,
    plans: Sequence[PruningPlan],
    *,
    rescore_steps: int | None = None,
    held_out: Dataset | None = None,
    meter: Callable[[PruningPlan], float] | None = None,
    aim_steps: int = AIM_STEPS,
    aim_confirm: int = 0,
    aim_first: bool = True,
    aim_margin: float = 0.0,
    rank_steps: int | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Choice:
    """The plan to deliver among ``plans`` (the search's best first).

    With ``rescore_steps`` (and more than one plan) they are re-scored (:func:`rescore`) and
    the most accurate wins; else the first does. With ``meter`` the winner is sized by
    measurement (:func:`aim`). With both and ``aim_first``, every candidate is aimed BEFORE
    the re-score, so they are ranked at the size each will be delivered at: a plan the search
    measured under the target grows in the aim and one measured over it shrinks, so ranked as
    searched the second kind's accuracy is counted before it is paid for (on the project's
    VM, tpe's re-scored pick in one seed had its removed fractions scaled by 1.12 to fit and
    finished 4.5 points under the uniform plan, ``experiments/results/2026-12-07-vm-steady.md``).
    It costs one aim per candidate instead of one. A candidate whose aim found no size
    measured under the target (:attr:`Aimed.fits` false) is delivered only if none fits.

    ``rank_steps``: with ``aim_first``, the candidates are ranked after a quick aim of this
    many bisection steps (no growing of units, no re-reads), and only the winner's aim goes
    on, from the readings it has, to ``aim_steps``, the growing and ``aim_confirm``'s
    re-reads (:func:`aim`'s ``known``). ``rank_steps`` 4 sizes every candidate to within a
    sixteenth of its factor's interval, so the ranking is between plans a few channels under
    their delivered size, for a third to a half of a full aim's readings. None: every
    candidate's aim is the full one. ``aim_margin``: :func:`aim`'s ``margin``.
    ``on_step``: called with ``"reading"`` after each latency measurement and ``"rescore"``
    after each re-scored plan (a progress display's hook: the aims and re-scores of a few
    plans take minutes)."""
    if not plans:
        raise ValueError("Expected at least one plan to choose from, got none.")
    if rank_steps is not None and not 0 <= rank_steps <= aim_steps:
        raise ValueError(
            f"rank_steps must be between 0 and aim_steps ({aim_steps}), got {rank_steps}."
        )
    if meter is not None and on_step is not None:
        meter = reporting(meter, on_step)
    aimed: dict[int, Aimed] = {}

    def full_aim(index: int, known: Sequence[tuple[float, float]] = ()) -> Aimed:
        assert meter is not None
        return aim(
            space, plans[index], meter, steps=aim_steps, confirm=aim_confirm, margin=aim_margin,
            known=known,
        )  # fmt: skip

    scored, results, index = list(plans), [], 0
    rescoring = rescore_steps is not None and len(plans) > 1
    quick = rescoring and meter is not None and aim_first and rank_steps is not None
    if rescoring and meter is not None and aim_first:
        for i in range(len(plans)):
            aimed[i] = (
                aim(space, plans[i], meter, steps=rank_steps, margin=aim_margin, fill=False)
                if quick and rank_steps is not None
                else full_aim(i)
            )
        scored = [aimed[i].plan for i in range(len(plans))]
    if rescoring and rescore_steps is not None:
        results = rescore(workload, scored, rescore_steps, held_out, on_step=on_step)
        index = _best_index(results)
        fitting = [i for i in aimed if aimed[i].fits]
        if aimed and fitting and index not in fitting:  # one the aim could not fit ranks last
            index = fitting[_best_index([results[i] for i in fitting])]
    if meter is None:
        return Choice(index, scored[index], results, aimed)
    if quick:
        delivered = full_aim(index, aimed[index].tried)
    else:
        delivered = aimed[index] = aimed.get(index) or full_aim(index)
    return Choice(index, delivered.plan, results, aimed, delivered)


def reporting(
    meter: Callable[[PruningPlan], float], on_step: Callable[[str], None] | None
) -> Callable[[PruningPlan], float]:
    """``meter``, calling ``on_step("reading")`` after each measurement (``meter`` itself
    where ``on_step`` is None)."""
    if on_step is None:
        return meter

    def measure(plan: PruningPlan) -> float:
        ratio = meter(plan)
        on_step("reading")
        return ratio

    return measure


def latency_meter(
    workload: Workload,
    *,
    min_run_time: float | None = None,
    rounds: int | None = None,
    repeats: int = 1,
) -> Callable[[PruningPlan], float]:
    """A measurement for :func:`aim`: the plan's latency over the dense model's, both timed in
    one interleaved run on the workload's device, batch size and threads (by default as long
    as the search's measurements; longer ones read steadier).

    ``repeats``: the median ratio of that many interleaved runs. A burst of a neighbour's work
    that outlasts a run's blocks moves one run's ratio, not the median of three: on the
    project's 2-core VM (mobilenetv2 at batch 32, a plan near half the dense latency) single
    runs strayed up to 6.9% from the median on a quiet stretch, medians of three up to 2.8%;
    on a busy one the readings' std went from 0.041 to 0.025
    (``experiments/results/2026-12-07-vm-aim-repeats.md``)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (interleaved runs per reading), got {repeats}.")
    spec = workload.spec

    def measure(plan: PruningPlan) -> float:
        with torch_threads(spec.threads):
            pruned = apply_plan(
                workload.model, plan, workload.example_inputs, spec.criterion, graph=workload.graph
            ).eval()
        return interleaved_ratio(
            pruned, workload.model, workload.example_inputs, spec.device, repeats=repeats,
            batch_size=spec.latency_batch_size, threads=spec.threads, warmup=spec.latency_warmup,
            min_run_time=min_run_time or spec.latency_min_run_time,
            rounds=rounds or spec.latency_repeats,
        )  # fmt: skip

    return measure


@dataclass
class Aimed:
    """What :func:`aim` found: the plan, its measured ratio and the factor that made it."""

    plan: PruningPlan
    ratio: float
    scale: float
    fits: bool
    target: float  # the ratio aimed at: the space's target less the margin
    tried: list[tuple[float, float]] = field(default_factory=list)  # (scale, measured ratio)
    grown_tried: list[tuple[int, float]] = field(default_factory=list)  # (units, ratio)
    grown: int = 0  # units then given the next larger factor's channels, one by one (_fill)
    rechecked: list[tuple[float, float]] = field(default_factory=list)  # (first, fresh reading)

    def to_json(self) -> dict[str, Any]:
        """What was done, without the plan (the study's ``chosen["aim"]``, the benchmark's)."""
        return {
            "scale": self.scale,
            "ratio": self.ratio,
            "fits": self.fits,
            "tried": [list(pair) for pair in self.tried],
            "grown": self.grown,
            "grown_tried": [list(pair) for pair in self.grown_tried],
            "rechecked": [list(pair) for pair in self.rechecked],
            "target": self.target,
        }


def aim(
    space: SearchSpace,
    plan: PruningPlan,
    measure: Callable[[PruningPlan], float],
    *,
    steps: int = AIM_STEPS,
    confirm: int = 0,
    margin: float = 0.0,
    fill: bool = True,
    known: Sequence[tuple[float, float]] = (),
) -> Aimed:
    """The plan of ``plan``'s shape that measures closest under the space's target.

    The removed fraction of every unit is scaled by one factor ``s`` (``s = 1`` is ``plan``,
    smaller keeps more channels, larger prunes more, down to the lower bound), and ``s`` is
    bisected on ``measure(plan) -> fraction of the dense model``: the smallest factor measured
    at or under ``space.target.fraction`` wins. If even the factor at which every pruned unit
    reaches the lower bound measures over the target, that plan is returned with ``fits``
    False. Then (with ``steps`` > 0) the units to which the next smaller factor, the last one
    measured over the target, gives more channels take them one by one, in model order, and
    the count is bisected on ``measure`` too (:func:`_fill`). The plan's N:M choices are kept;
    channel counts round as the space rounds them, and the bisection stops early once two
    factors give the same channels.

    Args:
        space: the search space the plan was made in (its target, bounds and rounding).
        plan: the chosen plan.
        measure: plan -> its measured cost as a fraction of the dense model's (for latency
            targets :func:`latency_meter`).
        steps: bisection steps after the first measurements.
        confirm: re-read plans before taking one (:func:`_confirm`; after this many
            refusals each step down first measures the plans between, and at most
            ``CONFIRM_ROUNDS`` times this many are re-read): the largest plan measured under
            the target is, among plans near it, the one whose reading came out low, so a
            fresh reading of it is on average higher (the winner's curse); walking down the
            plans read under the target, the first whose fresh reading is also at or under
            it is taken, with that reading as its ratio; when all are refused, plans halfway
            from the smallest refused to the lower bound are measured next.
        margin: aim at ``target * (1 - margin)``, trading that much budget for a plan that
            stays under the target when timed again later. What a plan reads later is spread
            around what the aim read: on the project's VM the benchmark's final run read the
            aimed plans 1-2% higher (``experiments/results/2026-12-07-vm-aimfirst.md``), and
            with a 2% margin still up to 2.4 points of dense higher, so they ended level
            with Torch-Pruning's plans, not under them (``2026-12-07-vm-margin.md``).
        fill: after the bisection, grow units one by one toward the next factor's plan (with
            ``steps`` > 0). A quick aim that only ranks plans can do without it.
        known: (factor, measured ratio) pairs read earlier for this plan at this target and
            margin (an earlier aim's :attr:`Aimed.tried`): a factor among them is taken as
            read instead of measured again. The bisection is deterministic in its readings,
            so an aim with more ``steps`` given a shorter one's ``tried`` retraces it for
            free and goes on from where it stopped.
    """
    if steps < 0 or confirm < 0:
        raise ValueError(
            f"steps must be >= 0 and confirm >= 0, got steps={steps}, confirm={confirm}."
        )
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1) (a fraction of the target), got {margin}.")
    readings: list[tuple[PruningPlan, float]] = []  # every plan measured, with its reading

    def read(candidate: PruningPlan) -> float:
        value = float(measure(candidate))
        readings.append((candidate, value))
        return value

    keep = {name: unit.keep_ratio for name, unit in plan.units.items()}
    nm_choices = {name: unit.nm is not None for name, unit in plan.units.items()}
    target = space.target.fraction * (1.0 - margin)
    tried: list[tuple[float, float]] = []
    made: dict[float, PruningPlan] = {}

    def at(scale: float) -> PruningPlan:
        if scale not in made:
            made[scale] = space.make_plan(
                space.scaled(keep, scale),
                nm_choices,
                fit=False,
                skip=plan.skip,
                **plan.provenance,
            )
        return made[scale]

    earlier = dict(known)

    def measured(scale: float) -> float:
        if scale in earlier:
            ratio = earlier[scale]
            readings.append((at(scale), ratio))
        else:
            ratio = read(at(scale))
        tried.append((scale, ratio))
        return ratio

    ratio = measured(1.0)
    top = space.max_scale(keep)
    if ratio <= target:
        low, high, high_ratio = 0.0, 1.0, ratio  # low (dense) is taken to miss the target
    else:
        top_ratio = measured(top) if top > 1.0 else ratio
        if top_ratio > target:
            return _aimed(at(top), top_ratio, top, False, target, tried)
        low, high, high_ratio = 1.0, top, top_ratio
    for _ in range(steps):
        middle = (low + high) / 2
        if at(middle).key() in (at(low).key(), at(high).key()):
            break  # the channel lattice is resolved: nothing between low and high
        ratio = measured(middle)
        if ratio <= target:
            high, high_ratio = middle, ratio
        else:
            low = middle
    grown: list[tuple[int, float]] = []
    fitted, fitted_ratio, units = at(high), high_ratio, 0
    labels = {at(scale).key(): (scale, 0) for scale, _ in tried}  # plan -> (factor, grown)

    def grow(
        under: PruningPlan, under_ratio: float, over: PruningPlan
    ) -> tuple[PruningPlan, float]:
        """:func:`_fill` from ``under`` toward ``over``: the plan it picks. Each plan it
        reads is labelled with ``under``'s factor and its units grown counted on from
        ``under``'s."""
        scale, base = labels.get(under.key(), (high, 0))
        before, start = len(readings), len(grown)
        best, ratio, _ = _fill(space, under, under_ratio, over, nm_choices, target, read, grown)
        grown[start:] = [(base + count, value) for count, value in grown[start:]]
        for (grown_plan, _), (count, _) in zip(readings[before:], grown[start:], strict=True):
            labels[grown_plan.key()] = (scale, count)
        return best, ratio

    def lower(refused: PruningPlan) -> tuple[PruningPlan, float] | None:
        """The plan halfway from ``refused``'s factor to the lower bound's, measured; None
        where that is the same plan."""
        smaller = (labels.get(refused.key(), (high, 0))[0] + top) / 2
        if at(smaller).key() == refused.key():
            return None
        labels[at(smaller).key()] = (smaller, 0)
        return at(smaller), measured(smaller)

    if steps > 0 and fill:
        fitted, fitted_ratio = grow(fitted, fitted_ratio, at(low))
        high, units = labels[fitted.key()]
    rechecked: list[tuple[float, float]] = []
    if confirm:
        fitted, fitted_ratio = _confirm(
            fitted, fitted_ratio, readings, target, measure, confirm, rechecked,
            refill=grow if steps > 0 and fill else None, lower=lower,
        )  # fmt: skip
        high, units = labels.get(fitted.key(), (high, units))
    fits = fitted_ratio <= target  # False only where every plan re-read came out over
    return _aimed(fitted, fitted_ratio, high, fits, target, tried, grown, units, rechecked)


def _confirm(
    pick: PruningPlan,
    pick_ratio: float,
    readings: list[tuple[PruningPlan, float]],
    target: float,
    measure: Callable[[PruningPlan], float],
    confirm: int,
    rechecked: list[tuple[float, float]],
    refill: Callable[[PruningPlan, float, PruningPlan], object] | None = None,
    lower: Callable[[PruningPlan], tuple[PruningPlan, float] | None] | None = None,
) -> tuple[PruningPlan, float]:
    """Walk down the plans measured under the target (the pick, then the others, highest
    reading first), re-reading each; the first whose fresh reading is at or under the target
    is returned with that reading.

    The next plan down can be a whole step of the bisection below the ones refused (on the
    project's VM, 0.367 of dense after plans read at 0.396 and 0.389 re-read over 0.4, with
    the target 0.4). So after the first ``confirm`` refusals, with ``refill(under,
    under_ratio, over)``, which measures plans between two (appending to ``readings``),
    each step down first measures the plans between the next plan and the smallest one
    refused, and those read under the target come next (largest first). A plan is not taken
    on its one reading while re-reads are left (``CONFIRM_ROUNDS * confirm`` in all): in the
    project's batch-1 benchmark a next plan taken so (read 0.397) read 0.444 in the final
    run, like the two plans above it that had just been refused. When they are spent, the
    next plan not re-read is taken on its one reading. When every plan read under the target
    was re-read and refused, ``lower(smallest refused)`` (a smaller plan, measured; None when
    there is none) supplies the next ones, up to ``CONFIRM_ROUNDS`` of them: a pick that
    started the bisection at its own size has no smaller plan measured. Such a plan is far
    down (halfway to the lower bound), so with ``refill`` the plans between it and the
    smallest one refused are always measured first: in the project's batch-1 benchmark a
    pick read at 0.395 and re-read at 0.435 (target 0.4) was otherwise replaced by the
    lower plan at 0.255 of dense (``experiments/results/2026-12-08-vm-rank4-b1-seed0.md``).
    Failing that, the
    plan whose fresh reading was lowest (then :func:`aim` says it does not fit).
    ``rechecked`` gets (first reading, fresh reading) for every plan re-read."""
    candidates = _under(readings, target, [(pick, pick_ratio)])
    refused: list[tuple[PruningPlan, float]] = []
    smallest = pick  # the smallest plan refused or read over so far
    index = lowered = 0
    far: set[tuple[Any, ...]] = set()  # keys of the plans `lower` supplied
    while len(refused) < CONFIRM_ROUNDS * confirm:
        if index >= len(candidates):
            found = lower(smallest) if lower is not None and lowered < CONFIRM_ROUNDS else None
            if found is None:
                break
            lowered += 1
            if found[1] <= target:
                candidates.append(found)
                far.add(found[0].key())
            else:  # read over at once: the next one is smaller still
                smallest = found[0]
            continue
        if (
            refill is not None
            and refused
            and (len(refused) >= confirm or candidates[index][0].key() in far)
        ):
            before = len(readings)
            refill(candidates[index][0], candidates[index][1], smallest)
            seen = {plan.key() for plan, _ in candidates}
            between = [pair for pair in _under(readings[before:], target, [])
                       if pair[0].key() not in seen]  # fmt: skip
            candidates[index:index] = between
        plan, first = candidates[index]
        fresh = float(measure(plan))
        rechecked.append((first, fresh))
        if fresh <= target:
            return plan, fresh
        refused.append((plan, fresh))
        smallest = plan
        index += 1
    if index < len(candidates):
        return candidates[index]
    return min(refused, key=lambda pair: pair[1])


def _under(
    readings: Sequence[tuple[PruningPlan, float]],
    target: float,
    first: list[tuple[PruningPlan, float]],
) -> list[tuple[PruningPlan, float]]:
    """``first``, then the plans of ``readings`` read at or under ``target`` (each once,
    its first reading), the highest reading first."""
    seen = {plan.key() for plan, _ in first}
    found = list(first)
    for plan, value in sorted(readings, key=lambda pair: -pair[1]):
        if value <= target and plan.key() not in seen:
            seen.add(plan.key())
            found.append((plan, value))
    return found


def _fill(
    space: SearchSpace,
    under: PruningPlan,
    under_ratio: float,
    over: PruningPlan,
    nm_choices: dict[str, bool],
    target: float,
    measure: Callable[[PruningPlan], float],
    tried: list[tuple[int, float]],
) -> tuple[PruningPlan, float, int]:
    """Between the last factor measured under the target and the next one over it, a step of
    the factor can move many units at once (each unit's channels round on their own), and
    measured latency is not smooth in channel counts (kernels change at channel multiples):
    one factor step can jump from 8% under the target to 4% over it. Take the larger plan's
    channels unit by unit instead (in model order) and bisect on how many units take them:
    the plan with the most units grown that measures at or under the target.
    Returns the plan, its measured ratio and how many units grew; ``tried`` gets (units
    grown, measured ratio) for every plan measured."""
    grown = [
        name
        for name, unit in under.units.items()
        if name in over.units and over.units[name].channels != unit.channels
    ]
    if len(grown) < 2:  # one unit or none apart: the factor's bisection resolved it
        return under, under_ratio, 0
    keep = {name: unit.keep_ratio for name, unit in under.units.items()}
    larger = {name: over.units[name].keep_ratio for name in grown}

    def with_first(count: int) -> PruningPlan:
        mixed = {**keep, **{name: larger[name] for name in grown[:count]}}
        return space.make_plan(mixed, nm_choices, fit=False, skip=under.skip, **under.provenance)

    fits, misses = 0, len(grown)  # `over` (every unit grown) measured over the target
    best, best_ratio = under, under_ratio
    while misses - fits > 1:
        middle = (fits + misses) // 2
        plan = with_first(middle)
        ratio = float(measure(plan))
        tried.append((middle, ratio))
        if ratio <= target:
            fits, best, best_ratio = middle, plan, ratio
        else:
            misses = middle
    return best, best_ratio, fits


def _aimed(
    plan: PruningPlan,
    ratio: float,
    scale: float,
    fits: bool,
    target: float,
    tried: list[tuple[float, float]],
    grown_tried: list[tuple[int, float]] | None = None,
    grown: int = 0,
    rechecked: list[tuple[float, float]] | None = None,
) -> Aimed:
    aimed: dict[str, Any] = {"scale": round(scale, 4), "measured": round(ratio, 4)}
    if grown:
        aimed["grown_units"] = grown
    if rechecked:
        aimed["rechecked"] = len(rechecked)
    return Aimed(
        plan.with_provenance(aim=aimed), ratio, scale, fits, target, tried, grown_tried or [],
        grown, rechecked or [],
    )  # fmt: skip
