"""One evaluation of a plan (Workload), its result and task formats, and the LocalEvaluator."""

from __future__ import annotations

import contextlib
import math
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from amc import evaluate as evaluate_module
from amc.checkpoint import save_weights
from amc.errors import ConfigError, DataError
from amc.evaluate import (
    PHASES,
    EvalResult,
    LocalEvaluator,
    TaskSpec,
    Workload,
    evaluate_all,
)
from amc.measure import LatencyStats, count_flops, count_params
from amc.plan import PruningPlan, UnitPlan, uniform_plan
from amc.prune import apply_plan
from amc.zoo import DataSplits, get_data
from tests.tiny_models import LeNet

SPEC = TaskSpec(
    model="tests.tiny_models:LeNet",
    data="digits",
    input_shape=(1, 16, 16),
    data_limit=256,
    batch_size=32,
    eval_batches=2,
    latency_warmup=1,
    latency_min_run_time=0.01,
    latency_repeats=3,
    threads=1,
)


class ExplodingLeNet(LeNet):
    """A LeNet whose forward fails in training mode (so only fine-tuning fails)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("boom: training forward")
        return super().forward(x)


def nan_digits(input_shape: tuple[int, int, int]) -> DataSplits:
    """Digits whose train inputs are all NaN: the first fine-tune loss is NaN."""
    data = get_data("digits", input_shape=input_shape, limit=64)
    inputs, labels = data.train.tensors  # type: ignore[attr-defined]
    return replace(data, train=TensorDataset(torch.full_like(inputs, math.nan), labels))


def unlabelled_digits(input_shape: tuple[int, int, int], **_: Any) -> DataSplits:
    """Digits with inputs only (no labels)."""
    data = get_data("digits", input_shape=input_shape, limit=64)
    train, test = (split.tensors[0] for split in (data.train, data.test))  # type: ignore[attr-defined]
    return replace(data, train=TensorDataset(train), test=TensorDataset(test))


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload.from_spec(SPEC).prepare()


def _plan(workload: Workload, keep: float = 0.5, **kw: Any) -> PruningPlan:
    return uniform_plan(workload.model, workload.example_inputs, keep, **kw)


def _variant(workload: Workload, **changes: Any) -> Workload:
    """The same model and data under a changed spec (no reloading)."""
    return Workload(replace(SPEC, **changes), workload.model, workload.data)


# -- formats ---------------------------------------------------------------------------------


def test_task_spec_json_round_trip_and_errors() -> None:
    data = SPEC.to_json()
    assert data["format"] == "amc.task/1" and data["input_shape"] == [1, 16, 16]
    assert TaskSpec.from_json(data) == SPEC
    with pytest.raises(ConfigError, match=re.escape("Unknown task keys: 'finetune_step'. Did")):
        TaskSpec.from_json({**data, "finetune_step": 3})
    with pytest.raises(ConfigError, match=re.escape("Unknown task format 'amc.task/9'")):
        TaskSpec.from_json({**data, "format": "amc.task/9"})
    message = (
        "Invalid task: device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'; "
        "finetune_steps must be >= 0, got -1."
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        replace(SPEC, device="tpu", finetune_steps=-1)


def test_eval_result_json_round_trip() -> None:
    result = EvalResult(status="ok", accuracy=0.5, flops=10, times={"apply": 0.1}, worker="h:1")
    assert EvalResult.from_json(result.to_json()) == result
    assert result.to_json()["format"] == "amc.eval/1"
    with pytest.raises(ValueError, match="status must be one of"):
        EvalResult(status="done")


# -- one evaluation --------------------------------------------------------------------------


def test_ok_result_matches_the_pruned_model(workload: Workload) -> None:
    before = {key: value.clone() for key, value in workload.model.state_dict().items()}
    plan = _plan(workload)
    result = workload.evaluate(plan)
    assert result.status == "ok" and result.ok and result.error is None and result.reason is None
    pruned = apply_plan(workload.model, plan, workload.example_inputs)
    assert result.flops == count_flops(pruned, workload.example_inputs)
    assert result.params == count_params(pruned)
    assert result.params < count_params(workload.model)
    assert 0.0 <= result.accuracy <= 1.0 and math.isfinite(result.loss)
    assert result.labelled and result.fidelity is None
    assert result.latency_ms > 0 and result.latency_iqr_ms >= 0 and result.size_bytes > 0
    assert result.finetune_steps == 0 and result.attempts == 1
    assert set(result.times) == {"wait", "apply", "count", "evaluate", "latency", "total"}
    assert result.times["total"] >= sum(result.times[phase] for phase in PHASES[:2])
    assert result.worker.startswith(f"{socket.gethostname()}:")
    for key, value in workload.model.state_dict().items():  # the dense model is untouched
        assert torch.equal(value, before[key])
    assert workload.evaluate(plan).accuracy == result.accuracy  # deterministic


def test_finetune_and_bn_recalibration(workload: Workload) -> None:
    plan = _plan(workload)
    plain = workload.evaluate(plan)
    tuned = _variant(workload, finetune_steps=3, bn_batches=2).evaluate(plan)
    assert tuned.status == "ok" and tuned.finetune_steps == 3
    assert {"recalibrate", "finetune"} <= set(tuned.times)
    assert "finetune" not in plain.times
    assert tuned.flops == plain.flops and tuned.loss != plain.loss


def test_finetune_gives_the_guard_back_between_steps(
    workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting latency measurement gets the device after one slice, not the whole phase."""
    entered: list[str] = []
    held: list[str] = []

    @contextlib.contextmanager
    def guard(phase: str) -> Iterator[None]:
        assert not held, "the guard is never taken twice at once"
        entered.append(phase)
        held.append(phase)
        time.sleep(0.002)  # waiting for the lock counts as wait, not as the phase
        try:
            yield
        finally:
            held.pop()

    monkeypatch.setattr(evaluate_module, "SLICE_S", 0.0)  # give it back after every step
    result = _variant(workload, finetune_steps=4).evaluate(_plan(workload), guard=guard)
    assert result.status == "ok" and not held
    assert entered.count("finetune") == 1 + 4
    assert entered.count("latency") == 1 and entered.count("apply") == 1
    assert result.times["wait"] >= 0.002 * len(entered)


def test_failure_in_finetuning_is_a_failed_result(workload: Workload) -> None:
    exploding = ExplodingLeNet(num_classes=10, in_channels=1)
    exploding.load_state_dict(workload.model.state_dict())
    broken = Workload(replace(SPEC, finetune_steps=2), exploding, workload.data)
    result = broken.evaluate(_plan(workload))
    assert result.status == "failed" and result.reason == "exception"
    assert result.error == "RuntimeError: boom: training forward"
    assert result.accuracy is None and result.finetune_steps == 0
    assert "finetune" in result.times and "latency" not in result.times


def test_nan_loss_is_failed_with_reason(workload: Workload) -> None:
    spec = replace(SPEC, data="tests.amc.test_evaluate:nan_digits", finetune_steps=5)
    result = Workload.from_spec(spec).evaluate(_plan(workload))
    assert (result.status, result.reason, result.finetune_steps) == ("failed", "nan_loss", 0)
    assert result.error == (
        "NonFiniteLossError: Loss became nan at step 1; lower the learning rate."
    )


def test_plan_for_another_model_fails_with_its_message(workload: Workload) -> None:
    plan = PruningPlan(units={"fc7": UnitPlan(keep_ratio=0.5)}, model="")
    result = workload.evaluate(plan)
    assert result.status == "failed" and result.reason == "exception"
    assert result.error == (
        "PlanMismatchError: The plan does not fit this model: unknown unit 'fc7'. "
        "Did you mean 'fc1'? Units of this model: conv1, conv2, fc1 (`amc units MODEL` lists "
        "them)."
    )


def test_over_budget(workload: Workload) -> None:
    dense_flops = workload.dense_metrics()["flops"]
    plan = _plan(workload)
    fraction = workload.evaluate(plan).flops / dense_flops
    within = replace(plan, target={"metric": "flops", "fraction": round(fraction, 3)})
    assert workload.evaluate(within).status == "ok"
    over = replace(plan, target={"metric": "flops", "fraction": 0.1})
    result = workload.evaluate(over)
    assert result.status == "over_budget" and result.reason == "over_budget"
    assert result.accuracy is not None and result.flops is not None  # still measured
    assert result.error == (
        f"flops is {fraction:.3f} of the dense model's, over the target 0.100 (tolerance 5%)"
    )


def test_latency_budget_is_checked_on_the_ratio_measured_with_the_dense_model(
    workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ratio comes from one interleaved run of plan and dense, not a stale dense time."""
    plan = _plan(workload)
    result = workload.evaluate(plan)
    assert result.latency_ratio is not None and 0 < result.latency_ratio < 3
    workload._dense["latency_ms"] = 1e-6  # a dense time measured once, wildly off
    calls: list[int] = []

    def timed(models, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(models))
        pruned, dense = (LatencyStats(v, 0.0, v, 3, 1, "cpu", 1) for v in (2.0, 4.0))
        return [pruned, dense]

    monkeypatch.setattr(evaluate_module, "measure_interleaved", timed)
    within = workload.evaluate(replace(plan, target={"metric": "latency", "fraction": 0.5}))
    assert calls == [2] and within.status == "ok"
    assert (within.latency_ms, within.latency_ratio) == (2.0, 0.5)
    over = workload.evaluate(replace(plan, target={"metric": "latency", "fraction": 0.4}))
    assert over.status == "over_budget"
    assert over.error == (
        "latency is 0.500 of the dense model's, over the target 0.400 (tolerance 5%)"
    )


def test_dense_metrics(workload: Workload) -> None:
    dense = workload.dense_metrics()
    assert dense["flops"] == count_flops(workload.model, workload.example_inputs)
    assert dense["params"] == count_params(workload.model)
    assert dense["n"] == 64 and dense["units"] == 3 and dense["labelled"]
    assert dense["latency_ms"] > 0
    assert workload.evaluate(_plan(workload, keep=1.0)).accuracy == dense["accuracy"]


def test_weights_are_loaded(tmp_path: Any, workload: Workload) -> None:
    torch.manual_seed(7)
    trained = LeNet(num_classes=10, in_channels=1)
    path = save_weights(trained, tmp_path / "lenet.safetensors")
    loaded = Workload.from_spec(replace(SPEC, weights=str(path)))
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_unlabelled_data_scores_fidelity() -> None:
    spec = replace(
        SPEC, data="tests.amc.test_evaluate:unlabelled_digits", data_kwargs={"num_classes": 10}
    )
    workload = Workload.from_spec(spec)
    result = workload.evaluate(_plan(workload, keep=1.0))
    assert result.status == "ok" and not result.labelled
    assert result.fidelity == result.accuracy == 1.0  # the unpruned model agrees with itself
    with pytest.raises(DataError, match=re.escape("finetune_steps=2 needs labelled training")):
        Workload(replace(spec, finetune_steps=2), workload.model, workload.data)


# -- LocalEvaluator --------------------------------------------------------------------------


def test_local_evaluator_protocol(workload: Workload) -> None:
    plans = [_plan(workload, keep) for keep in (0.5, 1.0)]
    with LocalEvaluator(SPEC, workload=workload) as evaluator:
        assert evaluator.capacity == 1 and evaluator.poll() == []
        evaluator.submit(7, plans[0])
        evaluator.submit(3, plans[1])
        with pytest.raises(ValueError, match=re.escape("Tag 7 is already in flight")):
            evaluator.submit(7, plans[1])
        assert evaluator.in_flight() == 2
        [(tag, result)] = evaluator.poll(timeout=0)
        assert tag == 7 and result.ok and evaluator.in_flight() == 1
        assert evaluator.cancel_all() == [3] and evaluator.in_flight() == 0
        in_order = evaluate_all(evaluator, plans)
        assert [r.flops for r in in_order] == [result.flops, workload.dense_metrics()["flops"]]
        assert evaluator.dense_metrics() == workload.dense_metrics()
