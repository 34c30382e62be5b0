"""RayEvaluator: evaluate plans in parallel on a pool of Ray actors (the one module using ray).

Each worker is an actor that builds its :class:`~amc.evaluate.Workload` (model, data, unit graph)
once, in its constructor, and then evaluates one plan at a time. Plans go out and results come
back as JSON dicts.

Where Ray runs: with ``address=None`` a local Ray starts inside this process, sized to the
machine, dashboard off, listening on localhost only (the embedded default); ``address="auto"``
or ``"ray://host:10001"`` joins a running cluster, as does a driver started by
``ray job submit`` (Ray sets ``RAY_ADDRESS``). A Ray already initialised in this process (a test
session, a notebook) is reused and left running on :meth:`RayEvaluator.close`.

Latency isolation: a measurement must not share its device with another measurement or a
fine-tune. CUDA workers take one whole GPU each (``num_gpus=1``), so Ray gives every GPU to one
worker: exclusive by construction. Several CPU workers on one node share its cores, so each
(node, device) has one :class:`DeviceLock` actor, a readers-writer lock: each work phase (apply,
count, recalibrate, fine-tune, evaluate) holds it shared, the latency phase holds it exclusive,
and a waiting measurement blocks new work phases (writer preference), so it waits at most for
the phases already running. The lock is a detached actor named after its node and device, so
every search on one cluster (each driver its own RayEvaluator) takes the same lock; closing an
evaluator releases its holdings but leaves the lock up, and the holdings of a driver that was
killed are dropped once a request that waited 5 s finds their workers dead.
``isolation="measurements"`` locks only measurements against each other (more throughput,
noisier latency); ``"none"`` turns the lock off.

Faults: a worker process that dies (``ActorDiedError``, ``WorkerCrashedError``) is killed for
good, its lock holdings are released, a replacement actor is started and the plan is run again
on the next free worker, up to ``max_retries`` times; then it is returned ``failed`` with reason
``worker_died``. Every tag comes back from :meth:`RayEvaluator.poll` exactly once.

Example:
    >>> spec = TaskSpec(model="resnet20", data="digits", input_shape=(1, 16, 16))
    >>> with RayEvaluator(spec, workers=2) as evaluator:
    ...     results = evaluate_all(evaluator, plans)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from amc.errors import AmcError, ConfigError
from amc.evaluate import EvalResult, Evaluator, TaskSpec, Workload, with_attempts, worker_name
from amc.plan import PruningPlan

ISOLATION = ("exclusive", "measurements", "none")
WORKER_DIED = (RayActorError, WorkerCrashedError)  # RayActorError covers ActorDiedError
LOCK_NAMESPACE = "amc"  # device locks are named actors here, shared by every search on a cluster
LOCK_NAME = "amc-device-lock-v1/{node}/{device}"  # bump v1 when DeviceLock's methods change
HOLDER_CHECK_S = 5.0  # a lock request waiting this long checks that the holders are alive
HOLDER_PROBE_S = 1.0  # a holder that does not answer within this is busy, so alive


# --------------------------------------------------------------------------------------------
# The device lock (runs as an async actor; plain Python, so it is testable without Ray)
# --------------------------------------------------------------------------------------------


class DeviceLock:
    """A readers-writer lock for one device, shared by the workers on it.

    Holders are named by token (one per worker incarnation). ``acquire(token, exclusive)`` waits
    until it may hold the lock: shared holders run together, an exclusive holder runs alone,
    and a waiting exclusive request blocks new shared ones. ``forget(token)`` drops everything a
    dead worker held or waited for.

    A worker whose driver was killed never releases, and no driver forgets it. So a holder may
    pass a handle on itself, and while a request waits, every ``check_after`` seconds the lock
    asks ``holder_alive(handle)`` about each holder and forgets those it reports dead.
    """

    def __init__(
        self,
        holder_alive: Callable[[Any], Awaitable[bool]] | None = None,
        check_after: float = HOLDER_CHECK_S,
    ) -> None:
        self._shared: dict[str, int] = {}
        self._exclusive: str | None = None
        self._writers_waiting = 0
        self._gone: set[str] = set()
        self._condition: asyncio.Condition | None = None
        self._holders: dict[str, Any] = {}  # token -> handle, for tokens holding the lock
        self._holder_alive = holder_alive
        self._check_after = check_after

    def _changed(self) -> asyncio.Condition:
        if self._condition is None:  # created inside the actor's event loop
            self._condition = asyncio.Condition()
        return self._condition

    async def acquire(self, token: str, exclusive: bool, holder: Any = None) -> bool:
        """Wait for the lock; False if ``token`` was forgotten meanwhile.

        ``holder`` (the worker's own actor handle) lets later waiters check that it is alive.
        """
        watchdog = asyncio.ensure_future(self._forget_dead_holders())
        try:
            taken = await self._take(token, exclusive)
        finally:
            watchdog.cancel()
        if taken and holder is not None:
            self._holders[token] = holder
        return taken

    async def _take(self, token: str, exclusive: bool) -> bool:
        """Wait for the lock and hold it; False if ``token`` was forgotten meanwhile."""
        changed = self._changed()
        async with changed:
            if exclusive:
                self._writers_waiting += 1
                try:
                    await changed.wait_for(
                        lambda: (
                            token in self._gone or (self._exclusive is None and not self._shared)
                        )
                    )
                finally:
                    self._writers_waiting -= 1
                    changed.notify_all()
                if token in self._gone:
                    return False
                self._exclusive = token
            else:
                await changed.wait_for(
                    lambda: (
                        token in self._gone
                        or (self._exclusive is None and not self._writers_waiting)
                    )
                )
                if token in self._gone:
                    return False
                self._shared[token] = self._shared.get(token, 0) + 1
            return True

    async def release(self, token: str) -> None:
        """Give back one holding of ``token`` (exclusive first, else one shared)."""
        changed = self._changed()
        async with changed:
            if self._exclusive == token:
                self._exclusive = None
            elif self._shared.get(token):
                self._shared[token] -= 1
                if not self._shared[token]:
                    del self._shared[token]
            if self._exclusive != token and token not in self._shared:
                self._holders.pop(token, None)
            changed.notify_all()

    async def forget(self, token: str) -> None:
        """Drop every holding and wait of ``token`` (its worker died or was cancelled)."""
        changed = self._changed()
        async with changed:
            self._gone.add(token)
            self._shared.pop(token, None)
            self._holders.pop(token, None)
            if self._exclusive == token:
                self._exclusive = None
            changed.notify_all()

    def state(self) -> dict[str, Any]:
        """Who holds the lock now: ``{"exclusive": token|None, "shared": {token: count}}``."""
        return {"exclusive": self._exclusive, "shared": dict(self._shared)}

    async def _forget_dead_holders(self) -> None:
        """While a request waits: every ``check_after`` s, forget the holders found dead."""
        if self._holder_alive is None:
            return
        while True:
            await asyncio.sleep(self._check_after)
            tokens = [t for t in (self._exclusive, *self._shared) if t in self._holders]
            handles = [self._holders[token] for token in tokens]
            alive = await asyncio.gather(*(self._holder_alive(handle) for handle in handles))
            for token, is_alive in zip(tokens, alive, strict=True):
                if not is_alive:
                    await self.forget(token)


async def _actor_alive(actor: Any) -> bool:
    """False only when ``actor`` is dead; one too busy to answer in time counts as alive."""
    try:
        await asyncio.wait_for(actor.__ray_ready__.remote(), HOLDER_PROBE_S)
    except (TimeoutError, ActorUnavailableError):  # busy with a phase, or unreachable a while
        return True
    except RayActorError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# The worker actor
# --------------------------------------------------------------------------------------------


def lock_mode(isolation: str, phase: str) -> bool | None:
    """How ``phase`` holds the device lock under ``isolation``: True exclusive, False shared,
    None not at all."""
    exclusive = phase == "latency"
    if isolation == "exclusive" or (exclusive and isolation == "measurements"):
        return exclusive
    return None


class EvalWorker:
    """One Ray actor: a Workload built once, evaluating one plan at a time."""

    def __init__(
        self, spec_json: dict[str, Any], token: str, weights: tuple[str, bytes] | None = None
    ) -> None:
        self.token = token
        self.lock: Any = None
        self.isolation = "none"
        self.error: Exception | None = None
        try:
            self.workload = _load_workload(TaskSpec.from_json(spec_json), weights)
        except Exception as exc:  # reported by ready(), so the driver can raise it as is
            self.error = exc

    def ready(self) -> dict[str, Any]:
        """Where this worker runs: pid, host, node id and the device key its lock is keyed by."""
        if self.error is not None:
            raise self.error
        context = ray.get_runtime_context()
        device = self.workload.spec.device
        if device.startswith("cuda"):
            device = "cuda:" + ",".join(str(gpu) for gpu in ray.get_gpu_ids())
        return {
            "pid": os.getpid(),
            "worker": worker_name(),
            "node": context.get_node_id(),
            "device": device,
        }

    def attach_lock(self, lock: Any, isolation: str) -> None:
        """Use ``lock`` (a DeviceLock actor) around phases, as ``isolation`` says."""
        self.lock, self.isolation = lock, isolation

    @contextlib.contextmanager
    def guard(self, phase: str) -> Iterator[None]:
        """Hold the device lock for ``phase``: exclusive for latency, shared for work."""
        exclusive = lock_mode(self.isolation, phase)
        if self.lock is None or exclusive is None:
            yield
            return
        me = ray.get_runtime_context().current_actor  # so waiters can tell if this one died
        ray.get(self.lock.acquire.remote(self.token, exclusive, me))
        try:
            yield
        finally:
            ray.get(self.lock.release.remote(self.token))

    def evaluate(self, plan_json: dict[str, Any]) -> dict[str, Any]:
        """Evaluate one plan; returns the EvalResult as JSON."""
        if self.error is not None:
            raise self.error
        try:
            plan = PruningPlan.from_json(plan_json)
        except AmcError as exc:
            return EvalResult(
                status="failed", error=f"{type(exc).__name__}: {exc}", reason="exception",
                worker=worker_name(),
            ).to_json()  # fmt: skip
        return self.workload.evaluate(plan, guard=self.guard).to_json()

    def dense_metrics(self) -> dict[str, Any]:
        """The dense model's metrics, measured on this worker's device."""
        if self.error is not None:
            raise self.error
        return self.workload.dense_metrics(guard=self.guard)


# --------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    tag: int
    plan: PruningPlan
    attempts: int = 0


@dataclass
class _Slot:
    index: int
    incarnation: int
    actor: Any
    token: str
    info: dict[str, Any] | None = None  # from ready(); None while starting
    job: _Job | None = None
    lock: Any = None


class RayEvaluator(Evaluator):
    """Evaluates plans on ``workers`` Ray actors, each holding the task loaded once.

    Args:
        spec: the task every worker loads.
        workers: number of actors (None: one per ``cpus_per_worker`` CPUs of the cluster, or
            one per GPU for CUDA devices).
        address: None for a local Ray in this process (or the cluster in ``RAY_ADDRESS``),
            ``"auto"`` or ``"ray://host:port"`` to join a cluster.
        cpus_per_worker: CPUs each actor reserves.
        isolation: ``exclusive`` (a latency measurement shares its device with nothing),
            ``measurements`` (only measurements exclude each other) or ``none``.
        max_retries: times a plan is re-run after its worker died, before it fails.
        startup_timeout: seconds to wait for the workers to load the task.
        runtime_env: passed to ``ray.init`` (e.g. a ``working_dir`` for a remote cluster).
        queue_ahead: plans ``run_search`` keeps queued beyond one per worker, so a worker
            starts its next plan the moment it returns one instead of idling while the driver
            records, tells and asks (about 0.1 s per evaluation with DDPG and SQLite). The
            price: a plan asked ahead is chosen before the agent hears the latest result.
        wait: wait here for every worker to load the task. With False the workers load in
            the background while the caller prepares (``amc search`` builds its search space
            meanwhile); :meth:`wait_ready` waits later, and plans submitted before then queue.

    Raises:
        AmcError: the task does not load (bad model, data or weights), as the worker raised it.
        ConfigError: bad arguments, or the workers could not start within ``startup_timeout``.
    """

    def __init__(
        self,
        spec: TaskSpec,
        workers: int | None = None,
        address: str | None = None,
        *,
        cpus_per_worker: float = 1.0,
        isolation: str = "exclusive",
        max_retries: int = 2,
        startup_timeout: float = 300.0,
        runtime_env: dict[str, Any] | None = None,
        queue_ahead: int = 1,
        wait: bool = True,
    ) -> None:
        if isolation not in ISOLATION:
            raise ConfigError(f"isolation must be one of {ISOLATION}, got {isolation!r}.")
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}.")
        if queue_ahead < 0:
            raise ConfigError(f"queue_ahead must be >= 0, got {queue_ahead}.")
        self.spec = spec
        self.queue_ahead = queue_ahead
        self.isolation = isolation
        self.max_retries = max_retries
        self.restarts = 0
        self._startup_timeout = startup_timeout
        self._gpus = 1 if spec.device.startswith("cuda") else 0
        self._cpus = cpus_per_worker
        self._owns_ray = _connect(address, runtime_env)
        self.capacity = workers or self._default_workers()
        self._spec_json = spec.to_json()
        # The weights travel with the task, so a worker on any node loads the file the driver
        # read, whatever its working directory or file system (one object, every worker).
        shipped = _read_weights(spec)
        self._weights = None if shipped is None else ray.put(shipped)
        self._pending: deque[_Job] = deque()
        self._running: dict[Any, _Slot] = {}  # evaluate ref -> slot
        self._starting: dict[Any, _Slot] = {}  # ready ref -> slot
        self._locks: dict[tuple[str, str], Any] = {}
        self._dense: dict[str, Any] | None = None
        self._closed = False
        self._slots = [self._start(index, 0) for index in range(self.capacity)]
        if not self._gpus and isolation != "none":  # start this node's lock alongside
            self._lock_for(ray.get_runtime_context().get_node_id(), "cpu")
        self._ready = False
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until every worker has loaded the task (see ``wait``); a no-op once done.

        Raises:
            AmcError: the task does not load, as the worker raised it (the evaluator closes).
            ConfigError: the workers did not start within ``startup_timeout``.
        """
        if self._ready:
            return
        try:
            self._await_startup(self._startup_timeout)
        except BaseException:
            self.close()
            raise
        self._ready = True

    # -- the protocol ---------------------------------------------------------------------

    def submit(self, tag: int, plan: PruningPlan) -> None:
        if self._closed:
            raise RuntimeError("This RayEvaluator is closed.")
        if tag in self._tags():
            raise ValueError(f"Tag {tag} is already in flight; use a fresh tag per plan.")
        self._pending.append(_Job(tag, plan))
        self._dispatch()

    def poll(self, timeout: float | None = None) -> list[tuple[int, EvalResult]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        results: list[tuple[int, EvalResult]] = []
        self._dispatch()
        while True:
            refs = [*self._running, *self._starting]
            if not refs:
                return results + self._fail_unplaceable()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(refs, num_returns=1, timeout=remaining)
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref in self._starting:
                    self._started(ref)
                else:
                    results.extend(self._finished(ref))
            self._dispatch()
            if results or (deadline is not None and time.monotonic() >= deadline):
                return results

    def in_flight(self) -> int:
        return len(self._pending) + len(self._running)

    def dense_metrics(self) -> dict[str, Any]:
        """The dense model's metrics, measured once on an idle worker (or worker 0)."""
        if self._dense is None:
            idle = [slot for slot in self._slots if slot.info is not None and slot.job is None]
            slot = idle[0] if idle else self._slots[0]
            self._dense = ray.get(slot.actor.dense_metrics.remote())
        return dict(self._dense)

    def cancel_all(self) -> list[int]:
        """Drop queued plans and kill the workers running plans (replacements start)."""
        tags = [job.tag for job in self._pending]
        self._pending.clear()
        for ref, slot in list(self._running.items()):
            del self._running[ref]
            assert slot.job is not None
            tags.append(slot.job.tag)
            self._replace(slot)
        return tags

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        forgets = []
        for slot in getattr(self, "_slots", []):
            _kill(slot.actor)
            if slot.lock is not None:  # the lock is shared with other searches: never kill it
                forgets.append(slot.lock.forget.remote(slot.token))
        with contextlib.suppress(Exception):
            ray.get(forgets, timeout=10)
        self._pending.clear()
        self._running.clear()
        self._starting.clear()
        if self._owns_ray:
            ray.shutdown()

    # -- introspection (tests, progress) --------------------------------------------------

    def workers_info(self) -> list[dict[str, Any] | None]:
        """Per slot: pid, worker name, node and device of its current actor (None if starting)."""
        return [dict(slot.info) if slot.info else None for slot in self._slots]

    def lock_states(self) -> dict[str, dict[str, Any]]:
        """The state of every device lock, keyed ``node/device``."""
        return {
            f"{node}/{device}": ray.get(lock.state.remote())
            for (node, device), lock in self._locks.items()
        }

    # -- workers ---------------------------------------------------------------------------

    def _default_workers(self) -> int:
        resources = ray.cluster_resources()
        if self._gpus:
            return max(1, int(resources.get("GPU", 0)))
        return max(1, int(resources.get("CPU", 1) // self._cpus))

    def _start(self, index: int, incarnation: int) -> _Slot:
        token = f"{os.getpid()}-{id(self):x}-{index}-{incarnation}"
        actor = (
            _remote(EvalWorker)
            .options(num_cpus=self._cpus, num_gpus=self._gpus, max_restarts=0)
            .remote(self._spec_json, token, self._weights)
        )
        slot = _Slot(index, incarnation, actor, token)
        self._starting[actor.ready.remote()] = slot
        return slot

    def _await_startup(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._starting:
            remaining = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(self._starting), num_returns=1, timeout=remaining)
            if not ready:
                need = f"{self._cpus} CPU" + (f" and {self._gpus} GPU" if self._gpus else "")
                raise ConfigError(
                    f"{len(self._starting)} of {self.capacity} Ray workers (each needing {need}) "
                    f"did not start within {timeout:.0f} s; the cluster has "
                    f"{ray.cluster_resources()}. Ask for fewer workers or add resources."
                )
            try:
                ray.get(ready[0])
            except RayTaskError as exc:  # the task itself does not load: a user error
                cause = exc.cause
                raise cause if isinstance(cause, Exception) else exc from None
            self._started(ready[0])
        # A lock actor is a process of its own: wait for it here, not in the first evaluation.
        ray.get([lock.state.remote() for lock in self._locks.values()], timeout=timeout)

    def _started(self, ref: Any) -> None:
        slot = self._starting.pop(ref)
        try:
            slot.info = ray.get(ref)
        except WORKER_DIED:
            self._replace(slot)  # died while loading: try a fresh one
            return
        except RayTaskError:
            # The first workers loaded this task, so a replacement that cannot is broken
            # (e.g. a node without the data); retire the slot rather than loop.
            self._slots = [other for other in self._slots if other is not slot]
            _kill(slot.actor)
            return
        assert slot.info is not None
        if self.isolation != "none":
            slot.lock = self._lock_for(slot.info["node"], slot.info["device"])
            slot.actor.attach_lock.remote(slot.lock, self.isolation)  # ordered before evaluate

    def _lock_for(self, node: str, device: str) -> Any:
        """The device's lock: one named actor per cluster, whichever search started it."""
        key = (node, device)
        if key not in self._locks:
            self._locks[key] = (
                _remote(DeviceLock)
                .options(
                    name=LOCK_NAME.format(node=node, device=device),
                    namespace=LOCK_NAMESPACE,
                    get_if_exists=True,
                    lifetime="detached",  # outlives the search that started it
                    num_cpus=0,
                    max_concurrency=1000,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
                )
                .remote(holder_alive=_actor_alive)
            )
        return self._locks[key]

    def _replace(self, slot: _Slot) -> None:
        """Kill ``slot``'s actor for good, release its lock holdings, start a new one."""
        _kill(slot.actor)
        if slot.lock is not None:
            slot.lock.forget.remote(slot.token)
        slot.job = None
        fresh = self._start(slot.index, slot.incarnation + 1)
        self._slots = [fresh if other is slot else other for other in self._slots]

    # -- jobs ------------------------------------------------------------------------------

    def _tags(self) -> set[int]:
        running = {slot.job.tag for slot in self._running.values() if slot.job is not None}
        return running | {job.tag for job in self._pending}

    def _dispatch(self) -> None:
        for slot in self._slots:
            if not self._pending:
                return
            if slot.info is None or slot.job is not None:
                continue
            job = self._pending.popleft()
            job.attempts += 1
            slot.job = job
            self._running[slot.actor.evaluate.remote(job.plan.to_json())] = slot

    def _fail_unplaceable(self) -> list[tuple[int, EvalResult]]:
        """Fail queued plans when no worker is left that could run them."""
        if self._slots or not self._pending:
            return []
        jobs, self._pending = list(self._pending), deque()
        error = "RuntimeError: no Ray worker could load the task (every replacement failed)"
        return [
            (job.tag, EvalResult(status="failed", error=error, reason="worker_died"))
            for job in jobs
        ]

    def _finished(self, ref: Any) -> list[tuple[int, EvalResult]]:
        slot = self._running.pop(ref)
        job = slot.job
        assert job is not None
        slot.job = None
        try:
            result = EvalResult.from_json(ray.get(ref))
        except WORKER_DIED as exc:
            self.restarts += 1
            worker = slot.info["worker"] if slot.info else "?"
            self._replace(slot)
            if job.attempts <= self.max_retries:
                self._pending.appendleft(job)  # run again, first in line
                return []
            detail = str(exc).strip().splitlines()[0]
            result = EvalResult(
                status="failed",
                error=f"{type(exc).__name__}: {detail} (worker {worker}, {job.attempts} attempts)",
                reason="worker_died",
                worker=worker,
            )
        except RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            result = EvalResult(
                status="failed", error=f"{type(cause).__name__}: {cause}", reason="exception"
            )
        return [(job.tag, with_attempts(result, job.attempts))]


def _connect(address: str | None, runtime_env: dict[str, Any] | None) -> bool:
    """Initialise Ray as asked; True when this call initialised it (and close should shut down)."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"log_to_driver": False, "runtime_env": runtime_env}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        ray.init(
            # "local": our own Ray even when `ray start` left a cluster on this machine (a bare
            # ray.init() would join that one; joining is what --address auto is for)
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            **options,
        )
    else:
        target = address or os.environ.get("RAY_ADDRESS")
        try:
            ray.init(address=address, **options)
        except ConnectionError as error:
            raise ConfigError(
                f"Could not connect to a Ray cluster at {target!r} ({error}). Start one with "
                "`ray start --head`, check it with `ray status`, or leave --address unset to "
                "run a local Ray inside amc."
            ) from error
    return True


def _read_weights(spec: TaskSpec) -> tuple[str, bytes] | None:
    """The weights file's name and bytes, read here, or None (no weights, or no such file:
    the worker then reports the missing file as it would have)."""
    if not spec.weights:
        return None
    path = Path(spec.weights)
    if not path.is_file():
        return None
    return path.name, path.read_bytes()


def _load_workload(spec: TaskSpec, weights: tuple[str, bytes] | None) -> Workload:
    """The task's workload, its weights loaded from ``weights`` (name, bytes) when given.

    The bytes go through the same loader as a file (:func:`amc.checkpoint.load_weights`:
    safetensors, or ``torch.load(weights_only=True)`` unless the checkpoint is trusted), from
    a private temporary copy with the original file's name, removed once loaded.
    """
    if weights is None:
        return Workload.from_spec(spec).prepare()
    name, blob = weights
    with tempfile.TemporaryDirectory(prefix="amc-weights-") as folder:
        local = Path(folder) / name
        local.write_bytes(blob)
        return Workload.from_spec(replace(spec, weights=str(local))).prepare()


@functools.cache
def _remote(cls: type) -> Any:
    """``ray.remote(cls)``, made once per class (each call would export the class again)."""
    return ray.remote(cls)


def _kill(actor: Any) -> None:
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)


__all__ = ["DeviceLock", "EvalWorker", "RayEvaluator"]
