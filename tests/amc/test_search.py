"""The search service end to end: every agent on 2 Ray workers, storages, faults, resume.

One baseline (ResNet-20 on 16x16 digits, one epoch) is trained per test session and shared;
latency is timed briefly (the default timing is for real measurements, not tests).
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from amc import experiment
from amc import search as search_module
from amc.checkpoint import save_weights
from amc.config import ExperimentConfig, load_config
from amc.evaluate import EvalResult, LocalEvaluator, failed_result
from amc.experiment import Experiment
from amc.study import SearchRecord, delete_study, list_studies
from tests.amc.test_study import POSTGRES, POSTGRES_SKIP, postgres_schema  # noqa: F401
from tests.tiny_models import LeNet

EPISODES = 4
FAST_LATENCY = {"latency_warmup": 1, "latency_min_run_time": 0.01, "latency_repeats": 3}
CONFIG = """
model: resnet20
data: digits
input_shape: [1, 16, 16]
data_limit: 200
baseline: {epochs: 1}
target: flops=0.5
finetune: {steps: 0, bn_batches: 1, eval_batches: 2}
agent: {name: ddpg, settings: {warmup: 1}}
episodes: 4
threads: 1
ray: {workers: 0}
"""
AGENTS = {
    "ddpg": {"warmup": 1, "batch_size": 4},
    "tpe": {"n_startup_trials": 2},
    "cmaes": {},
    "nsga2": {"population_size": 2},
    "random": {},
    "uniform": {},
    "global_magnitude": {},
}


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runs folder per session: the baseline is trained once and reused by every test."""
    return tmp_path_factory.mktemp("runs")


def tiny_config(runs_dir: Path, storage: str, **changes: Any) -> ExperimentConfig:
    overrides = {"runs_dir": str(runs_dir), "storage": storage, **changes}
    return load_config(None, overrides, text=CONFIG)


@pytest.fixture(scope="session")
def prepared(runs_dir: Path) -> Experiment:
    config = tiny_config(runs_dir, f"sqlite:///{runs_dir}/unused.db", study="base")
    return experiment.prepare(config, progress=False, task=FAST_LATENCY)


def variant(base: Experiment, storage: str, study: str, agent: str = "ddpg", **changes: Any):
    """The prepared experiment with another agent, storage and study (nothing reloaded)."""
    settings = AGENTS[agent]
    update = {"storage": storage, "study": study, **changes}
    config = base.config.model_copy(
        update={
            **update,
            "agent": base.config.agent.model_copy(update={"name": agent, "settings": settings}),
        }
    )
    return replace(base, config=config, study=study)


@pytest.fixture(
    params=[
        "sqlite",
        "journal",
        pytest.param(
            "postgres",
            marks=[pytest.mark.postgres, pytest.mark.skipif(not POSTGRES, reason=POSTGRES_SKIP)],
        ),
    ]
)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty storage of each kind (PostgreSQL: a schema of the session's own)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/amc.db"
    elif request.param == "journal":
        yield f"journal://{tmp_path}/amc.log"
    else:
        url = request.getfixturevalue("postgres_schema")
        yield url
        for row in list_studies(url):
            delete_study(url, row["name"])


def assert_complete(record: SearchRecord, episodes: int, objectives: int = 1) -> None:
    """Exactly ``episodes`` COMPLETE trials, each with its plan, metrics and values."""
    trials = record.trials()
    assert [t.state for t in trials] == ["COMPLETE"] * episodes
    assert sorted(t.episode for t in trials) == list(range(episodes))  # each episode once
    for trial in trials:
        assert trial.plan is not None and trial.plan.units
        assert trial.values is not None and len(trial.values) == objectives
        assert all(math.isfinite(value) for value in trial.values)
        assert trial.metrics["status"] == "ok" and 0 <= trial.metrics["accuracy"] <= 1
        assert trial.metrics["flops"] > 0 and trial.metrics["latency_ms"] > 0
        assert set(trial.metrics["times"]) >= {"apply", "count", "evaluate", "latency", "total"}
    assert record.attrs["uniform"]["metrics"]["status"] == "ok"
    assert record.attrs["dense"]["flops"] > max(t.metrics["flops"] for t in trials)


# -- a whole search on 2 local Ray workers, each agent ----------------------------------------


@pytest.fixture(scope="module")
def ray_evaluator(ray_session: Any, prepared: Experiment) -> Iterator[Any]:
    from amc.distributed import RayEvaluator

    # Half a CPU each leaves room for other modules' workers in the 2-CPU test Ray.
    with RayEvaluator(prepared.spec, workers=2, cpus_per_worker=0.5) as evaluator:
        yield evaluator


@pytest.mark.ray
@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_every_agent_searches_on_two_ray_workers(
    agent: str, prepared: Experiment, ray_evaluator: Any, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path}/amc.db"
    run = variant(prepared, storage, f"search-{agent}", agent)
    record, outcome = experiment.search(run, progress=False, evaluator=ray_evaluator)
    objectives = 2 if agent == "nsga2" else 1
    assert (outcome.completed, outcome.failed, outcome.interrupted) == (EPISODES, 0, False)
    assert len(outcome.rewards) == EPISODES
    reopened = SearchRecord.open(storage, f"search-{agent}")
    assert_complete(reopened, EPISODES, objectives)
    assert reopened.directions == (["maximize", "minimize"] if objectives == 2 else ["maximize"])
    assert {t.agent for t in reopened.trials()} == {agent}
    workers = {info["worker"] for info in ray_evaluator.workers_info() if info}
    assert {t.metrics["worker"] for t in reopened.trials()} == workers and len(workers) == 2
    state = reopened.load_agent_state()
    assert state is not None and state.get("episode", EPISODES) == EPISODES
    assert ray_evaluator.in_flight() == 0


class KillingEvaluator:
    """Kills every Ray worker right after the first two plans were dispatched to them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.killed: list[int] = []

    def submit(self, tag: int, plan: Any) -> None:
        self.inner.submit(tag, plan)
        if tag == 1 and not self.killed:  # both workers busy now
            self.killed = [info["pid"] for info in self.inner.workers_info()]
            for pid in self.killed:
                os.kill(pid, signal.SIGKILL)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.ray
def test_killed_ray_workers_lose_and_double_nothing(
    prepared: Experiment, ray_evaluator: Any, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path}/amc.db"
    restarts = ray_evaluator.restarts
    killing = KillingEvaluator(ray_evaluator)
    record, outcome = experiment.search(
        variant(prepared, storage, "killed", "random"), progress=False, evaluator=killing
    )
    assert len(killing.killed) == 2 and ray_evaluator.restarts == restarts + 2
    assert (outcome.completed, outcome.failed) == (EPISODES, 0)
    assert_complete(record, EPISODES)
    attempts = [t.metrics["attempts"] for t in record.trials()]
    assert attempts == [2, 2, 1, 1]  # the two killed plans ran again, once
    alive = {info["pid"] for info in ray_evaluator.workers_info() if info}
    assert not alive & set(killing.killed)


# -- storages, Ctrl-C and resume in process ----------------------------------------------------


class InterruptingEvaluator(LocalEvaluator):
    """A local evaluator whose n-th poll is a Ctrl-C (its plan is then in flight)."""

    def __init__(self, *args: Any, interrupt_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polls = 0
        self.interrupt_at = interrupt_at

    def poll(self, timeout: float | None = None) -> list[tuple[int, EvalResult]]:
        self.polls += 1
        if self.polls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().poll(timeout)


def test_interrupt_and_resume_on_each_storage(prepared: Experiment, storage_url: str) -> None:
    run = variant(prepared, storage_url, "interrupted", "ddpg")
    evaluator = InterruptingEvaluator(prepared.spec, workload=prepared.workload, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        experiment.search(run, progress=False, evaluator=evaluator)
    record = SearchRecord.open(storage_url, "interrupted")
    states = [(t.state, t.reason) for t in record.trials()]
    assert states == [("COMPLETE", None), ("COMPLETE", None), ("FAIL", "interrupted")]
    before = record.load_agent_state()
    assert before is not None and before["episode"] == 3  # checkpointed on the way out
    assert before["sigma"] == pytest.approx(0.5 * 0.95 ** (3 - 1))

    resumed, outcome = experiment.search(run, progress=False, resume=True)
    assert (outcome.completed, outcome.failed, len(outcome.rewards)) == (EPISODES, 0, 2)
    trials = resumed.trials()
    assert [t.state for t in trials] == ["COMPLETE"] * 2 + ["FAIL"] + ["COMPLETE"] * 2
    assert [t.episode for t in trials] == [0, 1, 2, 3, 4]  # the counter went on
    assert [t.info["sigma"] for t in trials[3:]] == pytest.approx(
        [0.5 * 0.95 ** (3 - 1), 0.5 * 0.95 ** (4 - 1)]
    )
    after = resumed.load_agent_state()
    assert after is not None and after["episode"] == 5 and after["n_updates"] > before["n_updates"]


class DepthEvaluator(LocalEvaluator):
    """A local evaluator that keeps ``queue_ahead`` plans queued and notes the queue depth."""

    def __init__(self, *args: Any, queue_ahead: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue_ahead = queue_ahead
        self.depths: list[int] = []

    def poll(self, timeout: float | None = None) -> list[tuple[int, EvalResult]]:
        self.depths.append(self.in_flight())
        return super().poll(timeout)


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_plans_queued_ahead_keep_workers_fed_and_add_no_episode(
    prepared: Experiment, tmp_path: Path, ahead: int
) -> None:
    run = variant(prepared, f"sqlite:///{tmp_path}/amc.db", f"ahead-{ahead}", "random")
    evaluator = DepthEvaluator(prepared.spec, workload=prepared.workload, queue_ahead=ahead)
    record, outcome = experiment.search(run, progress=False, evaluator=evaluator)
    # capacity 1 plus the plans queued ahead, until the budget runs out: never one too many
    depth = 1 + ahead
    expected = [min(depth, EPISODES - done) for done in range(EPISODES)]
    assert evaluator.depths[:EPISODES] == expected  # then the uniform plan, evaluated alone
    assert (outcome.completed, outcome.failed) == (EPISODES, 0)
    assert_complete(record, EPISODES)


class SwallowingEvaluator(LocalEvaluator):
    """A local evaluator whose n-th evaluation gets a Ctrl-C that the code under it swallows
    (as a finalizer or a C++ frame can), so the plan comes back as an ordinary failure."""

    def __init__(self, *args: Any, interrupt_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polls = 0
        self.interrupt_at = interrupt_at

    def poll(self, timeout: float | None = None) -> list[tuple[int, EvalResult]]:
        self.polls += 1
        if self.polls != self.interrupt_at or not self._queue:
            return super().poll(timeout)
        tag, _ = self._queue.popleft()
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as error:
            return [(tag, failed_result(RuntimeError(f"swallowed {error!r}")))]
        raise AssertionError("SIGINT raised nothing")


def test_a_swallowed_ctrl_c_still_stops_the_search(prepared: Experiment, tmp_path: Path) -> None:
    run = variant(prepared, f"sqlite:///{tmp_path}/amc.db", "swallowed", "random")
    evaluator = SwallowingEvaluator(prepared.spec, workload=prepared.workload, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        experiment.search(run, progress=False, evaluator=evaluator)
    record = SearchRecord.open(run.config.storage, "swallowed")
    states = [(t.state, t.reason) for t in record.trials()]
    assert states == [("COMPLETE", None), ("FAIL", "interrupted")]  # not "exception", no more
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_the_search_s_ctrl_c_handler_leaves_an_ignored_sigint_ignored() -> None:
    with search_module._CtrlC() as ctrl_c:  # over Python's default: installed, remembers
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert ctrl_c.requested
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a script's background job
    try:
        with search_module._CtrlC() as ctrl_c:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert not ctrl_c.requested
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_two_searches_write_one_storage_at_once(prepared: Experiment, storage_url: str) -> None:
    errors: list[BaseException] = []

    def search(study: str) -> None:
        try:
            run = variant(prepared, storage_url, study, "random", episodes=3)
            # One shared workload: evaluations only read the dense model and the batches.
            with LocalEvaluator(prepared.spec, workload=prepared.workload) as evaluator:
                experiment.search(run, progress=False, evaluator=evaluator)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=search, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    rows = {row["name"]: row for row in list_studies(storage_url)}
    assert sorted(rows) == ["left", "right"]
    for name in rows:
        assert (rows[name]["complete"], rows[name]["fail"], rows[name]["running"]) == (3, 0, 0)
        assert_complete(SearchRecord.open(storage_url, name), 3)


# -- failing fine-tunes ----------------------------------------------------------------------

TICKETS = iter(())  # reset by the test


class FlakyLeNet(LeNet):
    """Each evaluation's fine-tune in turn: raises, gets NaN loss, succeeds (then again)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if not self.training:
            return out
        if not hasattr(self, "ticket"):  # the first training step of this (pruned) copy
            self.ticket = next(TICKETS)
        if self.ticket % 3 == 0:
            raise RuntimeError("boom: flaky fine-tune")
        return out * math.nan if self.ticket % 3 == 1 else out


def test_failed_and_nan_finetunes_are_recorded_and_the_search_completes(
    runs_dir: Path, tmp_path: Path
) -> None:
    global TICKETS
    import itertools

    TICKETS = itertools.count()
    torch.manual_seed(0)
    weights = save_weights(LeNet(num_classes=10, in_channels=1), tmp_path / "lenet.safetensors")
    config = tiny_config(
        runs_dir,
        f"sqlite:///{tmp_path}/amc.db",
        model="tests.amc.test_search:FlakyLeNet",
        weights=str(weights),
        study="flaky",
        episodes=3,
        **{"agent.name": "random", "agent.settings": {}, "finetune.steps": 2, "ray.workers": 0},
    )
    run = experiment.prepare(config, progress=False, task=FAST_LATENCY)
    record, outcome = experiment.search(run, progress=False)
    assert (outcome.completed, outcome.failed) == (3, 6)
    trials = record.trials()
    assert [t.state for t in trials] == ["FAIL", "FAIL", "COMPLETE"] * 3
    assert [t.reason for t in trials] == ["exception", "nan_loss", None] * 3
    assert {t.metrics.get("error") for t in trials if t.reason == "exception"} == {
        "RuntimeError: boom: flaky fine-tune"
    }
    assert {t.metrics.get("error") for t in trials if t.reason == "nan_loss"} == {
        "NonFiniteLossError: Loss became nan at step 1; lower the learning rate."
    }
    assert all(t.metrics["finetune_steps"] == 2 for t in trials if t.state == "COMPLETE")
    assert sorted(t.episode for t in trials) == list(range(9))


def test_what_an_agent_is_told_of_ok_over_budget_and_failed_plans() -> None:
    ok = EvalResult(status="ok", accuracy=0.75, latency_ms=2.0, flops=1000)
    over = replace(ok, status="over_budget", reason="over_budget")
    failed = EvalResult(status="failed", error="RuntimeError: boom", reason="exception")
    assert search_module.told_result(ok) == {
        "reward": -0.25, "accuracy": 0.75, "latency_ms": 2.0, "flops": 1000.0
    }  # fmt: skip
    # over the target: the metrics as measured, the reward of a model with no accuracy
    assert search_module.told_result(over) == {
        "reward": -1.0, "over_budget": 1.0, "accuracy": 0.75, "latency_ms": 2.0, "flops": 1000.0
    }  # fmt: skip
    assert search_module.told_result(over, "flops")["reward"] == pytest.approx(-math.log(1000))
    assert search_module.told_result(over, "accuracy")["reward"] == 0.0
    assert search_module.told_result(failed) is None
