"""Optuna samplers as agents: TPE, CMA-ES and NSGA-II over per-unit keep ratios.

Each agent keeps an in-memory Optuna study of its own (the search service records trials in
its own storage; this study is only the sampler's memory). ``ask`` is ``study.ask()`` with one
``suggest_float("keep:<unit>", lower_bound, 1)`` per unit (with the setting ``spread``, a
narrower box around the uniform plan: :meth:`OptunaAgent.keep_box`) and, where the space
enables N:M, one ``suggest_categorical("nm:<unit>", ["dense", "N:M"])`` per eligible unit,
and where it offers layer skipping (``skip_blocks``), one
``suggest_categorical("skip:<block>", ["run", "skip"])`` per skippable residual block; the
sampled keep ratios are repaired onto the budget with ``space.repair`` so every plan is
feasible, and the trial is told the value of the repaired plan (repair is part of the
objective).
``tell`` is ``study.tell(trial, value)``; a failed evaluation is ``TrialState.FAIL``.

A plan measured over its target is a completed trial that the sampler learns to avoid: its
value is what it was told (the penalty reward, for a single objective; the measured accuracy
and latency for two), and where the sampler takes constraints (TPE, NSGA-II) it carries the
constraint ``budget`` = 1 (``Trial.set_constraint``), which ranks it below every plan within
the target (TPE puts it in its "bad" density, NSGA-II's constrained domination puts it behind
every feasible plan). CMA-ES, which ignores constraints, learns from the penalty value alone.
A failed trial, by contrast, teaches a sampler nothing: TPE would go on proposing that region.
``pareto_front`` lists plans within the target only.

The first trial is the uniform plan at the budget (``start_uniform``, on by default: the centre
of the box, enqueued with ``study.enqueue_trial`` when the study's first trial is asked, which
``repair`` maps onto the uniform plan), the reference a non-uniform plan must beat: the sampler
knows from its first result where uniform pruning stands.

Plans live on a lattice (whole channels, and with a blocked latency table whole channel
blocks), so nearby samples often repair to the same plan: TPE, exploiting its best region,
would propose one plan over and over. A sample whose plan this agent was already told a result
for is told that result at once (the sampler learns the region is known) and the sampler draws
again, up to :data:`MAX_REPEATS` samples per proposal (a sampler that has converged on one plan
then proposes it again). Those tells are logged like any other, so resume re-executes them.

Objectives: single-objective agents maximise ``result["reward"]``. ``nsga2`` (and ``tpe`` with
``multi_objective=True``) maximise ``result["accuracy"]`` and minimise ``result["latency_ms"]``;
:meth:`OptunaAgent.pareto_front` lists the non-dominated trials.

Resume, exactly: the state is the seed, the settings and the log of every ask and tell with its
params and values (JSON). ``load_state_dict`` re-executes that log on a fresh study with a
sampler seeded as the original was, so the sampler draws the same numbers in the same order and
rebuilds its own memory (e.g. CMA-ES's optimizer, which Optuna keeps pickled inside the study:
it never leaves the process, and nothing pickled is read back); the next ``ask`` then equals the
original's. Each re-executed ask is checked against the logged params; if another Optuna version
draws differently, the logged trials are added instead with
``study.add_trial(create_trial(...))`` (same numbers, params and outcomes, asked-but-untold ones
left RUNNING), which resumes from the same data but not bit-identically, with a warning.

A checkpoint can lag the record (it is written every few seconds, so a ``kill -9`` loses the
last tells): :meth:`OptunaAgent.rebuild_replay` then tells the study the completed trials of the
record it has not heard of, re-asking the sampler where it can so that it goes on where the
original was, and fails the trials asked but never told (TPE's constant liar, Optuna 5's
default, would count them as bad points for good). A proposal is told to the trial of its
number only when the params match too; otherwise (e.g. the re-run of a trial in flight at the
kill) it is added as data.

Example:
    >>> agent = TPEAgent(space, seed=0, n_startup_trials=5)
    >>> proposals = agent.ask(2)
    >>> agent.tell(proposals, [{"reward": 0.7}, None])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from agents import Setting, check_settings, check_state_format
from agents.base import Agent, Proposal, Result, check_told
from amc.errors import ConfigError

DENSE = "dense"
RUN, SKIP = "run", "skip"  # a skippable block's two choices
PARETO_OBJECTIVES = ("accuracy", "latency_ms")
PARETO_DIRECTIONS: tuple[Literal["maximize", "minimize"], ...] = ("maximize", "minimize")
# Trials a lost checkpoint window can hold that did not complete (in flight at the kill, or
# failed): a re-ask skips at most this many to reach a recorded trial (see rebuild_replay).
MAX_REPLAY_GAP = 100
# Samples whose plan already has a result, told that result and drawn again, per proposal.
MAX_REPEATS = 20
# What a trial is told: its values, and whether its plan was measured over the target.
Told = tuple[list[float], bool]
# Every sampler's first trial: the uniform plan at the budget (see the module docstring).
START_UNIFORM = Setting(
    True, "bool", help="first trial: the uniform plan at the budget (enqueue_trial)"
)
# How far each unit's removed fraction may stray from the uniform plan's (see keep_box).
SPREAD = Setting(
    1.0,
    "float",
    low=0.0,
    high=1.0,
    low_open=True,
    help="box around the uniform plan: a unit removes (1 +- spread) times the centre's "
    "fraction before repair (1: the whole box [lower_bound, 1], as AMC)",
)


class OptunaAgent(Agent):
    """Shared ask/tell over an in-memory Optuna study; subclasses pick the sampler."""

    SETTINGS: Mapping[str, Setting] = {}
    multi_objective = False
    directions: tuple[Literal["maximize", "minimize"], ...] = ("maximize",)
    #: whether the sampler ranks trials by their constraints (see the module docstring)
    takes_constraints = True

    def __init__(self, space: Any, seed: int = 0, **settings: Any) -> None:
        self.space = space
        self.seed = seed
        self.settings = check_settings(self.name, settings, self.SETTINGS)
        if self.settings.get("multi_objective", type(self).multi_objective):
            self.multi_objective = True
            self.objectives = PARETO_OBJECTIVES
            self.directions = PARETO_DIRECTIONS
        self._log: list[dict[str, Any]] = []
        self._fresh_study()

    # -- the sampler -------------------------------------------------------------------------

    def _make_sampler(self) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def _fresh_study(self) -> None:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" per agent
        try:
            self.study = optuna.create_study(
                sampler=self._make_sampler(), directions=list(self.directions)
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
        self._running: dict[int, optuna.trial.Trial | int] = {}  # asked, not yet told
        self._plan_of: dict[int, tuple[Any, ...]] = {}  # trial number -> its plan's key
        self._known: dict[tuple[Any, ...], Told] = {}  # plan key -> what it was told
        self._over: set[int] = set()  # trial numbers told over budget
        self.episode = 0

    def _uniform_params(self) -> dict[str, Any]:
        """The centre of the box, one keep ratio for every unit (no N:M): ``repair`` scales
        every unit's removed fraction alike, so this is the uniform plan at the budget
        whatever the budget's calibration (the params do not depend on it, and resume
        re-executes the same first trial)."""
        keep = (self.space.lower_bound + 1.0) / 2.0
        first = {"keep": keep, "nm": DENSE, "skip": RUN}
        return {name: first[name.split(":", 1)[0]] for name in self._distributions()}

    def keep_box(self) -> tuple[float, float]:
        """The range each unit's keep ratio is sampled from.

        The centre ``c = (lower_bound + 1) / 2`` is the uniform plan (see
        :meth:`_uniform_params`); the box is ``1 - (1 - c) * (1 +- spread)``, so with the
        setting ``spread`` (where a sampler has it) every unit removes between ``1 - spread``
        and ``1 + spread`` times the centre's fraction before ``repair`` scales them all
        onto the budget by one factor. ``spread = 1`` (the default) is the whole box
        ``[lower_bound, 1]``, AMC's action space; a small spread searches near the uniform
        plan, where a short search is more likely to find a plan that beats it than in the
        whole box, whose random corners are mostly worse.
        """
        half = (1.0 - self.space.lower_bound) / 2.0
        spread = float(self.settings.get("spread", 1.0))
        if spread >= 1.0:  # exactly AMC's box, not 1 - (1 - lower_bound) rounded
            return self.space.lower_bound, 1.0
        return 1.0 - half * (1.0 + spread), 1.0 - half * (1.0 - spread)

    def _distributions(self) -> dict[str, Any]:
        low, high = self.keep_box()
        distributions: dict[str, Any] = {}
        for unit in self.space.units:
            if unit.channel_prunable:
                distributions[f"keep:{unit.name}"] = FloatDistribution(low, high)
        if self.space.nm is not None:
            pattern = _nm_text(self.space.nm)
            for unit in self.space.units:
                if self.space.offers_nm(unit):
                    distributions[f"nm:{unit.name}"] = CategoricalDistribution([DENSE, pattern])
        for block in self.space.skippable:
            distributions[f"skip:{block}"] = CategoricalDistribution([RUN, SKIP])
        return distributions

    # -- ask / tell --------------------------------------------------------------------------

    def ask(self, n: int = 1) -> list[Proposal]:
        """``n`` new trials, each sampled, repaired onto the budget and turned into a plan
        this agent has no result for yet (see :data:`MAX_REPEATS`)."""
        return [self._ask_new() for _ in range(n)]

    def _ask_new(self) -> Proposal:
        for attempt in range(1, MAX_REPEATS + 1):
            proposal = self._ask_one()
            number = proposal.info["trial"]
            known = self._known.get(self._plan_of[number])
            if known is None or attempt == MAX_REPEATS:  # a converged sampler: propose it
                return proposal
            self._tell_repeat(number, known)  # the sampler hears it, and draws again
        raise AssertionError("unreachable: the last attempt returns")

    def _tell_repeat(self, number: int, known: Told) -> None:
        """Tell trial ``number``, whose plan was evaluated before, that plan's result; it
        takes no episode (it is never proposed)."""
        self.episode -= 1
        self._log_tell(number, known, repeat=True)
        self._tell_one(number, known)

    def _log_tell(self, number: int | None, told: Told | None, repeat: bool = False) -> None:
        entry: dict[str, Any] = {"tell": number, "values": None if told is None else told[0]}
        if told is not None and told[1]:
            entry["over_budget"] = True
        if repeat:
            entry["repeat"] = True
        self._log.append(entry)

    def _ask_one(self) -> Proposal:
        if self.settings.get("start_uniform") and not self.study.get_trials(deepcopy=False):
            # the first trial of the study (enqueued here, not at creation: a waiting trial
            # would shift the numbers of trials added as data before the first ask)
            self.study.enqueue_trial(self._uniform_params())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = self.study.ask(self._distributions())
        raw = dict(trial.params)
        self._running[trial.number] = trial
        self._log.append({"ask": trial.number, "params": raw})
        proposal = self._proposal(trial.number, raw)
        self._plan_of[trial.number] = proposal.plan.key()
        return proposal

    def _proposal(self, number: int, raw: Mapping[str, Any]) -> Proposal:
        keep = {unit.name: float(raw.get(f"keep:{unit.name}", 1.0)) for unit in self.space.units}
        nm_choices = None
        if self.space.nm is not None:
            nm_choices = {
                unit.name: raw.get(f"nm:{unit.name}", DENSE) != DENSE
                for unit in self.space.units
                if self.space.offers_nm(unit)
            }
        skip = [block for block in self.space.skippable if raw.get(f"skip:{block}") == SKIP]
        repaired = self.space.repair(keep, nm_choices, skip=skip)
        keep = {name: float(ratio) for name, ratio in repaired.items()}
        plan = self.space.make_plan(
            keep, nm_choices, skip=skip, agent=self.name, episode=self.episode, trial=number
        )
        # the plan's ratios: make_plan may tighten a map that rounding pushed over budget
        params = {name: float(plan.units[name].keep_ratio) for name in keep}
        for name, unit_plan in plan.units.items():
            if nm_choices is not None and name in nm_choices:
                params[f"nm:{name}"] = float(unit_plan.nm is not None)
        for block in self.space.skippable:
            params[f"skip:{block}"] = float(block in plan.skip)
        proposal = Proposal(
            plan=plan,
            params=params,
            episode=self.episode,
            info={"trial": number, "optuna_params": dict(raw)},
        )
        self.episode += 1
        return proposal

    def tell(self, proposals: Sequence[Proposal], results: Sequence[Result]) -> None:
        """Tell each proposal's trial its value(s); ``None`` (or a non-finite value) fails it."""
        check_told(proposals, results)
        for proposal, result in zip(proposals, results, strict=True):
            told = self._told(result)
            raw = self._raw_params(proposal)
            number: Any = proposal.info.get("trial")
            if self._awaits(number, raw):
                self._log_tell(number, told)
                self._tell_one(number, told)
            else:
                # not asked of this study (another agent's, or the re-run of a trial asked
                # after the checkpoint it was restored from): record the data all the same
                self._add_told(raw, told)

    def _awaits(self, number: Any, raw: Mapping[str, Any]) -> bool:
        """Whether trial ``number`` was asked, is not yet told, and has the params ``raw``."""
        if not isinstance(number, int) or number not in self._running:
            return False
        return self.study.get_trials(deepcopy=False)[number].params == dict(raw)

    def _add_told(self, raw: Mapping[str, Any], told: Told | None) -> None:
        """Add a trial with these params and tell it, without sampling (logged as such)."""
        self._log.append({"ask": None, "params": dict(raw)})
        number = self._add_running(raw)
        self._running[number] = number
        self._log_tell(None, told)
        self._tell_one(number, told)

    def _raw_params(self, proposal: Proposal) -> dict[str, Any]:
        """The Optuna params behind a proposal: its own, else read off its decisions."""
        distributions = self._distributions()
        raw = proposal.info.get("optuna_params")
        if raw is not None:
            return {key: raw[key] for key in distributions if key in raw}
        params: dict[str, Any] = {}
        low, high = self.keep_box()
        for key, distribution in distributions.items():
            kind, name = key.split(":", 1)
            if kind == "keep" and name in proposal.params:
                params[key] = min(max(float(proposal.params[name]), low), high)
            elif kind == "nm" and key in proposal.params:
                params[key] = distribution.choices[1] if proposal.params[key] else DENSE
            elif kind == "skip" and key in proposal.params:
                params[key] = SKIP if proposal.params[key] else RUN
        return params

    def _tell_one(self, number: int, told: Told | None) -> None:
        trial = self._running.pop(number)
        key = self._plan_of.pop(number, None)
        if told is None:
            self.study.tell(trial, state=TrialState.FAIL)
            return
        values, over = list(told[0]), told[1]
        if key is not None:
            self._known[key] = (values, over)
        if over:
            self._over.add(number)
            if self.takes_constraints:
                if not isinstance(trial, optuna.trial.Trial):  # an added trial: its number
                    frozen = self.study.get_trials(deepcopy=False)[number]
                    trial = optuna.trial.Trial(self.study, frozen._trial_id)
                trial.set_constraint("budget", 1.0)
        self.study.tell(trial, values)

    def _told(self, result: Result) -> Told | None:
        """The values and the over-budget flag a result tells; None fails the trial."""
        values = self._values(result)
        if values is None or result is None:
            return None
        return values, bool(result.get("over_budget"))

    def _values(self, result: Result) -> list[float] | None:
        if result is None:
            return None
        keys = self.objectives
        missing = [key for key in keys if key not in result]
        if missing:
            raise ConfigError(
                f"Agent {self.name!r} optimises {', '.join(keys)}, but the result has no "
                f"{', '.join(missing)} (it has: {', '.join(sorted(result)) or 'nothing'}). "
                f"Use an evaluator that measures them, or a single-objective agent."
            )
        values = [float(result[key]) for key in keys]
        return values if all(math.isfinite(v) for v in values) else None

    def _add_running(self, raw: Mapping[str, Any]) -> int:
        """Add a RUNNING trial with the given params without sampling; return its number."""
        distributions = self._distributions()
        self.study.add_trial(
            create_trial(
                state=TrialState.RUNNING,
                params={key: raw[key] for key in distributions if key in raw},
                distributions={key: d for key, d in distributions.items() if key in raw},
            )
        )
        trial = self.study.get_trials(deepcopy=False)[-1]
        self._join_generation(trial)
        return trial.number

    def _join_generation(self, trial: FrozenTrial) -> None:
        """Make an added (unsampled) RUNNING trial count for a generation-based sampler."""

    # -- resume: the trials a lagging checkpoint missed ---------------------------------------

    def rebuild_replay(self, proposals_with_results: Iterable[tuple[Proposal, Result]]) -> int:
        """Tell the study the completed trials it has not heard of (resume after a kill).

        The checkpoint is written every few seconds, so after a ``kill -9`` the record can hold
        completed trials the restored agent was never told. On resume, after
        :meth:`load_state_dict` (or on a fresh agent) and before the next ask, pass every
        completed trial of the record, oldest first. A pair the study already holds as
        completed (the same trial number, params and values; or, for a trial added as data,
        the same params and values) is skipped, once per trial, so identical trials count as
        often as they were recorded. Each other pair, in order:

        - if its trial is RUNNING here (asked before the checkpoint), that trial is told;
        - if it is ahead of the study (asked after the checkpoint), the sampler is asked again,
          which with the same seed and history draws the same params, and the trial is told;
          trials between (failed, or in flight at the kill) are asked and failed. So the
          sampler goes on where the original was instead of repeating its draws;
        - otherwise, or once a re-ask drew other params (that ask is then failed), it is
          added with its params and values without sampling.

        Finally every trial still RUNNING (asked, but with no completed result in the record)
        is failed: TPE with ``constant_liar`` (Optuna 5's default) would count it as a bad
        point for good. The re-run of one in flight at the kill is told as data when it ends.
        Everything is logged, so :meth:`state_dict` keeps it and a second call adds nothing.

        Args:
            proposals_with_results: ``(proposal, result)`` per completed trial, the result a
                mapping with ``"reward"`` and the metrics (as told); ``None`` results are
                skipped.

        Returns:
            How many trials were told or added.
        """
        pairs = []
        for proposal, result in proposals_with_results:
            told = self._told(result)
            if told is not None:
                pairs.append((proposal, self._raw_params(proposal), told))
        unknown = self._unknown(pairs)
        replaying = True
        for proposal, raw, told in unknown:
            number: Any = proposal.info.get("trial")
            if self._awaits(number, raw):
                self._log_tell(number, told)
                self._tell_one(number, told)
                continue
            if replaying and "optuna_params" in proposal.info:
                outcome = self._ask_again(number, raw, told)
                if outcome == "told":
                    continue
                replaying = outcome == "not_next"
            self._add_told(raw, told)
        for number in sorted(self._running):
            self._fail(number)
        return len(unknown)

    def _fail(self, number: int) -> None:
        self._log.append({"tell": number, "values": None})
        self._tell_one(number, None)

    def _unknown(
        self, pairs: list[tuple[Proposal, dict[str, Any], Told]]
    ) -> list[tuple[Proposal, dict[str, Any], Told]]:
        """The pairs no completed trial of the study accounts for (each trial counts once)."""
        complete = {
            trial.number: trial
            for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        }
        left = []
        for pair in pairs:  # first the very trial the proposal came from
            proposal, raw, (values, _) = pair
            trial = complete.get(proposal.info.get("trial", -1))
            if trial is not None and _key(trial.params, trial.values) == _key(raw, values):
                del complete[trial.number]
            else:
                left.append(pair)
        by_data: dict[Any, int] = {}  # then trials added as data, matched by params and values
        for trial in complete.values():
            key = _key(trial.params, trial.values)
            by_data[key] = by_data.get(key, 0) + 1
        unknown = []
        for pair in left:
            key = _key(pair[1], pair[2][0])
            if by_data.get(key, 0) > 0:
                by_data[key] -= 1
            else:
                unknown.append(pair)
        return unknown

    def _ask_again(self, number: Any, raw: Mapping[str, Any], told: Told) -> str:
        """Re-ask the sampler up to trial ``number``; tell it when it drew ``raw`` again.

        Returns ``"told"``, ``"not_next"`` (``number`` is not ahead of the study: nothing
        asked) or ``"diverged"`` (the sampler drew other params: that ask is failed).
        """
        ahead = len(self.study.get_trials(deepcopy=False))
        if not isinstance(number, int) or not 0 <= number - ahead <= MAX_REPLAY_GAP:
            return "not_next"
        for _ in range(number - ahead):
            # no completed result: a repeat of a known plan (told its result, as ask did),
            # failed (told at once, as a sequential search does) or in flight at the kill
            # (its re-run is told as data)
            skipped = self._ask_one().info["trial"]
            known = self._known.get(self._plan_of[skipped])
            if known is not None:
                self._tell_repeat(skipped, known)
            else:
                self._fail(skipped)
        drawn = self._ask_one()
        if dict(drawn.info["optuna_params"]) != dict(raw):
            self._fail(number)
            return "diverged"
        self._log_tell(number, told)
        self._tell_one(number, told)
        return "told"

    # -- results -----------------------------------------------------------------------------

    def pareto_front(self) -> list[dict[str, Any]]:
        """The non-dominated completed trials within the target (the best one for a single
        objective).

        Returns:
            One dict per trial: ``trial`` (number), ``params`` (Optuna's, before repair) and
            ``values`` keyed by objective name.
        """
        return [
            {
                "trial": trial.number,
                "params": dict(trial.params),
                "values": dict(zip(self.objectives, trial.values, strict=True)),
            }
            for trial in sorted(self.study.best_trials, key=lambda t: t.number)
            if trial.number not in self._over  # CMA-ES's best, when every plan was over
        ]

    # -- state -------------------------------------------------------------------------------

    def _format(self) -> str:
        return f"amc.agent.{self.name}/1"

    def state_dict(self) -> dict[str, Any]:
        """Seed, settings and the ask/tell log (JSON only); see the module docstring."""
        return {
            "format": self._format(),
            "seed": self.seed,
            "settings": dict(self.settings),
            "log": [dict(entry) for entry in self._log],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Rebuild the study by re-executing the logged asks and tells (exact resume)."""
        check_state_format(state, self._format())
        if state["seed"] != self.seed or dict(state["settings"]) != self.settings:
            raise ConfigError(
                f"Agent {self.name!r}: the state was written with seed {state['seed']} and "
                f"settings {dict(state['settings'])}, but this agent has seed {self.seed} and "
                f"settings {self.settings}. Build the agent with the same seed and settings."
            )
        log = [dict(entry) for entry in state["log"]]
        self._fresh_study()
        self._log = []
        if not self._reexecute(log):
            warnings.warn(
                f"Agent {self.name!r}: this Optuna samples differently from the one that wrote "
                f"the state; resuming from the told trials (same data, not bit-identical).",
                stacklevel=2,
            )
            self._rebuild_from_data(log)

    def _reexecute(self, log: list[dict[str, Any]]) -> bool:
        anonymous = None
        for entry in log:
            if "ask" in entry and entry["ask"] is None:
                anonymous = self._add_running(entry["params"])
                self._running[anonymous] = anonymous
                self._log.append(dict(entry))
            elif "ask" in entry:
                proposal = self._ask_one()
                if proposal.info["trial"] != entry["ask"] or dict(
                    proposal.info["optuna_params"]
                ) != dict(entry["params"]):
                    return False
            else:
                number = entry["tell"] if entry["tell"] is not None else anonymous
                if number not in self._running:
                    return False
                self._tell_one(number, _logged(entry))
                self._log.append(dict(entry))
                if entry.get("repeat"):
                    self.episode -= 1
        return True

    def _rebuild_from_data(self, log: list[dict[str, Any]]) -> None:
        """Add the logged trials without sampling, keeping their numbers and outcomes."""
        self._fresh_study()
        anonymous: int | None = None
        for entry in log:
            if "ask" in entry:
                number = self._add_running(entry["params"])
                self._running[number] = number
                if entry["ask"] is None:
                    anonymous = number
                else:
                    self.episode += 1
            else:
                told = entry["tell"] if entry["tell"] is not None else anonymous
                assert told is not None, "a logged tell always follows its ask"
                self._tell_one(told, _logged(entry))
                if entry.get("repeat"):
                    self.episode -= 1
        self._log = [dict(entry) for entry in log]


class TPEAgent(OptunaAgent):
    """Optuna's Tree-structured Parzen Estimator (multivariate, Optuna's defaults)."""

    name = "tpe"
    SETTINGS = {
        "n_startup_trials": Setting(10, "int", low=0, help="random trials before TPE"),
        "start_uniform": START_UNIFORM,
        "spread": SPREAD,
        "n_ei_candidates": Setting(24, "int", low=1, help="candidates scored per suggestion"),
        "multivariate": Setting(True, "bool", help="joint (multivariate) TPE"),
        "multi_objective": Setting(
            False, "bool", help="optimise accuracy (max) and latency_ms (min) together"
        ),
    }

    def _make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=self.seed,
            n_startup_trials=self.settings["n_startup_trials"],
            n_ei_candidates=self.settings["n_ei_candidates"],
            multivariate=self.settings["multivariate"],
        )


class CmaEsAgent(OptunaAgent):
    """Optuna's CMA-ES over the keep ratios (N:M choices sampled independently)."""

    name = "cmaes"
    SETTINGS = {
        "n_startup_trials": Setting(1, "int", low=0, help="independent trials before CMA-ES"),
        "start_uniform": START_UNIFORM,
        "spread": SPREAD,
        "sigma0": Setting(
            None, "float", low=0.0, low_open=True, nullable=True, help="initial step size"
        ),
        "popsize": Setting(None, "int", low=2, nullable=True, help="population size"),
    }

    takes_constraints = False  # CmaEsSampler warns that it ignores them

    def _make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.CmaEsSampler(
            seed=self.seed,
            n_startup_trials=self.settings["n_startup_trials"],
            sigma0=self.settings["sigma0"],
            popsize=self.settings["popsize"],
            warn_independent_sampling=False,
        )

    def _join_generation(self, trial: FrozenTrial) -> None:
        # CMA-ES updates its distribution from the trials tagged with its current generation
        # (the newest tag; 0 before its first one) and ignores the others: an added trial
        # joins it, as the sampled trials it stands for would have. The key and the call are
        # the sampler's own (Optuna has no public API for it); without the key, data only.
        key = getattr(self.study.sampler, "_attr_key_generation", None)
        if isinstance(key, str):
            tags = [t.system_attrs.get(key, 0) for t in self.study.get_trials(deepcopy=False)]
            self.study._storage.set_trial_system_attr(trial._trial_id, key, max(tags))


class NSGA2Agent(OptunaAgent):
    """Optuna's NSGA-II: the accuracy-vs-latency Pareto front."""

    name = "nsga2"
    multi_objective = True
    objectives = PARETO_OBJECTIVES
    directions = PARETO_DIRECTIONS
    SETTINGS = {
        "population_size": Setting(50, "int", low=2, help="individuals per generation"),
        "start_uniform": START_UNIFORM,
        "spread": SPREAD,
        "crossover_prob": Setting(0.9, "float", low=0.0, high=1.0, help="crossover probability"),
        "mutation_prob": Setting(
            None, "float", low=0.0, high=1.0, nullable=True, help="per-parameter mutation"
        ),
    }

    def _make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(
            seed=self.seed,
            population_size=self.settings["population_size"],
            crossover_prob=self.settings["crossover_prob"],
            mutation_prob=self.settings["mutation_prob"],
        )

    def _join_generation(self, trial: FrozenTrial) -> None:
        # NSGA-II builds its populations from generation tags only: tag an added trial as the
        # sampler tags a new one (BaseGASampler.get_trial_generation; without it, data only).
        assign = getattr(self.study.sampler, "get_trial_generation", None)
        if assign is not None:
            assign(self.study, trial)


def _logged(entry: Mapping[str, Any]) -> Told | None:
    """What a logged tell told: its values and over-budget flag, None for a failure."""
    if entry["values"] is None:
        return None
    return list(entry["values"]), bool(entry.get("over_budget"))


def _key(params: Mapping[str, Any], values: Sequence[float] | None) -> Any:
    """A trial's identity as data: its params and values."""
    return tuple(sorted(params.items())), tuple(values or ())


def _nm_text(nm: Any) -> str:
    n, m = nm
    return f"{n}:{m}"
