"""Plan in, measured result out: a worker's task, one evaluation, and the Evaluator protocol.

A :class:`TaskSpec` names everything a worker needs (model, weights, data, device, fine-tune and
measurement settings) as plain values, so it travels to Ray workers and into a study as JSON.
A :class:`Workload` is built from it once per worker; :meth:`Workload.evaluate` turns a
:class:`~amc.plan.PruningPlan` into an :class:`EvalResult`: copy the model and apply the plan,
count FLOPs/params/size, optionally re-estimate BatchNorm statistics (adaptive BN, as EagleEye),
fine-tune k steps (k = 0 is AMC's original protocol), evaluate on held-out batches and measure
latency on the target device. Any exception becomes a ``failed`` result; nothing escapes.

:class:`LocalEvaluator` runs evaluations in this process; ``amc.distributed.RayEvaluator`` runs
them on a pool of Ray actors. Both speak :class:`Evaluator`.

Example:
    >>> spec = TaskSpec(model="resnet20", data="digits", input_shape=(1, 16, 16), data_limit=200)
    >>> with LocalEvaluator(spec) as evaluator:
    ...     plan = uniform_plan(evaluator.workload.model, evaluator.workload.example_inputs, 0.5)
    ...     [result] = evaluate_all(evaluator, [plan])
    >>> result.status
    'ok'
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from types import TracebackType
from typing import Any, Protocol, Self

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from amc.checkpoint import load_weights
from amc.errors import ConfigError, DataError, did_you_mean
from amc.measure import (
    count_flops,
    count_params,
    measure_interleaved,
    model_size,
    torch_threads,
)
from amc.plan import CRITERIA, PruningPlan
from amc.prune import apply_plan
from amc.train import NonFiniteLossError, evaluate, finetune, recalibrate_bn
from amc.units import UnitGraph, analyze
from amc.zoo import DataSplits, get_data, resolve_model

TASK_FORMAT = "amc.task/1"
RESULT_FORMAT = "amc.eval/1"
STATUSES = ("ok", "failed", "over_budget")
PHASES = ("apply", "count", "recalibrate", "finetune", "evaluate", "latency")
DATA_CRITERION_BATCHES = 2  # train batches a taylor/activation criterion sees
SLICE_S = 0.25  # a fine-tune gives the device lock back this often (a measurement may wait)

# guard(phase) -> a context manager held around a phase; RayEvaluator passes one that takes
# the device lock (shared for work, exclusive for "latency").
Guard = Callable[[str], contextlib.AbstractContextManager[Any]]


def _no_guard(phase: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """Everything a worker needs to evaluate plans, as plain JSON-ready values.

    Attributes:
        model: a zoo name (``resnet20``) or ``package.module:callable``.
        data: a data spec (``digits``, ``synthetic``, ``cifar10:/path``, a callable).
        model_kwargs: extra keywords for the model factory (``num_classes``, ``in_channels``
            and ``image_size`` are offered from the data and ``input_shape``).
        weights: a weights file (safetensors or ``torch.save``), or None for the factory's.
        trust_checkpoint: allow weights files that need pickle (can run code).
        data_kwargs: options of the data set (``synthetic``: ``n``, ``num_classes``).
        data_limit: at most this many samples per split.
        input_shape: ``(C, H, W)`` of one input.
        device: ``cpu``, ``cuda`` or ``cuda:N``: where fine-tuning, evaluation and latency run.
        criterion: channel criterion, or None for the plan's own.
        finetune_steps: optimiser steps after pruning; 0 is AMC's original protocol.
        finetune_lr: fine-tune learning rate.
        batch_size: batch size of fine-tuning, BN recalibration and evaluation.
        bn_batches: train batches for adaptive-BN recalibration (0 = off).
        eval_batches: held-out batches evaluated (None = the whole test split).
        latency_batch_size: batch size latency is measured at.
        latency_warmup, latency_min_run_time, latency_repeats: how latency is timed: the
            dense model alone and each plan together with the dense model, both by
            :func:`amc.measure.measure_interleaved` (``latency_repeats`` rounds, about
            ``latency_min_run_time`` seconds in all).
        threads: torch intra-op threads during an evaluation (None = leave as is; a Ray
            worker then has as many as its CPUs).
        budget_tolerance: a result whose target metric exceeds ``fraction * dense`` by more
            than this relative margin is ``over_budget``.
        seed: seeds model construction (without weights), fine-tuning and BN batches.
    """

    model: str
    data: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None
    trust_checkpoint: bool = False
    data_kwargs: Mapping[str, Any] = field(default_factory=dict)
    data_limit: int | None = None
    input_shape: tuple[int, int, int] = (3, 32, 32)
    device: str = "cpu"
    criterion: str | None = None
    finetune_steps: int = 0
    finetune_lr: float = 0.01
    batch_size: int = 64
    bn_batches: int = 0
    eval_batches: int | None = None
    latency_batch_size: int = 1
    latency_warmup: int = 5
    latency_min_run_time: float = 0.5
    latency_repeats: int = 20
    threads: int | None = None
    budget_tolerance: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        object.__setattr__(self, "data_kwargs", dict(self.data_kwargs))
        problems = []
        if len(self.input_shape) != 3 or not all(
            isinstance(size, int) and size > 0 for size in self.input_shape
        ):
            problems.append(f"input_shape must be (C, H, W) positive ints, got {self.input_shape}")
        if not (self.device == "cpu" or self.device.split(":")[0] == "cuda"):
            problems.append(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.criterion is not None and self.criterion not in CRITERIA:
            hint = did_you_mean(self.criterion, CRITERIA)
            problems.append(f"criterion {self.criterion!r} is unknown.{hint}")
        positive = {"batch_size": self.batch_size, "latency_batch_size": self.latency_batch_size}
        positive |= {"latency_repeats": self.latency_repeats}
        for name, value in positive.items():
            if value < 1:
                problems.append(f"{name} must be >= 1, got {value}")
        for name in ("finetune_steps", "bn_batches", "latency_warmup"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("eval_batches", "data_limit", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 or None, got {value}")
        if not self.latency_min_run_time > 0 or not self.finetune_lr > 0:
            problems.append("latency_min_run_time and finetune_lr must be > 0")
        if not self.budget_tolerance >= 0:
            problems.append(f"budget_tolerance must be >= 0, got {self.budget_tolerance}")
        if problems:
            raise ConfigError("Invalid task: " + "; ".join(problems) + ".")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict in format ``amc.task/1``."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return {"format": TASK_FORMAT, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Build a spec from :meth:`to_json` output; unknown keys get a "did you mean"."""
        version = data.get("format", TASK_FORMAT)
        if version != TASK_FORMAT:
            raise ConfigError(
                f"Unknown task format {version!r}: this amc reads {TASK_FORMAT!r}. Re-create "
                "the study with this version of amc."
            )
        names = [spec_field.name for spec_field in fields(cls)]
        unknown = [key for key in data if key not in names and key != "format"]
        if unknown:
            raise ConfigError(
                "Unknown task keys: "
                + ", ".join(f"{key!r}.{did_you_mean(key, names)}" for key in unknown)
            )
        missing = [name for name in ("model", "data") if name not in data]
        if missing:
            raise ConfigError(f"A task needs {' and '.join(missing)}.")
        return cls(**{key: value for key, value in data.items() if key != "format"})


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation of a plan measured.

    Attributes:
        status: ``ok``, ``failed`` or ``over_budget`` (measured, but over the plan's target).
        accuracy: top-1 accuracy on the held-out batches (agreement with the dense model when
            the data has no labels; see ``labelled``).
        loss: mean cross entropy on the held-out batches.
        fidelity: top-1 agreement with the dense model (only measured without labels).
        labelled: whether ``accuracy`` and ``loss`` are against true labels.
        latency_ms, latency_iqr_ms: median and IQR of one forward pass on the target device.
        latency_ratio: ``latency_ms`` over the dense model's latency, both measured in one
            interleaved run on the same worker (:func:`amc.measure.measure_interleaved`), so
            that drift of the machine cancels; latency budgets are checked against it.
        flops, params, size_bytes: of the pruned model (size as stored, N:M/CSR compressed).
        finetune_steps: fine-tune steps completed.
        times: wall seconds per phase (:data:`PHASES`, ``wait`` for the device lock, ``total``).
        error: ``"ExceptionClass: message"`` or why the result is over budget; None when ok.
        reason: ``nan_loss``, ``exception``, ``worker_died``, ``over_budget`` or None.
        worker: ``host:pid`` of the process that evaluated it.
        attempts: times the plan was started (more than 1 after a worker died).
    """

    status: str
    accuracy: float | None = None
    loss: float | None = None
    fidelity: float | None = None
    labelled: bool = True
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    latency_ratio: float | None = None
    flops: int | None = None
    params: int | None = None
    size_bytes: int | None = None
    finetune_steps: int = 0
    times: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    reason: str | None = None
    worker: str = ""
    attempts: int = 1

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        """Whether the evaluation ran to the end within budget."""
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict in format ``amc.eval/1``."""
        return {"format": RESULT_FORMAT, **asdict(self), "times": dict(self.times)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_json`."""
        version = data.get("format", RESULT_FORMAT)
        if version != RESULT_FORMAT:
            raise ValueError(f"Unknown result format {version!r}, expected {RESULT_FORMAT!r}.")
        names = {result_field.name for result_field in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def failed_result(exc: BaseException, **extra: Any) -> EvalResult:
    """A ``failed`` result for ``exc``: error ``"Class: message"``, reason ``nan_loss`` or
    ``exception``."""
    reason = getattr(exc, "reason", None) if isinstance(exc, NonFiniteLossError) else "exception"
    return EvalResult(
        status="failed", error=f"{type(exc).__name__}: {exc}", reason=reason, **extra
    )


def worker_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------------------------
# One worker's workload
# --------------------------------------------------------------------------------------------


class Workload:
    """A model, its data and its unit graph, loaded once; evaluates plans against them.

    Build with :meth:`from_spec`. The unit graph, held-out batches and dense metrics are
    computed on first use and cached.
    """

    def __init__(self, spec: TaskSpec, model: nn.Module, data: DataSplits) -> None:
        self.spec = spec
        self.model = model.eval()
        self.data = data
        sample = data.test[0] if len(data.test) else data.train[0]  # type: ignore[arg-type]
        self.labelled = isinstance(sample, tuple | list) and len(sample) >= 2
        first = sample[0] if isinstance(sample, tuple | list) else sample
        self.example_inputs = first.unsqueeze(0).clone()
        if spec.finetune_steps and not self.labelled:
            raise DataError(
                f"finetune_steps={spec.finetune_steps} needs labelled training data, but "
                f"{spec.data!r} has inputs only; set finetune_steps to 0 (evaluation then "
                "measures fidelity to the dense model)."
            )
        self._dense: dict[str, Any] = {}

    @classmethod
    def from_spec(cls, spec: TaskSpec) -> Workload:
        """Load the data and the model (with its weights) that ``spec`` names."""
        data = get_data(
            spec.data, input_shape=spec.input_shape, limit=spec.data_limit, **spec.data_kwargs
        )
        options = {
            "num_classes": data.num_classes,
            "in_channels": spec.input_shape[0],
            "image_size": spec.input_shape[1],
            **spec.model_kwargs,
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)  # every worker builds the same initial weights
            model = resolve_model(spec.model, **options)
        if spec.weights:
            load_weights(model, spec.weights, trust_pickle=spec.trust_checkpoint)
        return cls(spec, model, data)

    def with_finetune(self, steps: int) -> Workload:
        """This workload with ``steps`` fine-tune steps per evaluation, sharing its model, data,
        unit graph, held-out batches and dense metrics (re-scoring plans, :mod:`amc.choose`)."""
        other = copy.copy(self)
        other.spec = replace(self.spec, finetune_steps=steps)
        return other

    def with_held_out(self, held_out: Dataset) -> Workload:
        """This workload scoring plans on ``held_out`` samples instead of its test split (a
        larger set to re-score a search's best plans on, :mod:`amc.choose`), sharing its
        model, training data, unit graph and dense cost and latency."""
        other = copy.copy(self)
        other.data = replace(self.data, test=held_out)
        other.__dict__.pop("eval_loader", None)  # materialised again from ``held_out``
        other.__dict__.pop("_reference", None)
        scored = ("accuracy", "loss", "labelled", "n")  # the dense model's, on the new samples
        other._dense = {key: value for key, value in self._dense.items() if key not in scored}
        return other

    @cached_property
    def graph(self) -> UnitGraph:
        """The dense model's units and cost model (:func:`amc.units.analyze`)."""
        return analyze(self.model, self.example_inputs)

    @cached_property
    def eval_loader(self) -> DataLoader:
        """The held-out batches, materialised once (the same batches for every plan)."""
        loader = self.data.loader("test", batch_size=self.spec.batch_size)
        batches = []
        for index, batch in enumerate(loader):
            if self.spec.eval_batches is not None and index >= self.spec.eval_batches:
                break
            batches.append(tuple(batch) if isinstance(batch, list) else batch)
        if not batches:
            raise DataError(f"Data set {self.spec.data!r} has an empty test split.")
        return DataLoader(batches, batch_size=None)  # type: ignore[arg-type]

    @cached_property
    def _criterion_batches(self) -> list[Any] | None:
        criterion = self.spec.criterion
        if criterion not in ("taylor", "activation"):
            return None
        loader = self.data.loader("train", batch_size=self.spec.batch_size, shuffle=True)
        return [batch for _, batch in zip(range(DATA_CRITERION_BATCHES), loader, strict=False)]

    @cached_property
    def _reference(self) -> nn.Module | None:
        """The dense model on the device, scoring fidelity when the data has no labels."""
        if self.labelled:
            return None
        return copy.deepcopy(self.model).to(self.spec.device).eval()

    def prepare(self) -> Workload:
        """Compute the unit graph and held-out batches now (not in the first evaluation)."""
        _ = self.graph, self.eval_loader, self._criterion_batches
        if self.spec.finetune_steps:
            # The first optimiser of a process pays a one-off import (about a second);
            # pay it here so that evaluation times stay comparable.
            torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        return self

    def dense_metrics(self, guard: Guard = _no_guard) -> dict[str, Any]:
        """The dense model's accuracy, loss, latency, FLOPs, params and size (cached)."""
        if "accuracy" not in self._dense:
            with torch_threads(self.spec.threads), guard("evaluate"):
                metrics = evaluate(
                    self.model,
                    self.eval_loader,
                    device=self.spec.device,
                    reference=self._reference,
                )
            self.model.to("cpu")  # the copy apply_plan makes is traced on the CPU
            self._dense.update(
                accuracy=metrics.accuracy,
                loss=metrics.loss,
                labelled=metrics.labelled,
                n=metrics.n,
            )
        self._dense_cost()
        self._dense_latency(guard)
        self._dense.update(
            units=len(self.graph.units), fingerprint=self.graph.fingerprint,
            num_classes=self.data.num_classes, input_shape=list(self.spec.input_shape),
            device=self.spec.device, worker=worker_name(),
        )  # fmt: skip
        return dict(self._dense)

    def _dense_cost(self) -> dict[str, int]:
        if "flops" not in self._dense:
            self._dense.update(
                flops=count_flops(self.model, self.example_inputs),
                params=count_params(self.model),
                size_bytes=model_size(self.model).stored_bytes,
            )
        return {key: self._dense[key] for key in ("flops", "params", "size_bytes")}

    def _dense_latency(self, guard: Guard) -> float:
        if "latency_ms" not in self._dense:
            with torch_threads(self.spec.threads), guard("latency"):
                (stats,) = self._measure([self.model])
            self._dense.update(latency_ms=stats.median_ms, latency_iqr_ms=stats.iqr_ms)
        return float(self._dense["latency_ms"])

    def _measure_against_dense(self, pruned: nn.Module) -> tuple[Any, Any]:
        """Latency of ``pruned`` and of the dense model, timed in alternation."""
        pruned_stats, dense_stats = self._measure([pruned, self.model])
        return pruned_stats, dense_stats

    def _measure(self, models: list[nn.Module]) -> list[Any]:
        """Blocks of ``latency_repeats`` rounds in about ``latency_min_run_time`` seconds.

        The dense model alone is timed the same way as a plan against it, so its statistics
        are comparable, and it costs one measurement's time: ``measure_latency`` sizes its
        blocks with ``blocked_autorange`` (about 0.1 s each for a small CNN, so 20 of them
        took 3 s on the way to the first trial).
        """
        spec = self.spec
        return measure_interleaved(
            models, self.example_inputs, spec.device,
            batch_size=spec.latency_batch_size, threads=spec.threads, warmup=spec.latency_warmup,
            min_run_time=spec.latency_min_run_time, rounds=spec.latency_repeats,
        )  # fmt: skip

    def evaluate(self, plan: PruningPlan, guard: Guard = _no_guard) -> EvalResult:
        """Apply ``plan``, fine-tune, evaluate and measure; never raises.

        Args:
            plan: the plan to evaluate.
            guard: ``guard(phase)`` is held around each phase (the Ray worker's device lock).

        Returns:
            An :class:`EvalResult`: ``ok``, ``failed`` (with the exception's class and message;
            reason ``nan_loss`` for a diverged fine-tune) or ``over_budget``.
        """
        spec = self.spec
        times: dict[str, float] = {"wait": 0.0}
        steps = 0
        start = time.perf_counter()
        timed = _Timer(times, guard)
        try:
            with torch_threads(spec.threads):
                with timed("apply"):
                    pruned = apply_plan(
                        self.model, plan, self.example_inputs, spec.criterion,
                        batches=self._criterion_batches, graph=self.graph,
                    )  # fmt: skip
                with timed("count"):
                    flops = count_flops(pruned, self.example_inputs)
                    params = count_params(pruned)
                    size_bytes = model_size(pruned).stored_bytes
                if spec.bn_batches:
                    with timed("recalibrate"):
                        recalibrate_bn(
                            pruned, self.data, spec.bn_batches, spec.batch_size, spec.device,
                            spec.seed,
                        )  # fmt: skip
                if spec.finetune_steps:
                    with timed("finetune"):
                        finetune(
                            pruned, self.data, spec.finetune_steps, lr=spec.finetune_lr,
                            batch_size=spec.batch_size, device=spec.device, seed=spec.seed,
                            on_step=timed.share,
                        )  # fmt: skip
                    steps = spec.finetune_steps
                with timed("evaluate"):
                    metrics = evaluate(
                        pruned, self.eval_loader, device=spec.device, reference=self._reference
                    )
                with timed("latency"):
                    latency, dense = self._measure_against_dense(pruned)
                ratio = latency.median_ms / dense.median_ms
                over = self._over_budget(plan, flops, params, ratio)
        except NonFiniteLossError as exc:
            times["total"] = time.perf_counter() - start
            return failed_result(
                exc, finetune_steps=exc.step - 1, times=times, worker=worker_name()
            )
        except Exception as exc:  # any failure of one plan is that trial's result
            times["total"] = time.perf_counter() - start
            return failed_result(exc, finetune_steps=steps, times=times, worker=worker_name())
        times["total"] = time.perf_counter() - start
        return EvalResult(
            status="over_budget" if over else "ok",
            accuracy=metrics.accuracy,
            loss=metrics.loss,
            fidelity=metrics.fidelity,
            labelled=metrics.labelled,
            latency_ms=latency.median_ms,
            latency_iqr_ms=latency.iqr_ms,
            latency_ratio=ratio,
            flops=flops,
            params=params,
            size_bytes=size_bytes,
            finetune_steps=steps,
            times=times,
            error=over,
            reason="over_budget" if over else None,
            worker=worker_name(),
        )

    def _over_budget(
        self, plan: PruningPlan, flops: int, params: int, latency_ratio: float
    ) -> str | None:
        """Why the measured result exceeds the plan's target, or None when within it."""
        if not plan.target:
            return None
        metric, fraction = str(plan.target.get("metric")), float(plan.target["fraction"])
        if metric == "latency":
            ratio = latency_ratio
        elif metric in ("flops", "params"):
            dense = self._dense_cost()[metric]
            ratio = (flops if metric == "flops" else params) / dense if dense else math.inf
        else:
            return None
        if ratio <= fraction * (1.0 + self.spec.budget_tolerance):
            return None
        return (
            f"{metric} is {ratio:.3f} of the dense model's, over the target {fraction:.3f} "
            f"(tolerance {self.spec.budget_tolerance:.0%})"
        )


class _Timer:
    """``with timer(phase):`` holds the guard for the phase and records its wall time.

    A long phase calls :meth:`share` between its steps: every :data:`SLICE_S` seconds the
    guard is given back and taken again, so a latency measurement waiting for the device gets
    it after at most one slice instead of after the whole fine-tune. Time spent waiting counts
    as ``wait``, not as the phase.
    """

    def __init__(self, times: dict[str, float], guard: Guard) -> None:
        self.times = times
        self.guard = guard
        self._held: contextlib.ExitStack | None = None
        self._phase = ""
        self._since = 0.0

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._phase = phase
        begun = time.perf_counter()
        waited_before = self.times["wait"]
        self._take()
        try:
            yield
        finally:
            assert self._held is not None
            self._held.close()
            self._held = None
            waited = self.times["wait"] - waited_before
            self.times[phase] = time.perf_counter() - begun - waited

    def share(self, _step: int = 0) -> None:
        """Give the guard back and take it again if held for a slice (between steps)."""
        if self._held is None or self.guard is _no_guard:
            return
        if time.perf_counter() - self._since >= SLICE_S:
            self._held.close()
            self._take()

    def _take(self) -> None:
        waited = time.perf_counter()
        self._held = contextlib.ExitStack()
        self._held.enter_context(self.guard(self._phase))
        self._since = time.perf_counter()
        self.times["wait"] += self._since - waited


# --------------------------------------------------------------------------------------------
# Evaluators
# --------------------------------------------------------------------------------------------


class Evaluator(Protocol):
    """Evaluates plans, several at a time; local and Ray evaluators share this protocol.

    ``submit`` hands over a plan under a caller-chosen integer tag; ``poll`` returns finished
    ``(tag, result)`` pairs, each tag exactly once. A context manager: leaving it calls
    ``close``.
    """

    capacity: int  # evaluations that run at once; submitting more queues them
    # plans the search keeps queued beyond ``capacity``: a worker that finishes one starts the
    # next at once, while the driver records the result, tells the agent and asks again
    queue_ahead: int = 0

    def submit(self, tag: int, plan: PruningPlan) -> None:
        """Queue ``plan`` for evaluation under ``tag`` (unique among those not yet returned)."""
        ...

    def poll(self, timeout: float | None = None) -> list[tuple[int, EvalResult]]:
        """Finished ``(tag, result)`` pairs; with work in flight, waits up to ``timeout``
        seconds (None: until one finishes) for at least one."""
        ...

    def in_flight(self) -> int:
        """Plans submitted and not yet returned by ``poll`` (queued or running)."""
        ...

    def dense_metrics(self) -> dict[str, Any]:
        """The dense model's metrics measured the way plans are (accuracy, latency, ...)."""
        ...

    def wait_ready(self) -> None:
        """Block until the workers have loaded the task (raising what a worker raised)."""
        return None

    def cancel_all(self) -> list[int]:
        """Drop every queued and running plan; return their tags (no results follow)."""
        ...

    def close(self) -> None:
        """Release workers; idempotent."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class LocalEvaluator(Evaluator):
    """Evaluates plans in this process, one at a time, when :meth:`poll` is called.

    Example:
        >>> with LocalEvaluator(spec) as evaluator:
        ...     evaluator.submit(0, plan)
        ...     [(tag, result)] = evaluator.poll()
    """

    capacity = 1

    def __init__(self, spec: TaskSpec, workload: Workload | None = None) -> None:
        self.spec = spec
        self._workload = workload
        self._queue: deque[tuple[int, PruningPlan]] = deque()

    @property
    def workload(self) -> Workload:
        """The in-process workload (built on first use)."""
        if self._workload is None:
            self._workload = Workload.from_spec(self.spec).prepare()
        return self._workload

    def submit(self, tag: int, plan: PruningPlan) -> None:
        if any(queued == tag for queued, _ in self._queue):
            raise ValueError(f"Tag {tag} is already in flight; use a fresh tag per plan.")
        self._queue.append((tag, plan))

    def poll(self, timeout: float | None = None) -> list[tuple[int, EvalResult]]:
        """Evaluate the oldest queued plan (synchronously: ``timeout`` is not applied)."""
        if not self._queue:
            return []
        tag, plan = self._queue.popleft()
        return [(tag, self.workload.evaluate(plan))]

    def in_flight(self) -> int:
        return len(self._queue)

    def dense_metrics(self) -> dict[str, Any]:
        return self.workload.dense_metrics()

    def cancel_all(self) -> list[int]:
        tags = [tag for tag, _ in self._queue]
        self._queue.clear()
        return tags

    def close(self) -> None:
        self._queue.clear()


def evaluate_all(evaluator: Evaluator, plans: Sequence[PruningPlan]) -> list[EvalResult]:
    """Evaluate ``plans`` (in parallel where the evaluator can) and return results in order.

    Needs an evaluator with nothing in flight (it uses tags ``0 .. len(plans) - 1``).
    """
    if evaluator.in_flight():
        raise ValueError("evaluate_all needs an idle evaluator; poll its results first.")
    for tag, plan in enumerate(plans):
        evaluator.submit(tag, plan)
    results: dict[int, EvalResult] = {}
    while len(results) < len(plans):
        for tag, result in evaluator.poll():
            results[tag] = result
    return [results[tag] for tag in range(len(plans))]


def with_attempts(result: EvalResult, attempts: int) -> EvalResult:
    """``result`` with its ``attempts`` count set."""
    return replace(result, attempts=attempts)
