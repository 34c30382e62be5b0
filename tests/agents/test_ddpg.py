"""DDPG is AMC's: defaults, reward broadcast, the moving baseline, warm-up and decaying noise;
plans measured over the target are learnt with their penalty."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm
from torch import nn

from agents.base import Proposal
from agents.ddpg import DDPGAgent
from amc.errors import ConfigError
from amc.evaluate import EvalResult
from amc.experiment import _told
from amc.search import run_search
from amc.space import SearchSpace
from amc.study import SearchRecord
from tests.agents.conftest import HiddenSensitivity, random_sensitivities, round_trip

SMALL = {"net_arch": [16, 16], "batch_size": 4}


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_defaults_are_amc_s(lenet_space) -> None:
    agent = DDPGAgent(lenet_space)
    units = len(lenet_space.units)
    obs = agent.env.observation_space.shape[0]
    model = agent.model
    assert agent.settings["warmup"] == 100
    assert (model.tau, model.gamma, model.batch_size) == (0.01, 1.0, 64)
    assert agent.replay_buffer.buffer_size == 100 * units
    assert linear_shapes(model.actor) == [(obs, 300), (300, 300), (300, 1)]
    assert linear_shapes(model.critic) == [(obs + 1, 300), (300, 300), (300, 1)]
    assert [g["lr"] for g in model.actor.optimizer.param_groups] == [1e-4]
    assert [g["lr"] for g in model.critic.optimizer.param_groups] == [1e-3]
    assert agent.replay_buffer.alpha == 0.5
    assert agent.sigma_at(99) is None
    assert agent.sigma_at(100) == 0.5


def test_the_final_reward_goes_to_every_transition(lenet_space) -> None:
    agent = DDPGAgent(lenet_space, **SMALL)  # still in warm-up: nothing trains
    units = len(lenet_space.units)
    proposals = agent.ask(3)
    agent.tell(proposals, [{"reward": 0.75}, None, {"reward": -0.25}])
    buffer = agent.replay_buffer
    assert buffer.pos == 2 * units  # the failed episode stores nothing
    assert buffer.rewards[: 2 * units, 0].tolist() == [0.75] * units + [-0.25] * units
    assert buffer.dones[: 2 * units, 0].tolist() == ([0.0] * (units - 1) + [1.0]) * 2
    first = proposals[0].info
    np.testing.assert_array_equal(buffer.observations[:units, 0], first["observations"][:-1])
    np.testing.assert_array_equal(buffer.next_observations[:units, 0], first["observations"][1:])
    # SB3 stores actions scaled to [-1, 1]; the agent's actions are on [0, 1]
    expected = 2.0 * np.asarray(first["actions"], dtype=np.float32) - 1.0
    np.testing.assert_allclose(buffer.actions[:units, 0], expected, atol=1e-6)
    assert agent.model._n_updates == 0


def test_one_update_per_transition_after_warmup(lenet_space) -> None:
    agent = DDPGAgent(lenet_space, warmup=1, **SMALL)
    units = len(lenet_space.units)
    proposals = agent.ask(3)  # episode 0 is warm-up, 1 and 2 are the policy's
    agent.tell(proposals, [{"reward": 1.0}, {"reward": 0.5}, {"reward": 0.25}])
    assert agent.model._n_updates == 2 * units
    # SB3's train() would reset both optimizers to one rate; the agent keeps AMC's two
    assert agent.model.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert agent.model.critic.optimizer.param_groups[0]["lr"] == 1e-3


def test_baseline_is_amc_s_batch_moving_average(lenet_space) -> None:
    agent = DDPGAgent(lenet_space, **SMALL)
    agent.tell(agent.ask(2), [{"reward": 1.0}, {"reward": 3.0}])
    buffer = agent.replay_buffer
    raw = buffer.rewards[: buffer.pos, 0].astype(np.float64)
    twin = np.random.default_rng()
    twin.bit_generator.state = buffer.rng.bit_generator.state
    assert buffer.baseline is None

    first = twin.integers(0, buffer.pos, size=4)
    batch = buffer.sample(4)
    mean1 = raw[first].mean()
    assert buffer.baseline == pytest.approx(mean1, abs=1e-12)  # the first batch sets it
    np.testing.assert_allclose(batch.rewards[:, 0].numpy(), raw[first] - mean1, atol=1e-6)

    second = twin.integers(0, buffer.pos, size=4)
    batch = buffer.sample(4)
    expected = mean1 + 0.5 * (raw[second].mean() - mean1)  # b <- b + alpha * (mean - b)
    assert buffer.baseline == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(batch.rewards[:, 0].numpy(), raw[second] - expected, atol=1e-6)
    # the buffer itself keeps the raw rewards
    assert buffer.rewards[: buffer.pos, 0].tolist() == raw.tolist()


def test_baseline_of_equal_rewards_centres_them_at_zero(lenet_space) -> None:
    agent = DDPGAgent(lenet_space, warmup=0, **SMALL)
    agent.tell(agent.ask(1), [{"reward": -2.5}])
    assert agent.baseline == -2.5
    assert agent.model._n_updates == len(lenet_space.units)


def test_no_baseline_when_alpha_is_null(lenet_space) -> None:
    agent = DDPGAgent(lenet_space, baseline_alpha=None, **SMALL)
    agent.tell(agent.ask(1), [{"reward": 0.5}])
    assert agent.replay_buffer.sample(3).rewards[:, 0].tolist() == [0.5, 0.5, 0.5]
    assert agent.baseline is None


def test_warmup_is_uniform_random_then_noise_decays_per_episode(lenet_space) -> None:
    units = len(lenet_space.units)
    agent = DDPGAgent(lenet_space, seed=7, warmup=3, **SMALL)
    proposals = agent.ask(8)
    sigmas = [p.info["sigma"] for p in proposals]
    assert sigmas == [None, None, None] + [0.5 * 0.95**k for k in range(5)]
    assert [p.info["warmup"] for p in proposals] == [True] * 3 + [False] * 5
    warm = [a[0] for p in proposals[:3] for a in p.info["actions"]]
    assert warm == np.random.default_rng(7).uniform(0.0, 1.0, size=3 * units).tolist()
    for proposal in proposals[3:]:
        assert all(0.0 <= a[0] <= 1.0 for a in proposal.info["actions"])


def test_policy_actions_without_noise_are_the_actor_s(lenet_space) -> None:
    agent = DDPGAgent(lenet_space, warmup=0, sigma=0.0, **SMALL)
    [proposal] = agent.ask(1)
    observations = torch.tensor(proposal.info["observations"][:-1])
    with torch.no_grad():
        expected = (agent.model.actor(observations).numpy() + 1.0) / 2.0
    np.testing.assert_allclose(proposal.info["actions"], expected, atol=1e-6)


def test_exploration_noise_is_a_truncated_normal_on_0_1(lenet_space) -> None:
    agent = DDPGAgent(lenet_space, warmup=0, **SMALL)
    observation, _ = agent.env.reset()
    mean = float(agent._act(observation, 0.0)[0])
    draws = np.array([agent._act(observation, 0.5)[0] for _ in range(2000)])
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    law = truncnorm((0.0 - mean) / 0.5, (1.0 - mean) / 0.5, loc=mean, scale=0.5)
    assert draws.mean() == pytest.approx(law.mean(), abs=0.02)
    assert draws.std() == pytest.approx(law.std(), abs=0.02)


def three_rounds(space: Any) -> tuple[DDPGAgent, list[Any]]:
    """A DDPG agent after three rounds of ask(2)/tell, and its (proposal, result) history."""
    scorer = HiddenSensitivity(space, random_sensitivities(space))
    agent = DDPGAgent(space, warmup=1, **SMALL)
    history = []
    for _ in range(3):
        proposals = agent.ask(2)
        results = [scorer(p.plan) for p in proposals]
        agent.tell(proposals, results)
        history += list(zip(proposals, results, strict=True))
    return agent, history


def test_rebuild_replay_restores_the_buffer(lenet_space) -> None:
    agent, history = three_rounds(lenet_space)

    resumed = DDPGAgent(lenet_space, warmup=1, **SMALL)
    resumed.load_state_dict(agent.state_dict())
    assert resumed.rebuild_replay(history) == 6
    old, new = agent.replay_buffer, resumed.replay_buffer
    assert (new.pos, new.full) == (old.pos, old.full)
    for field in ("observations", "next_observations", "actions", "rewards", "dones"):
        np.testing.assert_array_equal(getattr(new, field), getattr(old, field))
    assert resumed.model._n_updates == agent.model._n_updates
    assert resumed.baseline == agent.baseline


def test_store_taken_actions_learns_from_the_clipped_actions(chain_space) -> None:
    agent = DDPGAgent(chain_space, store_taken_actions=True, **SMALL)
    proposals = agent.ask(3)  # a 30% FLOPs budget: random actions get clipped
    agent.tell(proposals, [{"reward": 1.0}] * 3)
    taken = np.asarray([a for p in proposals for a in p.info["taken"]], dtype=np.float32)
    asked = np.asarray([a for p in proposals for a in p.info["actions"]], dtype=np.float32)
    np.testing.assert_allclose(
        agent.replay_buffer.actions[: len(taken), 0], 2 * taken - 1, atol=1e-6
    )
    assert np.any(np.abs(taken - asked) > 1e-3)  # the stored actions are not the agent's own


class OverBudgetEveryOther:
    """An Evaluator (the part run_search uses) whose odd-numbered trials measure over budget."""

    capacity = 1

    def __init__(self) -> None:
        self.queue: list[tuple[int, object]] = []

    def submit(self, tag: int, plan: object) -> None:
        self.queue.append((tag, plan))

    def poll(self, timeout: float | None = None) -> list[tuple[int, EvalResult]]:
        done, self.queue = self.queue, []
        over = EvalResult(status="over_budget", accuracy=0.9, latency_ms=2.0, reason="over_budget")
        return [
            (tag, over if tag % 2 else EvalResult(status="ok", accuracy=0.5 + 0.1 * tag))
            for tag, _ in done
        ]

    def cancel_all(self) -> list[int]:
        return []


def test_plans_over_the_target_are_learnt_with_their_penalty_and_replayed(
    lenet_space, tmp_path
) -> None:
    agent = DDPGAgent(lenet_space, warmup=1, **SMALL)
    units = len(lenet_space.units)
    attrs = {"fingerprint": "sha256:0", "config": {}, "objectives": ["reward"]}
    record = SearchRecord.create(f"sqlite:///{tmp_path}/amc.db", "over", ["maximize"], attrs)
    outcome = run_search(agent, OverBudgetEveryOther(), record, episodes=3, progress=False)
    assert (outcome.completed, outcome.failed, outcome.over_budget) == (3, 0, 2)
    # trials 0 ok, 1 over, 2 ok, 3 over, 4 ok: every one stored, the over-budget ones at -1
    # (the reward of no accuracy), not at their measured 0.9
    rewards = agent.replay_buffer.rewards[: 5 * units, 0].tolist()
    assert rewards == [
        pytest.approx(r) for r in (-0.5, -1.0, -0.3, -1.0, -0.1) for _ in range(units)
    ]
    assert agent.model._n_updates == 4 * units  # every episode after warm-up trains

    pairs = _told(record, Proposal, "err")
    assert [r and r.get("over_budget") for _, r in pairs] == [None, 1.0, None, 1.0, None]
    resumed = DDPGAgent(lenet_space, warmup=1, **SMALL)
    resumed.load_state_dict(agent.state_dict())
    assert resumed.rebuild_replay(pairs) == 5
    for field in ("observations", "actions", "rewards", "dones"):
        np.testing.assert_array_equal(
            getattr(resumed.replay_buffer, field), getattr(agent.replay_buffer, field)
        )


# ---------------------------------------------------------------------------------------------
# layer skipping: one skip step per block before the units, skip: params, replay from params
# ---------------------------------------------------------------------------------------------


def test_proposals_carry_the_skip_decisions_of_the_first_steps(residual_skip_space) -> None:
    space = residual_skip_space
    blocks = space.skippable
    assert blocks == ("layer1.0", "layer1.1")
    agent = DDPGAgent(space, seed=2, warmup=4, **SMALL)
    steps = len(blocks) + len(space.units)
    assert agent.n_steps == steps
    assert agent.replay_buffer.buffer_size == 100 * steps
    obs = agent.env.observation_space.shape[0]
    assert linear_shapes(agent.model.actor)[0] == (obs, 16)
    proposals = agent.ask(8)  # 4 of warm-up, 4 of the policy
    skipped = set()
    for proposal in proposals:
        actions = proposal.info["actions"]
        assert len(actions) == steps and len(proposal.info["observations"]) == steps + 1
        expected = tuple(b for b, a in zip(blocks, actions, strict=False) if a[0] >= 0.5)
        assert proposal.plan.skip == expected
        for block in blocks:
            assert proposal.params[f"skip:{block}"] == float(block in expected)
        assert proposal.info["taken"][:2] == [[float(b in expected)] for b in blocks]
        assert set(proposal.params) == {*space.names, "skip:layer1.0", "skip:layer1.1"}
        keep = {n: u.keep_ratio for n, u in proposal.plan.units.items() if n in space.names}
        assert space.fits(keep, skip=proposal.plan.skip)
        skipped.add(proposal.plan.skip)
    assert len(skipped) > 1


def test_rebuild_replay_restores_the_buffer_with_skip_steps(residual_skip_space) -> None:
    space = residual_skip_space
    agent, history = three_rounds(space)

    resumed = DDPGAgent(space, warmup=1, **SMALL)
    resumed.load_state_dict(round_trip(agent.state_dict()))
    assert resumed.rebuild_replay(history) == 6
    old, new = agent.replay_buffer, resumed.replay_buffer
    assert new.pos == old.pos == 6 * (2 + len(space.units))
    for field in ("observations", "next_observations", "actions", "rewards", "dones"):
        np.testing.assert_array_equal(getattr(new, field), getattr(old, field))
    assert signature(resumed.ask(2)) == signature(agent.ask(2))


def signature(proposals: list[Proposal]) -> list[object]:
    return [(p.episode, p.params, p.plan.to_json()) for p in proposals]


def test_rebuild_replay_maps_skip_params_to_skip_actions(residual_skip_space) -> None:
    """Trials recorded without the env's episode (another agent's, or from before the space
    offered skipping) are replayed from their params: skip:<block> and the keep ratios."""
    space = residual_skip_space
    agent = DDPGAgent(space, seed=5, warmup=10, store_taken_actions=True, **SMALL)
    proposals = agent.ask(6)
    skips = [p.plan.skip for p in proposals]
    assert () in skips and any(skips)
    bare = [Proposal(plan=p.plan, params=p.params, episode=p.episode) for p in proposals]
    skipping = next(p for p in proposals if p.plan.skip)
    without = {k: v for k, v in skipping.params.items() if not k.startswith("skip:")}
    older = Proposal(plan=skipping.plan, params=without, episode=6)
    rewards = [{"reward": -0.1 * i} for i in range(7)]

    fresh = DDPGAgent(space, seed=5, warmup=10, store_taken_actions=True, **SMALL)
    assert fresh.rebuild_replay(zip([*bare, older], rewards, strict=True)) == 7
    recorded = DDPGAgent(space, seed=5, warmup=10, store_taken_actions=True, **SMALL)
    recorded.rebuild_replay(zip(proposals, rewards, strict=False))
    steps = 2 + len(space.units)
    new, old = fresh.replay_buffer, recorded.replay_buffer
    assert new.pos == 7 * steps
    # the recorded episodes' taken actions and observations, recovered from the params alone
    np.testing.assert_allclose(new.actions[: 6 * steps], old.actions[: 6 * steps], atol=1e-5)
    np.testing.assert_allclose(
        new.observations[: 6 * steps], old.observations[: 6 * steps], atol=1e-5
    )
    skip_actions = new.actions[: 7 * steps, 0, 0].reshape(7, steps)[:, :2]
    expected = [[2.0 * (b in s) - 1.0 for b in space.skippable] for s in [*skips, ()]]
    assert skip_actions.tolist() == expected  # a trial without skip: params skips nothing


def test_a_state_for_another_observation_layout_is_refused(residual_skip_space) -> None:
    space = residual_skip_space
    plain = SearchSpace.build(space.model, space.example_inputs, space.target, graph=space.graph)
    state = DDPGAgent(plain, **SMALL).state_dict()
    message = (
        "Agent 'ddpg': the state was written for observations of 20 features, but this "
        "space's env observes 23 (new: skip_step, block_share, in_skipped_block; "
        "('skip_step', 'block_share', 'in_skipped_block') come with layer skipping). Resume "
        "with the space the state was written for (the same skip_blocks), or start the search "
        "afresh."
    )
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        DDPGAgent(space, **SMALL).load_state_dict(state)
    del state["features"]  # a state written before layer skipping: the plain layout
    DDPGAgent(plain, **SMALL).load_state_dict(state)
