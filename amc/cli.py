"""The `amc` command line: a thin Typer app over the library.

Exit codes: 0 success, 2 bad input or usage (one-paragraph message), 1 unexpected failure.
Only this module turns errors into messages and exit codes.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.exceptions import TyperException

from amc.errors import AmcError, ConfigError

app = typer.Typer(
    name="amc",
    help="Search, apply and measure non-uniform per-layer pruning plans (AMC done properly).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide tables when output is not a terminal (logs, CI), instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

InputShape = Annotated[
    str, typer.Option("--input-shape", help="Input shape C,H,W of one sample.", metavar="C,H,W")
]
NumClasses = Annotated[int, typer.Option("--num-classes", help="Classifier outputs.")]
Weights = Annotated[
    Path | None, typer.Option("--weights", help="Weights: .safetensors or a torch.save file.")
]
Trust = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint", help="Allow a weights file that needs pickle (runs its code)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def parse_shape(text: str) -> tuple[int, int, int]:
    """Parse ``"3,32,32"`` into ``(3, 32, 32)``."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"--input-shape {text!r} is not C,H,W with three positive integers; e.g. 3,32,32."
        )
    return shape  # type: ignore[return-value]


def build_model(
    spec: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    weights: Path | None,
    trust: bool,
) -> Any:
    """The model named by ``spec`` with ``weights`` loaded, in eval mode."""
    from amc.checkpoint import load_weights
    from amc.zoo import resolve_model

    model = resolve_model(
        spec, num_classes=num_classes, in_channels=input_shape[0], image_size=input_shape[1]
    )
    if weights is not None:
        load_weights(model, weights, trust_pickle=trust)
    return model.eval()


@app.command()
def units(
    model: Annotated[str, typer.Argument(help="Zoo name or package.module:callable.")],
    input_shape: InputShape = "3,32,32",
    num_classes: NumClasses = 10,
    as_json: AsJson = False,
) -> None:
    """List the prunable units (coupled channel groups) the search walks, in execution order."""
    import torch

    from amc.units import analyze

    shape = parse_shape(input_shape)
    net = build_model(model, shape, num_classes, None, False)
    graph = analyze(net, torch.zeros(1, *shape))
    if as_json:
        payload = {
            "model": model,
            "fingerprint": graph.fingerprint,
            "dense_flops": graph.dense_flops,
            "dense_params": graph.dense_params,
            "units": [unit.to_json() for unit in graph.units],
            "skippable_blocks": list(graph.skippable),
        }
        print(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{model}: {len(graph.units)} prunable units ({graph.fingerprint})")
    for column in ("#", "unit", "kind", "channels", "in", "spatial", "kernel", "stride"):
        table.add_column(column, justify="right" if column != "unit" else "left")
    table.add_column("MFLOPs", justify="right")
    table.add_column("params", justify="right")
    table.add_column("N:M", justify="center")
    table.add_column("cut", justify="center")
    for unit in graph.units:
        table.add_row(
            str(unit.index),
            unit.name,
            unit.kind,
            str(unit.channels),
            str(unit.in_channels),
            "x".join(map(str, unit.spatial)),
            "x".join(map(str, unit.kernel)),
            str(unit.stride[0]),
            f"{unit.flops / 1e6:.2f}",
            f"{unit.params:,}",
            "yes" if unit.nm_eligible else "-",
            "yes" if unit.channel_prunable else "no",
        )
    console.print(table)
    console.print(
        f"dense: {graph.dense_flops / 1e6:.2f} MFLOPs, {graph.dense_params:,} params; "
        f"skippable residual blocks: {', '.join(graph.skippable) or 'none'}"
    )


@app.command()
def bench(
    model: Annotated[str, typer.Argument(help="Zoo name or package.module:callable.")],
    weights: Weights = None,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="Plan JSON; default a uniform plan.")
    ] = None,
    keep: Annotated[
        float | None,
        typer.Option("--keep", help="Keep ratio of a uniform plan (default 0.5); or --plan."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[
        list[int] | None,
        typer.Option("--batch-size", min=1, help="Latency batch size (repeatable)."),
    ] = None,
    input_shape: InputShape = "3,32,32",
    num_classes: NumClasses = 10,
    trust: Trust = False,
    as_json: AsJson = False,
) -> None:
    """Measure dense vs pruned: params, FLOPs, latency (median, IQR), stored size and ratios."""
    import torch

    from amc.measure import compare
    from amc.plan import PruningPlan, uniform_plan
    from amc.prune import apply_plan
    from amc.units import analyze

    if plan is not None and keep is not None:
        raise ConfigError(
            f"--plan {plan} and --keep {keep} both choose the pruned model; give one of them."
        )
    keep = 0.5 if keep is None else keep
    shape = parse_shape(input_shape)
    chosen_file = PruningPlan.load(plan) if plan else None
    net = build_model(model, shape, num_classes, weights, trust)
    example = torch.zeros(1, *shape)
    graph = analyze(net, example)
    chosen = chosen_file or uniform_plan(net, example, keep, graph=graph)
    pruned = apply_plan(net, chosen, example, graph=graph)
    report = compare(net, pruned, example, device=device, batch_sizes=tuple(batch_size or [1]))
    report["plan"] = str(plan) if plan else f"uniform keep_ratio={keep}"
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"{model} on {report['device']}: dense vs {report['plan']}")
    for column in ("metric", "dense", "pruned", "pruned/dense"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in report["rows"]:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        table.add_row(row["metric"], _fmt(row["dense"]), _fmt(row["pruned"]), ratio)
    console.print(table)


@app.command()
def apply(
    plan: Annotated[Path, typer.Argument(help="Plan JSON (from `amc export`).")],
    model: Annotated[str, typer.Option("--model", help="Zoo name or package.module:callable.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the pruned model.")],
    weights: Weights = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec for fine-tuning and accuracy.")
    ] = None,
    finetune_steps: Annotated[int, typer.Option("--finetune-steps", min=0)] = 0,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            help="Reach the plan in N prune/fine-tune rounds (iterative pruning); the "
            "fine-tune steps are split evenly over the rounds. 1 prunes in one shot.",
        ),
    ] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Fine-tune learning rate.")] = 0.01,
    input_shape: InputShape = "3,32,32",
    num_classes: NumClasses = 10,
    trust: Trust = False,
) -> None:
    """Apply a plan: write pruned weights (safetensors), the plan and a torch.export program."""
    import torch

    from amc.artifacts import check_output_folder, save_pruned
    from amc.measure import count_flops, count_params, model_size
    from amc.plan import PruningPlan
    from amc.schedule import iterative_prune
    from amc.train import evaluate, finetune
    from amc.units import analyze
    from amc.zoo import get_data

    chosen = PruningPlan.load(plan)  # validate the plan and --out before any heavy work
    check_output_folder(out)
    shape = parse_shape(input_shape)
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds} is not allowed: use 1 (one shot) or more.")
    if rounds > 1 and finetune_steps < rounds:
        raise ConfigError(
            f"--rounds {rounds} fine-tunes after every round: give --data and at least "
            f"{rounds} --finetune-steps to split over the rounds (got {finetune_steps}); "
            f"e.g. --data digits --finetune-steps {100 * rounds}."
        )
    splits = get_data(data, input_shape=shape) if data else None
    if finetune_steps and splits is None:
        raise ConfigError("--finetune-steps needs --data to fine-tune on; e.g. --data digits.")
    classes = splits.num_classes if splits else num_classes
    net = build_model(model, shape, classes, weights, trust)
    example = torch.zeros(1, *shape)
    graph = analyze(net, example)

    def tune(module: Any, steps: int, round_number: int) -> None:
        assert splits is not None  # fine-tune steps without data were refused above
        seed = round_number - 1  # a new data order each round
        finetune(module, splits, steps=steps, lr=lr, seed=seed, progress=True)

    fine_tune = tune if finetune_steps else None
    pruned = iterative_prune(
        net, chosen, example, rounds, fine_tune, steps=finetune_steps, graph=graph, progress=True
    )
    rows: list[tuple[str, str, str]] = []
    if splits is not None:
        dense_acc = evaluate(net, splits).accuracy
        pruned.eval()
        rows.append(("accuracy", f"{dense_acc:.4f}", f"{evaluate(pruned, splits).accuracy:.4f}"))
    rows += [
        ("params", f"{count_params(net):,}", f"{count_params(pruned):,}"),
        ("FLOPs", f"{count_flops(net, example):,}", f"{count_flops(pruned, example):,}"),
        (
            "stored bytes",
            f"{model_size(net).stored_bytes:,}",
            f"{model_size(pruned).stored_bytes:,}",
        ),
    ]
    artifacts = save_pruned(
        pruned,
        chosen,
        out,
        example,
        model_spec=model,
        model_kwargs={"num_classes": classes, "in_channels": shape[0], "image_size": shape[1]},
    )
    schedule = f" in {rounds} rounds" if rounds > 1 else ""
    table = Table(title=f"{model}: dense vs pruned by {plan}{schedule}")
    for column in ("metric", "dense", "pruned"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(
        f"wrote {artifacts.folder}/ (weights.safetensors, plan.json, program.pt2, manifest.json)"
    )
    bench_args = [model, "--plan", str(plan), "--input-shape", input_shape]
    if weights is not None:
        bench_args[1:1] = ["--weights", str(weights)]
    if classes != 10:
        bench_args += ["--num-classes", str(classes)]
    console.print(
        "latency, dense vs pruned (add --device, --batch-size as the search measured): "
        + shlex.join(["amc", "bench", *bench_args]),
        soft_wrap=True,
    )


Storage = Annotated[
    str | None,
    typer.Option("--storage", help="Optuna storage URL (default sqlite:///runs/amc.db)."),
]
DEMO = Path(__file__).resolve().parent.parent / "experiments" / "demo.yaml"


@app.command()
def search(
    config: Annotated[
        Path | None, typer.Argument(help="Experiment YAML; none runs experiments/demo.yaml.")
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Agent name.")] = None,
    episodes: Annotated[int | None, typer.Option("--episodes", min=1)] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="METRIC=FRACTION, e.g. latency=0.5.")
    ] = None,
    storage: Storage = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name.")] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray address: auto or ray://host:10001.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="Ray workers; 0 = in-process.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Search a per-layer pruning plan; every evaluation is recorded in an Optuna study."""
    from amc.config import load_config

    overrides = {
        "agent.name": agent,
        "episodes": episodes,
        "target": target,
        "storage": storage,
        "study": study,
        "ray.address": address,
        "ray.workers": workers,
        "seed": seed,
    }
    path = config or _demo_config()
    _run_experiment(load_config(path, overrides), progress=not quiet, resume=False)


@app.command()
def resume(
    study: Annotated[str, typer.Argument(help="Study to continue.")],
    storage: Storage = None,
    episodes: Annotated[
        int | None, typer.Option("--episodes", min=1, help="New total of completed episodes.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Continue a search after a crash or kill: RUNNING trials are re-run, the agent restored."""
    from amc.config import ExperimentConfig
    from amc.experiment import resume_config

    config = resume_config(storage, study)
    data = config.model_dump()
    if episodes is not None:
        data["episodes"] = episodes
    if workers is not None:
        data["ray"]["workers"] = workers
    _run_experiment(ExperimentConfig.model_validate(data), progress=not quiet, resume=True)


@app.command()
def studies(storage: Storage = None) -> None:
    """List the studies in a storage."""
    from amc.report import studies_table
    from amc.study import list_studies

    console.print(studies_table(list_studies(storage)))


@app.command()
def show(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: Storage = None,
    plots: Annotated[
        Path | None, typer.Option("--plots", help="Write PNG plots and summary.md here.")
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Best trials to list.")] = 5,
) -> None:
    """Print the best trials, the Pareto front and dense/uniform/best; optionally plot them."""
    from amc.report import best_table, comparison_rows, comparison_table, write_report
    from amc.study import SearchRecord

    record = SearchRecord.open(storage, study)
    console.print(comparison_table(comparison_rows(record), title=f"{study}: dense vs pruned"))
    console.print(best_table(record.best(top), record.objectives, title="Best trials"))
    if len(record.directions) > 1:
        console.print(best_table(record.pareto_front(), record.objectives, title="Pareto front"))
    if plots is not None:
        for path in write_report(record, plots):
            console.print(f"wrote {path}")


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name.")],
    out: Annotated[Path, typer.Option("--out", help="Plan JSON to write.")],
    trial: Annotated[str, typer.Option("--trial", help="Trial number or 'best'.")] = "best",
    storage: Storage = None,
) -> None:
    """Write the plan of a trial (default the best) as JSON for `amc apply`.

    With ``choose:`` in the experiment, 'best' is the plan the search delivered (the best
    after re-scoring, sized by measurement), as in the run folder's best_plan.json.
    """
    from amc.plan import PruningPlan
    from amc.study import SearchRecord

    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; name the plan file, e.g. plan.json.")
    record = SearchRecord.open(storage, study)
    completed = record.completed()
    delivered = record.attrs.get("chosen")
    if trial == "best" and isinstance(delivered, dict) and delivered.get("plan"):
        # the plan the search delivered: re-scored among the best and/or aimed (`choose:`)
        plan = PruningPlan.from_json(delivered["plan"])
        plan = plan.with_provenance(study=study, trial=delivered["trial"])
        plan = plan.with_metrics(**delivered.get("metrics", {}))
        which = "the uniform plan" if delivered.get("uniform") else f"trial {delivered['trial']}"
        console.print(f"wrote {plan.save(out)} ({which}, as delivered)")
        return
    if trial == "best":
        chosen = record.best(1)
    elif trial.isdigit():
        chosen = [t for t in completed if t.number == int(trial)]
    else:
        raise ConfigError(f"--trial must be a trial number or 'best', got {trial!r}.")
    if not chosen or chosen[0].plan is None:
        numbers = ", ".join(str(t.number) for t in completed[:20]) or "none"
        raise ConfigError(
            f"Study {study!r} has no completed trial {trial!r}. Completed trials: {numbers}."
        )
    plan = chosen[0].plan.with_provenance(study=study, trial=chosen[0].number)
    plan = plan.with_metrics(
        **{k: v for k, v in chosen[0].metrics.items() if isinstance(v, int | float | str)}
    )
    console.print(f"wrote {plan.save(out)} (trial {chosen[0].number})")


@app.command()
def dashboard(
    storage: Storage = None,
    port: Annotated[int, typer.Option("--port")] = 8080,
    host: Annotated[str, typer.Option("--host", help="Listen address.")] = "127.0.0.1",
) -> None:
    """Start optuna-dashboard on the same storage (localhost unless told otherwise)."""
    import optuna_dashboard

    from amc.study import storage_from_url

    backend = storage_from_url(storage, create=False)
    console.print(f"optuna-dashboard on http://{host}:{port} (Ctrl-C to stop)")
    optuna_dashboard.run_server(backend, host=host, port=port)


def _demo_config() -> Path:
    local = Path("experiments/demo.yaml")
    return local if local.is_file() else DEMO


def _run_experiment(config: Any, *, progress: bool, resume: bool) -> None:
    from agents import list_agents
    from amc import experiment
    from amc.errors import unknown_name
    from amc.report import comparison_table
    from amc.study import display_url

    known = list_agents()
    if config.agent.name not in known:  # before training a baseline or creating a study
        raise unknown_name("agent", config.agent.name, known)
    console.print(
        f"[bold]amc search[/] {config.model} on {config.data}, target {config.target} on "
        f"{config.device}, agent {config.agent.name}, {config.episodes} episodes"
    )
    stored_table = None
    if resume:
        from amc.study import SearchRecord

        stored_table = SearchRecord.open(config.storage, config.study_name()).attrs.get(
            "latency_table"
        )
    storage = display_url(config.storage)
    spec = experiment.task_spec(config, progress=progress)
    # Ray's workers load the task while this process builds the search space.
    with contextlib.ExitStack() as stack:
        evaluator = experiment.start_evaluator(config, spec)
        if evaluator is not None:
            stack.enter_context(evaluator)
        prepared = experiment.prepare(
            config, progress=progress, latency_table=stored_table, spec=spec, evaluator=evaluator
        )
        try:
            record, outcome = experiment.search(
                prepared, progress=progress, resume=resume, evaluator=evaluator
            )
        except KeyboardInterrupt:
            errors.print(
                f"stopped; in-flight trials were recorded as failed and the agent "
                f"checkpointed. Continue with: amc resume {prepared.study} --storage {storage}"
            )
            raise
    finished = experiment.finish(prepared, record, progress=progress)
    console.print(comparison_table(finished.rows, title=f"{prepared.study}: dense vs pruned"))
    console.print(
        f"{outcome.completed} episodes recorded in study {prepared.study!r} ({storage}), "
        f"{outcome.failed} failed, "
        + (f"{outcome.over_budget} over budget (recorded, not counted), " if outcome.over_budget
           else "")
        + f"{outcome.elapsed_s:.0f} s"
    )  # fmt: skip
    if finished.plan_path:
        console.print(f"best plan:    {finished.plan_path}")
    if finished.pruned_dir:
        console.print(f"pruned model: {finished.pruned_dir}/")
    if finished.plots:
        console.print(f"plots:        {finished.plots[0].parent}/")
    option = "" if config.storage == "sqlite:///runs/amc.db" else f" --storage {storage}"
    console.print(
        "next:\n"
        f"  amc show {prepared.study}{option} --plots runs/{prepared.study}/plots\n"
        f"  amc apply {finished.plan_path} --model {config.model} --weights "
        f"{prepared.spec.weights} --input-shape {','.join(map(str, config.input_shape))} "
        f"--data {config.data} --finetune-steps 200 --out runs/{prepared.study}/finetuned\n"
        f"  amc dashboard{option}"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 1 unexpected failure)."""
    _make_cwd_importable()
    try:
        code = app(args=argv, standalone_mode=False)
    except AmcError as error:
        # Text, not markup: a message may hold brackets; soft_wrap keeps it one paragraph.
        errors.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        errors.print("interrupted")
        return 130
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        return 1
    except TyperException as error:  # Typer's own copy of click's usage errors
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            errors.print(Text(f"error: {error.format_message()}"), soft_wrap=True)
        return int(error.exit_code)
    except typer.Abort:
        errors.print("aborted")
        return 1
    except Exception as error:  # noqa: BLE001 - the CLI reports every failure
        errors.print_exception(max_frames=8)
        errors.print(
            Text.assemble(
                ("unexpected failure: ", "bold red"),
                f"{type(error).__name__}: {str(error).rstrip('.')}. This is a bug in amc or a "
                "library it uses; please report it with the traceback above.",
            ),
            soft_wrap=True,
        )
        return 1
    # Without standalone mode Typer returns the code of an explicit exit (130 after Ctrl-C).
    return code if isinstance(code, int) else 0


def _make_cwd_importable() -> None:
    """Let ``module:callable`` specs name modules in the working folder, as ``python -m`` does.

    Appended, not prepended, so a file in the working folder never shadows an installed package.
    """
    cwd = str(Path.cwd())
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
