"""The experiments under experiments/: each loads and runs one episode at a tiny budget, and the
demo runs end to end through `amc search`, leaving a study, a plan, a pruned model and plots.

Tiny means: one episode, in-process evaluation on the CPU (CUDA configs are overridden to
``cpu``), a few samples per split, one held-out batch, one fine-tune step, a one-epoch
baseline shared per model and data through a session-wide runs folder, and latency modelled
from FLOPs (see ``flops_latency``). CIFAR-10 configs read a fake binary CIFAR-10 folder
(3073-byte records) written here, since the real one is not on the machine.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from amc import experiment, report
from amc.config import ExperimentConfig, load_config
from amc.plan import PruningPlan
from amc.report import comparison_rows
from amc.study import SearchRecord

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

#: what each config promises in its header, checked before the tiny run
EXPECTED: dict[str, dict[str, Any]] = {
    "amc_resnet56_cifar10.yaml": {
        "model": "resnet56",
        "target": "flops=0.5",
        "agent": "ddpg",
        "settings": {},  # AMC's settings are the ddpg defaults
        "device": "cuda",
        "nm": None,
    },
    "mobilenetv2_latency_cuda.yaml": {
        "model": "mobilenetv2",
        "target": "latency=0.5",
        "agent": "ddpg",
        "device": "cuda",
        "nm": None,
    },
    "mobilenetv2_pareto_nsga2.yaml": {
        "model": "mobilenetv2",
        "target": "latency=0.5",
        "agent": "nsga2",
        "device": "cuda",
        "nm": None,
    },
    "vit_tiny_2of4_cuda.yaml": {
        "model": "vit_tiny",
        "agent": "ddpg",
        "device": "cuda",
        "nm": "2:4",
    },
    "own_model.yaml": {
        "model": "experiments.own_model:my_model",
        "data": "experiments.own_model:my_data",
        "agent": "tpe",
        "device": "cpu",
    },
}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runs folder for the session, so each model/data baseline is trained once."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-10 binary folder: 5 train batches and a test batch of 32 records each."""
    folder = tmp_path_factory.mktemp("cifar-10-batches-bin")
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]:
        records = rng.integers(0, 256, size=(32, 1 + 3 * 32 * 32), dtype=np.uint8)
        records[:, 0] = np.arange(32) % 10  # every label present: 10 classes
        records.tofile(folder / name)
    return folder


@pytest.fixture
def flops_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency modelled as proportional to FLOPs, in the latency table and in every evaluation.

    The CUDA configs are meant for a GPU, and two shared CPU cores timed at a tiny budget are
    too noisy for a latency target to be met or even found feasible reliably. The table (AMC's
    per-unit curves with their FLOPs, and the fitted line) and every "measured" latency follow
    one deterministic law instead, 1 ms per MFLOP; search, clipping and over-budget checks run
    unchanged on it. N:M masks cost their dense FLOPs, as they do in fp32, so N:M saves nothing.
    """
    import amc.evaluate
    import amc.measure
    from amc.latency_table import LatencyTable
    from amc.measure import LatencyStats, count_flops

    def mflops_ms(model: Any, example_inputs: Any, device: Any = "cpu", **_: Any) -> Any:
        ms = count_flops(model, example_inputs) / 1e6
        return LatencyStats(ms, 0.0, ms, 1, len(example_inputs), str(device), 1)

    def table(cls: type, model: Any, example_inputs: Any, graph: Any, *_: Any, **__: Any) -> Any:
        dense_ms = mflops_ms(model, example_inputs).median_ms
        synthetic = LatencyTable.synthetic(graph, dense_ms=dense_ms, overhead=0.0)
        curves = {
            name: replace(curve, flops=tuple(ms / dense_ms for ms in curve.ms))
            for name, curve in synthetic.units.items()
        }
        return replace(synthetic, units=curves, device="cpu", fit=(0.0, dense_ms))

    def interleaved(models: Any, example_inputs: Any, device: Any = "cpu", **_: Any) -> Any:
        return [mflops_ms(model, example_inputs, device) for model in models]

    monkeypatch.setattr(amc.evaluate, "measure_interleaved", interleaved)
    monkeypatch.setattr(amc.measure, "measure_interleaved", interleaved)  # aiming a plan
    monkeypatch.setattr(LatencyTable, "measure", classmethod(table))


def tiny_overrides(
    config: ExperimentConfig, runs: Path, storage_dir: Path, cifar: Path, study: str
) -> dict[str, Any]:
    """Overrides that turn a real experiment into a one-episode run on this CPU."""
    overrides: dict[str, Any] = {
        "episodes": 1,
        "device": "cpu",
        "ray.workers": 0,
        "data_limit": 32,
        "latency_batch_size": min(config.latency_batch_size, 8),
        "baseline.epochs": 1,
        "finetune.steps": min(config.finetune.steps, 1),
        "finetune.batch_size": 16,
        "finetune.eval_batches": 1,
        "finetune.bn_batches": min(config.finetune.bn_batches, 1),
        "latency.table_kernel_grid": 3,  # the kernel table on a coarse grid
        "choose.rescore_steps": min(config.choose.rescore_steps, 2),
        "choose.aim_steps": min(config.choose.aim_steps, 2),
        "choose.aim_repeats": 1,
        "runs_dir": str(runs),
        "storage": f"sqlite:///{storage_dir / 'amc.db'}",
        "study": study,
    }
    if config.data.startswith("cifar10:") and not Path(config.data.split(":", 1)[1]).is_dir():
        overrides["data"] = f"cifar10:{cifar}"
    if config.agent.name == "ddpg":
        overrides["agent.settings.warmup"] = 1
    if config.model == "vit_tiny":
        overrides["model_kwargs"] = {}  # the zoo's default size: embed 64, depth 4
    return overrides


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (checking the signature and chunk type)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    return struct.unpack(">II", head[16:24])


# -- every config: documented, valid, one episode ---------------------------------------------


def test_every_experiment_is_listed() -> None:
    shipped = {path.name for path in EXPERIMENTS.glob("*.yaml")}
    assert shipped == {*EXPECTED, "demo.yaml"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_experiment_is_documented_and_says_what_it_promises(name: str) -> None:
    path = EXPERIMENTS / name
    text = path.read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert text.startswith("# "), f"{name} starts without its header comment"
    assert f"amc search experiments/{name}" in header, f"{name}'s header lacks how to run it"
    assert len(header.splitlines()) >= 10, f"{name}'s header is too thin"
    config = load_config(path)
    expected = EXPECTED[name]
    assert config.model == expected["model"]
    assert config.agent.name == expected["agent"]
    assert config.device == expected["device"]
    for key in ("target", "nm", "data"):
        if key in expected:
            assert getattr(config, key) == expected[key], key
    if "settings" in expected:
        assert config.agent.settings == expected["settings"]
    if config.data.startswith("cifar10:"):
        assert "cifar-10-binary" in header, f"{name} does not say where CIFAR-10 comes from"
    assert config.storage == "sqlite:///runs/amc.db" and config.weights is None


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=lambda n: n.removesuffix(".yaml"))
def test_experiment_runs_one_episode(
    name: str, shared_runs: Path, fake_cifar: Path, tmp_path: Path, flops_latency: None
) -> None:
    path = EXPERIMENTS / name
    study = name.removesuffix(".yaml")
    config = load_config(
        path, tiny_overrides(load_config(path), shared_runs, tmp_path, fake_cifar, study)
    )
    prepared = experiment.prepare(config, progress=False)
    assert prepared.study == study
    assert prepared.space.target.metric == config.target.split("=")[0]
    if config.nm:
        assert any(prepared.space.offers_nm(unit) for unit in prepared.space.units)
    record, outcome = experiment.search(prepared, progress=False)
    assert outcome.completed == 1, outcome
    (trial,) = record.completed()
    assert trial.plan is not None and trial.metrics["status"] == "ok"
    assert set(trial.plan.units) <= set(prepared.space.names)
    pareto = config.agent.name == "nsga2"
    assert record.objectives == (["accuracy", "latency_ms"] if pareto else ["reward"])
    assert trial.plan.target is not None
    assert trial.plan.target["metric"] == prepared.space.target.metric
    if name == "own_model.yaml":  # the pruned model is rebuilt from the user's factory
        from amc.artifacts import load_pruned

        finished = experiment.finish(prepared, record, plots=False)
        assert finished.plan_path is not None and finished.plan_path.is_file()
        assert finished.pruned_dir is not None
        pruned = load_pruned(finished.pruned_dir)
        assert pruned(prepared.workload.example_inputs).shape == (1, 4)


# -- bring your own model and data -----------------------------------------------------------


def test_own_model_module_is_importable_from_the_repository_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As `amc` (a console script: sys.path[0] is its bin folder, not the cwd) resolves it."""
    from amc.zoo import resolve_model

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(ROOT))])
    for module in ("experiments", "experiments.own_model"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    model = resolve_model("experiments.own_model:my_model", num_classes=4, in_channels=1)
    assert type(model).__name__ == "MyNet"


def test_the_baseline_is_trained_with_model_kwargs(shared_runs: Path, tmp_path: Path) -> None:
    path = EXPERIMENTS / "own_model.yaml"
    overrides = tiny_overrides(load_config(path), shared_runs, tmp_path, tmp_path, "own-w8")
    config = load_config(path, {**overrides, "model_kwargs": {"width": 8}})
    prepared = experiment.prepare(config, progress=False)
    assert prepared.workload.model.features[0][0].out_channels == 8


def _load_own_model_and_data() -> tuple[tuple[int, ...], int]:
    from amc.zoo import get_data, resolve_model

    data = get_data("experiments.own_model:my_data", input_shape=(1, 32, 32))
    model = resolve_model("experiments.own_model:my_model", num_classes=data.num_classes)
    return tuple(model(data.test.tensors[0][:2]).shape), len(data.train)


@pytest.mark.ray
def test_own_model_factories_load_in_a_ray_worker(ray_session: Any) -> None:
    """Ray puts the driver's working directory on its workers' path: the specs resolve there."""
    remote = ray_session.remote(num_cpus=0.5)(_load_own_model_and_data)
    assert ray_session.get(remote.remote(), timeout=120) == ((2, 4), 800)


# -- the demo, end to end --------------------------------------------------------------------


def test_demo_end_to_end(
    shared_runs: Path, tmp_path: Path, flops_latency: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`amc search` on the demo at a tiny budget: a study, a plan, a pruned model, plots."""
    from amc.artifacts import load_pruned
    from amc.cli import main

    demo = EXPERIMENTS / "demo.yaml"
    raw = yaml.safe_load(demo.read_text(encoding="utf-8"))
    overrides = tiny_overrides(load_config(demo), shared_runs, tmp_path, tmp_path, "demo-tiny")
    overrides |= {"episodes": 3, "data_limit": 64, "finetune.eval_batches": 2}
    overrides["finetune.final_steps"] = 2  # the demo's longer last fine-tune, shortened
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    config_path = tmp_path / "demo.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    assert main(["search", str(config_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "demo-tiny" in out and "best plan:" in out and "amc show demo-tiny" in out

    record = SearchRecord.open(overrides["storage"], "demo-tiny")
    assert record.count_completed() == 3
    assert record.attrs["target"] == "latency=0.5" and "uniform" in record.attrs
    # delivered: the 3 best trials and the uniform plan (unless among them; trial None)
    # re-scored (2 steps here), each aimed by measurement first, the best of them delivered
    chosen = record.attrs["chosen"]
    numbers = [t.number for t in record.best(3)]
    assert [row["trial"] for row in chosen["rescored"]] in (numbers, [*numbers, None])
    assert all(row["aimed_ratio"] > 0 for row in chosen["rescored"])
    assert chosen["rescore_steps"] == 2 and chosen["trial"] in {*numbers, None}
    assert chosen.get("uniform", False) is (chosen["trial"] is None)
    assert 0 < chosen["aim"]["ratio"] and 1 <= len(chosen["aim"]["tried"]) <= 4
    final = record.attrs["final"]  # best and uniform after the same final fine-tune
    assert final["steps"] == 2 and final["trial"] == chosen["trial"]
    assert all(0.0 <= final[name] <= 1.0 for name in ("dense", "best", "uniform"))
    assert "accuracy after 2 steps" in out
    folder = shared_runs / "demo-tiny"
    plan_path = folder / "best_plan.json"
    assert plan_path.is_file() and str(plan_path) in out
    delivered = PruningPlan.load(plan_path)
    assert delivered.provenance["trial"] == chosen["trial"]
    assert delivered.provenance["aim"]["measured"] == pytest.approx(chosen["aim"]["ratio"], 1e-3)
    assert delivered.metrics["latency_ratio"] == chosen["aim"]["ratio"]
    assert delivered.key() == PruningPlan.from_json(chosen["plan"]).key()
    exported = tmp_path / "exported.json"
    assert main(["export", "demo-tiny", "--out", str(exported), "--storage",
                 overrides["storage"]]) == 0  # fmt: skip
    assert PruningPlan.load(exported).key() == delivered.key()
    assert "as delivered" in capsys.readouterr().out
    [row] = [row for row in comparison_rows(record) if row["name"].startswith("best")]
    which = "the uniform plan" if chosen.get("uniform") else f"trial {chosen['trial']}"
    assert row["name"] == f"best ({which}, re-scored and aimed)"
    assert row["latency_ratio"] == chosen["aim"]["ratio"] and row["final_accuracy"] is not None
    pruned = load_pruned(folder / "pruned")
    assert pruned(torch.randn(2, 1, 32, 32)).shape == (2, 10)

    plots = folder / "plots"
    n_units = len(record.attrs["units"])
    sizes = {
        "keep_ratios.png": report.keep_ratio_size(n_units),
        "search_curve.png": report.CURVE_SIZE,
        "pareto.png": report.PARETO_SIZE,
    }
    for name, (width, height) in sizes.items():
        path = plots / name
        assert path.stat().st_size > 1000, name
        assert png_size(path) == (round(width * report.DPI), round(height * report.DPI)), name
    summary = (plots / "summary.md").read_text(encoding="utf-8")
    assert "demo-tiny" in summary and "keep_ratios.png" in summary
