"""PruningEnv: Gymnasium's contract, AMC's observation/action/reward, budgets by construction."""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from functools import cache
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from torch import nn

import envs
from amc.errors import AmcError, ConfigError, InfeasibleBudgetError
from amc.latency_table import LatencyTable
from amc.plan import PruningPlan, validate_plan
from amc.space import SearchSpace
from amc.units import UnitGraph, analyze
from envs import FEATURES, PruningEnv, ResetNeededError
from envs.pruning_env import SKIP_FEATURES
from tests.tiny_models import TINY_MODELS, LeNet, ResidualNet

X = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
ZOO_X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@cache
def model_and_graph(name: str) -> tuple[nn.Module, torch.Tensor, UnitGraph]:
    torch.manual_seed(0)
    if name in TINY_MODELS:
        model, x = TINY_MODELS[name]().eval(), X
    else:
        zoo = pytest.importorskip("amc.zoo")
        model, x = zoo.get_model(name, num_classes=10, in_channels=3).eval(), ZOO_X
    return model, x, analyze(model, x)


def make_space(name: str, metric: str, position: float, **options: Any) -> SearchSpace:
    """A space ``position`` of the way from the smallest reachable fraction to the dense model;
    latency targets use a FLOPs-derived table, so nothing is timed."""
    model, x, graph = model_and_graph(name)
    if metric == "latency":
        options["latency_table"] = LatencyTable.synthetic(graph, nm=options.get("nm"))
    loose = SearchSpace.build(model, x, f"{metric}=1.0", graph=graph, **options)
    fraction = max(0.01, loose.smallest_fraction() + position * (1 - loose.smallest_fraction()))
    return SearchSpace.build(model, x, f"{metric}={fraction!r}", graph=graph, **options)


def error_scorer(plan: PruningPlan) -> dict[str, float]:
    """A deterministic stand-in for fine-tune + evaluate: error grows with what was cut."""
    removed = sum(1.0 - unit.keep_ratio for unit in plan.units.values())
    return {"error": 0.1 + 0.05 * removed}


def run_episode(env: PruningEnv, rng: random.Random) -> tuple[list[Any], dict[str, Any]]:
    obs, _ = env.reset(seed=rng.randrange(1000))
    transitions = []
    terminated = False
    while not terminated:
        action = np.array([rng.random() for _ in range(env.action_space.shape[0])], np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        transitions.append((obs, reward, terminated, info))
    return transitions, info


# ---------------------------------------------------------------------------------------------
# the Gymnasium contract
# ---------------------------------------------------------------------------------------------


def test_check_env_passes_without_warnings() -> None:
    env = PruningEnv(LeNet().eval(), X, "flops=0.5", error_scorer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)


def test_registered_id_makes_an_env_that_passes_check_env() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gymnasium.make(
            "amc/Pruning-v0",
            model=ResidualNet().eval(),
            example_inputs=X,
            target="params=0.6",
            scorer=lambda plan: 1.0,
            nm=(2, 4),
            round_to=4,
        )
        assert env.spec is not None and env.spec.id == envs.ENV_ID
        check_env(env.unwrapped)
    assert env.action_space.shape == (2,)


def test_latency_space_env_passes_check_env() -> None:
    space = make_space("transformer", "latency", 0.3, nm=(2, 4))
    env = PruningEnv(scorer=error_scorer, space=space, reward="latency")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)


def test_step_before_reset_and_after_the_end_needs_a_reset() -> None:
    env = PruningEnv(LeNet().eval(), X, "flops=0.5", error_scorer)
    message = (
        "PruningEnv.step() was called before reset() or after the episode ended; call "
        "env.reset() to start an episode."
    )
    with pytest.raises(ResetNeededError, match="^" + re.escape(message) + "$") as caught:
        env.step(np.array([0.5], np.float32))
    assert isinstance(caught.value, ResetNeeded) and isinstance(caught.value, AmcError)
    run_episode(env, random.Random(0))
    with pytest.raises(ResetNeededError, match=re.escape(message)):
        env.step(np.array([0.5], np.float32))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"target": "flop=0.5"},
            ConfigError,
            "Unknown target metric 'flop'. Did you mean 'flops'?",
        ),
        ({"target": "flops"}, ConfigError, "Cannot read target 'flops': expected METRIC=FRACTION"),
        (
            {"target": "latency=0.5", "device": None},
            ConfigError,
            "Target latency=0.5 needs a device to measure latency on, but device=None.",
        ),
        ({"reward": "flop"}, ConfigError, "Unknown reward 'flop'. Did you mean 'flops'?"),
        ({"scorer": None}, ConfigError, "PruningEnv needs scorer=, a callable"),
        ({"target": "flops=0.01"}, InfeasibleBudgetError, "Target flops=0.01 cannot be met"),
    ],
)
def test_bad_arguments_are_refused(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {"target": "flops=0.5", "scorer": error_scorer} | kwargs
    with pytest.raises(error, match="^" + re.escape(message)):
        PruningEnv(LeNet().eval(), X, **arguments)


def test_bad_actions_are_refused() -> None:
    env = PruningEnv(LeNet().eval(), X, "flops=0.5", error_scorer)
    env.reset(seed=0)
    message = "Expected an action of shape (1,) with finite values in [0, 1], got"
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        env.step(np.array([math.nan], np.float32))
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        env.step(np.array([0.5, 0.5], np.float32))


# ---------------------------------------------------------------------------------------------
# observation, action, reward
# ---------------------------------------------------------------------------------------------


def test_observations_are_fixed_size_float32_in_bounds_and_reward_is_terminal() -> None:
    env = PruningEnv(scorer=error_scorer, space=make_space("residual", "flops", 0.3))
    assert env.observation_space.shape == (len(FEATURES),)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (len(FEATURES),)
    assert info == {"unit": "conv1"}
    assert obs[FEATURES.index("index")] == 0.0
    assert obs[FEATURES.index("kind_conv")] == 1.0
    assert obs[FEATURES.index("flops_removed")] == 0.0
    transitions, info = run_episode(env, random.Random(3))
    assert len(transitions) == len(env.space.units)
    for step, (obs, reward, terminated, _) in enumerate(transitions):
        assert obs.dtype == np.float32 and obs.shape == (len(FEATURES),)
        assert env.observation_space.contains(obs)
        assert terminated == (step == len(transitions) - 1)
        assert reward == 0.0 or terminated
    removed = transitions[-1][0][FEATURES.index("flops_removed")]
    graph = env.space.graph
    assert removed == pytest.approx(1 - info["plan"].predict(graph).flops / graph.dense_flops)


def test_terminal_info_holds_the_plan_keep_ratios_and_actions_taken() -> None:
    env = PruningEnv(scorer=error_scorer, space=make_space("lenet", "flops", 0.2))
    transitions, info = run_episode(env, random.Random(1))
    plan = info["plan"]
    assert PruningPlan.from_json(json.loads(plan.dumps())) == plan
    validate_plan(plan, env.space.graph)
    assert set(info["keep"]) == set(env.space.names)
    assert len(info["actions"]) == len(env.space.units)
    for unit, action, (_, _, _, step_info) in zip(
        env.space.units, info["actions"], transitions, strict=True
    ):
        assert action.dtype == np.float32 and action.shape == (1,)
        assert 0.0 <= action[0] <= 1.0
        assert np.array_equal(step_info["action"], action)
        assert env.space.action_to_keep(float(action[0])) == pytest.approx(
            info["keep"][unit.name], abs=1e-6
        )
        assert plan.units[unit.name].keep_ratio == info["keep"][unit.name]
    assert info["score"] == error_scorer(plan)
    assert transitions[-1][1] == pytest.approx(-error_scorer(plan)["error"])


def test_reward_forms() -> None:
    space = make_space("lenet", "latency", 0.5)
    rng = random.Random(2)

    def reward_of(scorer: Any, form: str = "err") -> tuple[float, PruningPlan]:
        transitions, info = run_episode(PruningEnv(scorer=scorer, space=space, reward=form), rng)
        return transitions[-1][1], info["plan"]

    assert reward_of(lambda plan: 0.25)[0] == 0.25
    assert reward_of(lambda plan: {"reward": -2.0, "error": 0.5})[0] == -2.0
    assert reward_of(lambda plan: {"accuracy": 0.75})[0] == pytest.approx(-0.25)
    reward, plan = reward_of(lambda plan: {"error": 0.5}, "flops")
    assert reward == pytest.approx(-0.5 * math.log(plan.predict(space.graph).flops), rel=1e-6)
    assert reward_of(lambda plan: {"error": 0.5, "flops": 1e6}, "flops")[0] == pytest.approx(
        -0.5 * math.log(1e6)
    )
    reward, _ = reward_of(lambda plan: {"error": 0.5, "latency_ms": 2.0}, "latency")
    assert reward == pytest.approx(-0.5 * math.log(2000.0))
    with pytest.raises(ConfigError, match=re.escape("a mapping needs 'reward', 'error' or")):
        reward_of(lambda plan: {"loss": 1.0})
    with pytest.raises(ConfigError, match=re.escape("The scorer gave a non-finite reward (nan)")):
        reward_of(lambda plan: math.nan)


def test_units_that_cannot_lose_channels_keep_them_and_take_nm() -> None:
    space = make_space("transformer", "params", 0.0, nm=(2, 4), round_to=4)
    env = PruningEnv(scorer=error_scorer, space=space)
    assert env.space.names == ["patch", "attn.qkv", "fc1"]
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0.0, 1.0], np.float32))
    assert info["nm"] is False  # patch: 1 input channel, no 2:4 on offer
    assert np.array_equal(info["action"], np.array([0.0, 0.0], np.float32))
    _, _, _, _, info = env.step(np.array([0.0, 1.0], np.float32))
    assert info["keep_ratio"] == 1.0 and info["nm"] is True
    assert np.array_equal(info["action"], np.array([1.0, 1.0], np.float32))
    _, _, terminated, _, info = env.step(np.array([0.0, 0.0], np.float32))
    assert terminated
    assert info["plan"].units["attn.qkv"].nm == (2, 4)
    assert info["plan"].units["patch"].nm is None


# ---------------------------------------------------------------------------------------------
# the budget holds for every finished plan
# ---------------------------------------------------------------------------------------------

CASES = [
    ("lenet", {}),
    ("residual", {"round_to": 4, "nm": (2, 4)}),
    ("depthwise", {}),
    ("transformer", {"nm": (2, 4)}),
    ("transformer", {"nm": (2, 4), "round_to": 4}),
    ("resnet20", {"round_to": 4}),
    ("mobilenetv2", {"round_to": 8}),
    ("vit_tiny", {"nm": (2, 4)}),
]


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}{o}" for n, o in CASES])
@pytest.mark.parametrize("metric", ["flops", "params", "latency"])
def test_random_episodes_meet_the_budget(name: str, options: dict[str, Any], metric: str) -> None:
    rng = random.Random(f"{name}-{metric}")
    episodes = 40 if name in TINY_MODELS else 8
    for episode in range(episodes):
        space = make_space(name, metric, position=[0.0, 0.1, 0.5][episode % 3], **options)
        env = PruningEnv(scorer=error_scorer, space=space)
        _, info = run_episode(env, rng)
        plan: PruningPlan = info["plan"]
        graph = space.graph
        channels = plan.channels(graph)
        budget = space.target.fraction
        if metric == "flops":
            assert graph.predict(channels).flops <= budget * graph.dense_flops + 1
        elif metric == "params":
            fixed = graph.dense_params - graph.predict({}).params
            assert graph.predict(channels).params + fixed <= budget * graph.dense_params + 1
        else:
            table = space.latency_table
            assert table is not None
            ratios = {n: c / graph.unit(n).channels for n, c in channels.items()}
            nm = {n: unit.nm is not None for n, unit in plan.units.items()}
            assert table.estimate(ratios, nm) <= budget * table.dense_ms + 1e-9
        assert info["cost_fraction"] <= budget


# ---------------------------------------------------------------------------------------------
# layer skipping: one step per skippable block, before the units
# ---------------------------------------------------------------------------------------------


def skip_episode(env: PruningEnv, skip_action: float, unit_action: float) -> list[Any]:
    """Every skip step takes ``skip_action``, every unit step ``unit_action``; the step infos
    and observations (the reset's first)."""
    obs, info = env.reset(seed=0)
    steps = [(obs, info)]
    width = env.action_space.shape[0]
    for step in range(env.episode_length):
        value = skip_action if step < len(env.blocks) else unit_action
        obs, _, terminated, _, info = env.step(np.full(width, value, np.float32))
        assert terminated == (step == env.episode_length - 1)
        steps.append((obs, info))
    return steps


def test_without_skip_blocks_the_episode_is_unchanged() -> None:
    env = PruningEnv(scorer=error_scorer, space=make_space("resnet20", "flops", 0.1))
    assert env.blocks == () and env.features == FEATURES
    assert env.episode_length == len(env.space.units) == 12
    assert env.observation_space.shape == (len(FEATURES),)


def test_skip_steps_come_first_and_skip_every_block_at_half_or_more() -> None:
    space = make_space("resnet20", "flops", 0.1, skip_blocks=True)
    env = PruningEnv(scorer=error_scorer, space=space)
    blocks = ("layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2")
    assert env.blocks == blocks
    assert env.features == FEATURES + SKIP_FEATURES
    assert env.observation_space.shape == (len(FEATURES) + 3,)
    assert env.episode_length == len(blocks) + len(space.units) == 19
    steps = skip_episode(env, 0.5, 1.0)  # 0.5 skips
    assert steps[0][1] == {"block": "layer1.0"}
    for step, (_, info) in enumerate(steps[1 : len(blocks) + 1]):
        assert info["block"] == blocks[step] and info["skip"] is True
        assert np.array_equal(info["action"], np.array([1.0], np.float32))
    info = steps[-1][1]
    plan = info["plan"]
    assert plan.skip == blocks == info["skip"]
    assert space.fits(info["keep"], skip=plan.skip)
    assert info["cost_fraction"] <= space.target.fraction
    assert plan.predict(space.graph).flops <= space.target.fraction * space.graph.dense_flops
    validate_plan(plan, space.graph)
    assert len(info["actions"]) == 19


def test_units_inside_skipped_blocks_stay_dense_whatever_their_action() -> None:
    space = make_space("resnet20", "flops", 0.1, skip_blocks=True)
    env = PruningEnv(scorer=error_scorer, space=space)
    steps = skip_episode(env, 1.0, 0.0)  # every block skipped, every unit asks the lower bound
    inside = {f"{block}.conv1" for block in env.blocks}
    for _, step_info in steps[8:]:
        unit = step_info["unit"]
        expected = 1.0 if unit in inside else space.lower_bound
        assert step_info["keep_ratio"] == pytest.approx(expected, abs=0.02)
        assert step_info["action"][0] == (1.0 if unit in inside else 0.0)
        assert steps[-1][1]["plan"].units[unit].keep_ratio == step_info["keep_ratio"]


def test_skip_features_mark_the_skip_steps_and_the_skipped_units() -> None:
    space = make_space("resnet20", "flops", 0.1, skip_blocks=True)
    env = PruningEnv(scorer=error_scorer, space=space)
    steps = skip_episode(env, 1.0, 0.0)
    observations = np.array([obs for obs, _ in steps[:-1]])  # the observation each step saw
    skip_step = observations[:, FEATURES.index("index") + len(FEATURES)]
    assert skip_step.tolist() == [1.0] * 7 + [0.0] * 12
    share = observations[:, len(FEATURES) + 1]
    assert np.all(share[:7] > 0.1) and np.all(share[7:] == 0.0)
    inside = observations[:, len(FEATURES) + 2].tolist()
    assert inside == [0.0] * 7 + [float(unit.name.endswith(".conv1") and unit.name not in (
        "layer2.0.conv1", "layer3.0.conv1")) for unit in space.units]  # fmt: skip
    # a skip step describes the block's first unit: layer1.0 -> layer1.0.conv1 (unit 1)
    assert observations[0, FEATURES.index("index")] == pytest.approx(1 / 11)
    assert observations[3, FEATURES.index("index")] == pytest.approx(6 / 11)  # layer2.1


def test_actions_under_half_skip_nothing_and_plan_as_without_skipping() -> None:
    space = make_space("resnet20", "flops", 0.1, skip_blocks=True)
    plain = SearchSpace.build(space.model, space.example_inputs, space.target, graph=space.graph)
    skipping = skip_episode(PruningEnv(scorer=error_scorer, space=space), 0.49, 1.0)
    info = skipping[-1][1]
    assert info["plan"].skip == () and info["skip"] == ()
    assert not any(step_info.get("skip") for _, step_info in skipping[1:8])
    assert space.fits(info["keep"])
    reference = skip_episode(PruningEnv(scorer=error_scorer, space=plain), 0.0, 1.0)[-1][1]
    assert info["keep"] == reference["keep"]
    assert info["plan"].units == reference["plan"].units


def test_skipped_blocks_free_budget_for_the_channels() -> None:
    space = make_space("resnet20", "flops", 0.1, skip_blocks=True)
    env = PruningEnv(scorer=error_scorer, space=space)
    none = skip_episode(env, 0.0, 1.0)[-1][1]
    every = skip_episode(env, 1.0, 1.0)[-1][1]
    # asking for every channel, the clip cuts only where the budget forces it: the last
    # unit outside the skipped blocks
    cut = [n for n in space.names if every["plan"].units[n].keep_ratio < 1.0]
    assert cut == ["layer3.0.conv1"]
    assert sum(k < 1.0 for k in none["keep"].values()) == 11  # all but conv1 without skips
    assert all(every["keep"][n] >= none["keep"][n] for n in space.names)
    assert sum(every["keep"].values()) > sum(none["keep"].values())
    assert space.fits(every["keep"], skip=every["plan"].skip)
    assert not space.fits(every["keep"])  # the skips' budget went into the channels


def test_skip_space_env_passes_check_env() -> None:
    env = PruningEnv(ResidualNet().eval(), X, "flops=0.6", error_scorer, skip_blocks=True)
    assert env.blocks == ("layer1.0", "layer1.1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize(
    ("name", "options"),
    [("residual", {"round_to": 4, "nm": (2, 4)}), ("resnet20", {"round_to": 4})],
)
@pytest.mark.parametrize("metric", ["flops", "params", "latency"])
def test_random_episodes_with_skipping_meet_the_budget(
    name: str, options: dict[str, Any], metric: str
) -> None:
    rng = random.Random(f"skip-{name}-{metric}")
    skipped = set()
    for episode in range(12):
        position = [0.0, 0.1, 0.5][episode % 3]
        space = make_space(name, metric, position, skip_blocks=True, **options)
        _, info = run_episode(PruningEnv(scorer=error_scorer, space=space), rng)
        plan: PruningPlan = info["plan"]
        skipped.add(plan.skip)
        nm = {n: unit.nm is not None for n, unit in plan.units.items()}
        assert space.fits(info["keep"], nm, skip=plan.skip)
        assert info["cost_fraction"] <= space.target.fraction
    assert len(skipped) > 1
