"""ExperimentConfig: one search, as YAML, validated with pydantic.

Unknown keys and bad values are reported together, each naming the key, what was expected and
a "did you mean" for misspelt keys. Command-line flags override YAML values through
:func:`load_config`'s ``overrides``.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from amc.errors import ConfigError, did_you_mean

DEFAULT_STORAGE = "sqlite:///runs/amc.db"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineConfig(_Strict):
    """How to train a baseline when no weights are given (cached under runs/baselines)."""

    epochs: int = Field(8, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(64, ge=1)


class FinetuneConfig(_Strict):
    """The short fine-tune of every evaluation (steps 0 is AMC's original protocol)."""

    steps: int = Field(0, ge=0)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=1)
    bn_batches: int = Field(4, ge=0, description="adaptive-BN recalibration batches, 0 = off")
    eval_batches: int | None = Field(8, ge=1, description="held-out batches, null = all")
    final_steps: int = Field(
        0,
        ge=0,
        description="after the search: fine-tune steps given alike to the best and the uniform "
        "plan, scored on the whole test split (the saved pruned model is the fine-tuned one)",
    )


class ChooseConfig(_Strict):
    """After the search: which plan is delivered (exported, applied, finally fine-tuned)."""

    rescore: int = Field(
        0,
        ge=0,
        description="re-evaluate the k best trials with rescore_steps of fine-tune and deliver "
        "the most accurate of them (0 or 1 = the best trial as searched)",
    )
    rescore_steps: int = Field(100, ge=0, description="fine-tune steps of a re-evaluation")
    rescore_uniform: bool = Field(
        True,
        description="re-evaluate the uniform plan at the same budget beside the k best and "
        "deliver it if it re-scores best: the search never delivers a plan its own re-score "
        "ranks under uniform pruning",
    )
    aim: bool = Field(
        False,
        description="latency targets: size the delivered plan by measurement (its removed "
        "fractions scaled by one factor, bisected on the measured latency ratio)",
    )
    aim_steps: int = Field(8, ge=0, description="bisection steps of aim")
    aim_first: bool = Field(
        True,
        description="with rescore and aim: aim every re-scored plan first, so they are "
        "ranked at the size each would be delivered at (one aim per plan instead of one)",
    )
    aim_rank_steps: int | None = Field(
        None,
        ge=0,
        description="with aim_first: rank the re-scored plans after a quick aim of this many "
        "bisection steps (no growing, no re-reads) and carry only the winner's aim on to "
        "aim_steps (about half the readings with 4); unset: every plan's aim is the full one",
    )
    aim_repeats: int = Field(
        3,
        ge=1,
        description="interleaved latency runs per aim measurement; their median ratio is read "
        "(one run's ratio can be thrown off by a burst of other work)",
    )
    aim_confirm: int = Field(
        2,
        ge=0,
        description="re-read the aimed plan, then the next plans under the target, and take "
        "the first whose fresh reading is also under the target (the largest plan read under "
        "it is the one whose reading came out low); after this many refusals each step down "
        "first measures the plans between, and at most 3 times this many plans are re-read",
    )
    aim_margin: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="aim at the target less this fraction of it (0.02: 2% under), so the "
        "delivered plan stays under the target when timed again later",
    )


class LatencyConfig(_Strict):
    """How latency is timed: per evaluation, and for the per-unit latency table."""

    warmup: int = Field(5, ge=0)
    min_run_time: float = Field(0.5, gt=0, description="seconds of timed runs per measurement")
    repeats: int = Field(
        20,
        ge=1,
        description="timed blocks at least (per model when a plan is timed with the dense)",
    )
    table_widths: tuple[float, ...] = (0.25, 0.5, 0.75)
    table_min_run_time: float = Field(0.2, gt=0)
    table_repeats: int = Field(10, ge=1)
    table_kernels: bool = Field(
        True, description="also time each Conv/Linear layer alone on a grid of channel counts"
    )
    table_kernel_grid: int = Field(16, ge=2, description="channel counts timed per unit at most")


class AgentConfig(_Strict):
    """The search strategy and its settings (see `agents.list_agents()`)."""

    name: str = "ddpg"
    settings: dict[str, Any] = Field(default_factory=dict)


class RayConfig(_Strict):
    """Where evaluations run: null address starts a local Ray inside the process."""

    address: str | None = None
    workers: int | None = Field(
        None, ge=0, description="null = one per CPU core; 0 = evaluate in-process, no Ray"
    )
    # exclusive: a latency measurement shares its device with nothing (the default);
    # measurements: only measurements exclude each other, so a neighbour may fine-tune on
    # the other cores meanwhile (more evaluations per minute on a CPU node, noisier timings)
    isolation: Literal["exclusive", "measurements"] = "exclusive"
    queue_ahead: int = Field(
        1,
        ge=0,
        description="plans queued beyond one per worker, so a worker never waits for the "
        "driver to record a result and ask for the next plan; 0 = each plan is asked after "
        "the agent heard every finished one",
    )


class ExperimentConfig(_Strict):
    """Everything one search needs. Every key has a default except ``model`` and ``data``."""

    model: str
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    trust_checkpoint: bool = False
    data: str
    data_limit: int | None = Field(None, ge=1)
    input_shape: tuple[int, int, int] = (3, 32, 32)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    target: str = "flops=0.5"
    device: str = "cpu"
    latency_batch_size: int = Field(1, ge=1)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    budget_tolerance: float = Field(
        0.1, ge=0, description="a measured plan may exceed the target by this fraction"
    )
    threads: int | None = Field(
        None, ge=1, description="torch threads per worker; null = cores divided by workers"
    )
    criterion: Literal["l1", "l2", "bn_scale", "taylor", "activation"] = "l1"
    lower_bound: float = Field(0.2, gt=0, le=1)
    round_to: int = Field(1, ge=1)
    nm: str | None = None
    skip_blocks: bool = Field(
        False, description="the search may also replace residual blocks by identity"
    )
    reward: Literal["err", "flops", "latency", "accuracy"] = "err"
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    choose: ChooseConfig = Field(default_factory=ChooseConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    episodes: int = Field(100, ge=1)
    max_time: float | None = Field(None, gt=0, description="wall-time budget in seconds")
    storage: str = DEFAULT_STORAGE
    study: str | None = None
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = 0
    runs_dir: str = "runs"

    @field_validator("target")
    @classmethod
    def _target_form(cls, value: str) -> str:
        metric, _, fraction = value.partition("=")
        try:
            number = float(fraction)
        except ValueError:
            number = -1.0
        if metric not in ("flops", "params", "latency") or not 0 < number <= 1:
            raise ValueError(
                "expected METRIC=FRACTION with METRIC flops, params or latency and FRACTION "
                "in (0, 1], e.g. latency=0.5"
            )
        return value

    @field_validator("nm", mode="before")
    @classmethod
    def _nm_form(cls, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, int):  # YAML 1.1 reads an unquoted 2:4 as the base-60 number 124
            raise ValueError('expected a quoted "N:M" (YAML reads unquoted 2:4 as a number)')
        n, _, m = str(value).partition(":")
        if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
            raise ValueError('expected "N:M" with 0 < N < M, e.g. "2:4"')
        return str(value)

    def study_name(self) -> str:
        """The study name, generated from model, data, target and time when not set."""
        if self.study:
            return self.study
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        model = self.model.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        data = self.data.split(":", 1)[0]
        return f"{model}-{data}-{self.target.replace('=', '')}-{self.agent.name}-{stamp}"


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    text: str | None = None,
) -> ExperimentConfig:
    """Read and validate an experiment; ``overrides`` (dotted keys allowed) win over the file.

    Example:
        >>> config = load_config("experiments/demo.yaml", {"episodes": 4, "agent.name": "tpe"})
    """
    source = str(path) if path is not None else "<config>"
    if text is None:
        if path is None:
            raise ConfigError("No experiment config given; pass a YAML file.")
        file = Path(path)
        if not file.is_file():
            raise ConfigError(
                f"Experiment config {source!r} does not exist. Pass a YAML file, or run "
                "`amc search` with no argument for the demo (experiments/demo.yaml)."
            )
        text = file.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a YAML mapping of keys to values.")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: " + _describe(error)) from error


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            model = _model_at(item["loc"][:-1])
            hint = did_you_mean(str(item["loc"][-1]), model.model_fields)
            problems.append(
                f"unknown key {location!r}.{hint} Known keys here: {', '.join(model.model_fields)}"
            )
        elif item["type"] == "missing":
            problems.append(f"{location!r} is required")
        elif item["type"] == "literal_error":
            field = _model_at(item["loc"][:-1]).model_fields[str(item["loc"][-1])]
            choices = [str(choice) for choice in get_args(field.annotation)]
            hint = did_you_mean(str(item.get("input")), choices)
            problems.append(
                f"{location!r}: unknown value {item.get('input')!r}.{hint} "
                f"Expected one of: {', '.join(choices)}"
            )
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{location!r}: {message} (got {item.get('input')!r})")
    return "; ".join(problems) + "."


def _model_at(location: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = ExperimentConfig
    for part in location:
        annotation = model.model_fields[str(part)].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model
