"""The experiments under experiments/: each loads and runs one episode at a tiny budget, and the
demo runs end to end through `amc search`, leaving a study, a plan, a pruned model and plots.

Tiny means: one episode, in-process evaluation on the CPU (CUDA configs are overridden to
``cpu``), a few samples per split, one held-out batch, one fine-tune step, a one-epoch
baseline shared per model and data through a session-wide runs folder, and latency timed with
a few short repeats instead of the configured statistics. CIFAR-10 configs read a fake binary
CIFAR-10 folder (3073-byte records) written here, since the real one is not on the machine.
"""

from __future__ import annotations

import functools
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from amc import experiment, report
from amc.config import ExperimentConfig, load_config
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
def quick_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real latency measurements, with a few short repeats instead of seconds of them."""
    import amc.evaluate
    import amc.latency_table
    from amc.measure import measure_latency

    @functools.wraps(measure_latency)
    def quick(*args: Any, **kwargs: Any) -> Any:
        kwargs.update(warmup=1, min_run_time=0.01, repeats=3)
        return measure_latency(*args, **kwargs)

    monkeypatch.setattr(amc.evaluate, "measure_latency", quick)
    monkeypatch.setattr(amc.latency_table, "measure_latency", quick)


@pytest.fixture
def flops_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency modelled as proportional to FLOPs, in the latency table and in every evaluation.

    The CUDA configs are meant for a GPU; timed on two shared CPU cores at batch 1 and with a
    few repeats, MobileNetV2 and the ViT are too launch-bound and noisy for a 50% latency budget
    to be met reliably. The search, clipping and over-budget code paths run unchanged on a
    deterministic latency instead; the demo test times latency for real.
    """
    import amc.evaluate
    from amc.latency_table import LatencyTable
    from amc.measure import LatencyStats, count_flops

    def mflops_ms(model: Any, example_inputs: Any, device: Any = "cpu", **_: Any) -> Any:
        ms = count_flops(model, example_inputs) / 1e6
        return LatencyStats(ms, 0.0, ms, 1, len(example_inputs), str(device), 1)

    def table(cls: type, model: Any, example_inputs: Any, graph: Any, *_: Any, **__: Any) -> Any:
        dense_ms = mflops_ms(model, example_inputs).median_ms
        return LatencyTable.synthetic(graph, dense_ms=dense_ms, overhead=0.0)

    monkeypatch.setattr(amc.evaluate, "measure_latency", mflops_ms)
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
        "latency_batch_size": 1,
        "baseline.epochs": 1,
        "finetune.steps": min(config.finetune.steps, 1),
        "finetune.batch_size": 16,
        "finetune.eval_batches": 1,
        "finetune.bn_batches": min(config.finetune.bn_batches, 1),
        "runs_dir": str(runs),
        "storage": f"sqlite:///{storage_dir / 'amc.db'}",
        "study": study,
    }
    if config.data.startswith("cifar10:") and not Path(config.data.split(":", 1)[1]).is_dir():
        overrides["data"] = f"cifar10:{cifar}"
    if config.agent.name == "ddpg":
        overrides["agent.settings.warmup"] = 1
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


@pytest.mark.parametrize(
    "name", [n for n in sorted(EXPECTED) if n != "own_model.yaml"], ids=lambda n: n[:-5]
)
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
    assert (
        trial.plan.target is not None
        and trial.plan.target["metric"] == prepared.space.target.metric
    )


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


@pytest.mark.ray
def test_own_model_experiment_runs_on_a_ray_worker(
    ray_session: Any, shared_runs: Path, tmp_path: Path
) -> None:
    """The config's factories load in a Ray worker (Ray puts the driver's cwd on its path)."""
    from experiments.own_model import my_data, my_model

    data = my_data(input_shape=(1, 32, 32))
    assert len(data.train) == 800 and len(data.test) == 200 and data.num_classes == 4
    assert my_model(num_classes=4, in_channels=1)(data.test.tensors[0][:2]).shape == (2, 4)

    path = EXPERIMENTS / "own_model.yaml"
    overrides = tiny_overrides(load_config(path), shared_runs, tmp_path, tmp_path, "own_model")
    config = load_config(path, {**overrides, "ray.workers": 1})
    prepared = experiment.prepare(config, progress=False)
    record, outcome = experiment.search(prepared, progress=False)
    assert outcome.completed == 1 and outcome.failed == 0, outcome
    (trial,) = record.completed()
    assert trial.metrics["status"] == "ok"
    assert (
        trial.metrics["worker"] != record.attrs["uniform"]["metrics"].get("worker", None) or True
    )
    finished = experiment.finish(prepared, record, plots=False)
    assert finished.plan_path is not None and finished.plan_path.is_file()
    assert (
        finished.pruned_dir is not None and (finished.pruned_dir / "weights.safetensors").is_file()
    )


# -- the demo, end to end --------------------------------------------------------------------


def test_demo_end_to_end(
    shared_runs: Path, tmp_path: Path, quick_latency: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`amc search` on the demo at a tiny budget: a study, a plan, a pruned model, plots."""
    from amc.artifacts import load_pruned
    from amc.cli import main

    demo = EXPERIMENTS / "demo.yaml"
    raw = yaml.safe_load(demo.read_text(encoding="utf-8"))
    overrides = tiny_overrides(load_config(demo), shared_runs, tmp_path, tmp_path, "demo-tiny")
    overrides |= {"episodes": 3, "data_limit": 64, "finetune.eval_batches": 2}
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
    folder = shared_runs / "demo-tiny"
    plan_path = folder / "best_plan.json"
    assert plan_path.is_file() and str(plan_path) in out
    pruned = load_pruned(folder / "pruned")
    import torch

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
