"""The ask/tell contract every agent honours (one suite, parametrised over all registered agents).

Like Optuna's ``optuna/testing/pytest_samplers.py``: shapes, the budget, seeded determinism,
resume through ``state_dict`` and failed evaluations.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch

from agents import get_agent, list_agents
from agents.base import Agent, Proposal
from amc.errors import ConfigError, UnknownNameError
from amc.latency_table import LatencyTable
from amc.plan import PruningPlan, validate_plan
from amc.space import SearchSpace
from amc.units import analyze
from tests.agents.conftest import (
    FAST_SETTINGS,
    HiddenSensitivity,
    X,
    plan_cost_fraction,
    random_sensitivities,
    round_trip,
)
from tests.tiny_models import LeNet

AGENTS = ["cmaes", "ddpg", "global_magnitude", "nsga2", "random", "tpe", "uniform"]
LEARNING = ["cmaes", "ddpg", "nsga2", "random", "tpe"]  # the ones that draw random numbers
SPACES = ["lenet_space", "residual_nm_space", "residual_skip_space"]


def make(name: str, space: Any, seed: int = 0) -> Agent:
    return get_agent(name, space, seed=seed, **FAST_SETTINGS[name])


def drive(agent: Agent, scorer: HiddenSensitivity, rounds: int, batch: int = 3) -> list[Proposal]:
    """Run ``rounds`` of ask(batch)/tell; the second proposal of every round fails."""
    asked: list[Proposal] = []
    for _ in range(rounds):
        proposals = agent.ask(batch)
        results = [scorer(p.plan) for p in proposals]
        results[1] = None
        agent.tell(proposals, results)
        asked += proposals
    return asked


def signature(proposals: list[Proposal]) -> list[Any]:
    return [(p.episode, dict(p.params), p.plan.to_json()) for p in proposals]


def test_every_agent_is_registered() -> None:
    assert list_agents() == AGENTS


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("name", AGENTS)
def test_ask_returns_n_valid_plans_that_meet_the_budget(
    name: str, space_name: str, request: pytest.FixtureRequest
) -> None:
    space = request.getfixturevalue(space_name)
    agent = make(name, space)
    scorer = HiddenSensitivity(space, random_sensitivities(space))
    asked = drive(agent, scorer, rounds=4)
    assert len(asked) == 12
    assert [p.episode for p in asked] == list(range(12))
    fraction = space.target.fraction
    for proposal in asked:
        plan = proposal.plan
        assert isinstance(plan, PruningPlan)
        validate_plan(plan, space.graph)
        assert set(plan.units) == {unit.name for unit in space.graph.units}
        assert plan.target == space.target.to_json()
        assert plan.provenance["agent"] == name
        assert plan_cost_fraction(space, plan) <= fraction + 1e-9
        for unit in space.units:
            assert space.lower_bound - 1e-9 <= proposal.params[unit.name] <= 1.0
        json.dumps(proposal.info)  # JSON-ready, as the service records it
        PruningPlan.from_json(json.loads(plan.dumps()))
    assert agent.ask(0) == []


def test_nm_choices_reach_the_plans_of_optuna_agents(residual_nm_space: Any) -> None:
    agent = make("tpe", residual_nm_space)
    plans = [p.plan for p in agent.ask(12)]
    patterns = {unit.nm for plan in plans for unit in plan.units.values()}
    assert patterns == {None, (2, 4)}


@pytest.mark.parametrize("name", AGENTS)
def test_same_seed_gives_the_same_proposals(name: str, lenet_space: Any) -> None:
    scorer = HiddenSensitivity(lenet_space, random_sensitivities(lenet_space))
    first = signature(drive(make(name, lenet_space, seed=3), scorer, rounds=3))
    second = signature(drive(make(name, lenet_space, seed=3), scorer, rounds=3))
    assert first == second
    if name in LEARNING:
        other = signature(drive(make(name, lenet_space, seed=4), scorer, rounds=3))
        assert [p[1] for p in other] != [p[1] for p in first]


@pytest.mark.parametrize("name", AGENTS)
def test_state_dict_round_trip_resumes_identically(name: str, lenet_space: Any) -> None:
    scorer = HiddenSensitivity(lenet_space, random_sensitivities(lenet_space))
    original = make(name, lenet_space, seed=1)
    history = drive(original, scorer, rounds=3)
    pending = original.ask(2)  # asked but not yet told when the state is written
    state = round_trip(original.state_dict())

    resumed = make(name, lenet_space, seed=1)
    resumed.load_state_dict(state)
    if name == "ddpg":  # the replay buffer is rebuilt from the stored trials, not saved
        told = [(p, scorer(p.plan) if (p.episode % 3) != 1 else None) for p in history]
        resumed.rebuild_replay(told)  # type: ignore[attr-defined]

    # the pending proposals are told to the resumed agent as the original would have been
    results = [scorer(p.plan) for p in pending]
    original.tell(pending, results)
    resumed.tell(pending, results)
    for _ in range(2):
        ahead, behind = original.ask(3), resumed.ask(3)
        assert signature(ahead) == signature(behind)
        outcome = [scorer(p.plan) for p in ahead]
        original.tell(ahead, outcome)
        resumed.tell(behind, outcome)


@pytest.mark.parametrize("name", AGENTS)
def test_tell_accepts_failed_evaluations(name: str, lenet_space: Any) -> None:
    agent = make(name, lenet_space)
    for _ in range(3):
        proposals = agent.ask(2)
        agent.tell(proposals, [None, None])
    assert len(agent.ask(2)) == 2


@pytest.mark.parametrize("name", AGENTS)
def test_tell_refuses_mismatched_lengths(name: str, lenet_space: Any) -> None:
    agent = make(name, lenet_space)
    proposals = agent.ask(2)
    with pytest.raises(ValueError, match=re.escape("tell got 2 proposals but 1 results")):
        agent.tell(proposals, [None])


def test_unknown_agent_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError) as error:
        get_agent("tpf", None)
    assert str(error.value) == (
        "Unknown agent 'tpf'. Did you mean 'tpe'? Expected one of: cmaes, ddpg, "
        "global_magnitude, nsga2, random, tpe, uniform."
    )


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        (
            "ddpg",
            {"warmpu": 5},
            "Agent 'ddpg': unknown setting 'warmpu'. Did you mean 'warmup'? Known settings: "
            "actor_lr, baseline_alpha, batch_size, critic_lr, device, gamma, net_arch, "
            "replay_per_unit, sigma, sigma_decay, store_taken_actions, tau, threads, "
            "updates_per_transition, warmup.",
        ),
        (
            "ddpg",
            {"warmup": "10"},
            "Agent 'ddpg': setting 'warmup' must be an integer >= 0, got '10' (str).",
        ),
        (
            "ddpg",
            {"tau": 1.5, "net_arch": [300, 0]},
            "Agent 'ddpg': setting 'tau' must be a number in [0, 1], got 1.5 (float); setting "
            "'net_arch' must be a list of positive integers, e.g. [300, 300], got [300, 0] "
            "(list).",
        ),
        (
            "tpe",
            {"n_startup_trials": True},
            "Agent 'tpe': setting 'n_startup_trials' must be an integer >= 0, got True (bool).",
        ),
        (
            "cmaes",
            {"sigma0": 0},
            "Agent 'cmaes': setting 'sigma0' must be a number > 0 or null, got 0 (int).",
        ),
        ("uniform", {"x": 1}, "Agent 'uniform': unknown setting 'x'. Known settings: none."),
    ],
)
def test_bad_settings_name_the_key_and_the_expected_form(
    name: str, settings: dict[str, Any], message: str, lenet_space: Any
) -> None:
    with pytest.raises(ConfigError) as error:
        get_agent(name, lenet_space, **settings)
    assert str(error.value) == message


def test_bad_seed_is_refused(lenet_space: Any) -> None:
    with pytest.raises(ConfigError, match=re.escape("seed must be an integer >= 0, got -1")):
        get_agent("random", lenet_space, seed=-1)


def test_a_state_of_another_agent_is_refused(lenet_space: Any) -> None:
    state = make("random", lenet_space).state_dict()
    with pytest.raises(ConfigError, match=re.escape("'amc.agent.random/1' does not match")):
        make("tpe", lenet_space).load_state_dict(state)


def test_nsga2_needs_accuracy_and_latency(lenet_space: Any) -> None:
    agent = make("nsga2", lenet_space)
    proposals = agent.ask(1)
    with pytest.raises(ConfigError, match=re.escape("the result has no latency_ms")):
        agent.tell(proposals, [{"reward": 1.0, "accuracy": 0.9}])


def test_multi_objective_agents_yield_a_pareto_front(lenet_space: Any) -> None:
    scorer = HiddenSensitivity(lenet_space, random_sensitivities(lenet_space))
    for agent in (make("nsga2", lenet_space), get_agent("tpe", lenet_space, multi_objective=True)):
        assert agent.objectives == ("accuracy", "latency_ms")
        drive(agent, scorer, rounds=4)
        front = agent.pareto_front()  # type: ignore[attr-defined]
        assert front
        points = [(f["values"]["accuracy"], f["values"]["latency_ms"]) for f in front]
        for acc, lat in points:  # no point of the front dominates another
            assert not any(a >= acc and t <= lat and (a, t) != (acc, lat) for a, t in points)


def test_optuna_resume_falls_back_to_the_logged_data(lenet_space: Any) -> None:
    scorer = HiddenSensitivity(lenet_space, random_sensitivities(lenet_space))
    original = make("tpe", lenet_space)
    drive(original, scorer, rounds=2)
    pending = original.ask(1)
    state = round_trip(original.state_dict())
    first = state["log"][0]
    first["params"] = {key: 0.5 for key in first["params"]}  # as if Optuna drew differently

    resumed = make("tpe", lenet_space)
    with pytest.warns(UserWarning, match="samples differently from the one that wrote"):
        resumed.load_state_dict(state)
    trials = resumed.study.get_trials()  # type: ignore[attr-defined]
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"] * 2 + ["RUNNING"]
    assert trials[0].params == first["params"]
    resumed.tell(pending, [scorer(pending[0].plan)])  # the untold trial keeps its number
    assert resumed.study.get_trials()[-1].state.name == "COMPLETE"  # type: ignore[attr-defined]
    assert [p.episode for p in resumed.ask(2)] == [7, 8]


def test_optuna_agent_records_proposals_it_did_not_ask(lenet_space: Any) -> None:
    scorer = HiddenSensitivity(lenet_space, random_sensitivities(lenet_space))
    foreign = make("tpe", lenet_space, seed=9).ask(1)
    agent = make("tpe", lenet_space)
    agent.tell(foreign, [scorer(foreign[0].plan)])
    [trial] = agent.study.get_trials()  # type: ignore[attr-defined]
    assert trial.state.name == "COMPLETE"
    assert trial.params == foreign[0].info["optuna_params"]
    resumed = make("tpe", lenet_space)
    resumed.load_state_dict(round_trip(agent.state_dict()))
    assert signature(resumed.ask(2)) == signature(agent.ask(2))


def test_random_plans_depend_on_the_episode_so_a_resume_draws_new_ones(lenet_space: Any) -> None:
    """A checkpoint older than the last trials: the episode bump alone skips the used draws."""
    agent = make("random", lenet_space)
    checkpoint = round_trip(agent.state_dict())
    lost = [p.params for p in agent.ask(3)]  # evaluated after the checkpoint, then a kill
    resumed = make("random", lenet_space)
    resumed.load_state_dict(checkpoint)
    resumed.episode = 3  # what amc.experiment does after a kill: past every recorded episode
    fresh = [p.params for p in resumed.ask(3)]
    assert not any(plan in lost for plan in fresh)
    replay = make("random", lenet_space)
    replay.load_state_dict(checkpoint)
    assert [p.params for p in replay.ask(3)] == lost  # same episodes, same plans


@pytest.mark.parametrize("name", ["uniform", "global_magnitude"])
def test_reference_plans_follow_the_latency_calibration(name: str) -> None:
    """A device that runs plans faster than the table says moves the budget: the reference
    strategies re-aim their plan at it, as every searching agent's repair does."""
    torch.manual_seed(0)
    model = LeNet().eval()
    space = SearchSpace.build(
        model, X, "latency=0.6", latency_table=LatencyTable.synthetic(analyze(model, X))
    )
    agent = make(name, space)
    [before] = agent.ask(1)
    keep = {n: u.keep_ratio for n, u in before.plan.units.items()}
    space.calibrate_latency(before.plan, 0.7 * space.cost_fraction(keep))
    [after] = agent.ask(1)
    grown = {n: u.keep_ratio for n, u in after.plan.units.items()}
    assert space.fits(grown)
    assert sum(grown.values()) > sum(keep.values())
    assert all(grown[n] >= keep[n] for n in keep)


@pytest.mark.parametrize("name", LEARNING)
def test_searching_agents_choose_skipped_blocks_with_the_channels(
    name: str, residual_skip_space: Any
) -> None:
    """Where the space offers layer skipping, the plans skip blocks, say so in their params,
    and spend the budget the skips free on channels (none fits without its skips; ddpg's
    clipping, AMC's, only lowers what the actor asks, so its plans need not fill it)."""
    space = residual_skip_space
    asked = drive(make(name, space), HiddenSensitivity(space, random_sensitivities(space)), 4)
    skipping = [p for p in asked if p.plan.skip]
    assert skipping, "no plan skipped a block in 12 asks"
    for proposal in asked:
        plan = proposal.plan
        for block in space.skippable:
            assert proposal.params[f"skip:{block}"] == float(block in plan.skip)
    for proposal in skipping:
        keep = {n: u.keep_ratio for n, u in proposal.plan.units.items() if n in space.names}
        assert space.fits(keep, skip=proposal.plan.skip)
        if name != "ddpg":
            assert not space.fits(keep), "the skips freed nothing: channels did not fill it"


def test_skip_decisions_survive_a_resume(residual_skip_space: Any) -> None:
    """A TPE resumed from its state proposes the plans, skips included, the original would."""
    space = residual_skip_space
    scorer = HiddenSensitivity(space, random_sensitivities(space))
    agent = make("tpe", space)
    drive(agent, scorer, 2)
    resumed = make("tpe", space)
    resumed.load_state_dict(round_trip(agent.state_dict()))
    assert signature(resumed.ask(3)) == signature(agent.ask(3))
