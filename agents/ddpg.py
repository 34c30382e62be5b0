"""AMC's DDPG agent on stable-baselines3, rolling out :class:`envs.PruningEnv`.

Faithful to AMC (He et al., ECCV 2018, and its reference code, mit-han-lab/amc:
``amc_search.py`` and ``lib/agent.py``); every default below is AMC's:

- actor and critic MLPs of 300-300 (SB3's ``net_arch=[300, 300]``; SB3's critic takes the
  concatenated (state, action), which equals AMC's two input layers summed), Adam with lr 1e-4
  for the actor and 1e-3 for the critic, tau 0.01, discount 1, batch 64;
- a replay buffer of 100 transitions per step of an episode (AMC's
  ``rmsize * len(prunable_idx)``: one step per unit, plus one per block with layer skipping);
- ``warmup`` (100) episodes of uniform random actions on [0, 1], then the actor's action plus
  truncated-normal noise on [0, 1] with sigma ``0.5 * 0.95 ** (episode - warmup)``
  (AMC's ``select_action``);
- the episode's final reward stored with EVERY transition of the episode; after warm-up, one
  gradient update per stored transition (AMC calls ``update_policy`` after each ``observe``);
- a plan measured over a latency target (which AMC's FLOPs clip never produced) is stored
  with the penalty reward it is told (``amc.search.penalty_of``: its reward at zero accuracy);
- a moving-average reward baseline, AMC's exact form: at each update the sampled batch's mean
  reward moves the baseline ``b <- b + alpha * (mean - b)`` (alpha 0.5; the first batch sets
  it) and the batch rewards minus ``b`` are what the critic learns from
  (AMC ``update_policy``). The buffer stores the raw rewards.

The networks, target networks, replay buffer and ``train`` are SB3's; the agent drives them
through ask/tell instead of ``learn``: ``ask(n)`` rolls out ``n`` episodes with the current
actor and noise (the env's scorer returns 0: the real reward comes from the evaluator), and
``tell`` stores the transitions with the measured reward and trains. The state is torch
``state_dict`` tensors plus JSON; SB3's pickle-based ``save`` is never used. The replay buffer
is not saved: :meth:`DDPGAgent.rebuild_replay` re-adds it from the stored trials on resume.

With layer skipping (a space built with ``skip_blocks``) the env's episodes start with one skip
step per skippable block (see :mod:`envs.pruning_env`); the proposals then carry
``skip:<block>`` = 1.0 or 0.0 in their params, as the Optuna agents' do.

Example:
    >>> agent = DDPGAgent(space, seed=0, warmup=10)
    >>> proposals = agent.ask(2)
    >>> agent.tell(proposals, [{"reward": -0.3}, {"reward": -0.2}])
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from agents import (
    Setting,
    check_settings,
    check_state_format,
    generator_state,
    restore_generator,
)
from agents.base import Agent, Proposal, Result, check_told
from amc.errors import ConfigError
from amc.measure import torch_threads

STATE_FORMAT = "amc.agent.ddpg/1"


class BaselineReplayBuffer(ReplayBuffer):
    """SB3's replay buffer, sampled with its own generator and with AMC's reward baseline.

    Each :meth:`sample` moves the baseline towards the batch's mean reward and returns the
    batch's rewards minus the baseline (``alpha`` None: no baseline).
    """

    def __init__(self, *args: Any, alpha: float | None = 0.5, seed: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.baseline: float | None = None
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        """A batch drawn uniformly with replacement, rewards minus the moving baseline."""
        upper = self.buffer_size if self.full else self.pos
        samples = self._get_samples(self.rng.integers(0, upper, size=batch_size), env=env)
        if self.alpha is None:
            return samples
        mean = float(samples.rewards.double().mean())
        if self.baseline is None:
            self.baseline = mean
        else:
            self.baseline += self.alpha * (mean - self.baseline)
        return samples._replace(rewards=samples.rewards - self.baseline)


class _AMCDDPG(DDPG):
    """SB3's DDPG with separate actor and critic learning rates (SB3 has one schedule)."""

    def _update_learning_rate(self, optimizers: Any) -> None:
        pass  # keep the per-optimizer rates set at construction


class DDPGAgent(Agent):
    """AMC's DDPG (see the module docstring); settings default to AMC's values."""

    name = "ddpg"
    SETTINGS = {
        "warmup": Setting(100, "int", low=0, help="episodes of uniform random actions"),
        "sigma": Setting(0.5, "float", low=0.0, help="initial truncated-normal noise sigma"),
        "sigma_decay": Setting(0.95, "float", low=0.0, high=1.0, help="sigma factor/episode"),
        "actor_lr": Setting(1e-4, "float", low=0.0, low_open=True, help="actor Adam lr"),
        "critic_lr": Setting(1e-3, "float", low=0.0, low_open=True, help="critic Adam lr"),
        "tau": Setting(0.01, "float", low=0.0, high=1.0, help="target network soft update"),
        "gamma": Setting(1.0, "float", low=0.0, high=1.0, help="discount"),
        "batch_size": Setting(64, "int", low=1, help="transitions per gradient update"),
        "replay_per_unit": Setting(100, "int", low=1, help="replay size = this x steps/episode"),
        "net_arch": Setting([300, 300], "int_list", help="hidden layers of actor and critic"),
        "baseline_alpha": Setting(
            0.5, "float", low=0.0, high=1.0, nullable=True, help="reward baseline; null: none"
        ),
        "updates_per_transition": Setting(1, "int", low=0, help="gradient updates/transition"),
        "device": Setting("cpu", "str", help="torch device of the networks"),
        "threads": Setting(1, "int", low=1, help="torch CPU threads while acting/training"),
        "store_taken_actions": Setting(
            False, "bool", help="learn from the env's clipped actions (AMC: the agent's own)"
        ),
    }

    def __init__(self, space: Any, seed: int = 0, **settings: Any) -> None:
        from envs import PruningEnv

        self.space = space
        self.seed = seed
        self.settings = check_settings(self.name, settings, self.SETTINGS)
        self.env = PruningEnv(scorer=_no_score, space=space)
        box = self.env.action_space
        assert isinstance(box, spaces.Box)
        self._bounds = (box.low.astype(np.float64), box.high.astype(np.float64))
        self.n_units = len(space.units)
        self.n_steps = self.env.episode_length  # the units, after the skippable blocks
        self.episode = 0
        self.rng = np.random.default_rng(seed)
        self.model = self._build_model()

    def _build_model(self) -> _AMCDDPG:
        s = self.settings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # weights depend on the seed only, not global state
            model = _AMCDDPG(
                "MlpPolicy",
                self.env,
                learning_rate=s["critic_lr"],
                buffer_size=s["replay_per_unit"] * self.n_steps,
                learning_starts=0,
                batch_size=s["batch_size"],
                tau=s["tau"],
                gamma=s["gamma"],
                replay_buffer_class=BaselineReplayBuffer,
                replay_buffer_kwargs={
                    "handle_timeout_termination": False,
                    "alpha": s["baseline_alpha"],
                    "seed": self.seed + 1,
                },
                policy_kwargs={"net_arch": list(s["net_arch"])},
                device=s["device"],
                verbose=0,
            )
        for group in model.actor.optimizer.param_groups:
            group["lr"] = s["actor_lr"]
        for group in model.critic.optimizer.param_groups:
            group["lr"] = s["critic_lr"]
        model.set_logger(Logger(folder=None, output_formats=[]))
        return model

    @property
    def replay_buffer(self) -> BaselineReplayBuffer:
        """SB3's replay buffer (raw rewards; the baseline is applied when sampling)."""
        buffer = self.model.replay_buffer
        assert isinstance(buffer, BaselineReplayBuffer)
        return buffer

    @property
    def baseline(self) -> float | None:
        """The moving-average reward baseline (None before the first update)."""
        return self.replay_buffer.baseline

    def sigma_at(self, episode: int) -> float | None:
        """Exploration sigma of ``episode`` (None during warm-up: uniform random actions)."""
        warmup = self.settings["warmup"]
        if episode < warmup:
            return None
        return self.settings["sigma"] * self.settings["sigma_decay"] ** (episode - warmup)

    # -- ask ---------------------------------------------------------------------------------

    def ask(self, n: int = 1) -> list[Proposal]:
        """Roll out ``n`` episodes with the current actor and noise; nothing is scored."""
        with torch_threads(self.settings["threads"]):
            return [self._rollout() for _ in range(n)]

    def _rollout(self) -> Proposal:
        episode = self.episode
        sigma = self.sigma_at(episode)
        observation, _ = self.env.reset()
        observations = [observation.tolist()]
        actions: list[list[float]] = []
        taken: list[Any] = []
        info: dict[str, Any] = {}
        done = False
        while not done:
            action = self._act(observation, sigma)
            observation, _, terminated, truncated, info = self.env.step(action.astype(np.float32))
            done = terminated or truncated
            observations.append(observation.tolist())
            actions.append(action.tolist())
            taken.append(_jsonable(info["action"]))
        plan = info["plan"].with_provenance(agent=self.name, episode=episode)
        params = {unit.name: float(plan.units[unit.name].keep_ratio) for unit in self.space.units}
        for unit in self.space.units:
            if self.space.offers_nm(unit):
                params[f"nm:{unit.name}"] = float(plan.units[unit.name].nm is not None)
        for block in self.space.skippable:
            params[f"skip:{block}"] = float(block in plan.skip)
        self.episode += 1
        return Proposal(
            plan=plan,
            params=params,
            episode=episode,
            info={
                "observations": observations,
                "actions": actions,
                "taken": taken,
                "sigma": sigma,
                "warmup": sigma is None,
            },
        )

    def _act(self, observation: np.ndarray, sigma: float | None) -> np.ndarray:
        low, high = self._bounds
        if sigma is None:
            return self.rng.uniform(low, high)
        policy = self.model.policy
        policy.set_training_mode(False)
        with torch.no_grad():
            obs = torch.as_tensor(observation, dtype=torch.float32, device=self.model.device)
            scaled = policy.actor(obs[None]).cpu().numpy()[0].astype(np.float64)
        mean = np.clip(low + 0.5 * (scaled + 1.0) * (high - low), low, high)
        if sigma <= 0:
            return mean
        action = truncnorm.rvs(
            (low - mean) / sigma,
            (high - mean) / sigma,
            loc=mean,
            scale=sigma,
            random_state=self.rng,
        )
        return np.clip(np.asarray(action, dtype=np.float64), low, high)

    # -- tell --------------------------------------------------------------------------------

    def tell(self, proposals: Sequence[Proposal], results: Sequence[Result]) -> None:
        """Store each episode's transitions with its final reward, and train after warm-up.

        A failed evaluation (None) stores nothing. A plan measured over the target
        (``"over_budget"``) is stored with the reward it was told, the penalty of
        ``amc.search.penalty_of``: AMC's clip never lets a plan over the budget, but a
        measured latency can, and an agent told nothing of it proposes it again.
        """
        check_told(proposals, results)
        with torch_threads(self.settings["threads"]):
            for proposal, result in zip(proposals, results, strict=True):
                if result is None:
                    continue
                train = proposal.episode >= self.settings["warmup"]
                self._store(proposal, float(result["reward"]), train=train)

    def _store(self, proposal: Proposal, reward: float, *, train: bool) -> None:
        observations, actions = self._transitions(proposal)
        low, high = self._bounds
        buffer = self.replay_buffer
        steps = len(actions)
        for step in range(steps):
            action = np.asarray(actions[step], dtype=np.float64)
            scaled = 2.0 * (action - low) / (high - low) - 1.0  # SB3 stores actions in [-1, 1]
            buffer.add(
                np.asarray([observations[step]], dtype=np.float32),
                np.asarray([observations[step + 1]], dtype=np.float32),
                scaled[None].astype(np.float32),
                np.asarray([reward], dtype=np.float32),
                np.asarray([float(step == steps - 1)], dtype=np.float32),
                [{}],
            )
            updates = self.settings["updates_per_transition"]
            if train and updates:
                self.model.train(gradient_steps=updates, batch_size=self.settings["batch_size"])

    def _transitions(self, proposal: Proposal) -> tuple[list[Any], list[Any]]:
        """The observations and actions of ``proposal``'s episode, as recorded in its info.

        A proposal whose info does not hold an episode of this env (another agent's, or one
        recorded before the space offered layer skipping) is replayed from its params instead:
        ``skip:<block>`` (absent: the block runs), the keep ratios and ``nm:<unit>``.
        """
        info = proposal.info
        key = "taken" if self.settings["store_taken_actions"] else "actions"
        observations, actions = info.get("observations"), info.get(key)
        width = self.env.observation_space.shape
        if (
            isinstance(observations, list)
            and isinstance(actions, list)
            and len(actions) == self.n_steps
            and len(observations) == self.n_steps + 1
            and all(np.shape(obs) == width for obs in observations)
            and all(np.shape(action) == self._bounds[0].shape for action in actions)
        ):
            return observations, actions
        return self._replayed(proposal.params)

    def _replayed(self, params: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
        """Roll the env out on the actions ``params`` stand for; the env's actions taken."""
        width = self._bounds[0].shape[0]
        steps: list[np.ndarray] = []
        for block in self.space.skippable:
            steps.append(np.zeros(width))
            steps[-1][0] = float(float(params.get(f"skip:{block}", 0.0)) >= 0.5)
        for unit in self.space.units:
            steps.append(np.zeros(width))
            steps[-1][0] = self.space.keep_to_action(float(params.get(unit.name, 1.0)))
            if width > 1:
                steps[-1][1] = float(params.get(f"nm:{unit.name}", 0.0))
        observation, _ = self.env.reset()
        observations, actions = [observation.tolist()], []
        for step in steps:
            observation, _, _, _, info = self.env.step(step.astype(np.float32))
            observations.append(observation.tolist())
            actions.append(_jsonable(info["action"]))
        return observations, actions

    def rebuild_replay(self, proposals_with_results: Iterable[tuple[Proposal, Result]]) -> int:
        """Re-add the transitions of evaluated proposals (in order) to the replay buffer.

        For resume: the buffer is not part of :meth:`state_dict`; pass every stored trial's
        proposal and result. Nothing is trained. Returns the number of episodes added. A
        trial recorded without this env's episode in its info is replayed from its params
        (a trial without ``skip:`` params skips no block).
        """
        added = 0
        for proposal, result in proposals_with_results:
            if result is None:
                continue
            self._store(proposal, float(result["reward"]), train=False)
            added += 1
        return added

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Network and optimizer tensors plus JSON values (no replay buffer, no pickle)."""
        model = self.model
        buffer = self.replay_buffer
        return {
            "format": STATE_FORMAT,
            "seed": self.seed,
            "settings": copy.deepcopy(self.settings),
            "episode": self.episode,
            "features": list(self.env.features),
            "sigma": self.sigma_at(self.episode),
            "baseline": buffer.baseline,
            "n_updates": int(model._n_updates),
            "rng": generator_state(self.rng),
            "replay_rng": generator_state(buffer.rng),
            "actor": _tensors(model.actor.state_dict()),
            "actor_target": _tensors(model.actor_target.state_dict()),
            "critic": _tensors(model.critic.state_dict()),
            "critic_target": _tensors(model.critic_target.state_dict()),
            "actor_optimizer": _optimizer_state(model.actor.optimizer),
            "critic_optimizer": _optimizer_state(model.critic.optimizer),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; then :meth:`rebuild_replay` refills the buffer."""
        from envs.pruning_env import FEATURES, SKIP_FEATURES

        check_state_format(state, STATE_FORMAT)
        ignored = ("threads", "device")  # where it runs, not what it learns
        ours = {k: v for k, v in self.settings.items() if k not in ignored}
        theirs = {k: v for k, v in dict(state["settings"]).items() if k not in ignored}
        if state["seed"] != self.seed or theirs != ours:
            raise ConfigError(
                f"Agent 'ddpg': the state was written with seed {state['seed']} and settings "
                f"{theirs}, but this agent has seed {self.seed} and settings {ours}. Build the "
                f"agent with the same seed and settings."
            )
        # states written before layer skipping have no "features": the observation was FEATURES
        features = list(state.get("features", FEATURES))
        if features != list(self.env.features):
            extra = [name for name in self.env.features if name not in features]
            raise ConfigError(
                f"Agent 'ddpg': the state was written for observations of {len(features)} "
                f"features, but this space's env observes {len(self.env.features)} "
                f"(new: {', '.join(extra) or 'none'}; {SKIP_FEATURES} come with layer "
                f"skipping). Resume with the space the state was written for (the same "
                f"skip_blocks), or start the search afresh."
            )
        model = self.model
        model.actor.load_state_dict(state["actor"])
        model.actor_target.load_state_dict(state["actor_target"])
        model.critic.load_state_dict(state["critic"])
        model.critic_target.load_state_dict(state["critic_target"])
        _load_optimizer(model.actor.optimizer, state["actor_optimizer"])
        _load_optimizer(model.critic.optimizer, state["critic_optimizer"])
        model._n_updates = int(state["n_updates"])
        self.episode = int(state["episode"])
        self.replay_buffer.baseline = (
            None if state["baseline"] is None else float(state["baseline"])
        )
        restore_generator(self.rng, state["rng"])
        restore_generator(self.replay_buffer.rng, state["replay_rng"])


def _no_score(plan: Any) -> float:
    """The env's scorer during rollouts: the evaluator measures the real reward later."""
    return 0.0


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in state.items()}


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer's state with string keys and list values, so it survives JSON."""
    state = optimizer.state_dict()
    return {
        "state": {
            str(index): {
                key: value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
                for key, value in entry.items()
            }
            for index, entry in state["state"].items()
        },
        "param_groups": [
            {key: list(value) if isinstance(value, tuple) else value for key, value in g.items()}
            for g in state["param_groups"]
        ],
    }


def _load_optimizer(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    optimizer.load_state_dict(
        {
            "state": {int(index): dict(entry) for index, entry in state["state"].items()},
            "param_groups": groups,
        }
    )
