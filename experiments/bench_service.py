"""Benchmark the search service: throughput on 1 vs 2 Ray workers, overhead, time to first trial.

    python experiments/bench_service.py [--episodes 12] [--finetune-steps 50 100] [--agent ddpg]

Prints a markdown table. Goals (issue 4): 2 workers >= 1.7x the evaluations per minute of 1;
per-evaluation overhead outside fine-tune and latency timing under 5% of the evaluation time;
under 15 s from `amc search` to the first recorded trial on 2 cores.

Throughput runs the same search (model, data, agent, seed) in this process with a Ray evaluator
of 1 and 2 workers, one torch thread each (so the speed-up is the workers' alone: two intra-op
threads on a busy 2-core machine thrash, which would flatter the 2-worker run), for each
``--finetune-steps``, and with two workers once per isolation. With exclusive latency timing,
W seconds of work and L of timing per evaluation, two workers reach at most 2(W+L)/(W+2L) the
rate of one (each waits out the other's measurement): the ``bound`` column, from the medians.
``latency ratio error`` is how far the latency ratios recorded in the search are from the same
plans re-timed alone afterwards (median over ``--remeasure`` plans): the price of isolation
``measurements``, where a neighbour fine-tunes during a measurement.
Two overheads are reported, from each trial's ``EvalResult.times`` and the driver's wall time:

- in-worker, split three ways: the share of an evaluation's time spent applying the plan and
  counting FLOPs/params (the service's own work), in BN recalibration and held-out evaluation
  (the evaluation protocol), and waiting for the device lock (latency isolation);
- service: the share of worker time not spent evaluating at all (the driver's ask, tell, record
  and checkpoint, Ray transport, idle workers), ``1 - sum(total) / (workers * wall)``; and
  the part of it that is the end of the budget: a worker idle after its last plan while the
  other finishes the search's last one (``tail``), shown apart and subtracted in the next column.

Time to first trial runs the `amc` console script in a subprocess and polls the storage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `experiments` when run as a script

CONFIG = """
model: resnet20
data: digits
input_shape: [1, 16, 16]
data_limit: 512
baseline: {{epochs: 2}}
target: flops=0.5
finetune: {{steps: {steps}, bn_batches: 2, eval_batches: 4, batch_size: 32}}
agent: {{name: {agent}, settings: {settings}}}
episodes: {episodes}
threads: 1
seed: 0
"""


def config_text(args: argparse.Namespace, episodes: int, steps: int | None = None) -> str:
    settings = "{warmup: 4}" if args.agent == "ddpg" else "{}"
    steps = args.finetune_steps[0] if steps is None else steps
    return CONFIG.format(steps=steps, agent=args.agent, settings=settings, episodes=episodes)


def throughput(
    args: argparse.Namespace, runs: Path, workers: int, isolation: str, steps: int
) -> dict[str, Any]:
    """One search on a fresh study with ``workers`` Ray workers under ``isolation`` and
    ``steps`` fine-tune steps per evaluation: evals/min, overheads, the exclusive-lock bound
    and the latency-ratio error (:func:`ratio_error`)."""
    from amc import experiment
    from amc.config import load_config
    from amc.distributed import RayEvaluator

    overrides = {
        "runs_dir": str(runs),
        "storage": f"sqlite:///{runs}/bench.db",
        "study": f"throughput-{workers}-{isolation}-{steps}",
        "ray.workers": workers,
    }
    config = load_config(None, overrides, text=config_text(args, args.episodes, steps))
    prepared = experiment.prepare(config, progress=False)
    with RayEvaluator(prepared.spec, workers=workers, isolation=isolation) as evaluator:
        record, outcome = experiment.search(prepared, progress=False, evaluator=evaluator)
    trials = [t for t in record.trials() if t.state == "COMPLETE"]
    times = [dict(t.metrics["times"]) for t in trials]
    total = sum(t["total"] for t in times)

    def share(*phases: str) -> float:
        return sum(t.get(phase, 0.0) for t in times for phase in phases) / total

    work = statistics.median(
        t["total"] - t.get("latency", 0.0) - t.get("wait", 0.0) for t in times
    )
    latency = statistics.median(t.get("latency", 0.0) for t in times)
    return {
        "workers": workers,
        "isolation": isolation,
        "steps": steps,
        "bound": 2 * (work + latency) / (work + 2 * latency) if workers == 2 else 1.0,
        "ratio_error": ratio_error(prepared, trials[: args.remeasure]),
        "threads": prepared.spec.threads,
        "evals": len(trials),
        "failed": outcome.failed,
        "wall_s": outcome.elapsed_s,
        "per_min": 60 * (len(trials) + outcome.failed) / outcome.elapsed_s,
        "eval_s": statistics.median(t["total"] for t in times),
        "finetune_s": statistics.median(t.get("finetune", 0.0) for t in times),
        "latency_s": statistics.median(t.get("latency", 0.0) for t in times),
        "wait_s": statistics.median(t.get("wait", 0.0) for t in times),
        "machinery": share("apply", "count"),
        "protocol": share("recalibrate", "evaluate"),
        "waiting": share("wait"),
        "service": 1 - total / (workers * outcome.elapsed_s),
        "tail": tail_idle(trials) / (workers * outcome.elapsed_s),
    }


def tail_idle(trials: list[Any]) -> float:
    """Worker-seconds idle at the end of the search, when no plan was left to run: for each
    worker, from its last recorded trial to the search's last one (0 with one worker).

    This is part of ``service`` (every idle second is), but it is the episode budget running
    out, not the driver's per-evaluation work: reported apart so the two can be told apart.
    """
    last: dict[str, Any] = {}
    for trial in trials:
        worker = trial.metrics.get("worker")
        if worker and trial.finished and (worker not in last or trial.finished > last[worker]):
            last[worker] = trial.finished
    if not last:
        return 0.0
    end = max(last.values())
    return sum((end - finished).total_seconds() for finished in last.values())


def ratio_error(prepared: Any, trials: list[Any]) -> float:
    """Median of |ratio recorded in the search / ratio re-measured alone - 1| over ``trials``.

    Each plan is pruned again here and timed against the dense model with the search's own
    settings, with nothing else running: how far the search's measurements (taken next to a
    neighbour's work when isolation is not exclusive) are from a quiet machine's.
    """
    from amc import apply_plan
    from amc.measure import measure_interleaved

    spec, workload = prepared.spec, prepared.workload
    errors = []
    for trial in trials:
        pruned = apply_plan(
            workload.model, trial.plan, workload.example_inputs, graph=workload.graph
        )
        ratios = []
        for _ in range(3):  # median of three quiet measurements: the reference
            plan_stats, dense_stats = measure_interleaved(
                [pruned, workload.model], workload.example_inputs, spec.device,
                batch_size=spec.latency_batch_size, threads=spec.threads,
                warmup=spec.latency_warmup, min_run_time=spec.latency_min_run_time,
                rounds=spec.latency_repeats,
            )  # fmt: skip
            ratios.append(plan_stats.median_ms / dense_stats.median_ms)
        errors.append(abs(trial.metrics["latency_ratio"] / statistics.median(ratios) - 1))
    return statistics.median(errors)


def first_trial(args: argparse.Namespace, runs: Path, workers: int | None) -> dict[str, float]:
    """Seconds from starting `amc search` to its first RUNNING and first COMPLETE trial.

    The study is polled with plain SQL on the SQLite file (Optuna's tables ``studies`` and
    ``trials``): opening it through Optuna every 50 ms costs the poller most of a core, which on
    2 cores slows the very start being timed.
    """
    study = f"first-{workers}-{time.time_ns()}"  # a fresh study every start
    database = runs / "first.db"
    path = runs / f"{study}.yaml"
    path.write_text(config_text(args, 4) + f"runs_dir: {runs}\n", encoding="utf-8")
    command = [str(Path(sys.executable).with_name("amc")), "search", str(path), "--quiet"]
    command += ["--study", study, "--storage", f"sqlite:///{database}"]
    if workers is not None:
        command += ["--workers", str(workers)]
    query = (
        "SELECT trials.state FROM trials JOIN studies ON trials.study_id = studies.study_id "
        "WHERE studies.study_name = ?"
    )
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marks: dict[str, float] = {}
    try:
        while "complete" not in marks:
            if process.poll() is not None:
                raise RuntimeError(f"amc search failed: {process.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                with contextlib.closing(
                    sqlite3.connect(f"file:{database}?mode=ro", uri=True)
                ) as db:
                    states = {row[0] for row in db.execute(query, (study,))}
            except sqlite3.Error:  # the storage or its tables do not exist yet
                states = set()
            now = time.monotonic() - started
            if states and "started" not in marks:
                marks["started"] = now
            if "COMPLETE" in states:
                marks["complete"] = now
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)  # stops cleanly (and shuts its Ray down)
        process.wait(timeout=120)
    return marks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument(
        "--finetune-steps", type=int, nargs="+", default=[50], help="one throughput run each"
    )
    parser.add_argument("--remeasure", type=int, default=6, help="plans re-timed alone per run")
    parser.add_argument("--agent", default="ddpg")
    parser.add_argument("--runs", type=Path, default=None, help="keep results here")
    parser.add_argument("--starts", type=int, default=3, help="`amc search` starts timed each")
    parser.add_argument("--skip-throughput", action="store_true", help="time the start only")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="also write the tables, with the machine and versions, to this markdown file "
        "(e.g. experiments/results/<date>-<host>-service.md)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.out is not None and args.out.suffix != ".md":
        parser.error(f"--out must name a .md file, got {str(args.out)!r}")
    load = os.getloadavg()[0]  # before this benchmark adds its own
    runs = args.runs or Path(tempfile.mkdtemp(prefix="amc-bench-"))
    runs.mkdir(parents=True, exist_ok=True)

    # The baseline is trained once, outside every timing.
    from amc import experiment
    from amc.config import load_config

    warm = load_config(None, {"runs_dir": str(runs)}, text=config_text(args, 1))
    experiment.prepare(warm, progress=False)

    starts: dict[str, list[dict[str, float]]] = {"2 Ray": [], "in-process": []}
    for _ in range(args.starts):  # alternated, so drift affects both alike
        starts["2 Ray"].append(first_trial(args, runs, None))
        starts["in-process"].append(first_trial(args, runs, 0))

    rows = []
    if not args.skip_throughput:
        import ray

        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        for steps in args.finetune_steps:
            runs_of = [(1, "exclusive"), (2, "exclusive"), (2, "measurements")]
            rows += [throughput(args, runs, w, isolation, steps) for w, isolation in runs_of]
        ray.shutdown()

    cores = os.cpu_count()
    lines: list[str] = []
    lines.append(
        f"\n{args.agent}, resnet20 on digits 1x16x16, {args.episodes} episodes, {cores} cores, "
        f"load before start {load:.1f}\n"
    )
    lines.append(
        "| fine-tune steps | workers | isolation | evals | evals/min | speed-up | bound | "
        "eval s (median) | fine-tune s | latency s | lock wait s | apply+count | BN+evaluate | "
        "lock wait | service overhead | of which end-of-budget tail | service overhead without "
        "the tail | latency ratio error |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        single = next(r for r in rows if r["steps"] == row["steps"] and r["workers"] == 1)
        lines.append(
            f"| {row['steps']} | {row['workers']} | {row['isolation']} | {row['evals']} | "
            f"{row['per_min']:.1f} | {row['per_min'] / single['per_min']:.2f}x | "
            f"{row['bound']:.2f}x | {row['eval_s']:.2f} | "
            f"{row['finetune_s']:.2f} | {row['latency_s']:.2f} | {row['wait_s']:.2f} | "
            f"{row['machinery']:.1%} | {row['protocol']:.1%} | {row['waiting']:.1%} | "
            f"{row['service']:.1%} | {row['tail']:.1%} | {row['service'] - row['tail']:.1%} | "
            f"{row['ratio_error']:.1%} |"
        )
    lines.append(
        f"\n| `amc search` (median of {args.starts}) | first trial started | "
        "first trial recorded (complete) | each start: started / complete |"
    )
    lines.append("|---|---|---|---|")
    for label, marks in starts.items():
        started = statistics.median(m["started"] for m in marks)
        complete = statistics.median(m["complete"] for m in marks)
        each = ", ".join(f"{m['started']:.1f} / {m['complete']:.1f}" for m in marks)
        lines.append(f"| {label} | {started:.1f} s | {complete:.1f} s | {each} |")

    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        write_report(args.out, report, argv)


def write_report(path: Path, tables: str, argv: list[str] | None) -> None:
    """The tables under a header naming the command, the machine and the versions."""
    from experiments.benchmark import machine

    info = machine()
    command = " ".join(["python experiments/bench_service.py", *(argv or sys.argv[1:])])
    header = (
        f"# Service benchmark — {time.strftime('%Y-%m-%d')} on {info['host']}\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['os']}.  \n"
        f"Versions: {info['versions']}.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".md.tmp")
    temporary.write_text(header + tables + "\n", encoding="utf-8")
    temporary.replace(path)  # never a half-written report


if __name__ == "__main__":
    main()
