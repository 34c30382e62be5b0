"""The driver of one search: build the task once, run the loop, export what it found.

``prepare`` turns an :class:`~amc.config.ExperimentConfig` into everything a search needs (a
trained model, its units, the dense metrics, the search space with its budget); ``search`` and
``resume`` run :func:`amc.search.run_search` with a Ray or in-process evaluator and an Optuna
record; ``finish`` exports the best plan, evaluates a uniform plan at the same budget, applies
the best plan and writes the plots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from amc.artifacts import save_pruned
from amc.config import ExperimentConfig
from amc.evaluate import EvalResult, Evaluator, LocalEvaluator, TaskSpec, Workload, evaluate_all
from amc.measure import count_flops, count_params
from amc.plan import PruningPlan, parse_nm
from amc.prune import apply_plan
from amc.search import SearchOutcome, run_search, told_result
from amc.space import SearchSpace, Target
from amc.study import SearchRecord


@dataclass
class Experiment:
    """A prepared search: config, worker task, local workload and search space."""

    config: ExperimentConfig
    spec: TaskSpec
    workload: Workload
    space: SearchSpace
    study: str


@dataclass
class Finished:
    """What a finished search produced."""

    study: str
    best: dict[str, Any] | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    plan_path: Path | None = None
    pruned_dir: Path | None = None
    plots: list[Path] = field(default_factory=list)


def task_spec(
    config: ExperimentConfig, *, progress: bool = True, task: Mapping[str, Any] | None = None
) -> TaskSpec:
    """What every worker loads: the model with its trained weights (trained now, or found in
    the cache), the data and the evaluation protocol.

    Args:
        config: the experiment.
        progress: show the baseline's training progress.
        task: :class:`~amc.evaluate.TaskSpec` fields to set beyond what the config holds
            (e.g. ``latency_min_run_time`` for quicker, noisier latency in tests).
    """
    from amc.train import pretrained

    weights = config.weights
    if weights is None:
        _, path = pretrained(
            config.model,
            config.data,
            input_shape=config.input_shape,
            cache_dir=Path(config.runs_dir) / "baselines",
            epochs=config.baseline.epochs,
            lr=config.baseline.lr,
            batch_size=config.baseline.batch_size,
            seed=config.seed,
            progress=progress,
            device=config.device,
            model_kwargs=config.model_kwargs,
        )
        weights = str(path)
    spec = TaskSpec(
        model=config.model,
        data=config.data,
        model_kwargs=dict(config.model_kwargs),
        weights=weights,
        trust_checkpoint=config.trust_checkpoint,
        data_limit=config.data_limit,
        input_shape=config.input_shape,
        device=config.device,
        criterion=config.criterion,
        finetune_steps=config.finetune.steps,
        finetune_lr=config.finetune.lr,
        batch_size=config.finetune.batch_size,
        bn_batches=config.finetune.bn_batches,
        eval_batches=config.finetune.eval_batches,
        latency_batch_size=config.latency_batch_size,
        latency_warmup=config.latency.warmup,
        latency_min_run_time=config.latency.min_run_time,
        latency_repeats=config.latency.repeats,
        threads=config.threads or _threads_per_worker(config),
        budget_tolerance=config.budget_tolerance,
        seed=config.seed,
    )
    return replace(spec, **task) if task else spec


def start_evaluator(config: ExperimentConfig, spec: TaskSpec) -> Evaluator | None:
    """Connect to Ray and start the workers loading ``spec`` in the background.

    Called before :func:`prepare`, so that the workers load while the driver builds its
    search space, and so that a cluster that cannot be reached is an error before any study
    is written. None for an in-process search (``ray.workers: 0``), whose evaluator needs the
    prepared workload (:func:`make_evaluator`).
    """
    if config.ray.workers == 0:
        return None
    from amc.distributed import RayEvaluator

    ray = config.ray
    return RayEvaluator(
        spec,
        workers=ray.workers,
        address=ray.address,
        isolation=ray.isolation,
        queue_ahead=ray.queue_ahead,
        wait=False,
    )


def prepare(
    config: ExperimentConfig,
    *,
    progress: bool = True,
    task: Mapping[str, Any] | None = None,
    latency_table: Mapping[str, Any] | None = None,
    spec: TaskSpec | None = None,
    evaluator: Evaluator | None = None,
) -> Experiment:
    """Train or load the model, discover units, build the search space with its budget.

    Args:
        config: the experiment.
        progress: show the baseline's training progress.
        task: :class:`~amc.evaluate.TaskSpec` fields to set beyond what the config holds.
        latency_table: a table stored in the study (resume keeps the budget it searched with
            instead of measuring a new, differently noisy one).
        spec: the task from :func:`task_spec` (made here when None).
        evaluator: workers started by :func:`start_evaluator`: a latency table is timed only
            once they have loaded (their start-up would disturb the timings).
    """
    from amc.latency_table import LatencyTable

    if spec is None:
        spec = task_spec(config, progress=progress, task=task)
    workload = Workload.from_spec(spec).prepare()
    needs_table = Target.parse(config.target).metric == "latency" and latency_table is None
    if evaluator is not None and needs_table:
        evaluator.wait_ready()
    example = workload.example_inputs.repeat(config.latency_batch_size, 1, 1, 1)
    space = SearchSpace.build(
        workload.model,
        example,
        config.target,
        device=config.device,
        lower_bound=config.lower_bound,
        round_to=config.round_to,
        nm=parse_nm(config.nm) if config.nm else None,
        criterion=config.criterion,
        skip_blocks=config.skip_blocks,
        graph=workload.graph,
        latency_table=LatencyTable.from_json(latency_table) if latency_table else None,
        # timed like the workers time their plans: same batch, same threads
        latency_options={
            "threads": spec.threads,
            "progress": progress,
            "widths": config.latency.table_widths,
            "min_run_time": config.latency.table_min_run_time,
            "repeats": config.latency.table_repeats,
            "warmup": config.latency.warmup,
            "kernels": config.latency.table_kernels,
            "kernel_options": {"grid": config.latency.table_kernel_grid},
        },
    )
    return Experiment(config, spec, workload, space, config.study_name())


def make_agent(experiment: Experiment) -> Any:
    """The configured agent over the experiment's search space."""
    from agents import get_agent

    settings = dict(experiment.config.agent.settings)
    return get_agent(
        experiment.config.agent.name, experiment.space, seed=experiment.config.seed, **settings
    )


def make_evaluator(experiment: Experiment) -> Evaluator:
    """A Ray evaluator (local Ray or a cluster); in-process when ``ray.workers`` is 0."""
    ray = experiment.config.ray
    if ray.workers == 0:
        return LocalEvaluator(experiment.spec, workload=experiment.workload)
    from amc.distributed import RayEvaluator

    return RayEvaluator(
        experiment.spec, workers=ray.workers, address=ray.address, isolation=ray.isolation
    )


def open_record(
    experiment: Experiment,
    agent: Any,
    *,
    resume: bool = False,
    dense: Mapping[str, Any] | None = None,
) -> SearchRecord:
    """Create (or reopen) the study with everything needed to resume or export it.

    ``dense`` is the dense model's metrics as the evaluator measured them (default: measured
    here, in the driver).
    """
    directions = ["maximize" if name != "latency_ms" else "minimize" for name in agent.objectives]
    graph = experiment.workload.graph
    attrs = {
        # the storage URL is not stored: it may hold a password, and resume is told where
        "config": experiment.config.model_dump(mode="json", exclude={"storage"}),
        "task": experiment.spec.to_json(),
        "units": [unit.to_json() for unit in graph.units],
        "fingerprint": graph.fingerprint,
        "dense": dict(dense) if dense is not None else experiment.workload.dense_metrics(),
        "objectives": list(agent.objectives),
        "agent": agent.name,
        "target": str(experiment.space.target),
    }
    if experiment.space.latency_table is not None:
        attrs["latency_table"] = experiment.space.latency_table.to_json()
    return SearchRecord.create(
        experiment.config.storage, experiment.study, directions, attrs, resume=resume
    )


def search(
    experiment: Experiment,
    *,
    progress: bool = True,
    console: Console | None = None,
    resume: bool = False,
    evaluator: Evaluator | None = None,
) -> tuple[SearchRecord, SearchOutcome]:
    """Run (or continue) the search until the study holds ``episodes`` completed trials.

    Args:
        experiment: from :func:`prepare`.
        progress: show the live progress bar.
        console: where messages go.
        resume: continue a study whose config changed (e.g. more episodes).
        evaluator: evaluate on this evaluator (left open) instead of making one from
            ``config.ray`` (closed at the end).

    The agent is restored from the study's checkpoint when there is one; a DDPG agent also gets
    its replay buffer back from the stored trials, and an agent whose checkpoint is older than
    the last recorded trial continues after that trial's episode.

    Example:
        >>> experiment = prepare(load_config("experiments/demo.yaml", {"episodes": 4}))
        >>> record, outcome = search(experiment)
        >>> outcome.completed
        4
    """
    from agents.base import Proposal

    agent = make_agent(experiment)
    with contextlib.ExitStack() as stack:
        if evaluator is None:
            evaluator = stack.enter_context(make_evaluator(experiment))
        evaluator.wait_ready()
        record = open_record(experiment, agent, resume=resume, dense=evaluator.dense_metrics())
        state = record.load_agent_state()
        if state is not None:
            agent.load_state_dict(state)
        rebuild = getattr(agent, "rebuild_replay", None)
        if rebuild is not None and (state is not None or record.finished()):
            # also without a checkpoint: a kill before the first save left trials behind
            rebuild(_told(record, Proposal, experiment.config.reward))
        _continue_episodes(agent, record)
        outcome = run_search(
            agent,
            evaluator,
            _Requeue(record, Proposal),
            episodes=experiment.config.episodes,
            reward=experiment.config.reward,
            max_time=experiment.config.max_time,
            progress=progress,
            on_result=_latency_calibration(experiment, record),
        )
        # The reference row, after the search so that it does not delay the first trial.
        if "uniform" not in record.attrs:
            record.set_attr("uniform", _evaluate_uniform(experiment, evaluator))
    return record, outcome


def _latency_calibration(experiment: Experiment, record: SearchRecord) -> Any:
    """For latency targets: feed each measured plan back into the space's latency estimate."""
    space = experiment.space
    dense_ms = record.attrs.get("dense", {}).get("latency_ms")
    if space.target.metric != "latency" or not dense_ms:
        return None

    stored = record.attrs.get("latency_scale")
    if stored and space.latency_table is not None:  # resume: carry on from the last scale
        space._latency_ratios.append(float(stored))
        space.latency_table = replace(space.latency_table, scale=float(stored))

    def calibrate(proposal: Any, result: EvalResult) -> None:
        if result.latency_ms is not None and result.status in ("ok", "over_budget"):
            # measured against the dense model in the same run; older results lack the ratio
            ratio = result.latency_ratio or result.latency_ms / dense_ms
            scale = space.calibrate_latency(proposal.plan, ratio)
            record.set_attr("latency_scale", scale)

    return calibrate


def _continue_episodes(agent: Any, record: SearchRecord) -> None:
    """Number new episodes after every recorded one, even when the checkpoint lags the record.

    The checkpoint is written at most every few seconds (see ``amc.search``), so after a kill
    the restored counter can be behind the trials already started; without this the next
    proposals would reuse their episode numbers (and DDPG their noise sigma).
    """
    episodes = [trial.episode for trial in record.trials() if trial.episode is not None]
    current = getattr(agent, "episode", None)
    if episodes and isinstance(current, int) and current <= max(episodes):
        agent.episode = max(episodes) + 1


def finish(
    experiment: Experiment, record: SearchRecord, *, plots: bool = True, progress: bool = False
) -> Finished:
    """Export the best plan, apply it (pruned model folder) and write the report.

    With ``finetune.final_steps`` the best plan and the uniform plan at the same budget get the
    same fine-tune (steps, learning rate, data order), are scored on the whole test split and
    the scores are stored in the study (``final``), so that the table compares them after
    recovery rather than after the search's short fine-tune; the saved model is the tuned one.
    """
    from amc.report import comparison_rows, write_report

    out = Path(experiment.config.runs_dir) / record.name
    best = [trial for trial in record.best(max(1, experiment.config.choose.rescore)) if trial.plan]
    finished = Finished(study=record.name, best=None)
    if best:
        uniform = record.attrs.get("uniform")
        basis = _choice_basis(experiment, best, uniform)
        earlier = _earlier_choice(record.attrs.get("chosen"), basis, best)
        if earlier is not None:
            trial, plan, metrics, chosen = earlier
            if progress:
                Console(stderr=True).print(
                    "the study's earlier choice stands (the same best trials and `choose` "
                    "settings): " + (f"trial {trial.number}" if trial else "the uniform plan")
                )
        else:
            trial, plan, metrics, chosen = _choose(
                experiment, best, progress=progress, uniform=uniform,
                dense_ms=record.attrs.get("dense", {}).get("latency_ms"),
            )  # fmt: skip
        number = trial.number if trial is not None else None  # None: the uniform plan won
        workload = experiment.workload
        pruned = apply_plan(workload.model, plan, workload.example_inputs, graph=workload.graph)
        if "aim" in chosen:  # not the trial's plan: count what this one costs
            metrics["flops"] = count_flops(pruned, workload.example_inputs)
            metrics["params"] = count_params(pruned)
        if len(chosen) > 1:  # something was done beyond taking the best trial
            chosen |= {"plan": plan.to_json(), "metrics": metrics}
        # always: a resumed search whose best trials or settings changed replaces the choice
        record.set_attr("chosen", chosen | {"basis": basis})
        plan = plan.with_provenance(study=record.name, trial=number)
        if trial is None:
            plan = plan.with_provenance(uniform=True)
        plan = plan.with_metrics(**metrics)
        finished.best = (
            trial.to_json()
            if trial is not None
            else {"number": None, "uniform": True, "plan": plan.to_json(), "metrics": metrics}
        )
        finished.plan_path = plan.save(out / "best_plan.json")
        if experiment.config.finetune.final_steps:
            _final_finetune(experiment, record, pruned, number, progress=progress)
        finished.pruned_dir = save_pruned(
            pruned,
            plan,
            out / "pruned",
            workload.example_inputs,
            model_spec=experiment.spec.model,
            model_kwargs=_model_kwargs(experiment),
        ).folder
    if plots:
        finished.plots = write_report(record, out / "plots")
    finished.rows = comparison_rows(record)
    return finished


def _choice_basis(
    experiment: Experiment, best: list[Any], uniform: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What a choice is made from: the candidate trials, the uniform plan (a candidate with
    ``choose.rescore_uniform``, the aimed comparison otherwise), the ``choose`` settings and
    the target. Stored beside the choice, so that finishing the study again from the same
    basis (``amc resume`` of a completed search) keeps it instead of re-running minutes of
    re-scores and latency readings that, on a noisy machine, could pick another plan."""
    plan = (uniform or {}).get("plan")
    return {
        "trials": [trial.number for trial in best],
        "uniform": _digest(PruningPlan.from_json(plan).key()) if plan else None,
        "choose": experiment.config.choose.model_dump(mode="json"),
        "target": str(experiment.config.target),
    }


def _earlier_choice(
    stored: Any, basis: Mapping[str, Any], best: list[Any]
) -> tuple[Any, PruningPlan, dict[str, Any], dict[str, Any]] | None:
    """The study's stored choice as :func:`_choose` returns one, where it was made from
    ``basis`` (else None: the choice is made again)."""
    if not isinstance(stored, Mapping) or stored.get("basis") != basis:
        return None
    number = stored.get("trial")
    trial = next((trial for trial in best if trial.number == number), None)
    chosen = {key: value for key, value in stored.items() if key not in ("basis", "plan")}
    metrics = dict(chosen.pop("metrics", {}))
    if stored.get("plan"):
        return trial, PruningPlan.from_json(stored["plan"]), metrics, chosen
    if trial is None:  # only the best trial taken, yet it is not among them
        return None
    return trial, trial.plan, _plain(trial.metrics), chosen


def _choose(
    experiment: Experiment,
    best: list[Any],
    *,
    progress: bool,
    uniform: Mapping[str, Any] | None = None,
    dense_ms: float | None = None,
) -> tuple[Any, PruningPlan, dict[str, Any], dict[str, Any]]:
    """The trial and plan to deliver, by the config's ``choose`` (see :func:`amc.choose.choose`).

    With ``choose.rescore`` k > 1 the k best trials (and, with ``choose.rescore_uniform``, the
    study's ``uniform`` plan) are evaluated again with a longer fine-tune and the most
    accurate is delivered; with ``choose.aim`` on a latency target the plan is sized by
    measurement (with ``choose.aim_first`` every candidate before the re-score). Returns the
    trial (None where the uniform plan won), the plan, the metrics it is exported with and
    what was done (:func:`finish` stores it in the study as ``chosen``, so that ``amc show``
    and ``amc export`` deliver the same plan). With the aim, the uniform plan is aimed too
    (``chosen["uniform_aimed"]``, :func:`_aimed_uniform`). ``dense_ms``: the dense latency the
    study reports; an aimed plan's latency is its measured ratio times this, so the report's
    milliseconds and speed-ups agree (default: the dense model measured here).
    """
    from amc.choose import choose as choose_plan
    from amc.choose import latency_meter

    choose, workload = experiment.config.choose, experiment.workload
    candidates: list[tuple[Any, PruningPlan, dict[str, Any]]] = [
        (trial, trial.plan, _plain(trial.metrics)) for trial in best
    ]
    rescoring = choose.rescore > 1 and len(best) > 1
    if rescoring and choose.rescore_uniform and uniform and uniform.get("plan"):
        plan = PruningPlan.from_json(uniform["plan"])
        if plan.key() not in {candidate[1].key() for candidate in candidates}:
            candidates.append((None, plan, _plain(uniform.get("metrics", {}))))
    meter = None
    if choose.aim and experiment.space.target.metric == "latency":
        spec = experiment.spec
        meter = latency_meter(
            workload, min_run_time=2 * spec.latency_min_run_time, repeats=choose.aim_repeats
        )
    if rescoring and progress:
        Console(stderr=True).print(
            f"re-scoring {len(candidates)} plans (the {len(best)} best trials"
            + (", the uniform plan" if len(candidates) > len(best) else "")
            + f") with {choose.rescore_steps} fine-tune steps each"
            + (", each aimed first" if meter is not None and choose.aim_first else "")
        )
    shown = progress and (rescoring or meter is not None)
    with _choosing(shown, len(candidates) if rescoring else 0) as on_step:
        picked = choose_plan(
            workload, experiment.space, [candidate[1] for candidate in candidates],
            rescore_steps=choose.rescore_steps if rescoring else None, meter=meter,
            aim_steps=choose.aim_steps, aim_confirm=choose.aim_confirm,
            aim_first=choose.aim_first, aim_margin=choose.aim_margin,
            rank_steps=choose.aim_rank_steps, on_step=on_step,
        )  # fmt: skip
        uniform_aimed = None
        if meter is not None and uniform and uniform.get("plan"):
            uniform_aimed = _aimed_uniform(
                experiment, uniform, candidates, picked, meter, on_step, dense_ms
            )
    trial, _, metrics = candidates[picked.index]
    plan = picked.plan
    chosen: dict[str, Any] = {"trial": trial.number if trial is not None else None}
    if trial is None:
        chosen["uniform"] = True
    if picked.rescored:
        metrics["rescored_accuracy"] = picked.rescored[picked.index].accuracy
        chosen["rescore_steps"] = choose.rescore_steps
        chosen["rescored"] = [
            {
                "trial": candidate[0].number if candidate[0] is not None else None,
                "accuracy": result.accuracy,
                "status": result.status,
                **({"aimed_ratio": picked.aimed[i].ratio} if i in picked.aimed else {}),
            }
            for i, (candidate, result) in enumerate(zip(candidates, picked.rescored, strict=True))
        ]
    if meter is not None:
        aimed = picked.delivered
        assert aimed is not None  # a meter was given
        metrics = _aimed_metrics(workload, metrics, aimed.ratio, dense_ms)  # FLOPs: in finish
        chosen["aim"] = aimed.to_json()
    if uniform_aimed is not None:
        chosen["uniform_aimed"] = uniform_aimed
    return trial, plan, metrics, chosen


def _aimed_uniform(
    experiment: Experiment,
    uniform: Mapping[str, Any],
    candidates: list[tuple[Any, PruningPlan, dict[str, Any]]],
    picked: Any,
    meter: Callable[[PruningPlan], float],
    on_step: Callable[[str], None] | None,
    dense_ms: float | None,
) -> dict[str, Any]:
    """The uniform plan sized by measurement as the delivered plan is, so the two are compared
    at the same measured latency (the uniform plan of the study is sized by the estimate, which
    can leave it well under the target or over it): the aim done for the re-score where it was
    a candidate (carried on in full where that was a quick one, ``choose.aim_rank_steps``),
    else one more. Its plan, metrics (the search's, with latency, FLOPs and params of the
    aimed plan) and what the aim did."""
    from amc.choose import aim, reporting

    choose, workload = experiment.config.choose, experiment.workload
    plan = PruningPlan.from_json(uniform["plan"])
    index = next((i for i, c in enumerate(candidates) if c[1].key() == plan.key()), None)
    if index is not None and index == picked.index:
        found = picked.delivered
    else:
        found = picked.aimed.get(index) if index is not None else None
    if found is None or (choose.aim_rank_steps is not None and found is not picked.delivered):
        found = aim(
            experiment.space, plan, reporting(meter, on_step), steps=choose.aim_steps,
            confirm=choose.aim_confirm, margin=choose.aim_margin,
            known=found.tried if found is not None else (),
        )  # fmt: skip
    pruned = apply_plan(workload.model, found.plan, workload.example_inputs, graph=workload.graph)
    metrics = _aimed_metrics(workload, _plain(uniform.get("metrics", {})), found.ratio, dense_ms)
    metrics["flops"] = count_flops(pruned, workload.example_inputs)
    metrics["params"] = count_params(pruned)
    return {"plan": found.plan.to_json(), "metrics": metrics, "aim": found.to_json()}


def _aimed_metrics(
    workload: Workload, metrics: Mapping[str, Any], ratio: float, dense_ms: float | None
) -> dict[str, Any]:
    """``metrics`` of the plan as searched, for the plan an aim made of it: the accuracies
    kept, the cost ones (latency, FLOPs, params, size) dropped as the plan's, and its measured
    ``ratio`` to the dense model with milliseconds from ``dense_ms`` (default: the dense model
    measured here). Timed alike, the ratio is what was measured; there is no IQR of it."""
    cost = ("latency_ms", "latency_iqr_ms", "flops", "params", "size_bytes")
    aimed = {key: value for key, value in metrics.items() if key not in cost}
    aimed["latency_ratio"] = ratio
    dense_ms = dense_ms or workload.dense_metrics().get("latency_ms")
    if dense_ms:
        aimed["latency_ms"] = ratio * dense_ms
    return aimed


@contextlib.contextmanager
def _choosing(enabled: bool, plans: int) -> Iterator[Callable[[str], None] | None]:
    """A live line for :func:`amc.choose.choose` (its aims and re-scores take minutes): the
    latency readings taken, the ``plans`` re-scored (0: no re-score), the time spent. Yields
    its ``on_step``."""
    if not enabled:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]choosing the plan"),
        TextColumn("{task.fields[readings]} latency readings"),
        TextColumn(f"{{task.completed:.0f}}/{plans} re-scored" if plans else ""),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task("choose", total=plans or None, readings=0)
        readings = 0

        def on_step(kind: str) -> None:
            nonlocal readings
            if kind == "reading":
                readings += 1
                bar.update(task, readings=readings)
            else:
                bar.advance(task)

        yield on_step


def _final_finetune(
    experiment: Experiment, record: SearchRecord, best: Any, trial: int | None, *, progress: bool
) -> None:
    """Fine-tune ``best`` (in place) and the uniform plan alike (aimed, where the best was);
    store both test accuracies."""
    from amc.train import evaluate, finetune, recalibrate_bn

    spec, workload = experiment.spec, experiment.workload
    steps = experiment.config.finetune.final_steps
    models = {"best": best}
    chosen = record.attrs.get("chosen") or {}
    # the uniform plan as compared in the report: aimed like the best where it was
    uniform = (chosen.get("uniform_aimed") or record.attrs.get("uniform") or {}).get("plan")
    if uniform:
        models["uniform"] = apply_plan(
            workload.model, PruningPlan.from_json(uniform), workload.example_inputs,
            graph=workload.graph,
        )  # fmt: skip
    scores: dict[str, Any] = {"steps": steps, "trial": trial}
    scores["dense"] = evaluate(workload.model, workload.data).accuracy
    for name, model in models.items():
        if spec.bn_batches:
            recalibrate_bn(model, workload.data, spec.bn_batches, spec.batch_size, seed=spec.seed)
        finetune(
            model, workload.data, steps, lr=spec.finetune_lr, batch_size=spec.batch_size,
            seed=spec.seed, progress=progress,
        )  # fmt: skip
        scores[name] = evaluate(model, workload.data).accuracy
    record.set_attr("final", scores)


def resume_config(storage: str | None, study: str) -> ExperimentConfig:
    """The config stored in a study, for ``amc resume``."""
    record = SearchRecord.open(storage, study)
    data = dict(record.attrs["config"])
    data["study"] = study
    if storage:
        data["storage"] = storage
    return ExperimentConfig.model_validate(data)


def _evaluate_uniform(experiment: Experiment, evaluator: Evaluator) -> dict[str, Any]:
    """A uniform plan at the same budget, evaluated like every trial (the reference row)."""
    from agents import get_agent

    plan = get_agent("uniform", experiment.space).ask(1)[0].plan
    (result,) = evaluate_all(evaluator, [plan])
    return {"plan": plan.to_json(), "metrics": result.to_json()}


def _threads_per_worker(config: ExperimentConfig) -> int:
    """Cores shared out among the local workers, so measurements do not fight for them."""
    cores = os.cpu_count() or 1
    workers = config.ray.workers if config.ray.workers else cores
    return max(1, cores // workers)


def _model_kwargs(experiment: Experiment) -> dict[str, Any]:
    shape = experiment.spec.input_shape
    return {
        "num_classes": experiment.workload.data.num_classes,
        "in_channels": shape[0],
        "image_size": shape[1],
        **experiment.spec.model_kwargs,
    }


def _digest(value: Any) -> str:
    """A short, stable name for a JSON-ready value (a plan's key), to store and compare."""
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def _plain(metrics: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(metrics).items() if isinstance(v, int | float | str)}


def _told(
    record: SearchRecord, proposal_type: type, reward: str
) -> list[tuple[Any, dict[str, Any] | None]]:
    """Completed and over-budget trials as (proposal, result mapping) pairs, oldest first, for
    replay: each as it was told (an over-budget plan with its penalty reward)."""
    pairs: list[tuple[Any, dict[str, Any] | None]] = []
    for trial in record.finished():
        over = trial.state == "FAIL" and trial.metrics.get("status") == "over_budget"
        if trial.plan is None or (trial.value is None and not over):
            continue
        told: dict[str, Any] | None
        if over:
            told = told_result(EvalResult.from_json(trial.metrics), reward)
        else:
            told = {"reward": trial.value, **_plain(trial.metrics)}
        proposal = proposal_type(
            plan=trial.plan, params=dict(trial.params), episode=trial.episode or 0, info=trial.info
        )
        pairs.append((proposal, told))
    return pairs


class _Requeue:
    """The record as run_search sees it: recovered RUNNING trials come back as proposals."""

    def __init__(self, record: SearchRecord, proposal_type: type) -> None:
        self._record = record
        self._proposal = proposal_type

    def recover_running(self) -> list[Any]:
        return [
            self._proposal(
                plan=PruningPlan.from_json(item["plan"]),
                params=item["params"],
                episode=item["episode"] or 0,
                info=item["info"],
            )
            for item in self._record.recover_running()
            if item.get("plan")
        ]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._record, name)


def describe(finished: Finished) -> str:
    """JSON text of what a finished search produced (for --json output)."""
    return json.dumps(
        {
            "study": finished.study,
            "best": finished.best,
            "plan": str(finished.plan_path) if finished.plan_path else None,
            "pruned": str(finished.pruned_dir) if finished.pruned_dir else None,
            "plots": [str(p) for p in finished.plots],
            "rows": finished.rows,
        },
        indent=2,
        default=str,
    )


__all__ = [
    "EvalResult",
    "Experiment",
    "Finished",
    "finish",
    "prepare",
    "resume_config",
    "search",
    "start_evaluator",
    "task_spec",
]
