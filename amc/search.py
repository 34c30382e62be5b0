"""run_search: the loop over agent.ask / evaluator / record / agent.tell.

Like Optuna's ``optimize`` is a plain loop over ``ask`` and ``tell``, this is the same loop with
an evaluator in the middle: free evaluator slots are filled with the agent's proposals, each
proposal becomes one trial in the study before it is evaluated, and each result is recorded and
told to the agent as it arrives. Trials left running by a crash are re-run first, so a resumed
study ends with exactly the requested number of completed episodes.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any, Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from amc.errors import AmcError
from amc.evaluate import EvalResult, Evaluator

REWARDS = ("err", "flops", "latency", "accuracy")


class SearchAgent(Protocol):
    """What the loop needs of an agent (agents.base.Agent satisfies it)."""

    name: str
    objectives: tuple[str, ...]

    def ask(self, n: int = 1) -> list[Any]: ...

    def tell(self, proposals: Sequence[Any], results: Sequence[Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...


class SearchFailed(AmcError, RuntimeError):
    """Too many evaluations failed for the search to be meaningful."""


@dataclass
class SearchOutcome:
    """How a call to :func:`run_search` ended."""

    completed: int
    failed: int
    interrupted: bool
    elapsed_s: float
    rewards: list[float] = field(default_factory=list)
    over_budget: int = 0  # plans measured over the target: recorded, not counted as episodes


def reward_of(result: EvalResult, kind: str = "err") -> float:
    """AMC's rewards: R_err = -error, R_FLOPs = -error*log(FLOPs), latency -error*log(ms)."""
    quality = result.accuracy if result.accuracy is not None else (result.fidelity or 0.0)
    error = 1.0 - quality
    if kind == "err":
        return -error
    if kind == "flops":
        return -error * math.log(max(result.flops or 1, 1))
    if kind == "latency":
        return -error * math.log(max(result.latency_ms or 1e-3, 1e-3) * 1e3)  # log of us
    if kind == "accuracy":
        return quality
    raise AmcError(f"Unknown reward {kind!r}; expected one of {', '.join(REWARDS)}.")


def penalty_of(result: EvalResult, kind: str = "err") -> float:
    """The reward of a plan measured over its target: its reward at zero accuracy.

    AMC's clip keeps every plan within the budget by construction; with a measured latency a
    plan can still land over it (the estimate was off, or the machine was noisy). An agent
    is told this reward for it, that of a model that gets nothing right, so it learns to leave
    that region (the Optuna agents also mark the trial infeasible, see
    :mod:`agents.optuna_agent`).
    """
    return reward_of(replace(result, accuracy=0.0, fidelity=None), kind)


def told_result(result: EvalResult, kind: str = "err") -> dict[str, float] | None:
    """What the agent is told of one evaluation (the protocol of :mod:`agents.base`).

    ``{"reward": ..., **metrics}`` when ok; for a plan measured over the target the same with
    the reward :func:`penalty_of` and ``"over_budget": 1.0``; None when the evaluation failed.
    """
    if result.ok:
        return {"reward": reward_of(result, kind), **_metrics(result)}
    if result.status == "over_budget":
        return {"reward": penalty_of(result, kind), "over_budget": 1.0, **_metrics(result)}
    return None


def objective_values(result: EvalResult, objectives: Sequence[str], reward: str) -> list[float]:
    """The values recorded for a trial, in the agent's objective order."""
    values = []
    for name in objectives:
        if name == "reward":
            values.append(reward_of(result, reward))
        elif name == "accuracy":
            quality = result.accuracy if result.accuracy is not None else result.fidelity
            values.append(float("nan") if quality is None else quality)
        else:
            values.append(float(getattr(result, name)))
    return values


def run_search(
    agent: SearchAgent,
    evaluator: Evaluator,
    record: Any,
    *,
    episodes: int,
    reward: str = "err",
    max_time: float | None = None,
    progress: bool = True,
    on_result: Callable[[Any, EvalResult], None] | None = None,
    max_failures: int | None = None,
) -> SearchOutcome:
    """Run until the study holds ``episodes`` completed trials (or ``max_time`` seconds pass).

    Args:
        agent: proposes plans (ask) and learns from results (tell).
        evaluator: evaluates plans, possibly in parallel (local or Ray).
        record: the study (:class:`amc.study.SearchRecord`) every evaluation is recorded in.
        episodes: completed trials the study should hold at the end.
        reward: the reward form for single-objective agents (err, flops, latency, accuracy).
        max_time: wall-time budget in seconds: no plan is asked after it; plans already in
            flight, the ones queued ahead (``evaluator.queue_ahead``) included, still finish.
        progress: show a live bar with episodes, best-so-far, evals/min and ETA.
        on_result: called with each (proposal, result) as it is recorded, before the agent
            is told (e.g. to calibrate the latency estimate the agent's next plans use).
        max_failures: stop with :class:`SearchFailed` after this many failed evaluations
            (default: ``max(10, episodes)``).

    Ctrl-C stops cleanly: in-flight trials are recorded as failed ("interrupted"), the agent's
    checkpoint is written, and :class:`KeyboardInterrupt` is re-raised for the caller to report;
    any other error (e.g. :class:`SearchFailed`) does the same with reason "aborted". The agent
    is checkpointed while the evaluator works, at most ~5% of the time, and at the end.
    """
    started = time.monotonic()
    max_failures = max_failures if max_failures is not None else max(10, episodes)
    objectives = tuple(agent.objectives)
    requeue = list(record.recover_running())
    completed = record.count_completed()
    rewards: list[float] = []
    failed = 0
    over_budget = 0
    in_flight: dict[int, Any] = {}
    checkpoint = _Checkpointer(record, agent)
    bar = _progress(progress)
    task = bar.add_task("search", total=episodes, completed=completed, best="-", rate="-")
    best = -math.inf
    ctrl_c = _CtrlC()
    try:
        with bar, ctrl_c:
            while completed < episodes or in_flight:
                ctrl_c.check()
                out_of_time = max_time is not None and time.monotonic() - started > max_time
                wanted = episodes - completed - len(in_flight)
                # plans queued ahead (queue_ahead) start the moment a worker frees up
                free = evaluator.capacity + getattr(evaluator, "queue_ahead", 0) - len(in_flight)
                if wanted > 0 and free > 0 and not out_of_time:
                    count = min(wanted, free)
                    proposals = [requeue.pop(0) for _ in range(min(count, len(requeue)))]
                    if len(proposals) < count:
                        proposals += agent.ask(count - len(proposals))
                    for proposal in proposals:
                        number = record.start(proposal, agent=agent.name)
                        in_flight[number] = proposal
                        evaluator.submit(number, proposal.plan)
                if not in_flight:
                    break
                # Checkpoint while the workers are busy, not between a result and the next plan.
                checkpoint.maybe_save()
                results = evaluator.poll(timeout=1.0)
                ctrl_c.check()  # a Ctrl-C during the evaluation fails what is in flight
                for number, result in results:
                    proposal = in_flight.pop(number)
                    ok = result.status == "ok"
                    values = objective_values(result, objectives, reward) if ok else None
                    record.finish(number, result.to_json(), values)
                    told = told_result(result, reward)
                    if ok and values is not None:
                        completed += 1
                        value = reward_of(result, reward)
                        rewards.append(value)
                        best = max(best, value)
                    elif result.status == "over_budget":
                        # measured over the target (the estimate was off, or the machine was
                        # noisy): recorded with its metrics, not a completed episode
                        over_budget += 1
                    else:
                        failed += 1
                    if on_result is not None:
                        on_result(proposal, result)
                    agent.tell([proposal], [told])
                    checkpoint.changed()
                    minutes = max(time.monotonic() - started, 1e-9) / 60
                    bar.update(
                        task,
                        completed=completed,
                        best=f"{best:.4f}" if rewards else "-",
                        rate=f"{(completed + failed) / minutes:.1f}",
                    )
                    if over_budget >= 3 * episodes + 10:
                        raise SearchFailed(
                            f"{over_budget} plans measured over the target ({result.error}); "
                            "the latency estimate does not match this device. Loosen the target "
                            "or the tolerance, or measure on a quieter machine."
                        )
                    if failed >= max_failures:
                        raise SearchFailed(
                            f"{failed} evaluations failed (last: {result.error}); stopping. "
                            "Inspect the failed trials with `amc show` and fix the cause."
                        )
    except BaseException as error:
        # Ctrl-C or a fatal error: nothing may stay RUNNING, and the agent is checkpointed.
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else "aborted"
        for number in evaluator.cancel_all():
            in_flight.pop(number, None)
            record.finish(number, {"status": "failed", "reason": reason}, None)
        for number in list(in_flight):
            record.finish(number, {"status": "failed", "reason": reason}, None)
        record.recover_running()  # a trial started just before the signal, not yet in flight
        checkpoint.save()
        raise
    checkpoint.save()
    return SearchOutcome(
        completed=completed,
        failed=failed,
        interrupted=False,
        elapsed_s=time.monotonic() - started,
        rewards=rewards,
        over_budget=over_budget,
    )


class _CtrlC:
    """Remembers a Ctrl-C while the search runs, so that it is never lost.

    Python's own handler raises :class:`KeyboardInterrupt` wherever the main thread is, and
    there it can be swallowed: in a finalizer ("Exception ignored in ..."), or turned into an
    ordinary error by C++ code it passed through (then a trial failed with ``exception`` and the
    search went on). This handler raises it the same way and also sets a flag that
    :meth:`check` turns into a :class:`KeyboardInterrupt` at the loop's next step. Installed only
    over Python's default handler in the main thread: a SIGINT ignored on purpose (a script's
    background job) or handled by the host (a notebook) is left as it is.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


class _Checkpointer:
    """Writes the agent's checkpoint often, but spends at most ~5% of the wall time on it.

    A DDPG checkpoint (networks and optimizer moments) is megabytes: writing it after every
    result would cost more than a cheap evaluation. The first change is saved at once; later
    ones when at least ``19x`` the last save's duration has passed since it (and always at the
    end). A resumed agent whose checkpoint lags the record continues after the last recorded
    episode (see ``amc.experiment.search``).
    """

    def __init__(self, record: Any, agent: SearchAgent, share: float = 0.05) -> None:
        self.record = record
        self.agent = agent
        self.share = share
        self.dirty = False
        self.last_end = -math.inf
        self.last_cost = 0.0

    def changed(self) -> None:
        self.dirty = True

    def maybe_save(self) -> None:
        waited = time.monotonic() - self.last_end
        if self.dirty and waited >= self.last_cost * (1 - self.share) / self.share:
            self.save()

    def save(self) -> None:
        begun = time.monotonic()
        self.record.save_agent_state(self.agent.state_dict())
        self.last_end = time.monotonic()
        self.last_cost = self.last_end - begun
        self.dirty = False


def _metrics(result: EvalResult) -> dict[str, float]:
    names = ("accuracy", "fidelity", "latency_ms", "flops", "params", "loss")
    return {n: float(getattr(result, n)) for n in names if getattr(result, n) is not None}


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]episodes"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TextColumn("{task.fields[rate]} evals/min"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
