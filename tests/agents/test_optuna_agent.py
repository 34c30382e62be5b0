"""The Optuna agents after a kill: the trials a lagging checkpoint missed are told again.

``rebuild_replay`` gets every completed trial of the record (as ``amc.experiment`` passes them)
and must leave the agent's study with exactly those completed trials, each once.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from optuna.samplers import NSGAIISampler

from agents import get_agent
from agents.base import Agent, Proposal
from amc.evaluate import EvalResult
from amc.experiment import _told
from amc.search import run_search
from amc.study import SearchRecord
from tests.agents.conftest import (
    FAST_SETTINGS,
    HiddenSensitivity,
    random_sensitivities,
    round_trip,
)

OPTUNA = ["cmaes", "nsga2", "tpe"]


def make(name: str, space: Any, seed: int = 0, **settings: Any) -> Any:
    return get_agent(name, space, seed=seed, **{**FAST_SETTINGS[name], **settings})


def stored(proposal: Proposal) -> Proposal:
    """The proposal as the record gives it back: info and params through JSON."""
    return Proposal(
        plan=proposal.plan,
        params=json.loads(json.dumps(dict(proposal.params))),
        episode=proposal.episode,
        info=json.loads(json.dumps(dict(proposal.info))),
    )


def run(agent: Agent, scorer: HiddenSensitivity, rounds: list[str]) -> list[Any]:
    """One ask/tell per round, ``"xo"`` asking two and failing the first; the completed
    (proposal, result) pairs, as the record holds them."""
    completed = []
    for outcomes in rounds:
        proposals = agent.ask(len(outcomes))
        pairs = zip(proposals, outcomes, strict=True)
        results = [scorer(p.plan) if ok == "o" else None for p, ok in pairs]
        agent.tell(proposals, results)
        completed += [(stored(p), r) for p, r in zip(proposals, results, strict=True) if r]
    return completed


def repeats(agent: Any) -> set[int]:
    """Trials the agent told itself: samples of a plan it already had a result for."""
    return {entry["tell"] for entry in agent._log if entry.get("repeat")}


def complete(agent: Any) -> list[tuple[int, dict[str, Any], list[float]]]:
    """The completed trials that were proposed (repeats of a known plan left out)."""
    trials = agent.study.get_trials(deepcopy=False)
    skip = repeats(agent)
    return [
        (t.number, t.params, t.values)
        for t in trials
        if t.state.name == "COMPLETE" and t.number not in skip
    ]


def trials(agent: Any) -> list[tuple[int, str, dict[str, Any], list[float] | None]]:
    return [(t.number, t.state.name, t.params, t.values) for t in agent.study.get_trials()]


def as_data(agent: Any) -> list[Any]:
    """The completed trials as a multiset of (params, values), whatever their numbers."""
    return sorted(
        (json.dumps(params, sort_keys=True), values) for _, params, values in complete(agent)
    )


def told_over(log: list[dict[str, Any]]) -> int:
    """How many proposed plans an agent's log tells over budget (repeats left out)."""
    return sum(1 for entry in log if entry.get("over_budget") and not entry.get("repeat"))


def signature(proposals: list[Proposal]) -> list[Any]:
    return [(p.episode, dict(p.params), p.plan.to_json()) for p in proposals]


@pytest.fixture
def scorer(lenet_space: Any) -> HiddenSensitivity:
    return HiddenSensitivity(lenet_space, random_sensitivities(lenet_space))


@pytest.mark.parametrize("name", OPTUNA)
def test_trials_told_after_the_checkpoint_are_told_again(
    name: str, lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    original = make(name, lenet_space, seed=1)
    record = run(original, scorer, ["xoo"] * 3)
    pending = original.ask(2)  # asked before the checkpoint, told after it
    checkpoint = round_trip(original.state_dict())
    results = [scorer(p.plan) for p in pending]
    original.tell(pending, results)
    record += [(stored(p), r) for p, r in zip(pending, results, strict=True)]
    record += run(original, scorer, ["o", "o", "x", "o", "o", "x", "x", "o"])
    # k = 6 told before the checkpoint, m = 2 + 5 after it (one at a time, as replayed)

    resumed = make(name, lenet_space, seed=1)
    resumed.load_state_dict(checkpoint)
    assert len(complete(resumed)) == 6
    assert resumed.rebuild_replay(record) == 7
    assert len(complete(resumed)) == 13
    assert trials(resumed) == trials(original)  # same numbers, states, params and values
    if name == "nsga2":
        assert resumed.pareto_front() == original.pareto_front()
        assert len(resumed.pareto_front()[0]["values"]) == 2
    else:
        assert resumed.study.best_trial.params == original.study.best_trial.params
        assert resumed.study.best_value == original.study.best_value

    assert resumed.rebuild_replay(record) == 0  # idempotent
    assert trials(resumed) == trials(original)

    # what was rebuilt is in the state: a restore of it re-executes exactly, with no warning
    again = make(name, lenet_space, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.load_state_dict(round_trip(resumed.state_dict()))
    assert trials(again) == trials(original)
    assert again.rebuild_replay(record) == 0


@pytest.mark.parametrize("name", OPTUNA)
def test_a_parallel_lost_window_comes_back_as_the_same_data(
    name: str, lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    original = make(name, lenet_space, seed=1)
    record = run(original, scorer, ["oxo"] * 2)
    pending = original.ask(3)
    checkpoint = round_trip(original.state_dict())
    results = [None, scorer(pending[1].plan), None]  # the third was in flight at the kill
    original.tell(pending, results)
    record.append((stored(pending[1]), results[1]))
    record += run(original, scorer, ["oo", "xo", "oox", "oo"])  # two and three at a time

    resumed = make(name, lenet_space, seed=1)
    resumed.load_state_dict(checkpoint)
    assert resumed.rebuild_replay(record) == 8
    assert as_data(resumed) == as_data(original)
    assert "RUNNING" not in {state for _, state, _, _ in trials(resumed)}
    assert resumed.rebuild_replay(record) == 0
    rerun = stored(pending[2])  # the plan in flight at the kill, run again: added as data
    result = scorer(rerun.plan)
    resumed.tell([rerun], [result])
    original.tell([rerun], [result])
    assert as_data(resumed) == as_data(original)
    proposals = resumed.ask(4)
    resumed.tell(proposals, [scorer(p.plan) for p in proposals])
    assert len(complete(resumed)) == len(complete(original)) + 4


@pytest.mark.parametrize("name", OPTUNA)
def test_the_sampler_goes_on_where_the_original_was(
    name: str, lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    original = make(name, lenet_space, seed=2)
    record = run(original, scorer, ["xo", "oo"])
    checkpoint = round_trip(original.state_dict())
    record += run(original, scorer, ["o"] * 6)  # one at a time: replayed exactly

    resumed = make(name, lenet_space, seed=2)
    resumed.load_state_dict(checkpoint)
    resumed.rebuild_replay(record)
    for _ in range(3):  # no plan of the lost window is proposed again
        ahead, behind = original.ask(2), resumed.ask(2)
        assert signature(ahead) == signature(behind)
        outcome = [scorer(p.plan) for p in ahead]
        original.tell(ahead, outcome)
        resumed.tell(behind, outcome)
    assert complete(resumed) == complete(original)


@pytest.mark.parametrize("name", OPTUNA)
def test_rebuild_without_a_checkpoint_adds_every_trial(
    name: str, lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    # no uniform first trial: every seed's first draw is its own
    original = make(name, lenet_space, seed=3, start_uniform=False)
    record = run(original, scorer, ["o", "x", "o", "o", "o"])

    fresh = make(name, lenet_space, seed=3, start_uniform=False)  # the sampler replays the asks
    assert fresh.rebuild_replay(record) == 4
    assert trials(fresh) == trials(original)
    assert signature(fresh.ask(2)) == signature(original.ask(2))

    other = make(name, lenet_space, seed=4, start_uniform=False)  # draws differently: as data
    assert other.rebuild_replay(record) == 4
    assert as_data(other) == as_data(original)
    # the one re-ask that drew other params is failed, not left to be told
    assert [state for _, state, _, _ in trials(other)] == ["FAIL"] + ["COMPLETE"] * 4
    assert other.rebuild_replay(record) == 0
    assert len(other.ask(3)) == 3


@pytest.mark.parametrize(("name", "settings"), [("tpe", {}), ("tpe", {"multi_objective": True})])
def test_identical_trials_each_count_once(
    name: str, settings: dict[str, Any], lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    original = make(name, lenet_space, **settings)
    [proposal] = original.ask(1)
    result = scorer(proposal.plan)
    original.tell([proposal], [result])
    checkpoint = round_trip(original.state_dict())
    original.tell([proposal], [result])  # the same plan and outcome again: a second trial
    twice = [(stored(proposal), result)] * 2
    assert [values for _, _, values in complete(original)] == [complete(original)[0][2]] * 2
    if settings:
        assert complete(original)[0][2] == [result["accuracy"], result["latency_ms"]]

    resumed = make(name, lenet_space, **settings)
    resumed.load_state_dict(checkpoint)
    assert resumed.rebuild_replay(twice) == 1
    assert as_data(resumed) == as_data(original)
    assert resumed.rebuild_replay(twice) == 0

    caught_up = make(name, lenet_space, **settings)
    caught_up.load_state_dict(round_trip(original.state_dict()))
    assert caught_up.rebuild_replay(twice) == 0

    fresh = make(name, lenet_space, **settings)
    assert fresh.rebuild_replay(twice) == 2
    assert complete(fresh) == complete(original)
    assert fresh.rebuild_replay(twice + twice[:1]) == 1  # a third recorded copy: added once


def test_nsga2_counts_added_trials_into_its_generations(
    lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    record = run(make("nsga2", lenet_space, seed=1), scorer, ["xoo"] * 5)  # 10 trials
    agent = make("nsga2", lenet_space, seed=7)  # another seed: all 10 are added as data
    assert agent.rebuild_replay(record) == 10
    sampler = agent.study.sampler
    assert isinstance(sampler, NSGAIISampler)
    added = [t for t in agent.study.get_trials() if t.state.name == "COMPLETE"]
    generations = [sampler.get_trial_generation(agent.study, t) for t in added]
    assert generations == [0] * 4 + [1] * 4 + [2] * 2  # population_size 4
    [proposal] = agent.ask(1)
    trial = agent.study.get_trials()[proposal.info["trial"]]
    assert sampler.get_trial_generation(agent.study, trial) == 2
    assert len(sampler.get_parent_population(agent.study, 2)) == 4  # bred from added trials


def test_cmaes_updates_its_distribution_from_added_trials(
    lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    record = run(make("cmaes", lenet_space, seed=1), scorer, ["xoo"] * 4)  # 8 trials
    agent = make("cmaes", lenet_space, seed=7)  # another seed: all 8 are added as data
    assert agent.rebuild_replay(record) == 8
    key = "cma:generation"
    added = [t for t in agent.study.get_trials() if t.state.name == "COMPLETE"]
    assert [t.system_attrs.get(key) for t in added] == [0] * 8
    [proposal] = agent.ask(1)  # popsize 4: the first 4 added trials updated generation 0
    trial = agent.study.get_trials()[proposal.info["trial"]]
    assert trial.system_attrs[key] == 1


@pytest.mark.parametrize("name", OPTUNA)
def test_trials_never_told_are_failed_and_their_reruns_added(
    name: str, lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    original = make(name, lenet_space, seed=5)
    record = run(original, scorer, ["xo"] * 2)
    in_flight = original.ask(2)  # never told: failed (Ctrl-C), or in flight at the kill
    resumed = make(name, lenet_space, seed=5)
    resumed.load_state_dict(round_trip(original.state_dict()))
    assert [state for _, state, _, _ in trials(resumed)][-2:] == ["RUNNING"] * 2
    assert resumed.rebuild_replay(record) == 0
    states = [state for _, state, _, _ in trials(resumed)]
    assert states == ["FAIL", "COMPLETE"] * 2 + ["FAIL"] * 2
    rerun = stored(in_flight[0])  # the re-run of the trial in flight at the kill
    result = scorer(rerun.plan)
    resumed.tell([rerun], [result])
    [added] = resumed.study.get_trials()[6:]
    assert (added.state.name, added.params) == ("COMPLETE", in_flight[0].info["optuna_params"])
    for _ in range(4):  # the sampler goes on: 12 more trials, generations and all
        proposals = resumed.ask(3)
        resumed.tell(proposals, [scorer(p.plan) for p in proposals])
    assert len(complete(resumed)) == 15
    if name == "nsga2":
        sampler = resumed.study.sampler
        last = resumed.study.get_trials()[-1]
        assert sampler.get_trial_generation(resumed.study, last) >= 2  # type: ignore[attr-defined]


def test_a_proposal_is_told_to_its_trial_only_when_the_params_match(
    lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    agent = make("tpe", lenet_space, start_uniform=False)
    [own] = agent.ask(1)
    [other] = make("tpe", lenet_space, seed=9, start_uniform=False).ask(1)  # trial 0 too
    assert other.info["trial"] == own.info["trial"] == 0
    agent.tell([other], [scorer(other.plan)])
    trials = agent.study.get_trials()
    assert [t.state.name for t in trials] == ["RUNNING", "COMPLETE"]
    assert trials[1].params == other.info["optuna_params"]
    agent.tell([own], [scorer(own.plan)])
    assert agent.study.get_trials()[0].state.name == "COMPLETE"
    assert agent.study.get_trials()[0].params == own.info["optuna_params"]


def test_a_proposal_of_another_agent_is_added_from_its_decisions(
    lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    [foreign] = make("random", lenet_space).ask(1)  # no Optuna params in its info
    result = scorer(foreign.plan)
    agent = make("tpe", lenet_space)
    assert agent.rebuild_replay([(foreign, result)]) == 1
    [trial] = agent.study.get_trials()
    keep = {unit.name: foreign.params[unit.name] for unit in lenet_space.units}
    assert trial.params == {f"keep:{name}": ratio for name, ratio in keep.items()}
    assert trial.values == [result["reward"]]
    assert agent.rebuild_replay([(foreign, result)]) == 0


def test_an_added_trial_over_the_target_carries_the_constraint(
    lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    [foreign] = make("random", lenet_space).ask(1)  # added as data: no Trial object of its own
    over = {**scorer(foreign.plan), "reward": -1.0, "over_budget": 1.0}
    agent = make("tpe", lenet_space)
    assert agent.rebuild_replay([(foreign, over)]) == 1
    [trial] = agent.study.get_trials()
    assert trial.state.name == "COMPLETE" and trial.constraints == {"budget": 1.0}
    assert agent.pareto_front() == []


class SyntheticEvaluator:
    """An Evaluator that scores each plan at once with a HiddenSensitivity; every ``over``-th
    plan (if given) is measured over its target."""

    capacity = 1

    def __init__(self, scorer: HiddenSensitivity, over: int | None = None) -> None:
        self.scorer = scorer
        self.over = over
        self.queue: list[tuple[int, Any]] = []

    def submit(self, tag: int, plan: Any) -> None:
        self.queue.append((tag, plan))

    def poll(self, timeout: float | None = None) -> list[tuple[int, EvalResult]]:
        done = [(tag, self.scorer(plan)) for tag, plan in self.queue]
        self.queue = []
        return [
            (
                tag,
                EvalResult(
                    status="over_budget" if self._over() else "ok",
                    accuracy=r["accuracy"],
                    latency_ms=r["latency_ms"],
                ),
            )
            for tag, r in done
        ]

    def _over(self) -> bool:
        return self.over is not None and self.scorer.calls % self.over == 0

    def cancel_all(self) -> list[int]:
        return []


@pytest.mark.parametrize("over", [None, 3], ids=["within", "every-third-over"])
@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_resume_from_a_lagging_checkpoint_in_a_stored_study(
    name: str, over: int | None, lenet_space: Any, scorer: HiddenSensitivity, tmp_path: Any
) -> None:
    agent = make(name, lenet_space, seed=6)
    attrs = {"fingerprint": "sha256:0", "config": {}, "objectives": list(agent.objectives)}
    record = SearchRecord.create(f"sqlite:///{tmp_path}/amc.db", "lag", agent.directions, attrs)
    evaluator: Any = SyntheticEvaluator(scorer, over)  # the part of the protocol used
    run_search(agent, evaluator, record, episodes=5, progress=False)
    lagging = record.load_agent_state()
    assert lagging is not None
    run_search(agent, evaluator, record, episodes=9, progress=False)
    record.save_agent_state(lagging)  # killed before the checkpoint caught up

    resumed = make(name, lenet_space, seed=6)  # as amc.experiment.search restores an agent
    resumed.load_state_dict(record.load_agent_state())
    # the trials the checkpoint missed, over-budget ones (failed in the record) among them
    missed = resumed.rebuild_replay(_told(record, Proposal, "err"))
    assert missed == 4 + told_over(agent._log) - told_over(lagging["log"])
    assert complete(resumed) == complete(agent)
    assert resumed._over == agent._over and (over is None) == (not agent._over)
    assert signature(resumed.ask(2)) == signature(agent.ask(2))


@pytest.mark.parametrize("name", OPTUNA)
def test_a_plan_with_a_result_is_not_proposed_again(
    name: str, lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    """Samples that repair to a plan already told are told its result and drawn again: every
    proposal is a new plan, and the repeats replay exactly from the state."""
    from agents.optuna_agent import MAX_REPEATS

    agent = make(name, lenet_space, seed=0)
    seen: set[Any] = set()
    for _ in range(25):
        before = len(repeats(agent))
        [proposal] = agent.ask(1)
        key = proposal.plan.key()
        if key in seen:  # only once MAX_REPEATS samples in a row were known plans
            assert len(repeats(agent)) - before == MAX_REPEATS - 1
        seen.add(key)
        agent.tell([proposal], [scorer(proposal.plan)])
    assert len(seen) >= 15
    assert repeats(agent), "the tiny space makes samples collide: some were repeats"
    assert [p.episode for p in [agent.ask(1)[0]]] == [25]  # repeats take no episode
    again = make(name, lenet_space, seed=0)
    again.load_state_dict(round_trip(agent.state_dict()))
    assert trials(again) == trials(agent)
    assert signature(again.ask(1)) == signature(agent.ask(1))


@pytest.mark.parametrize("name", OPTUNA)
def test_the_first_trial_is_the_uniform_plan_at_the_budget(
    name: str, lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    [uniform] = get_agent("uniform", lenet_space).ask(1)
    agent = make(name, lenet_space, seed=5)
    first, second = agent.ask(2)
    assert first.plan.key() == uniform.plan.key()
    assert second.plan.key() != uniform.plan.key()  # then the sampler's own draws
    agent.tell([first, second], [scorer(first.plan), scorer(second.plan)])
    resumed = make(name, lenet_space, seed=5)  # the log re-executes through the same trial
    resumed.load_state_dict(json.loads(json.dumps(agent.state_dict())))
    assert [p.plan.key() for p in resumed.ask(2)] == [p.plan.key() for p in agent.ask(2)]
    [off] = make(name, lenet_space, seed=5, start_uniform=False).ask(1)
    assert off.plan.key() != uniform.plan.key()


@pytest.mark.parametrize("name", OPTUNA)
def test_a_plan_told_over_budget_completes_an_infeasible_trial(
    name: str, lenet_space: Any
) -> None:
    agent = make(name, lenet_space)
    proposals = agent.ask(2)
    over = {"reward": -1.0, "over_budget": 1.0, "accuracy": 0.9, "latency_ms": 2.0}
    within = {"reward": -0.2, "accuracy": 0.8, "latency_ms": 1.0}
    agent.tell(proposals, [over, within])
    first, second = agent.study.get_trials()
    assert [first.state.name, second.state.name] == ["COMPLETE", "COMPLETE"]
    assert first.values == ([0.9, 2.0] if agent.multi_objective else [-1.0])  # as told
    # TPE and NSGA-II rank it below every plan within the target; CMA-ES takes no constraints
    # (it learns from the penalty value) and would warn about them
    assert first.constraints == ({} if name == "cmaes" else {"budget": 1.0})
    assert second.constraints == {}
    # not on the front, though for nsga2 it is the most accurate plan
    assert [entry["trial"] for entry in agent.pareto_front()] == [second.number]

    resumed = make(name, lenet_space)  # the log keeps the flag: the same study again
    resumed.load_state_dict(json.loads(json.dumps(agent.state_dict())))
    assert [t.constraints for t in resumed.study.get_trials()] == [
        first.constraints,
        second.constraints,
    ]
    assert signature(resumed.ask(2)) == signature(agent.ask(2))


def test_tpe_learns_to_avoid_plans_over_the_target(
    lenet_space: Any, scorer: HiddenSensitivity
) -> None:
    """The most sensitive unit, kept above 60%, is measured over the target: the optimum
    lies there. Told over budget, TPE leaves the region; told failures, it learns nothing
    about it (a failed trial is invisible to the sampler) and keeps proposing it."""
    unit = max(scorer.sensitivities, key=scorer.sensitivities.__getitem__)

    def over_in_last_half(feedback: str) -> int:
        agent = make("tpe", lenet_space, seed=3, n_startup_trials=5)
        overs = []
        for _ in range(40):
            [proposal] = agent.ask(1)
            result = dict(scorer(proposal.plan))
            over = scorer.keep(proposal.plan)[unit] > 0.6
            if over and feedback == "penalty":
                result.update(reward=0.0, over_budget=1.0)
            agent.tell([proposal], [None if over and feedback == "failure" else result])
            overs.append(over)
        return sum(overs[20:])

    told, failed = over_in_last_half("penalty"), over_in_last_half("failure")
    assert told < failed / 2, (told, failed)


@pytest.mark.parametrize("name", OPTUNA)
def test_spread_samples_a_box_around_the_uniform_plan(name: str, chain_space: Any) -> None:
    """``spread`` narrows the sampled box around its centre (the uniform plan): each unit
    removes (1 +- spread) times the centre's fraction, and the repaired plans stay closer to
    uniform than the whole box's."""
    low = chain_space.lower_bound
    centre_removed = (1.0 - low) / 2.0

    def spreads(agent: Any, spread: float) -> list[float]:
        """Per plan: the largest over the smallest removed fraction among its units."""
        out = []
        for _ in range(12):
            [proposal] = agent.ask(1)
            removed = [1.0 - u.keep_ratio for u in proposal.plan.units.values()]
            out.append(max(removed) / min(removed))
            agent.tell([proposal], [{"reward": 0.5, "accuracy": 0.5, "latency_ms": 1.0}])
            raw = proposal.info["optuna_params"]
            for key, value in raw.items():
                if key.startswith("keep:"):
                    assert abs(1.0 - value - centre_removed) <= spread * centre_removed + 1e-9
        return out

    narrow = make(name, chain_space, seed=1, spread=0.2)
    assert narrow.keep_box() == pytest.approx((1 - 1.2 * centre_removed, 1 - 0.8 * centre_removed))
    assert make(name, chain_space, spread=1.0).keep_box() == (low, 1.0)  # exactly, no rounding
    near = spreads(narrow, 0.2)
    # (1 + s) / (1 - s) = 1.5 before repair; whole channels add a little
    assert max(near) <= 1.5 * 1.15, near
    wide = spreads(make(name, chain_space, seed=1), 1.0)
    assert max(wide) > max(near)
    resumed = make(name, chain_space, seed=1, spread=0.2)  # the box is part of the state
    resumed.load_state_dict(round_trip(narrow.state_dict()))
    assert signature(resumed.ask(1)) == signature(narrow.ask(1))


@pytest.mark.parametrize("value", [0, 1.5, "wide"])
def test_spread_out_of_range_is_a_config_error(value: Any, chain_space: Any) -> None:
    from amc.errors import ConfigError

    with pytest.raises(ConfigError, match="spread"):
        make("tpe", chain_space, spread=value)
