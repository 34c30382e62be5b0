"""Iterative pruning: reach a plan over several prune/fine-tune rounds instead of one shot.

Round ``r`` of ``N`` moves every unit ``r/N`` of the way from dense to the plan (see
:func:`round_schedule`), then fine-tunes; the last round lands exactly on the plan, adds its
N:M patterns and skips its blocks, so the result has the structure of a one-shot
:func:`amc.apply_plan` of the same plan and saves and loads like one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from amc.errors import ConfigError, PlanMismatchError
from amc.measure import count_params
from amc.plan import PruningPlan, UnitPlan, validate_plan
from amc.prune import apply_plan, bake_masks
from amc.units import Unit, UnitGraph, analyze

FinetuneFn = Callable[[nn.Module, int, int], object]
"""``finetune_fn(model, steps, round_number)``: fine-tune ``model`` in place for ``steps``."""


@dataclass(frozen=True)
class PruningRound:
    """What one round of :func:`iterative_prune` reaches, keyed by the plan's unit names.

    Attributes:
        number: the round, 1 to ``rounds``.
        channels: unit name -> channels kept after this round.
        sparsity: unit name -> unstructured sparsity after this round.
        nm: whether the plan's N:M patterns are applied (the last round only).
        skip: residual blocks replaced by identity in this round (the last round only).
        steps: fine-tune steps after this round.
    """

    number: int
    channels: Mapping[str, int]
    sparsity: Mapping[str, float]
    nm: bool
    skip: tuple[str, ...]
    steps: int


def split_steps(steps: int, rounds: int) -> list[int]:
    """Split ``steps`` fine-tune steps over ``rounds`` as evenly as integers allow.

    Round ``r`` gets ``steps * r // rounds - steps * (r - 1) // rounds`` steps, so the shares
    differ by at most one, the later rounds get the remainder, and they sum to ``steps``.

    Example:
        >>> split_steps(7, 3)
        [2, 2, 3]
    """
    _check_rounds(rounds)
    return [steps * r // rounds - steps * (r - 1) // rounds for r in range(1, rounds + 1)]


def round_schedule(
    plan: PruningPlan, graph: UnitGraph, rounds: int, steps: int = 0
) -> list[PruningRound]:
    """The per-round targets of :func:`iterative_prune`, linear in the removed fraction.

    Round ``r`` of ``N`` removes the fraction ``r/N`` of what the plan removes from each unit:
    ``channels_r = dense - (dense - planned) * r / N``, rounded to the plan's ``round_to``
    (never below the planned count, which the last round reaches exactly), and unstructured
    sparsity ``sparsity * r / N``. N:M patterns cannot be applied partially (a weight group
    either follows the pattern or not), so they come in the last round, as do skipped blocks.

    Why linear: iterative pruning alternates pruning and retraining so that each cut is small
    enough for the network to recover from (Han et al., "Learning both Weights and Connections
    for Efficient Neural Networks", NeurIPS 2015). Zhu & Gupta's gradual schedule ("To prune,
    or not to prune", 2017) instead removes ``1 - (1 - r/N)^3`` of the total by round ``r``:
    front-loaded, which suits their hundreds of pruning steps spread over a full training run,
    but with the few rounds of ``amc apply`` it is nearly one-shot (with 3 rounds, 70% of the
    cut comes in round 1 and 4% in round 3). The linear schedule gives every round the same
    share of the cut and the same share of the fine-tune budget (:func:`split_steps`).

    Args:
        plan: the plan to reach (validated against ``graph`` by the caller).
        graph: the dense model's :func:`amc.units.analyze` result.
        rounds: number of rounds, at least 1.
        steps: total fine-tune steps to split over the rounds.

    Example:
        >>> [r.channels["conv1"] for r in round_schedule(plan, graph, 3)]  # 16 -> 4
        [12, 8, 4]
    """
    shares = split_steps(steps, rounds)
    final = plan.channels(graph)
    schedule = []
    for number in range(1, rounds + 1):
        fraction = number / rounds
        last = number == rounds
        channels = {
            name: count
            if last
            else _channels_at(graph.unit(name).channels, count, fraction, plan.round_to)
            for name, count in final.items()
        }
        sparsity = {
            name: unit.sparsity if last else unit.sparsity * fraction
            for name, unit in plan.units.items()
        }
        schedule.append(
            PruningRound(
                number=number,
                channels=channels,
                sparsity=sparsity,
                nm=last,
                skip=tuple(plan.skip) if last else (),
                steps=shares[number - 1],
            )
        )
    return schedule


def iterative_prune(
    model: nn.Module,
    plan: PruningPlan,
    example_inputs: Any,
    rounds: int,
    finetune_fn: FinetuneFn | None = None,
    *,
    steps: int = 0,
    criterion: str | None = None,
    batches: Iterable[Any] | None = None,
    graph: UnitGraph | None = None,
    check_model: bool = True,
    progress: bool = False,
) -> nn.Module:
    """Return a new model with ``plan`` reached over ``rounds`` prune/fine-tune rounds.

    Each round prunes the current model to that round's targets (:func:`round_schedule`):
    the units are discovered again on the pruned model and each is cut from its current width
    to the round's count, by the criterion scored on the current (fine-tuned) weights. Masks of
    the previous round are written into the weights first, so its zeros stay zero. Then
    ``finetune_fn(model, steps_of_round, round_number)`` fine-tunes it in place, with
    ``steps`` split evenly over the rounds (:func:`split_steps`). ``rounds=1`` is exactly
    :func:`amc.apply_plan` followed by one fine-tune of all ``steps``.

    The result has the structure of ``apply_plan(model, plan, example_inputs)``: the same
    channel counts, masks (N:M and unstructured, same counts of zeros) and skipped blocks, so
    :func:`amc.save_pruned` and :func:`amc.load_pruned` treat it the same way.

    Args:
        model: the dense model (left untouched).
        plan: the plan to reach (validated against ``model`` first).
        example_inputs: a tensor the model accepts (for tracing).
        rounds: number of prune/fine-tune rounds, at least 1.
        finetune_fn: called after every round; None prunes in rounds without fine-tuning.
        steps: total fine-tune steps, at least one per round when ``finetune_fn`` is given.
        criterion: channel criterion; defaults to the plan's.
        batches: inputs for data-driven criteria (see :func:`amc.apply_plan`).
        graph: the dense model's :func:`amc.units.analyze` result, to skip recomputing it.
        check_model: refuse a plan whose model fingerprint differs.
        progress: show a progress bar over the rounds.

    Raises:
        ConfigError: ``rounds`` below 1, or fewer ``steps`` than rounds to fine-tune.

    Example:
        >>> data = amc.zoo.get_data("digits", input_shape=(1, 32, 32))
        >>> tune = lambda net, steps, number: amc.train.finetune(net, data, steps, seed=number)
        >>> pruned = iterative_prune(model, plan, x, rounds=3, finetune_fn=tune, steps=300)
    """
    _check_rounds(rounds)
    if finetune_fn is None and steps:
        raise ConfigError(f"steps={steps} needs a finetune_fn to fine-tune with.")
    if finetune_fn is not None and steps < rounds:
        raise ConfigError(
            f"{steps} fine-tune steps cannot be split over {rounds} rounds: every round needs "
            f"at least one step; give steps >= {rounds}."
        )
    dense_graph = graph or analyze(model, example_inputs)
    validate_plan(plan, dense_graph, check_model=check_model)
    batch_list = list(batches) if batches is not None else None
    if rounds == 1:
        pruned = apply_plan(
            model,
            plan,
            example_inputs,
            criterion,
            batches=batch_list,
            graph=dense_graph,
            check_model=check_model,
        )
        if finetune_fn is not None:
            finetune_fn(pruned, steps, 1)
        return pruned

    current, current_graph = model, dense_graph
    with tqdm(
        total=rounds, desc="prune rounds", disable=not progress, leave=False, unit="round"
    ) as bar:
        for target in round_schedule(plan, dense_graph, rounds, steps):
            if target.number > 1:
                current = bake_masks(current)
                current_graph = analyze(current, example_inputs)
            matched = _match_units(dense_graph, current_graph, plan.units)
            current = apply_plan(
                current,
                _round_plan(plan, target, matched),
                example_inputs,
                criterion,
                batches=batch_list,
                graph=current_graph,
                check_model=False,
            )
            if finetune_fn is not None:
                finetune_fn(current, target.steps, target.number)
            bar.update(1)
            bar.set_postfix(params=f"{count_params(current):,}")
    return current


def _channels_at(dense: int, final: int, fraction: float, round_to: int) -> int:
    """Channels after removing ``fraction`` of ``dense - final``, rounded to ``round_to``."""
    exact = dense - (dense - final) * fraction
    count = round(exact / round_to) * round_to
    return min(dense, max(final, count))


def _round_plan(
    plan: PruningPlan, target: PruningRound, current: Mapping[str, Unit]
) -> PruningPlan:
    """The plan that takes the current model (units ``current``) to ``target``."""
    units = {}
    for name, unit_plan in plan.units.items():
        unit = current[name]
        channels = target.channels[name]
        units[unit.name] = UnitPlan(
            keep_ratio=channels / unit.channels,
            channels=channels,
            nm=unit_plan.nm if target.nm else None,
            sparsity=target.sparsity[name],
        )
    return PruningPlan(units=units, skip=target.skip, criterion=plan.criterion)


def _match_units(dense: UnitGraph, current: UnitGraph, names: Iterable[str]) -> dict[str, Unit]:
    """Dense unit name -> the same unit of the pruned model: by name, else by its layers."""
    by_name = {unit.name: unit for unit in current.units}
    by_layers = {unit.layers: unit for unit in current.units}
    matched = {}
    lost = []
    for unit in map(dense.unit, names):
        found = by_name.get(unit.name) or by_layers.get(unit.layers)
        if found is None:
            lost.append(unit.name)
        else:
            matched[unit.name] = found
    if lost:
        raise PlanMismatchError(
            f"After a pruning round the model's units no longer match the dense model's: "
            f"{', '.join(lost)} not found among {', '.join(by_name) or 'no units'}. Prune this "
            f"model in one round (rounds=1, CLI --rounds 1)."
        )
    return matched


def _check_rounds(rounds: int) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(
            f"rounds must be a whole number of at least 1 (1 prunes in one shot), got {rounds!r}."
        )
