"""RayEvaluator: same results as in process, worker deaths, the device lock."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from amc.checkpoint import load_state_dict_file, save_weights
from amc.distributed import (
    HOLDER_CHECK_S,
    LOCK_NAME,
    DeviceLock,
    RayEvaluator,
    _load_workload,
    _read_weights,
    lock_mode,
)
from amc.errors import UnknownNameError
from amc.evaluate import EvalResult, LocalEvaluator, TaskSpec, evaluate_all
from amc.plan import PruningPlan, uniform_plan
from tests.tiny_models import LeNet

FINETUNE_STEPS = 8
STEP_DELAY = 0.1  # seconds each training forward sleeps: one evaluation takes about 0.8 s

SPEC = TaskSpec(
    model="tests.amc.test_distributed:SlowLeNet",
    model_kwargs={"delay": STEP_DELAY},
    data="digits",
    input_shape=(1, 16, 16),
    data_limit=128,
    batch_size=32,
    eval_batches=2,
    finetune_steps=FINETUNE_STEPS,
    latency_warmup=1,
    latency_min_run_time=0.01,
    latency_repeats=3,
    threads=1,
)


class SlowLeNet(LeNet):
    """A LeNet whose training forward sleeps, so a fine-tune is slow and easy to interrupt."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, delay: float = 0.0) -> None:
        super().__init__(num_classes, in_channels)
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(self.delay)
        return super().forward(x)


def _plans(keeps: tuple[float, ...] = (0.5, 0.75)) -> list[PruningPlan]:
    model, x = SlowLeNet(in_channels=1), torch.zeros(1, 1, 16, 16)
    return [uniform_plan(model, x, keep) for keep in keeps]


def _collect(evaluator: RayEvaluator, count: int, timeout: float = 60) -> list[Any]:
    """Poll until ``count`` results came back (failing after ``timeout`` seconds)."""
    results: list[tuple[int, EvalResult]] = []
    deadline = time.monotonic() + timeout
    while len(results) < count:
        assert time.monotonic() < deadline, f"only {len(results)} of {count} results came back"
        results.extend(evaluator.poll(timeout=1.0))
    assert evaluator.in_flight() == 0 and evaluator.poll(timeout=0) == []  # nothing twice
    return results


# -- the device lock, without Ray ------------------------------------------------------------


def test_device_lock_readers_writer() -> None:
    async def scenario() -> list[str]:
        lock, events = DeviceLock(), []

        async def hold(token: str, exclusive: bool, seconds: float) -> None:
            assert await lock.acquire(token, exclusive)
            events.append(f"+{token}")
            await asyncio.sleep(seconds)
            events.append(f"-{token}")
            await lock.release(token)

        first = asyncio.create_task(hold("a", False, 0.05))
        second = asyncio.create_task(hold("b", False, 0.05))
        await asyncio.sleep(0.01)
        writer = asyncio.create_task(hold("w", True, 0.05))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(hold("c", False, 0.01))  # waits behind the writer
        await asyncio.gather(first, second, writer, late)
        assert lock.state() == {"exclusive": None, "shared": {}}
        return events

    events = asyncio.run(scenario())
    assert events[:2] == ["+a", "+b"]  # shared holders run together
    assert events[4:] == ["+w", "-w", "+c", "-c"]  # the measurement runs alone, then work


def test_device_lock_forget_releases_a_dead_holder() -> None:
    async def scenario() -> None:
        lock = DeviceLock()
        assert await lock.acquire("dead", False)
        writer = asyncio.create_task(lock.acquire("w", True))
        gone = asyncio.create_task(lock.acquire("gone", True))
        await asyncio.sleep(0.01)
        assert not writer.done()
        await lock.forget("gone")
        assert await gone is False  # a forgotten waiter stops waiting, holding nothing
        await lock.forget("dead")
        assert await writer is True
        assert lock.state() == {"exclusive": "w", "shared": {}}

    asyncio.run(scenario())


def test_device_lock_forgets_a_holder_found_dead_while_a_request_waits() -> None:
    async def scenario() -> None:
        probed: list[str] = []

        async def holder_alive(handle: str) -> bool:
            probed.append(handle)
            return handle != "killed-worker"

        lock = DeviceLock(holder_alive=holder_alive, check_after=0.05)
        assert await lock.acquire("live", False, "live-worker")
        assert await lock.acquire("dead", False, "killed-worker")
        assert await lock.acquire("anonymous", False)  # no handle: never probed
        writer = asyncio.create_task(lock.acquire("w", True, "writer"))
        await asyncio.wait_for(_until(lambda: "dead" not in lock.state()["shared"]), 5)
        assert sorted(set(probed)) == ["killed-worker", "live-worker"]
        assert lock.state() == {"exclusive": None, "shared": {"live": 1, "anonymous": 1}}
        assert await lock.acquire("dead", False) is False  # forgotten for good
        await lock.release("live")
        await lock.release("anonymous")
        assert await writer is True
        assert lock.state() == {"exclusive": "w", "shared": {}}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("isolation", "latency", "work"),
    [("exclusive", True, False), ("measurements", True, None), ("none", None, None)],
)
def test_lock_mode_per_isolation(isolation: str, latency: bool | None, work: bool | None) -> None:
    assert lock_mode(isolation, "latency") is latency
    for phase in ("apply", "count", "recalibrate", "finetune", "evaluate"):
        assert lock_mode(isolation, phase) is work


def test_config_isolation_reaches_the_ray_evaluator(monkeypatch: pytest.MonkeyPatch) -> None:
    import amc.distributed
    from amc import experiment
    from amc.config import load_config

    made: list[dict[str, Any]] = []
    monkeypatch.setattr(amc.distributed, "RayEvaluator", lambda spec, **kw: made.append(kw))
    text = "model: resnet20\ndata: digits\nray: {workers: 2, isolation: measurements}\n"
    config = load_config(None, text=text)
    experiment.start_evaluator(config, SPEC)
    assert made == [
        {
            "workers": 2,
            "address": None,
            "isolation": "measurements",
            "queue_ahead": 1,
            "wait": False,
        }
    ]
    assert load_config(None, text="model: m\ndata: d\n").ray.isolation == "exclusive"


def test_bad_queue_ahead_is_refused_before_ray_starts() -> None:
    from amc.errors import ConfigError

    with pytest.raises(ConfigError, match="queue_ahead must be >= 0, got -1"):
        RayEvaluator(SPEC, workers=1, queue_ahead=-1)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


# -- Ray -------------------------------------------------------------------------------------


@pytest.mark.ray
def test_a_task_that_does_not_load_raises_in_the_driver(ray_session: Any) -> None:
    spec = replace(SPEC, model="resnet21")
    with pytest.raises(UnknownNameError, match=re.escape("Unknown model 'resnet21'. Did you")):
        RayEvaluator(spec, workers=1)
    assert ray_session.is_initialized()  # a Ray we did not start stays up


def test_a_worker_loads_the_weights_the_driver_read_not_its_own_path(tmp_path: Path) -> None:
    weights = tmp_path / "baseline.safetensors"
    torch.manual_seed(7)
    save_weights(SlowLeNet(), weights)
    elsewhere = replace(SPEC, weights=str(tmp_path / "not-on-this-node" / weights.name))
    shipped = _read_weights(replace(SPEC, weights=str(weights)))
    assert shipped == (weights.name, weights.read_bytes())
    workload = _load_workload(elsewhere, shipped)  # the path does not exist where it loads
    expected = load_state_dict_file(weights)
    for key, tensor in workload.model.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    assert _read_weights(elsewhere) is None  # a missing file: the worker reports it, as before


@pytest.mark.ray
def test_ray_workers_do_not_read_the_weights_file(ray_session: Any, tmp_path: Path) -> None:
    weights = tmp_path / "baseline.safetensors"
    save_weights(SlowLeNet(), weights)
    spec = replace(SPEC, weights=str(weights), finetune_steps=0)
    with RayEvaluator(spec, workers=1, cpus_per_worker=0.5, wait=False) as ray_evaluator:
        weights.unlink()  # before the worker has even imported torch
        ray_evaluator.wait_ready()
        [result] = evaluate_all(ray_evaluator, _plans((0.5,)))
    assert result.status == "ok", result.error


@pytest.fixture(scope="module")
def evaluator(ray_session: Any) -> Iterator[RayEvaluator]:
    # Half a CPU each leaves one of the session's two CPUs for other tests' workers.
    with RayEvaluator(SPEC, workers=2, cpus_per_worker=0.5) as ray_evaluator:
        yield ray_evaluator
    assert ray_session.is_initialized()


@pytest.mark.ray
def test_ray_and_local_evaluators_agree(evaluator: RayEvaluator) -> None:
    plans = _plans()
    assert evaluator.capacity == 2 and evaluator.queue_ahead == 1
    remote = evaluate_all(evaluator, plans)
    with LocalEvaluator(SPEC) as local_evaluator:
        local = evaluate_all(local_evaluator, plans)
        local_dense = local_evaluator.dense_metrics()
    for ray_result, local_result in zip(remote, local, strict=True):
        assert ray_result.status == local_result.status == "ok"
        assert ray_result.finetune_steps == FINETUNE_STEPS
        for field in ("accuracy", "loss", "flops", "params", "size_bytes"):
            assert getattr(ray_result, field) == getattr(local_result, field), field
    workers = {info["worker"] for info in evaluator.workers_info() if info}
    assert {result.worker for result in remote} == workers and len(workers) == 2
    assert all(result.worker != local[0].worker for result in remote)
    dense = evaluator.dense_metrics()
    for key in ("accuracy", "flops", "params", "fingerprint"):
        assert dense[key] == local_dense[key], key
    assert _locks_free(evaluator)


@pytest.mark.ray
def test_a_killed_worker_is_replaced_and_its_plan_rerun(evaluator: RayEvaluator) -> None:
    plans = _plans()
    victim = evaluator.workers_info()[0]
    assert victim is not None
    evaluator.submit(10, plans[0])  # the first idle worker (slot 0) takes it
    evaluator.submit(11, plans[1])
    time.sleep(0.4)  # inside the 0.8 s fine-tune
    os.kill(victim["pid"], signal.SIGKILL)
    results = dict(_collect(evaluator, 2))
    assert sorted(results) == [10, 11]
    assert results[10].status == "ok" and results[10].attempts == 2
    assert results[10].worker != victim["worker"] and results[11].attempts == 1
    assert evaluator.restarts == 1
    assert _locks_free(evaluator)

    # With no retries left, a worker death is the trial's result.
    evaluator.max_retries = 0
    _collect_idle(evaluator)
    victim = evaluator.workers_info()[0]
    assert victim is not None and victim["pid"] != results[10].worker.split(":")[1]
    evaluator.submit(12, plans[0])
    time.sleep(0.4)
    os.kill(victim["pid"], signal.SIGKILL)
    [(tag, result)] = _collect(evaluator, 1)
    assert (tag, result.status, result.reason, result.attempts) == (12, "failed", "worker_died", 1)
    assert result.error.startswith("ActorDiedError: ") and victim["worker"] in result.error

    # Cancelling drops queued and running plans: their tags come back, their results never.
    _collect_idle(evaluator)
    restarts = evaluator.restarts
    for tag, plan in zip((13, 14, 15), [*plans, plans[0]], strict=True):
        evaluator.submit(tag, plan)
    assert evaluator.in_flight() == 3
    assert sorted(evaluator.cancel_all()) == [13, 14, 15]
    assert evaluator.in_flight() == 0 and evaluator.poll(timeout=0.5) == []
    assert evaluator.restarts == restarts  # a cancel is not a fault


@pytest.mark.ray
def test_searches_on_one_cluster_share_the_device_lock(evaluator: RayEvaluator) -> None:
    # Evaluators on the session's Ray (joined, not started) are like two drivers on a cluster.
    [(node, device)] = evaluator._locks
    name = LOCK_NAME.format(node=node, device=device)
    shared = ray.get_actor(name, namespace="amc")
    with (
        RayEvaluator(SPEC, workers=1, cpus_per_worker=0.5) as first,
        RayEvaluator(SPEC, workers=1, cpus_per_worker=0.5) as second,
    ):
        assert first._locks == second._locks == evaluator._locks == {(node, device): shared}
        # A holding left by a driver killed mid-phase: its worker dies, nobody forgets it.
        ray.get(shared.acquire.remote("killed-driver", False, first._slots[0].actor))
        first.close()  # kills its worker, releases its own holdings, leaves the lock up
        assert ray.get(shared.state.remote())["shared"] == {"killed-driver": 1}
        start = time.monotonic()
        second.submit(0, _plans((0.5,))[0])
        [(_, result)] = _collect(second, 1)
        assert result.status == "ok" and result.latency_ms > 0
        assert time.monotonic() - start > HOLDER_CHECK_S  # the measurement waited, then ran
        assert _locks_free(second)
    assert ray.get_actor(name, namespace="amc") == shared


def _locks_free(evaluator: RayEvaluator) -> bool:
    states = evaluator.lock_states()
    return bool(states) and all(s == {"exclusive": None, "shared": {}} for s in states.values())


def _collect_idle(evaluator: RayEvaluator, timeout: float = 60) -> None:
    """Wait until every worker (including replacements) has started."""
    deadline = time.monotonic() + timeout
    while not all(evaluator.workers_info()):
        assert time.monotonic() < deadline, "a replacement worker did not start"
        assert evaluator.poll(timeout=0.5) == []


@pytest.mark.ray
@pytest.mark.gpu
def test_cuda_workers_take_a_whole_gpu(ray_session: Any) -> None:
    spec = replace(SPEC, device="cuda", model_kwargs={"delay": 0.0})
    with RayEvaluator(spec, workers=1) as gpu_evaluator:
        info = gpu_evaluator.workers_info()[0]
        assert info is not None and re.fullmatch(r"cuda:\d+", info["device"])
        [result] = evaluate_all(gpu_evaluator, _plans((0.5,)))
        assert result.status == "ok" and result.latency_ms > 0
